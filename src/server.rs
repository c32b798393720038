//! The listening side: accepts TCP connections, answers `GET /health`, and
//! upgrades WebSocket requests into sessions.
//!
//! HTTP is served by hyper so the health check and the WebSocket share one
//! port (a sandbox provider usually exposes exactly one).
//!
//! Security and limits, in the order a connection meets them:
//! - TLS (`--tls-cert`/`--tls-key`): the handshake runs in the connection's
//!   own task under `--handshake-timeout`, so `accept` never waits on it.
//! - The HTTP request head must arrive within `--handshake-timeout` (hyper's
//!   header read timeout; it also closes idle keep-alive connections).
//! - `GET /health` needs no token.
//! - A WebSocket upgrade must carry `--auth-token` when one is set (see
//!   [`crate::auth`]), else 401 before any upgrade.
//! - Then a session slot is reserved atomically (`--max-connections`), else
//!   503; the slot is held until the session ends.
//! - Inbound messages over `--max-message-bytes` end the session (1009).
//! - Outbound, every buffer is bounded: tungstenite's write buffer (so
//!   pongs owed to a client that pings without reading cannot pile up),
//!   the session's outbox, and the kernel's socket buffer; a client that
//!   reads nothing for `--ping-timeout`, or answers no ping within it, is
//!   dropped (see `session/liveness.rs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::Instrument;

use crate::auth::{self, TokenAuth};
use crate::config::{Config, Secret};
use crate::containment::Containment;
use crate::embedded::CacheDirs;
use crate::handler::{HandlerCommand, SparePool};
use crate::http::{HttpClient, HttpOptions};
use crate::session::{self, SessionShared, WriteWatch};
use crate::tls;

type Body = Full<Bytes>;

/// A bound, ready-to-run runtime server.
pub struct Server {
    listener: TcpListener,
    state: Arc<ServerState>,
}

/// What every connection handler needs.
struct ServerState {
    shared: Arc<SessionShared>,
    started: Instant,
    /// Sessions holding a slot (see [`SessionSlot`]).
    active_sessions: AtomicUsize,
    /// Sessions started so far: the next session's id (for the logs).
    sessions_started: AtomicU64,
    tracker: TaskTracker,
    /// Set when `--auth-token` is: upgrades must carry the token.
    auth: Option<TokenAuth>,
    /// Set when `--tls-cert`/`--tls-key` are: every connection is TLS.
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Resolves the handler (installing a bundled Node agent on first use),
    /// loads the TLS files and binds the port, failing early and clearly if
    /// any is impossible (before a client connects).
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        // A bundled Node agent may run `npm ci` here: off the async threads.
        let cache = CacheDirs::new(config.cache_dir.as_deref());
        let agent = config.agent.clone();
        let handler =
            tokio::task::spawn_blocking(move || HandlerCommand::resolve_in(&agent, &cache))
                .await?
                .context("cannot use the agent handler")?;
        Self::bind_with_handler(config, handler).await
    }

    /// Like [`Server::bind`] with an already-resolved handler command, for
    /// embedders that spawn their handler their own way.
    pub async fn bind_with_handler(
        config: Config,
        handler: HandlerCommand,
    ) -> anyhow::Result<Self> {
        let http = http_client_for(&config)?;
        let auth = match config.auth_token.as_ref().map(Secret::expose) {
            Some("") => anyhow::bail!("the auth token is empty; leave it unset to turn auth off"),
            Some(token) => Some(TokenAuth::new(token)),
            None => None,
        };
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let containment = Containment::start(config.containment)?;
        tracing::info!(target: "runtimeuse", containment = %containment.describe(), "process containment");
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        if auth.is_none() && !config.listen.ip().is_loopback() {
            tracing::warn!(
                addr = %config.listen,
                "no --auth-token (RUNTIMEUSE_AUTH_TOKEN) while listening on a non-loopback \
                 address: anyone who can reach this port can run commands here"
            );
        }
        // After the port is bound, so spares never delay it opening.
        let spares = SparePool::start(
            Arc::new(handler),
            config.spare_handlers,
            config.kill_grace,
            containment.clone(),
        );
        let shared = Arc::new(SessionShared {
            config: Arc::new(config),
            spares,
            containment,
            http,
            shutdown: CancellationToken::new(),
        });
        Ok(Self {
            listener,
            state: Arc::new(ServerState {
                shared,
                started: Instant::now(),
                active_sessions: AtomicUsize::new(0),
                sessions_started: AtomicU64::new(0),
                tracker: TaskTracker::new(),
                auth,
                tls,
            }),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Cancelling this token shuts the server down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shared.shutdown.clone()
    }

    /// Accepts connections until shutdown, then lets sessions wind down
    /// (their running requests get a terminal) within the configured bound.
    ///
    /// The accept loop runs as a task of its own, on a worker thread of the
    /// runtime, not in the caller's future: the binary awaits `run` in
    /// `block_on`, i.e. on the main thread, which is not a worker. There,
    /// every accept cost two thread wake-ups before the connection was
    /// served (the I/O driver waking the main thread, the main thread
    /// handing the new connection back to a worker); on a worker the new
    /// connection's task runs next, on the thread that accepted it
    /// (measured: a one-shot query's connect ~0.1 ms faster). Dropping the
    /// returned future stops the loop, as before.
    pub async fn run(self) -> anyhow::Result<()> {
        let accepting = AbortOnDropHandle::new(tokio::spawn(self.accept_until_shutdown()));
        accepting
            .await
            .map_err(|e| anyhow::anyhow!("the accept loop failed: {e}"))?
    }

    /// [`Server::run`]'s loop, in its own task.
    async fn accept_until_shutdown(self) -> anyhow::Result<()> {
        let shutdown = self.state.shared.shutdown.clone();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let state = self.state.clone();
                        self.state.tracker.spawn(accept_connection(stream, peer, state));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                () = shutdown.cancelled() => break,
            }
        }
        drop(self.listener);
        self.state.tracker.close();
        let bound = self.state.shared.config.shutdown_timeout;
        if tokio::time::timeout(bound, self.state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(?bound, "sessions did not finish in time; exiting anyway");
        }
        self.state.shared.spares.shutdown().await;
        // Last: whatever a session left running (it timed out, or escaped).
        self.state.shared.containment.shutdown().await;
        Ok(())
    }
}

