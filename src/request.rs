//! One request's pipeline: downloads, commands, the agent, artifacts, and
//! the single terminal message that ends it.
//!
//! Nothing in here sends a terminal. Each pipeline returns
//! `Result<OutboundMessage, RequestError>` and the session turns that into
//! exactly one terminal, so "one terminal per request" holds by
//! construction rather than by every branch remembering it.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde_json::{Map, Value, json};
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

use crate::artifacts::Artifacts;
use crate::commands::{self, CommandContext, CommandError};
use crate::config::Config;
use crate::containment::Scope;
use crate::downloads::{self, DownloadError};
use crate::frames;
use crate::handler::{HandlerError, HandlerHost, Invocation, InvokeContext};
use crate::http::HttpClient;
use crate::outbox::Outbox;
use crate::redact::Redactor;
use crate::wire::{
    self, CommandExecutionMessage, CommandResult, InvocationMessage, MAX_OUTBOUND_FRAME_BYTES,
    OutboundMessage,
};

/// Why a request ended without its normal result; the text is what the
/// client's `AgentRuntimeError` will carry.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// `cancel_message` or a disconnect; no artifact flush precedes it.
    #[error("Request cancelled")]
    Cancelled,
    /// The server is shutting down (SIGTERM) and cancelled the request:
    /// said apart from the client's own cancel, which it did not ask for.
    #[error("Request cancelled: the runtime is shutting down")]
    ShuttingDown,
    /// The outbox is closed, so the terminal will not reach anyone; the
    /// pipeline stops early and skips the artifact flush.
    #[error("the client connection is closed")]
    ClientGone,
    /// The request's own fields are unusable (e.g. a bad output format or
    /// an artifact directory that cannot be watched); the text says which.
    #[error("{0}")]
    Invalid(String),
    /// A pre- or post-agent command exited non-zero; metadata carries
    /// `{command, exit_code}` so the client can act on it.
    #[error("{kind} command `{command}` failed with exit code: {exit_code}")]
    CommandFailed {
        /// `Pre-agent` or `Post-agent`, the start of the error text.
        kind: &'static str,
        /// The command text as quoted in messages (redacted, clipped).
        command: String,
        /// The non-zero exit status (128+N for signal N).
        exit_code: i32,
    },
    /// A command could not be run at all (e.g. its `cwd` is a file).
    #[error("{0}")]
    Command(String),
    /// A downloadable failed; the text is `Download failed: <url>: <reason>`.
    #[error("{0}")]
    Download(String),
    /// The handler reported an error or failed (crash, protocol error).
    #[error("{error}")]
    Agent {
        /// The handler's error text, or the runtime's description of the
        /// failure.
        error: String,
        /// The handler's metadata; empty when the runtime made the error.
        metadata: Map<String, Value>,
    },
}

impl From<CommandError> for RequestError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Cancelled => Self::Cancelled,
            CommandError::ClientGone => Self::ClientGone,
            other => Self::Command(other.to_string()),
        }
    }
}

impl From<DownloadError> for RequestError {
    fn from(e: DownloadError) -> Self {
        match e {
            DownloadError::Cancelled => Self::Cancelled,
            failed => Self::Download(failed.to_string()),
        }
    }
}

impl From<HandlerError> for RequestError {
    fn from(e: HandlerError) -> Self {
        match e {
            HandlerError::Cancelled => Self::Cancelled,
            HandlerError::ClientGone => Self::ClientGone,
            HandlerError::Reported { error, metadata } => Self::Agent { error, metadata },
            other => Self::Agent {
                error: other.to_string(),
                metadata: Map::new(),
            },
        }
    }
}

impl RequestError {
    /// The `error_message` that ends the request.
    pub(crate) fn into_message(self) -> OutboundMessage {
        let metadata = match &self {
            Self::Agent { metadata, .. } => metadata.clone(),
            Self::CommandFailed {
                command, exit_code, ..
            } => json!({"command": command, "exit_code": exit_code})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            _ => Map::new(),
        };
        OutboundMessage::ErrorMessage {
            error: self.to_string(),
            metadata,
        }
    }
}

