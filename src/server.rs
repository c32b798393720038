//! The listening side: accepts TCP connections, answers `GET /health`, and
//! upgrades WebSocket requests into sessions.
//!
//! HTTP is served by hyper so the health check and the WebSocket share one
//! port (a sandbox provider usually exposes exactly one).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::handler_host::{self, HandlerCommand};
use crate::http_client::{HttpClient, HttpOptions};
use crate::session::{self, SessionShared};

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
    active_sessions: AtomicUsize,
    tracker: TaskTracker,
}

impl Server {
    /// Resolves the handler and binds the port, failing early and clearly
    /// if either is impossible (before a client ever connects).
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let handler = handler_host::resolve(&config.agent)
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
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
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
                        self.state.tracker.spawn(serve_connection(stream, peer, state));
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

/// Serves HTTP on one connection (keep-alive, upgrades).
async fn serve_connection<IO>(io: IO, peer: SocketAddr, state: Arc<ServerState>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(req, state).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

async fn route(req: Request<Incoming>, state: Arc<ServerState>) -> Response<Body> {
    if req.uri().path() == "/health" && req.method() == hyper::Method::GET {
        return health(&state);
    }
    if is_websocket_upgrade(&req) {
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

/// Answers the handshake and hands the upgraded stream to a session.
fn upgrade(mut req: Request<Incoming>, state: Arc<ServerState>) -> Response<Body> {
    let config = &state.shared.config;
    if state.active_sessions.load(Ordering::Relaxed) >= config.max_connections {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "runtimeuse: too many connections\n",
        );
    }
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
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    let on_upgrade = hyper::upgrade::on(&mut req);
    state.active_sessions.fetch_add(1, Ordering::Relaxed);
    let session_state = state.clone();
    state.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
                tracing::info!("session started");
                session::serve(ws, session_state.shared.clone()).await;
            }
            Err(e) => tracing::warn!(error = %e, "websocket upgrade failed"),
        }
        session_state
            .active_sessions
            .fetch_sub(1, Ordering::Relaxed);
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

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(text.to_owned()));
    *response.status_mut() = status;
    response
}