/// The client every download and upload of this server uses.
fn http_client_for(config: &Config) -> anyhow::Result<HttpClient> {
    let options = HttpOptions {
        connect_timeout: config.http_connect_timeout,
        read_timeout: config.http_read_timeout,
        ..HttpOptions::default()
    };
    let extra_ca = match &config.extra_ca_cert {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("cannot read --ca-cert {}", path.display()))?,
        ),
        None => None,
    };
    HttpClient::new(options, extra_ca.as_deref()).context("cannot set up the HTTP client")
}

/// One accepted TCP connection, in its own task: the TLS handshake (if
/// any, bounded by the handshake timeout), then HTTP.
async fn accept_connection(stream: TcpStream, peer: SocketAddr, state: Arc<ServerState>) {
    let Some(acceptor) = state.tls.clone() else {
        return serve_connection(stream, peer, state).await;
    };
    let limit = state.shared.config.handshake_timeout;
    let shutdown = state.shared.shutdown.clone();
    let handshake = async {
        match nonzero(limit) {
            Some(limit) => tokio::time::timeout(limit, acceptor.accept(stream)).await,
            None => Ok(acceptor.accept(stream).await),
        }
    };
    let handshake = tokio::select! {
        result = handshake => result,
        () = shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(tls_stream)) => serve_connection(tls_stream, peer, state).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, ?limit, "TLS handshake timed out"),
    }
}

