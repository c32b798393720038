//! The floor servers: what the runtime's figures are compared with, and the
//! HTTP endpoints its transfers (and curl's) go to.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::args::Args;

/// Size of the pieces a download body is sent in.
const BLOB_CHUNK: usize = 1 << 20;

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

async fn listen(args: &Args) -> Result<TcpListener, String> {
    let port: u16 = args.get("port")?;
    TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))
}

/// The minimal WebSocket server: every text or binary message is sent back
/// as is. One thread, one task per connection, Nagle off: the least any
/// WebSocket server on this machine can cost per round trip.
pub fn echo_server(args: &Args) -> Result<Value, String> {
    runtime()?.block_on(async {
        let listener = listen(args).await?;
        loop {
            let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
            tokio::spawn(echo_connection(stream));
        }
    })
}

async fn echo_connection(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().max_message_size(None);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
    }
}

/// Counts what was PUT, for the orchestrator to check every upload landed.
#[derive(Default)]
struct Received {
    requests: AtomicU64,
    bytes: AtomicU64,
}

type Body = BoxBody<Bytes, Infallible>;

/// The transfer endpoint for the artifact and download figures and their
/// curl floors: `GET /stats` reports what was received, any other `GET`
/// sends `blob_mb` MiB from memory, any `PUT` is read and discarded.
pub fn http_server(args: &Args) -> Result<Value, String> {
    let blob_bytes: u64 = args.get::<u64>("blob_mb")? << 20;
    let received = Arc::new(Received::default());
    runtime()?.block_on(async {
        let listener = listen(args).await?;
        loop {
            let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let received = received.clone();
            let service = hyper::service::service_fn(move |request| {
                respond(request, received.clone(), blob_bytes)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    })
}

async fn respond(
    request: Request<Incoming>,
    received: Arc<Received>,
    blob_bytes: u64,
) -> Result<Response<Body>, hyper::Error> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/stats") => {
            let stats = json!({
                "put_requests": received.requests.load(Ordering::Relaxed),
                "put_bytes": received.bytes.load(Ordering::Relaxed),
            });
            Ok(Response::new(
                Full::new(Bytes::from(stats.to_string())).boxed(),
            ))
        }
        (&Method::GET, _) => Ok(blob(blob_bytes)),
        (&Method::PUT, _) => {
            let mut body = request.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame?.data_ref() {
                    n += data.len() as u64;
                }
            }
            received.requests.fetch_add(1, Ordering::Relaxed);
            received.bytes.fetch_add(n, Ordering::Relaxed);
            Ok(Response::new(Full::new(Bytes::new()).boxed()))
        }
        _ => {
            let mut response = Response::new(Full::new(Bytes::new()).boxed());
            *response.status_mut() = hyper::StatusCode::METHOD_NOT_ALLOWED;
            Ok(response)
        }
    }
}

/// `bytes` of `x`, streamed from one shared 1 MiB buffer.
fn blob(bytes: u64) -> Response<Body> {
    let chunk = Bytes::from(vec![b'x'; BLOB_CHUNK]);
    let chunk_len = BLOB_CHUNK as u64;
    let frames = (0..bytes.div_ceil(chunk_len)).map(move |i| {
        let len = (bytes - i * chunk_len).min(chunk_len) as usize;
        Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
    });
    let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
    Response::builder()
        .header(header::CONTENT_LENGTH, bytes)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .expect("static headers are valid")
}
