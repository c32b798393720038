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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use tokio_util::task::TaskTracker;

use crate::auth::{self, TokenAuth};
use crate::config::Config;
use crate::handler_host::{self, HandlerCommand};
use crate::http_client::{HttpClient, HttpOptions};
use crate::session::{self, SessionShared};
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
    tracker: TaskTracker,
    /// Set when `--auth-token` is: upgrades must carry the token.
    auth: Option<TokenAuth>,
    /// Set when `--tls-cert`/`--tls-key` are: every connection is TLS.
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Resolves the handler, loads the TLS files and binds the port, failing
    /// early and clearly if any is impossible (before a client connects).
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        // A bundled Node agent may run `npm ci` here: off the async threads.
        let cache = crate::embedded::CacheDirs::new(config.cache_dir.as_deref());
        let agent = config.agent.clone();
        let handler = tokio::task::spawn_blocking(move || handler_host::resolve_in(&agent, &cache))
            .await?
            .with_context(|| format!("cannot use agent handler {:?}", config.agent))?;
        Self::bind_with_handler(config, handler).await
    }

    /// Like [`Server::bind`] with an already-resolved handler command, for
    /// embedders that spawn their handler their own way.
    pub async fn bind_with_handler(
        config: Config,
        handler: HandlerCommand,
    ) -> anyhow::Result<Self> {
        let http = http_client_for(&config)?;
        let auth = match config.auth_token.as_deref() {
            Some("") => anyhow::bail!("the auth token is empty; leave it unset to turn auth off"),
            Some(token) => Some(TokenAuth::new(token)),
            None => None,
        };
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
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
        let shared = Arc::new(SessionShared {
            config: Arc::new(config),
            handler_command: Arc::new(handler),
            http,
            shutdown: CancellationToken::new(),
        });
        Ok(Self {
            listener,
            state: Arc::new(ServerState {
                shared,
                started: Instant::now(),
                active_sessions: AtomicUsize::new(0),
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
    pub async fn run(self) -> anyhow::Result<()> {
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
        async move { Ok::<_, Infallible>(route(req, state).await) }
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

async fn route(req: Request<Incoming>, state: Arc<ServerState>) -> Response<Body> {
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
        return upgrade(req, state);
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
fn upgrade(mut req: Request<Incoming>, state: Arc<ServerState>) -> Response<Body> {
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
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shared = state.shared.clone();
    state.tracker.spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
                tracing::info!("session started");
                session::serve(ws, shared).await;
            }
            Err(e) => tracing::warn!(error = %e, "websocket upgrade failed"),
        }
    });
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
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TOKEN: &str = "unit-test-token";

    /// A server on 127.0.0.1:0 (its handler is never run: these tests send
    /// no invocation), and the token that stops it.
    async fn start(config: Config) -> (SocketAddr, CancellationToken) {
        let config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..config
        };
        let handler = HandlerCommand {
            program: PathBuf::from("/bin/true"),
            args: Vec::new(),
            display: "true".into(),
        };
        let server = Server::bind_with_handler(config, handler).await.unwrap();
        let addr = server.local_addr().unwrap();
        let stop = server.shutdown_token();
        tokio::spawn(server.run());
        (addr, stop)
    }

    /// Sends a raw HTTP request; returns the open stream and the response
    /// head (status line and headers) plus whatever body came with it.
    async fn send(
        addr: SocketAddr,
        target: &str,
        extra: &str,
        upgrade: bool,
    ) -> (TcpStream, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let upgrade_headers = if upgrade {
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        } else {
            ""
        };
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{upgrade_headers}{extra}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
                .await
                .expect("no response in time")
                .unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(end) = text.find("\r\n\r\n") {
                let head = &text[..end];
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length || n == 0 {
                    return (stream, text.into_owned());
                }
            }
            if n == 0 {
                return (stream, text.into_owned());
            }
        }
    }

    fn status(response: &str) -> &str {
        response.split(' ').nth(1).unwrap_or("")
    }

    async fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn upgrade_needs_the_token_and_health_does_not() {
        let (addr, stop) = start(Config {
            auth_token: Some(TOKEN.into()),
            ..Default::default()
        })
        .await;

        let (_s, r) = send(addr, "/", "", true).await;
        assert_eq!(status(&r), "401", "{r}");
        assert!(r.contains("runtimeuse: missing or wrong token"), "{r}");
        assert!(
            r.to_ascii_lowercase()
                .contains("www-authenticate: basic realm=\"runtimeuse\""),
            "{r}"
        );
        let (_s, r) = send(addr, "/", "Authorization: Bearer nope\r\n", true).await;
        assert_eq!(status(&r), "401", "{r}");
        let (_s, r) = send(addr, "/?tok=unit-test-token", "", true).await;
        assert_eq!(status(&r), "401", "{r}");

        let (_s, r) = send(
            addr,
            "/",
            &format!("Authorization: Bearer {TOKEN}\r\n"),
            true,
        )
        .await;
        assert_eq!(status(&r), "101", "{r}");
        let (_s, r) = send(addr, &format!("/?token={TOKEN}"), "", true).await;
        assert_eq!(status(&r), "101", "{r}");
        let basic = data_encoding::BASE64.encode(format!(":{TOKEN}").as_bytes());
        let (_s, r) = send(
            addr,
            "/",
            &format!("Authorization: Basic {basic}\r\n"),
            true,
        )
        .await;
        assert_eq!(status(&r), "101", "{r}");

        let (_s, r) = send(addr, "/health", "", false).await;
        assert_eq!(status(&r), "200", "{r}");
        assert!(r.contains("\"version\""), "{r}");
        stop.cancel();
    }

    #[tokio::test]
    async fn connection_limit_refuses_then_frees_a_slot() {
        let (addr, stop) = start(Config {
            max_connections: 2,
            ..Default::default()
        })
        .await;
        let (first, r) = send(addr, "/", "", true).await;
        assert_eq!(status(&r), "101", "{r}");
        let (_second, r) = send(addr, "/", "", true).await;
        assert_eq!(status(&r), "101", "{r}");
        let (_s, r) = send(addr, "/", "", true).await;
        assert_eq!(status(&r), "503", "{r}");
        assert!(r.contains("too many connections"), "{r}");
        assert!(r.contains("--max-connections"), "{r}");
        let (_s, r) = send(addr, "/health", "", false).await;
        assert!(r.contains("\"active_sessions\":2"), "{r}");

        drop(first);
        // The session notices the closed socket and gives its slot back.
        wait_for_free_slot(addr).await;
        stop.cancel();
    }

    /// Retries an upgrade until one succeeds: a closed session frees its
    /// slot when it notices the socket is gone, which has no event to wait on.
    async fn wait_for_free_slot(addr: SocketAddr) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (s, r) = send(addr, "/", "", true).await;
            if status(&r) == "101" {
                drop(s);
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "slot never freed: {r}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn concurrent_upgrades_never_exceed_the_limit() {
        let (addr, stop) = start(Config {
            max_connections: 3,
            ..Default::default()
        })
        .await;
        let attempts = (0..12).map(|_| tokio::spawn(send(addr, "/", "", true)));
        let mut held = Vec::new();
        let mut accepted = 0;
        for attempt in attempts {
            let (stream, r) = attempt.await.unwrap();
            match status(&r) {
                "101" => accepted += 1,
                "503" => {}
                other => panic!("unexpected status {other}: {r}"),
            }
            held.push(stream);
        }
        assert_eq!(accepted, 3);
        stop.cancel();
    }

    #[tokio::test]
    async fn silent_connection_is_dropped_after_the_header_timeout() {
        let (addr, stop) = start(Config {
            handshake_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // A partial request head does not keep it alive either.
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
        // Meanwhile others are served.
        let (_s, r) = send(addr, "/health", "", false).await;
        assert_eq!(status(&r), "200", "{r}");
        assert!(closes_within(&mut silent, Duration::from_secs(3)).await);
        assert!(closes_within(&mut partial, Duration::from_secs(3)).await);
        stop.cancel();
    }

    #[tokio::test]
    async fn oversized_message_closes_with_1009_and_the_server_carries_on() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

        let (addr, stop) = start(Config {
            max_message_bytes: 1000,
            max_connections: 1,
            ..Default::default()
        })
        .await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream)
            .await
            .unwrap();
        ws.send(Message::text("x".repeat(5000))).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no close in time");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Size);
                assert!(frame.reason.contains("--max-message-bytes"), "{frame:?}");
            }
            other => panic!("expected a 1009 close, got {other:?}"),
        }
        drop(ws);
        // Its slot (the only one) comes back and a new connection works.
        wait_for_free_slot(addr).await;
        stop.cancel();
    }

    #[tokio::test]
    async fn empty_token_is_refused_at_startup() {
        let handler = HandlerCommand {
            program: PathBuf::from("/bin/true"),
            args: Vec::new(),
            display: "true".into(),
        };
        let config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth_token: Some(String::new()),
            ..Default::default()
        };
        let err = Server::bind_with_handler(config, handler)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    /// A self-signed certificate for localhost, made with `openssl`; `None`
    /// (the test is skipped) where there is no openssl.
    fn self_signed(dir: &std::path::Path) -> Option<crate::config::TlsFiles> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let ok = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(crate::config::TlsFiles { cert, key })
    }

    #[tokio::test]
    async fn slow_tls_handshake_neither_blocks_accept_nor_lingers() {
        let dir = tempfile::tempdir().unwrap();
        let Some(files) = self_signed(dir.path()) else {
            eprintln!("skipped: no openssl to make a certificate");
            return;
        };
        let (addr, stop) = start(Config {
            tls: Some(files),
            handshake_timeout: Duration::from_secs(3),
            ..Default::default()
        })
        .await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // A second client's (bogus) handshake is answered at once: the first
        // one's pending handshake does not hold up accept.
        let mut plain_http = TcpStream::connect(addr).await.unwrap();
        plain_http
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(closes_within(&mut plain_http, Duration::from_millis(1500)).await);
        assert!(closes_within(&mut silent, Duration::from_secs(8)).await);
        stop.cancel();
    }

    #[test]
    fn mismatched_certificate_and_key_fail_clearly() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let (Some(a), Some(b)) = (self_signed(one.path()), self_signed(two.path())) else {
            eprintln!("skipped: no openssl to make a certificate");
            return;
        };
        let mixed = crate::config::TlsFiles {
            cert: a.cert,
            key: b.key,
        };
        let err = format!("{:#}", tls::acceptor(&mixed).err().unwrap());
        assert!(err.contains("cannot be used together"), "{err}");
    }
}