/// Why a request's cancel token fired; set (first cause wins) before the
/// token is cancelled, so the terminal can say who stopped the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelCause {
    /// `cancel_message`, or the connection closed.
    Client,
    /// The server received SIGTERM (or SIGINT).
    Shutdown,
}

/// A request's cancel token with the cause of its cancel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Canceller {
    /// Fired once, by [`Canceller::cancel`]; every stage watches it.
    pub(crate) token: CancellationToken,
    cause: Arc<OnceLock<CancelCause>>,
}

impl Canceller {
    /// Records `cause` (unless one already was) and fires the token.
    pub(crate) fn cancel(&self, cause: CancelCause) {
        let _ = self.cause.set(cause);
        self.token.cancel();
    }

    /// Why the request was cancelled, if it was.
    fn cause(&self) -> Option<CancelCause> {
        self.cause.get().copied()
    }
}

/// What stage a request is in, for heartbeats and logs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Phase(Arc<Mutex<&'static str>>);

impl Phase {
    /// Records the stage the request has entered.
    pub(crate) fn set(&self, phase: &'static str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    /// The current stage.
    pub(crate) fn get(&self) -> &'static str {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Everything a pipeline needs, owned so the request can run as its own task.
pub(crate) struct RequestContext {
    /// The session's outbound queue; every message is redacted on the way.
    pub outbox: Outbox,
    /// Fired by `cancel_message`, a disconnect or a shutdown; every stage
    /// watches its token.
    pub cancel: Canceller,
    /// Secrets of this request (plus the session's earlier ones).
    pub redactor: Redactor,
    /// The server's settings (limits, timeouts, grace periods).
    pub config: Arc<Config>,
    /// Updated as the pipeline advances; read by the heartbeat task.
    pub phase: Phase,
    /// The session's warm handler process, one invocation at a time.
    pub handler: Arc<AsyncMutex<HandlerHost>>,
    /// Shared by the server's downloads and uploads.
    pub http: HttpClient,
    /// The session's artifact watcher (directories accumulate across requests).
    pub artifacts: Artifacts,
    /// Distinguishes invocations on the handler protocol.
    pub request_id: String,
    /// The request's processes: killed with it when it is cancelled.
    pub processes: Arc<Scope>,
}

impl RequestContext {
    fn command_context(&self) -> CommandContext<'_> {
        CommandContext {
            outbox: &self.outbox,
            redactor: &self.redactor,
            cancel: &self.cancel.token,
            processes: &self.processes,
            kill_grace: self.config.kill_grace,
            stdout_head_bytes: self.config.stdout_head_bytes,
            stdout_tail_bytes: self.config.stdout_tail_bytes,
        }
    }
}

/// A request the session can run.
pub(crate) enum Request {
    /// An agent invocation; ends in `result_message` or `error_message`.
    Invocation(Box<InvocationMessage>),
    /// Shell commands only; ends in `command_execution_result_message` or
    /// `error_message`.
    Commands(CommandExecutionMessage),
}

/// Runs a request to its terminal message, with heartbeats while it runs.
pub(crate) async fn drive(request: Request, ctx: RequestContext) -> OutboundMessage {
    let started = Instant::now();
    let work = run(request, &ctx);
    tokio::pin!(work);
    let result = with_heartbeats(work, &ctx).await.map_err(|e| match e {
        RequestError::Cancelled if ctx.cancel.cause() == Some(CancelCause::Shutdown) => {
            RequestError::ShuttingDown
        }
        other => other,
    });
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(_) => tracing::info!(elapsed_ms, ok = true, "request finished"),
        // The client asked for it, or is gone: nothing for an operator to fix.
        Err(
            e @ (RequestError::Cancelled | RequestError::ShuttingDown | RequestError::ClientGone),
        ) => {
            tracing::info!(elapsed_ms, ok = false, reason = %e, "request finished")
        }
        Err(e) => tracing::warn!(
            elapsed_ms,
            ok = false,
            error = %ctx.redactor.redact_str(&e.to_string()),
            "request failed"
        ),
    }
    result.unwrap_or_else(RequestError::into_message)
}

