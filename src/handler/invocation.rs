//! The invocation state machine: one `invoke` written to a handler process,
//! driven to exactly one outcome.
//!
//! An invocation is RUNNING, CANCELLING (cancel sent, grace clock running)
//! or DRAINING (the process exited, its last lines may still arrive); the
//! last two can overlap. Every wake-up of the loop in [`attempt`] handles
//! one event:
//!
//! ```text
//!             write invoke line
//!   (start) ───────────────────▶ RUNNING ──── result / error ───▶ outcome
//!                                   │  ╲
//!                   cancel fires    │   ╲ process exited
//!                   (send cancel)   ▼    ╲ (start EXIT_DRAIN clock)
//!                              CANCELLING  ╲
//!                                   │       ▼
//!        terminal, EOF, violation   │    DRAINING ── result / error ─▶ outcome
//!        or cancel grace over       ▼       │
//!                               Cancelled   └─ EOF or clock over ─▶ crash report
//! ```
//!
//! The rules that make "exactly one outcome" hold:
//!
//! - **The terminal is final.** The loop returns as soon as it reads a
//!   `result` or `error`; whatever the handler does next (a crash included)
//!   belongs to the time between invocations and is dealt with by
//!   [`HandlerProcess::is_usable`] before the next one.
//! - **Stale messages are dropped.** A message tagged with another
//!   invocation's id (a late answer to a cancelled one) never reaches the
//!   client.
//! - **Cancelling wins.** Once `cancel` has been sent, the outcome is
//!   `Cancelled` whatever the handler does: a terminal keeps the process
//!   warm, anything else (EOF, garbage, silence past the grace) ends it.
//! - **Exit does not wait for EOF.** A process that exited may have left a
//!   child holding its stdout open, so EOF might never come: after the exit,
//!   its remaining lines get [`EXIT_DRAIN`] to arrive.
//! - **A death before reading is retryable.** If a warm process died while
//!   idle, the invoke line is still unread in the pipe:
//!   [`Attempt::NeverRead`] lets the host start a fresh process and retry
//!   once, so the client never sees the old process's death.

use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;
use crate::redact::Redactor;
use crate::wire::OutboundMessage;

use super::child::HandlerProcess;
use super::pipes::Event;
use super::protocol::{self, HandlerMessage, Invocation, Violation};
use super::{AgentOutput, HandlerError};

/// After the handler process exits, how long its remaining output may
/// take to arrive before the invocation is failed as a crash.
const EXIT_DRAIN: Duration = Duration::from_millis(200);

/// What an invocation needs from the request it serves.
pub(crate) struct InvokeContext<'a> {
    /// Where `assistant_message`s are streamed while the handler works.
    pub(crate) outbox: &'a Outbox,
    /// Applied to everything forwarded, returned or logged from the handler.
    pub(crate) redactor: &'a Redactor,
    /// Fired on cancel/disconnect: the handler is sent `cancel`, then killed
    /// after `cancel_grace` if it has not answered.
    pub(crate) cancel: &'a CancellationToken,
    /// After sending `cancel`, how long the handler has to finish.
    pub(crate) cancel_grace: Duration,
    /// After SIGTERM to the handler's group, how long before SIGKILL.
    pub(crate) kill_grace: Duration,
}

/// How an attempt at an invocation ended.
pub(crate) enum Attempt {
    /// The invocation's one outcome. The process may have been ended on the
    /// way ([`HandlerProcess::has_ended`]).
    Done(Result<AgentOutput, HandlerError>),
    /// The process died before reading the invocation: safe to retry on a
    /// new one.
    NeverRead(HandlerError),
}

/// What woke the invocation loop.
enum Wake {
    /// The request was cancelled: time to send `cancel`.
    Cancel,
    /// The handler did not finish within the cancel grace.
    GraceOver,
    /// The process exited; its last lines may still be on the way.
    Exited,
    /// A stdout event, or `None` for EOF (or the exit drain running out).
    Event(Option<Event>),
}