/// Serves HTTP on one connection (keep-alive, upgrades).
async fn serve_connection<IO>(io: IO, peer: SocketAddr, state: Arc<ServerState>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = state.shared.shutdown.clone();
    let header_timeout = state.shared.config.handshake_timeout;
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(req, state, peer).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(nonzero(header_timeout));
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finish a response in flight (an upgrade's 101 included), then
            // close instead of waiting for the next keep-alive request.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

/// A zero timeout would drop every connection; `0` means "no timeout".
fn nonzero(limit: Duration) -> Option<Duration> {
    (!limit.is_zero()).then_some(limit)
}

async fn route(
    req: Request<Incoming>,
    state: Arc<ServerState>,
    peer: SocketAddr,
) -> Response<Body> {
    if req.uri().path() == "/health" && req.method() == hyper::Method::GET {
        return health(&state);
    }
    if is_websocket_upgrade(&req) {
        if let Some(auth) = &state.auth
            && !auth.authorizes(req.headers(), req.uri())
        {
            // Neither the header nor the URI (its query may hold a token)
            // is logged.
            tracing::warn!("refused a WebSocket upgrade without a valid token");
            return unauthorized();
        }
        return upgrade(req, state, peer);
    }
    plain(
        StatusCode::UPGRADE_REQUIRED,
        "runtimeuse: connect with a WebSocket client, or GET /health\n",
    )
}

fn health(state: &ServerState) -> Response<Body> {
    let body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs(),
        "active_sessions": state.active_sessions.load(Ordering::Relaxed),
    });
    let mut response = plain(StatusCode::OK, &body.to_string());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
    };
    has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && req.headers().contains_key(header::SEC_WEBSOCKET_KEY)
}

/// A session's claim on one of the `--max-connections` places, taken
/// atomically before the upgrade is answered and given back on drop (when
/// the session ends, or if the upgrade never completes).
struct SessionSlot(Arc<ServerState>);

impl SessionSlot {
    fn reserve(state: &Arc<ServerState>) -> Option<Self> {
        let max = state.shared.config.max_connections;
        state
            .active_sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(state.clone()))
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.active_sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers the handshake and hands the upgraded stream to a session.
fn upgrade(
    mut req: Request<Incoming>,
    state: Arc<ServerState>,
    peer: SocketAddr,
) -> Response<Body> {
    let config = &state.shared.config;
    if state.shared.shutdown.is_cancelled() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "runtimeuse: shutting down\n",
        );
    }
    let Some(accept) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()))
    else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let Some(slot) = SessionSlot::reserve(&state) else {
        tracing::warn!(
            max_connections = config.max_connections,
            "refused a WebSocket upgrade: connection limit reached"
        );
        let mut response = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "runtimeuse: too many connections (the limit is {}, --max-connections); try again later\n",
                config.max_connections
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER_BYTES)
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shared = state.shared.clone();
    // Every line the session logs (its requests' included) names it and
    // its peer, so an operator can follow one client through the log.
    let id = state.sessions_started.fetch_add(1, Ordering::Relaxed) + 1;
    let span = tracing::info_span!("session", id, %peer);
    let session = async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                let (io, stall) = WriteWatch::new(TokioIo::new(upgraded));
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
                tracing::info!("session started");
                session::serve(ws, stall, shared).await;
            }
            Err(e) => tracing::warn!(error = %e, "websocket upgrade failed"),
        }
    };
    state.tracker.spawn(session.instrument(span));
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// tungstenite zeroes this much of its read buffer before every read; its
/// default, 128 KiB, cost two 128 KiB memsets per inbound message. Client
/// messages are small, and a large one still arrives whole, in reads of
/// this size.
const WS_READ_BUFFER_BYTES: usize = 8 * 1024;

/// tungstenite gathers small frames up to this before writing them out
/// (every message is flushed anyway); its default.
const WS_WRITE_BUFFER_BYTES: usize = 128 * 1024;

/// The most tungstenite may hold for a client that does not read: the
/// gather buffer plus one largest outbound frame and its header. Its
/// default is unbounded, and every ping from a client that never reads
/// queued one more pong there (gigabytes in seconds). Past this bound a
/// pong waits for the previous one to be written (a newer pong replaces
/// it, which RFC 6455 allows), and a message waits for room: backpressure
/// into the bounded outbox, not growth.
const WS_MAX_WRITE_BUFFER_BYTES: usize =
    WS_WRITE_BUFFER_BYTES + crate::wire::MAX_OUTBOUND_FRAME_BYTES + 64 * 1024;

// tungstenite panics on a bound that does not exceed the gather buffer.
const _: () = assert!(WS_MAX_WRITE_BUFFER_BYTES > WS_WRITE_BUFFER_BYTES);

fn unauthorized() -> Response<Body> {
    let mut response = plain(StatusCode::UNAUTHORIZED, auth::UNAUTHORIZED_BODY);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(auth::WWW_AUTHENTICATE),
    );
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(text.to_owned()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests;
