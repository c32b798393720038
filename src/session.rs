//! One client connection: reading requests, running one at a time, and
//! writing every outbound message through a single redacting writer.
//!
//! The reader never waits on work: requests run as their own tasks, so
//! pings, `cancel_message` and artifact responses are handled while a
//! command or the agent is busy. All output funnels through one
//! [`Outbox`] into the writer task (`writer.rs`), the only place that
//! touches the socket's write half and the only place that redacts, so no
//! message can skip redaction.
//!
//! A client that vanished or stopped reading is noticed (`liveness.rs`,
//! `write_watch.rs`) and dropped as if it had closed the connection.

mod liveness;
mod secrets;
mod write_watch;
mod writer;

use std::sync::{Arc, OnceLock};

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex as AsyncMutex, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::artifacts::{Artifacts, UploadFn, UploadJob};
use crate::config::Config;
use crate::containment::{Containment, Scope};
use crate::handler::{HandlerHost, SparePool};
use crate::http::HttpClient;
use crate::outbox::Outbox;
use crate::request::{self, CancelCause, Canceller, Phase, Request, RequestContext};
use crate::wire::{InboundMessage, OutboundMessage};

use liveness::LivenessLimits;
pub(crate) use secrets::SessionSecrets;
pub(crate) use write_watch::{WriteStall, WriteWatch};
use writer::write_loop;

/// How many messages may wait for the socket before producers block.
const OUTBOX_CAPACITY: usize = 32;

/// How long a session stays open after `end_session_confirm_message` for
/// a client that does not close it: a request the client sent before the
/// confirm reached it is still read and refused (every request gets its
/// one terminal). The real client closes on the confirm, ending this at
/// once.
const END_SESSION_LINGER: std::time::Duration = std::time::Duration::from_millis(1000);

/// How long a closing session waits for a client that stopped reading.
const WRITER_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What every session of a server shares.
pub(crate) struct SessionShared {
    /// The server's settings, read by every request.
    pub(crate) config: Arc<Config>,
    /// Handler processes started ahead of need; a session takes one on its
    /// first invocation (or starts the handler itself if none is ready).
    pub(crate) spares: SparePool,
    /// Keeps every process a request starts findable and killable.
    pub(crate) containment: Arc<Containment>,
    /// One HTTP client for every download and upload of the server.
    pub(crate) http: HttpClient,
    /// Fired when the server shuts down: sessions cancel work and close.
    pub(crate) shutdown: CancellationToken,
}

/// A request that is running.
struct Running {
    cancel: Canceller,
    task: JoinHandle<OutboundMessage>,
    /// The request's processes (the request's task holds it too).
    processes: Arc<Scope>,
}

/// The state of one connection.
struct Session {
    shared: Arc<SessionShared>,
    outbox: Outbox,
    secrets: SessionSecrets,
    handler: Arc<AsyncMutex<HandlerHost>>,
    artifacts: Artifacts,
    current: Option<Running>,
    /// Why the runtime closes the connection, if not a normal close: the
    /// writer sends it as the close frame's code (1009 for a message over
    /// `--max-message-bytes`).
    close_reason: Arc<OnceLock<CloseFrame>>,
    /// `end_session_message` arrived: confirm once the current request ends.
    ending: bool,
    /// Some inbound message was large: the heap is trimmed when the session
    /// ends (see `memory`).
    large_input: bool,
    requests_started: u64,
}

/// What the read loop does after a frame.
enum Flow {
    Continue,
    Close,
}