/// Drives `inv` (already encoded as `line`) on `process` to its outcome.
///
/// `redactor` is the invocation's (the request's secrets plus the
/// invocation's own); everything sent or returned goes through it.
pub(crate) async fn attempt(
    process: &mut HandlerProcess,
    inv: &Invocation,
    ctx: &InvokeContext<'_>,
    redactor: &Redactor,
    line: &[u8],
) -> Attempt {
    let written = tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => None,
        r = process.write(line) => Some(r),
    };
    match written {
        None => {
            // Half an invoke line may be in the pipe: the process is unusable.
            process.end(ctx.kill_grace).await;
            return Attempt::Done(Err(HandlerError::Cancelled));
        }
        Some(Err(_)) => {
            return Attempt::NeverRead(process.crashed(ctx.kill_grace, redactor).await);
        }
        Some(Ok(())) => {}
    }

    // CANCELLING once set: the handler must finish by then.
    let mut cancel_deadline: Option<Instant> = None;
    // DRAINING once set: the process exited, and its last lines may still
    // be in the pipe; a child it left behind can hold the pipe open, so EOF
    // may never come.
    let mut exit_deadline: Option<Instant> = None;
    // Whether the handler has said anything about this invocation: if not,
    // a death may have come before it read the invoke line.
    let mut heard = false;
    loop {
        let wake = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled(), if cancel_deadline.is_none() => Wake::Cancel,
            _ = sleep_until(cancel_deadline.unwrap_or_else(Instant::now)),
                if cancel_deadline.is_some() => Wake::GraceOver,
            ev = process.events.recv() => Wake::Event(ev),
            _ = process.child.wait(), if exit_deadline.is_none() => Wake::Exited,
            _ = sleep_until(exit_deadline.unwrap_or_else(Instant::now)),
                if exit_deadline.is_some() => Wake::Event(None),
        };
        let cancelling = cancel_deadline.is_some();
        let event = match wake {
            Wake::Exited => {
                exit_deadline = Some(Instant::now() + EXIT_DRAIN);
                continue;
            }
            Wake::Cancel => {
                cancel_deadline = Some(Instant::now() + ctx.cancel_grace);
                let sent = timeout(
                    ctx.cancel_grace,
                    process.write(&protocol::cancel_line(&inv.id)),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    process.end(ctx.kill_grace).await;
                    return Attempt::Done(Err(HandlerError::Cancelled));
                }
                tracing::debug!(target: "handler", id = %inv.id, "sent cancel to the handler");
                continue;
            }
            Wake::GraceOver => {
                tracing::info!(target: "handler", id = %inv.id,
                    "handler did not finish within the cancel grace; terminating it");
                process.end(ctx.kill_grace).await;
                return Attempt::Done(Err(HandlerError::Cancelled));
            }
            Wake::Event(None) => {
                if cancelling {
                    process.end(ctx.kill_grace).await;
                    return Attempt::Done(Err(HandlerError::Cancelled));
                }
                // All of the invoke line still unread: the handler died
                // before it could see this invocation.
                let never_read = !heard && process.unread_bytes().is_some_and(|n| n >= line.len());
                let err = process.crashed(ctx.kill_grace, redactor).await;
                return if never_read {
                    Attempt::NeverRead(err)
                } else {
                    Attempt::Done(Err(err))
                };
            }
            Wake::Event(Some(event)) => event,
        };
        let map = match event {
            Event::Message(map) => map,
            Event::Garbage(quote) => {
                let what = format!("wrote a line that is not a JSON object: \"{quote}\"");
                return protocol_failure(process, &what, cancelling, ctx.kill_grace, redactor)
                    .await;
            }
            Event::TooLong => {
                let what = format!("wrote a line longer than {} bytes", process.max_line());
                return protocol_failure(process, &what, cancelling, ctx.kill_grace, redactor)
                    .await;
            }
            Event::ReadFailed(e) => {
                let what = format!("could not be read from: {e}");
                return protocol_failure(process, &what, cancelling, ctx.kill_grace, redactor)
                    .await;
            }
        };
        heard = true;
        if !protocol::is_for(&map, &inv.id) {
            tracing::debug!(target: "handler", id = %inv.id, stale = ?map.get("id"),
                "dropping a message for another invocation");
            continue;
        }
        let message = match HandlerMessage::parse(map) {
            Ok(message) => message,
            // A badly formed terminal after a cancel is still the handler
            // stopping: the process stays warm.
            Err(Violation {
                in_terminal: true, ..
            }) if cancelling => {
                return Attempt::Done(Err(HandlerError::Cancelled));
            }
            Err(Violation { what, .. }) => {
                return protocol_failure(process, &what, cancelling, ctx.kill_grace, redactor)
                    .await;
            }
        };
        match message {
            HandlerMessage::Assistant { text_blocks } => {
                if cancelling {
                    continue;
                }
                let text_blocks = text_blocks
                    .iter()
                    .map(|b| redactor.redact_str(b).into_owned())
                    .collect();
                let sent = tokio::select! {
                    biased;
                    r = ctx.outbox.send(OutboundMessage::AssistantMessage { text_blocks }) => Some(r),
                    // Cancel fired while the client was slow: the message
                    // is dropped; the next turn of the loop cancels.
                    _ = ctx.cancel.cancelled() => None,
                };
                if let Some(Err(_)) = sent {
                    process.end(ctx.kill_grace).await;
                    return Attempt::Done(Err(HandlerError::ClientGone));
                }
            }
            HandlerMessage::Unknown(kind) => {
                tracing::warn!(target: "handler", id = %inv.id,
                    "ignoring a handler message of unknown type {kind:?}");
            }
            HandlerMessage::Terminal(_) if cancelling => {
                tracing::debug!(target: "handler", id = %inv.id,
                    "handler finished after cancel; keeping it warm");
                return Attempt::Done(Err(HandlerError::Cancelled));
            }
            HandlerMessage::Terminal(terminal) => {
                return Attempt::Done(terminal.into_outcome(redactor));
            }
        }
    }
}

/// Ends an attempt over a protocol violation. While cancelling, the
/// request's outcome is "cancelled" whatever the handler did wrong.
async fn protocol_failure(
    process: &mut HandlerProcess,
    what: &str,
    cancelling: bool,
    kill_grace: Duration,
    redactor: &Redactor,
) -> Attempt {
    let err = process.broke_protocol(what, kill_grace, redactor).await;
    Attempt::Done(Err(if cancelling {
        HandlerError::Cancelled
    } else {
        err
    }))
}