/// The request's work, then (if it asked for artifacts and was not
/// cancelled) the artifact flush that must precede its terminal.
async fn run(request: Request, ctx: &RequestContext) -> Result<OutboundMessage, RequestError> {
    let artifacts = match &request {
        Request::Invocation(msg) => msg.artifacts(),
        Request::Commands(msg) => msg.artifacts(),
    };
    watch_artifacts(&artifacts, ctx)?;
    let result = match request {
        Request::Invocation(msg) => run_invocation(*msg, ctx).await,
        Request::Commands(msg) => run_commands(msg, ctx).await,
    };
    let stopped = matches!(
        result,
        Err(RequestError::Cancelled | RequestError::ClientGone)
    );
    if stopped {
        // Everything the request started, background jobs of its completed
        // commands and processes that left their group included.
        ctx.processes.kill().await;
    }
    if wants_artifacts(&artifacts) && !stopped {
        flush_artifacts(ctx).await?;
    }
    result
}

/// Polls `work` to its end, queueing a `heartbeat_message` every interval
/// meanwhile: in the request's own task, so a request costs no second task.
/// A beat is skipped while the outbox is full (output is flowing anyway).
async fn with_heartbeats<T>(
    mut work: std::pin::Pin<&mut impl Future<Output = T>>,
    ctx: &RequestContext,
) -> T {
    let started = Instant::now();
    let every = ctx.config.heartbeat_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            biased;
            output = &mut work => return output,
            _ = ticker.tick() => ctx.outbox.try_send(OutboundMessage::HeartbeatMessage {
                phase: ctx.phase.get().to_owned(),
                elapsed_ms: started.elapsed().as_millis() as u64,
            }),
        }
    }
}

async fn run_invocation(
    msg: InvocationMessage,
    ctx: &RequestContext,
) -> Result<OutboundMessage, RequestError> {
    let output_format = msg
        .output_format()
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    download(&msg.pre_agent_downloadables, ctx).await?;
    ctx.phase.set("pre_agent_commands");
    run_checked(&msg.pre_agent_invocation_commands, "Pre-agent", ctx).await?;

    ctx.phase.set("agent");
    let invocation = Invocation {
        id: ctx.request_id.clone(),
        source_id: msg.source_id.clone(),
        system_prompt: msg.system_prompt,
        user_prompt: msg.user_prompt,
        model: msg.model,
        output_format,
        env: msg.agent_env,
        secrets: ctx.redactor.secrets().to_vec(),
    };
    let output = {
        let mut handler = ctx.handler.lock().await;
        let invoke_ctx = InvokeContext {
            outbox: &ctx.outbox,
            redactor: &ctx.redactor,
            cancel: &ctx.cancel.token,
            cancel_grace: ctx.config.handler_cancel_grace,
            kill_grace: ctx.config.kill_grace,
        };
        handler.invoke(&invocation, &invoke_ctx).await?
    };

    ctx.phase.set("post_agent_commands");
    run_checked(&msg.post_agent_invocation_commands, "Post-agent", ctx).await?;
    Ok(OutboundMessage::ResultMessage {
        data: output.data,
        metadata: output.metadata,
    })
}