/// Serves one WebSocket connection until it closes or the session ends.
/// `stall` watches the connection's writes (see [`WriteWatch`]).
pub(crate) async fn serve<S>(ws: WebSocketStream<S>, stall: WriteStall, shared: Arc<SessionShared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (outbox, rx) = Outbox::channel(OUTBOX_CAPACITY);
    let secrets = SessionSecrets::default();
    crate::logging::scrub_span(&tracing::Span::current(), secrets.log());
    let writer_stop = CancellationToken::new();
    let close_reason = Arc::new(OnceLock::new());
    let ping = Arc::new(Notify::new());
    let writer = tokio::spawn(
        write_loop(
            sink,
            rx,
            secrets.clone(),
            writer_stop.clone(),
            close_reason.clone(),
            ping.clone(),
        )
        .in_current_span(),
    );
    let limits = LivenessLimits {
        ping_interval: shared.config.ping_interval,
        ping_timeout: shared.config.ping_timeout,
    };
    let peer = liveness::watch(&limits, stall, ping, writer.abort_handle());
    let handler = HandlerHost::new(shared.spares.clone());
    let artifacts = Artifacts::new(
        outbox.clone(),
        uploader(shared.http.clone()),
        secrets.clone(),
    );
    let mut session = Session {
        shared: shared.clone(),
        outbox: outbox.clone(),
        secrets,
        handler: Arc::new(AsyncMutex::new(handler)),
        artifacts,
        current: None,
        close_reason,
        ending: false,
        large_input: false,
        requests_started: 0,
    };
    let mut shutting_down = false;
    let mut peer_gone = false;
    let mut drain: Option<JoinHandle<()>> = None;
    // Set once the end is confirmed: until then the session still reads
    // (and refuses) requests the client sent before the confirm reached it.
    let mut linger: Option<Instant> = None;
    loop {
        if session.ending && session.current.is_none() && drain.is_none() && linger.is_none() {
            drain = Some(tokio::spawn(session.drain_artifacts().in_current_span()));
        }
        tokio::select! {
            () = drain_done(&mut drain) => {
                let _ = session
                    .outbox
                    .send(OutboundMessage::EndSessionConfirmMessage)
                    .await;
                tracing::info!("session ended");
                if shutting_down {
                    break;
                }
                linger = Some(Instant::now() + END_SESSION_LINGER);
            }
            () = linger_over(linger) => break,
            frame = stream.next() => {
                peer.heard();
                if let Flow::Close = session.on_frame(frame).await {
                    break;
                }
            }
            terminal = current_done(&mut session.current) => {
                if let Some(running) = session.current.take() {
                    running.processes.release();
                }
                let _ = session.outbox.send(terminal).await;
            }
            () = shared.shutdown.cancelled(), if !shutting_down => {
                if linger.is_some() {
                    break;
                }
                shutting_down = true;
                session.begin_shutdown();
            }
            () = peer.dead() => {
                peer_gone = true;
                break;
            }
        }
    }
    // No more pings or verdicts: the connection is closing either way.
    drop(peer);
    if let Some(drain) = drain {
        // The client left mid-drain: nobody will answer announcements.
        drain.abort();
    }
    // The connection is closed first and the session torn down after: the
    // one-shot client waits for the close handshake and then for the TCP
    // connection to end before `query()` returns, and must not wait for the
    // handler to exit. Background tasks (artifact uploads finishing) may
    // still hold outbox clones; the writer sends what is queued and closes
    // regardless.
    writer_stop.cancel();
    let mut writer = writer;
    if peer_gone {
        // Nothing sent now would be read: drop the socket at once.
        writer.abort();
    } else if tokio::time::timeout(WRITER_CLOSE_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        tracing::warn!("client is not reading; closing without flushing");
        writer.abort();
    }
    // With the writer's half gone, this drops the socket.
    drop(stream);
    let held_many =
        session.large_input || session.secrets.count() >= crate::memory::TRIM_AFTER_SECRETS;
    let log_secrets = session.secrets.log();
    session.close().await;
    if held_many {
        // The session's span outlives this function: drop its copy of the
        // automata too, then give their pages back.
        log_secrets.clear();
        crate::memory::give_back_freed();
    }
}

/// Waits for the end-of-session artifact drain (and forgets it, so it is
/// not awaited twice); pending forever if none.
async fn drain_done(drain: &mut Option<JoinHandle<()>>) {
    let Some(task) = drain.as_mut() else {
        return std::future::pending().await;
    };
    let _ = task.await;
    *drain = None;
}

