//! A canned-response HTTP/1.1 server on 127.0.0.1 (TLS optional) for the
//! download and upload tests: it records every request exactly as sent
//! (request target included) and which connection carried it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A request as the fixture server saw it.
#[derive(Debug, Clone)]
pub(crate) struct SeenRequest {
    pub(crate) method: String,
    /// The request target exactly as sent (path and query).
    pub(crate) path: String,
    /// Which accepted connection carried it (0, 1, ...).
    pub(crate) connection: usize,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
}

/// What the fixture server answers.
pub(crate) enum Reply {
    /// Raw response bytes, then close.
    Raw(Vec<u8>),
    /// Raw response bytes; the connection stays open for the next request.
    KeepAlive(Vec<u8>),
    /// Raw bytes, then hang until the test ends.
    Stall(Vec<u8>),
    /// 200 with `len` bytes of [`pattern`].
    Pattern(u64),
}

/// 200 with `body`, keeping the connection open.
pub(crate) fn ok_keep_alive(body: &[u8]) -> Reply {
    let mut raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    raw.extend_from_slice(body);
    Reply::KeepAlive(raw)
}

/// 200 with `body`, then close.
pub(crate) fn ok(body: &[u8]) -> Reply {
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    Reply::Raw(raw)
}

/// `code` with an empty body, then close.
pub(crate) fn status(code: u16, reason: &str) -> Reply {
    Reply::Raw(
        format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes(),
    )
}

/// A redirect to `location`, then close.
pub(crate) fn redirect(code: u16, location: &str) -> Reply {
    Reply::Raw(
        format!(
            "HTTP/1.1 {code} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
    )
}

/// Deterministic test bytes: chunk `offset..offset+len` of an endless stream.
pub(crate) fn pattern(offset: u64, len: usize) -> Vec<u8> {
    // A prime-sized block repeated, so chunk boundaries never line up
    // with it; copying slices keeps 50 MB cheap even in debug builds.
    const BLOCK: usize = 65_521;
    static DATA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let data = DATA.get_or_init(|| {
        let block: Vec<u8> = (0..BLOCK as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        block.repeat(2)
    });
    let mut out = Vec::with_capacity(len);
    let mut at = (offset % BLOCK as u64) as usize;
    while out.len() < len {
        let n = (len - out.len()).min(BLOCK);
        out.extend_from_slice(&data[at..at + n]);
        at = (at + n) % BLOCK;
    }
    out
}

type Handler = dyn Fn(&SeenRequest, usize) -> Reply + Send + Sync;

/// A canned-response HTTP/1.1 server on 127.0.0.1; stops when dropped.
pub(crate) struct TestServer {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) requests: Arc<Mutex<Vec<SeenRequest>>>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub(crate) async fn start(
        handler: impl Fn(&SeenRequest, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(None, handler).await
    }

    pub(crate) async fn start_with(
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: impl Fn(&SeenRequest, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            for connection in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, seen, tls) = (handler.clone(), seen.clone(), tls.clone());
                connections.spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, connection, &*handler, &seen).await;
                            }
                        }
                        None => serve(stream, connection, &*handler, &seen).await,
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many connections carried the requests seen so far.
    pub(crate) fn connections(&self) -> usize {
        let seen = self.requests.lock().unwrap();
        seen.iter().map(|r| r.connection + 1).max().unwrap_or(0)
    }

    pub(crate) fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The request targets (path and query) seen so far, in order.
    pub(crate) fn paths(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.path.clone())
            .collect()
    }
}

/// Serves requests on one connection until a reply closes it.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    connection: usize,
    handler: &Handler,
    seen: &Mutex<Vec<SeenRequest>>,
) {
    let mut buf = Vec::new();
    while serve_one(&mut stream, &mut buf, connection, handler, seen).await {}
}

/// Reads one request (`buf` holds bytes read past the previous one) and
/// answers it; `true` when the connection stays open.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    connection: usize,
    handler: &Handler,
    seen: &Mutex<Vec<SeenRequest>>,
) -> bool {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return false;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_owned();
    let path = request_line.next().unwrap_or("").to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf.split_off(head_end);
    buf.clear();
    while body.len() < len {
        let mut chunk = vec![0u8; 64 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    // Bytes past this body belong to the next request.
    if body.len() > len {
        *buf = body.split_off(len);
    }
    let request = SeenRequest {
        method,
        path,
        connection,
        headers,
        body,
    };
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.push(request.clone());
        seen.len() - 1
    };
    match handler(&request, index) {
        Reply::Raw(raw) => {
            let _ = stream.write_all(&raw).await;
            let _ = stream.shutdown().await;
        }
        Reply::KeepAlive(raw) => return stream.write_all(&raw).await.is_ok(),
        Reply::Stall(raw) => {
            let _ = stream.write_all(&raw).await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        Reply::Pattern(len) => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let mut offset = 0;
            while offset < len {
                let n = (len - offset).min(256 * 1024) as usize;
                if stream.write_all(&pattern(offset, n)).await.is_err() {
                    return false;
                }
                offset += n as u64;
            }
            let _ = stream.shutdown().await;
        }
    }
    false
}
