//! The agent-handler host: runs the user's (or a bundled) agent handler as a
//! child process and speaks handler protocol v1 with it.
//!
//! The handler is any program that reads newline-delimited JSON on stdin and
//! writes newline-delimited JSON on stdout (`protocol/handler-protocol.md` is
//! the contract). One [`HandlerHost`] belongs to one client session and owns
//! at most one live process: it is spawned on the first invocation and kept
//! warm for the following ones, so a session pays the start-up cost once.
//!
//! The parts, each usable alone:
//!
//! | file | concern |
//! |---|---|
//! | `command.rs` | finding the program ([`HandlerCommand::resolve`]) and how it is started |
//! | `child.rs` | one running process: spawn, pipes, every way of ending it |
//! | `pipes.rs` | stdout lines into events, stderr into the log |
//! | `protocol.rs` | the `invoke`/`cancel` lines and the handler's messages |
//! | `invocation.rs` | the state machine driving one invocation to one outcome |
//!
//! Failure handling is the point of this module:
//! - the child runs in its own process group, and every way out (crash,
//!   garbage, cancel timeout, shutdown, drop) ends the whole group, so nothing
//!   a handler started outlives it;
//! - each invocation yields exactly one outcome: once the terminal message has
//!   been read, anything else the handler does for that invocation (a crash
//!   included) is never reported, and a handler that died between invocations
//!   is replaced transparently;
//! - messages tagged with another invocation's id are stale and dropped.
//!
//! Everything the host sends to the client or returns is already redacted
//! with the invocation's redactor (plus its `secrets`). The host needs no
//! WebSocket: an [`Outbox`](crate::outbox::Outbox) is all it writes to.

mod child;
mod command;
mod invocation;
mod pipes;
mod protocol;
mod sdks;
mod spare;

use std::time::Duration;

use serde_json::{Map, Value};

use crate::wire;

pub(crate) use child::HandlerProcess;
pub use command::HandlerCommand;
pub(crate) use command::find_program;
pub(crate) use invocation::InvokeContext;
pub(crate) use protocol::Invocation;
/// For `--version`'s test, which checks the protocol version it prints.
#[cfg(test)]
pub(crate) use protocol::PROTOCOL_VERSION;
pub(crate) use spare::SparePool;

use invocation::Attempt;
use pipes::MAX_LINE_BYTES;

/// A successful invocation's result, redacted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentOutput {
    /// Text, or a structured-output object when an output format was asked.
    pub(crate) data: wire::ResultData,
    /// The handler's metadata; `{}` when it sent none.
    pub(crate) metadata: Map<String, Value>,
}

/// Why a handler could not be resolved, or an invocation produced no
/// result. The text is what the client (or the operator, at startup) reads.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The request was cancelled (the text is what the client expects).
    #[error("Request cancelled")]
    Cancelled,
    /// The handler sent `{"type":"error"}`.
    #[error("{error}")]
    Reported {
        /// The handler's error text, passed to the client as is (redacted).
        error: String,
        /// The handler's metadata; `{}` when it sent none.
        metadata: Map<String, Value>,
    },
    /// The handler could not be resolved or started, crashed, or broke the
    /// protocol.
    #[error("{0}")]
    Failed(String),
    /// The client connection closed while the handler was streaming.
    #[error("the client connection is closed")]
    ClientGone,
}

/// Hosts one session's agent handler process.
pub(crate) struct HandlerHost {
    spares: SparePool,
    process: Option<HandlerProcess>,
    max_line: usize,
}

impl HandlerHost {
    /// A host with no process yet: the first invocation takes a spare from
    /// `spares` (or starts the handler if none is ready), so a session that
    /// only runs commands never uses one.
    pub(crate) fn new(spares: SparePool) -> Self {
        Self {
            spares,
            process: None,
            max_line: MAX_LINE_BYTES,
        }
    }

    /// Lowers the stdout line limit.
    #[cfg(test)]
    fn with_max_line_bytes(mut self, max_line: usize) -> Self {
        self.max_line = max_line;
        self
    }

    /// The live handler's pid (also its process group id), if one is running.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(HandlerProcess::pid)
    }

    /// Runs one invocation to its single outcome.
    ///
    /// A warm process that died since the last invocation is replaced; if
    /// it turns out dead only once the invoke line is written (but unread),
    /// the invocation is retried once on a fresh process.
    pub(crate) async fn invoke(
        &mut self,
        inv: &Invocation,
        ctx: &InvokeContext<'_>,
    ) -> Result<AgentOutput, HandlerError> {
        if ctx.cancel.is_cancelled() {
            return Err(HandlerError::Cancelled);
        }
        let redactor = ctx.redactor.with(&inv.secrets);
        let line = protocol::invoke_line(inv);
        let mut retried = false;
        loop {
            self.drop_unusable(ctx.kill_grace).await;
            if self.process.is_none() {
                self.process = self.take_spare();
            }
            // A process started before this invocation may have died since.
            let reused = self.process.is_some();
            let process = match self.process.as_mut() {
                Some(process) => {
                    process.set_redactor(redactor.clone());
                    process
                }
                None => self.process.insert(HandlerProcess::spawn(
                    self.spares.command().clone(),
                    self.max_line,
                    redactor.clone(),
                    self.spares.new_scope(),
                )?),
            };
            let attempt = invocation::attempt(process, inv, ctx, &redactor, &line).await;
            if process.has_ended() {
                self.process = None;
            }
            match attempt {
                Attempt::Done(outcome) => return outcome,
                Attempt::NeverRead(_) if reused && !retried => {
                    tracing::info!(target: "handler", id = %inv.id,
                        "the warm handler died between invocations; starting a new one");
                    retried = true;
                }
                Attempt::NeverRead(err) => return Err(err),
            }
        }
    }

    /// A spare from the pool, unless this host reads lines with another
    /// limit than the one spares are started with.
    fn take_spare(&mut self) -> Option<HandlerProcess> {
        if self.max_line != MAX_LINE_BYTES {
            return None;
        }
        self.spares.take()
    }

    /// Closes the handler's stdin, gives it `grace` to exit, then terminates
    /// its process group. Nothing it started is left running. Returns
    /// whether it exited by itself within `grace`, as the protocol asks
    /// (`check-handler` reports it; true when none was running).
    pub(crate) async fn shutdown(&mut self, grace: Duration) -> bool {
        match self.process.take() {
            Some(process) => process.shutdown(grace).await,
            None => true,
        }
    }

    /// Between invocations: forgets (and cleans up after) a process that
    /// died or broke the protocol since its last terminal.
    async fn drop_unusable(&mut self, kill_grace: Duration) {
        if let Some(mut process) = self.process.take_if(|process| !process.is_usable()) {
            process.end(kill_grace).await;
        }
    }
}

#[cfg(test)]
mod tests;