async fn run_commands(
    msg: CommandExecutionMessage,
    ctx: &RequestContext,
) -> Result<OutboundMessage, RequestError> {
    download(&msg.pre_execution_downloadables, ctx).await?;
    ctx.phase.set("commands");
    let command_ctx = ctx.command_context();
    let mut results = Vec::with_capacity(msg.commands.len());
    for command in &msg.commands {
        let outcome = commands::run_command(command, &command_ctx).await?;
        let failed = outcome.exit_code != 0;
        results.push(CommandResult {
            command: outcome.command,
            exit_code: outcome.exit_code,
            stdout: outcome.stdout,
        });
        if failed {
            break;
        }
    }
    frames::fit_results(&mut results, MAX_OUTBOUND_FRAME_BYTES);
    Ok(OutboundMessage::CommandExecutionResultMessage { results })
}

/// Runs pre/post-agent commands, stopping at the first non-zero exit.
async fn run_checked(
    list: &[wire::Command],
    kind: &'static str,
    ctx: &RequestContext,
) -> Result<(), RequestError> {
    let command_ctx = ctx.command_context();
    for command in list {
        let outcome = commands::run_command(command, &command_ctx).await?;
        if outcome.exit_code != 0 {
            return Err(RequestError::CommandFailed {
                kind,
                command: outcome.command,
                exit_code: outcome.exit_code,
            });
        }
    }
    Ok(())
}

/// Fetches the request's files before anything else runs.
async fn download(items: &[wire::Downloadable], ctx: &RequestContext) -> Result<(), RequestError> {
    if items.is_empty() {
        return Ok(());
    }
    ctx.phase.set("downloads");
    // Boxed: the download machinery is most of a request future's size,
    // and every request would otherwise carry (and copy) it.
    Box::pin(downloads::download_all(items, &ctx.http, &ctx.cancel.token)).await?;
    Ok(())
}

/// Whether this request asked for artifacts. Only then is there a flush:
/// a client without an upload callback never answers announcements, and
/// would otherwise wait out the flush bound before every terminal.
fn wants_artifacts(options: &wire::ArtifactOptions) -> bool {
    !options.all_dirs().is_empty()
}

/// Starts (or keeps) watching the request's artifact directories.
fn watch_artifacts(
    options: &wire::ArtifactOptions,
    ctx: &RequestContext,
) -> Result<(), RequestError> {
    if !wants_artifacts(options) {
        return Ok(());
    }
    ctx.artifacts
        .watch(
            &options.all_dirs(),
            options.artifacts_ignore_content.as_deref(),
        )
        .map_err(|e| RequestError::Invalid(format!("Cannot watch artifacts: {e}")))
}

/// Announces every file the request made and waits (bounded) for their
/// uploads, so the one-shot client, which closes the socket on the
/// terminal, loses none of them.
async fn flush_artifacts(ctx: &RequestContext) -> Result<(), RequestError> {
    ctx.phase.set("artifacts");
    tokio::select! {
        report = ctx.artifacts.flush(ctx.config.artifact_flush_timeout) => {
            tracing::info!(?report, "artifacts flushed");
            Ok(())
        }
        // A cancel must not wait out the flush bound.
        () = ctx.cancel.token.cancelled() => Err(RequestError::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cancel_cause_is_the_one_reported() {
        let cancel = Canceller::default();
        assert_eq!(cancel.cause(), None);
        cancel.cancel(CancelCause::Client);
        cancel.cancel(CancelCause::Shutdown);
        assert!(cancel.token.is_cancelled());
        assert_eq!(cancel.cause(), Some(CancelCause::Client));
        assert_eq!(
            RequestError::ShuttingDown.to_string(),
            "Request cancelled: the runtime is shutting down"
        );
    }

    #[test]
    fn failed_command_error_carries_exit_code() {
        let msg = RequestError::CommandFailed {
            kind: "Pre-agent",
            command: "exit 3".into(),
            exit_code: 3,
        }
        .into_message();
        let OutboundMessage::ErrorMessage { error, metadata } = msg else {
            panic!()
        };
        assert_eq!(error, "Pre-agent command `exit 3` failed with exit code: 3");
        assert_eq!(metadata["exit_code"], 3);
    }
}