/// Fires when the post-confirm linger is over; pending forever before the
/// confirm.
async fn linger_over(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// Adapts the server's HTTP client to the artifact watcher's upload hook.
fn uploader(http: HttpClient) -> UploadFn {
    Arc::new(move |job: UploadJob| {
        let http = http.clone();
        Box::pin(async move {
            http.put_file(&job.url, &job.path, &job.content_type)
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// Waits for the running request's terminal; pending forever when idle.
async fn current_done(current: &mut Option<Running>) -> OutboundMessage {
    let Some(running) = current.as_mut() else {
        return std::future::pending().await;
    };
    match (&mut running.task).await {
        Ok(terminal) => terminal,
        Err(e) => {
            tracing::error!(error = %e, "request task failed");
            OutboundMessage::error(format!("Internal error: the request task failed ({e})"))
        }
    }
}

impl Session {
    async fn on_frame(&mut self, frame: Option<Result<Message, tungstenite::Error>>) -> Flow {
        match frame {
            None => Flow::Close,
            Some(Err(e)) => {
                tracing::info!(error = %e, "connection error");
                if let tungstenite::Error::Capacity(too_big) = &e {
                    let _ = self.close_reason.set(CloseFrame {
                        code: CloseCode::Size,
                        reason: format!("{too_big} (--max-message-bytes)").into(),
                    });
                }
                // RFC 6455 8.1: a text frame that is not UTF-8 fails the
                // connection with 1007 (invalid frame payload data).
                if let tungstenite::Error::Utf8(_) = &e {
                    let _ = self.close_reason.set(CloseFrame {
                        code: CloseCode::Invalid,
                        reason: "a text frame is not valid UTF-8".into(),
                    });
                }
                Flow::Close
            }
            Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                self.reject(
                    "Invalid message: binary frames are not supported; send JSON text frames",
                )
                .await;
                Flow::Continue
            }
            Some(Ok(Message::Close(_))) => Flow::Close,
            Some(Ok(_)) => Flow::Continue,
        }
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        self.large_input |= text.len() >= crate::memory::LARGE_INPUT_BYTES;
        let message = match InboundMessage::parse(text) {
            Ok(message) => message,
            Err(e) => {
                self.reject(&e.to_string()).await;
                return Flow::Continue;
            }
        };
        match message {
            InboundMessage::InvocationMessage(m) => self.start(Request::Invocation(m)).await,
            InboundMessage::CommandExecutionMessage(m) => self.start(Request::Commands(m)).await,
            InboundMessage::CancelMessage => self.cancel_current(CancelCause::Client),
            InboundMessage::EndSessionMessage => self.ending = true,
            InboundMessage::ArtifactUploadResponseMessage(response) => {
                self.artifacts.on_upload_response(response);
            }
        }
        Flow::Continue
    }

    /// Answers bad input with an `error_message` when that cannot be
    /// mistaken for the terminal of a running request; logs it otherwise.
    async fn reject(&self, reason: &str) {
        if self.current.is_some() {
            tracing::warn!(reason, "bad message during a request; ignored");
            return;
        }
        tracing::warn!(reason, "bad message");
        let _ = self.outbox.send(OutboundMessage::error(reason)).await;
    }

    async fn start(&mut self, mut request: Request) {
        if self.current.is_some() {
            // Not `reject`: this one must reach the client even mid-request.
            let _ = self
                .outbox
                .send(OutboundMessage::error(
                    "A request is already running on this connection; send cancel_message or wait for its result before sending another",
                ))
                .await;
            return;
        }
        if self.ending || self.shared.shutdown.is_cancelled() {
            let why = if self.shared.shutdown.is_cancelled() {
                "The runtime is shutting down; no new requests are accepted"
            } else {
                "The session is ending (end_session_message was received); no new requests are accepted"
            };
            let _ = self.outbox.send(OutboundMessage::error(why)).await;
            return;
        }
        // Taken, not cloned: the list can be large, and the request's
        // redactor carries the secrets from here on.
        let (source_id, secrets, kind) = match &mut request {
            Request::Invocation(m) => (
                m.source_id.clone(),
                std::mem::take(&mut m.secrets_to_redact),
                "invocation",
            ),
            Request::Commands(m) => (
                m.source_id.clone(),
                std::mem::take(&mut m.secrets_to_redact),
                "commands",
            ),
        };
        let redactor = match self.secrets.add(&secrets) {
            Ok(redactor) => redactor,
            Err(e) => {
                tracing::warn!(error = %e, "request refused");
                let _ = self
                    .outbox
                    .send(OutboundMessage::error(e.to_string()))
                    .await;
                return;
            }
        };
        self.requests_started += 1;
        let source_id = redactor
            .redact_str(source_id.as_deref().unwrap_or("-"))
            .into_owned();
        let span = tracing::info_span!("request", source_id = %source_id, kind);
        let cancel = Canceller::default();
        let processes = Arc::new(self.shared.containment.scope('r'));
        let ctx = RequestContext {
            processes: processes.clone(),
            outbox: self.outbox.clone(),
            cancel: cancel.clone(),
            redactor,
            config: self.shared.config.clone(),
            phase: Phase::default(),
            handler: self.handler.clone(),
            http: self.shared.http.clone(),
            artifacts: self.artifacts.clone(),
            request_id: format!("req-{}", self.requests_started),
        };
        span.in_scope(|| tracing::info!("request started"));
        let task = tokio::spawn(request::drive(request, ctx).instrument(span));
        self.current = Some(Running {
            cancel,
            task,
            processes,
        });
    }

    fn cancel_current(&mut self, cause: CancelCause) {
        match &self.current {
            Some(running) => {
                tracing::info!(?cause, "cancel requested");
                running.cancel.cancel(cause);
            }
            None => tracing::info!(?cause, "cancel with no request running; nothing to do"),
        }
    }

    /// The end-of-session flush: files still pending are announced and
    /// uploaded (the client keeps answering until it gets the confirm).
    /// Runs as its own task so the read loop keeps taking the answers.
    fn drain_artifacts(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let artifacts = self.artifacts.clone();
        let bound = self.shared.config.artifact_flush_timeout;
        async move {
            if artifacts.is_active() {
                let report = artifacts.drain(bound).await;
                tracing::info!(?report, "artifacts drained at session end");
            }
        }
    }

    /// Server shutdown: cancel the running request; its terminal still goes
    /// out, then the session confirms and closes.
    fn begin_shutdown(&mut self) {
        self.cancel_current(CancelCause::Shutdown);
        self.ending = true;
    }

    /// Connection is over: stop work, wait for it, stop the handler (and
    /// everything it started).
    async fn close(self) {
        self.artifacts.shutdown();
        if let Some(running) = self.current {
            tracing::info!("connection closed mid-request; cancelling it");
            running.cancel.cancel(CancelCause::Client);
            let _ = running.task.await;
            running.processes.release();
        }
        self.handler
            .lock()
            .await
            .shutdown(self.shared.config.kill_grace)
            .await;
    }
}
