use super::*;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use std::sync::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A request as the fixture server saw it.
#[derive(Debug, Clone)]
pub(crate) struct SeenRequest {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
}

/// What the fixture server answers.
pub(crate) enum Reply {
    /// Raw response bytes, then close.
    Raw(Vec<u8>),
    /// Raw bytes, then hang until the test ends.
    Stall(Vec<u8>),
    /// 200 with `len` bytes of [`pattern`].
    Pattern(u64),
}

pub(crate) fn ok(body: &[u8]) -> Reply {
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    Reply::Raw(raw)
}

pub(crate) fn status(code: u16, reason: &str) -> Reply {
    Reply::Raw(
        format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes(),
    )
}

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
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, seen, tls) = (handler.clone(), seen.clone(), tls.clone());
                connections.spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve_one(stream, &*handler, &seen).await;
                            }
                        }
                        None => serve_one(stream, &*handler, &seen).await,
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

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    handler: &Handler,
    seen: &Mutex<Vec<SeenRequest>>,
) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
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
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; 64 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let request = SeenRequest {
        method,
        path,
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
        Reply::Stall(raw) => {
            let _ = stream.write_all(&raw).await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        Reply::Pattern(len) => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut offset = 0;
            while offset < len {
                let n = (len - offset).min(256 * 1024) as usize;
                if stream.write_all(&pattern(offset, n)).await.is_err() {
                    return;
                }
                offset += n as u64;
            }
            let _ = stream.shutdown().await;
        }
    }
}

/// Options that keep retry tests fast.
pub(crate) fn fast_options() -> HttpOptions {
    HttpOptions {
        retry_backoff: Duration::from_millis(10),
        read_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..HttpOptions::default()
    }
}

pub(crate) fn fast_client() -> HttpClient {
    HttpClient::new(fast_options(), None).unwrap()
}

#[tokio::test]
async fn downloads_a_file_byte_for_byte() {
    let body: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let expected = body.clone();
    let server = TestServer::start(move |_, _| ok(&body)).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.bin");
    let n = fast_client()
        .get_to_file(&server.url("/file.bin"), &dest)
        .await
        .unwrap();
    assert_eq!(n, 10_000);
    assert_eq!(std::fs::read(&dest).unwrap(), expected);
    let seen = &server.requests.lock().unwrap()[0];
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/file.bin");
    assert_eq!(seen.headers["host"], server.addr.to_string());
}

#[tokio::test]
async fn follows_a_redirect_chain() {
    let server = TestServer::start(|req, _| match req.path.as_str() {
        "/a" => redirect(302, "/dir/b?x=1"),
        "/dir/b?x=1" => redirect(301, "c"),
        "/dir/c" => redirect(307, "../final.txt"),
        "/final.txt" => ok(b"landed"),
        _ => status(404, "Not Found"),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    fast_client()
        .get_to_file(&server.url("/a"), &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"landed");
    assert_eq!(server.paths(), ["/a", "/dir/b?x=1", "/dir/c", "/final.txt"]);
}

#[tokio::test]
async fn redirect_loops_stop() {
    let server = TestServer::start(|_, _| redirect(302, "/again")).await;
    let dir = tempfile::tempdir().unwrap();
    let err = fast_client()
        .get_to_file(&server.url("/start"), &dir.path().join("x"))
        .await
        .unwrap_err();
    assert_eq!(err, HttpError::TooManyRedirects(10));
    assert_eq!(server.count(), 11, "no retries for a redirect loop");
}

#[tokio::test]
async fn redirects_cannot_leave_http() {
    let server = TestServer::start(|_, _| redirect(302, "file:///etc/passwd")).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x");
    let err = fast_client()
        .get_to_file(&server.url("/start"), &dest)
        .await
        .unwrap_err();
    assert_eq!(err, HttpError::UnsupportedScheme("file".into()));
    assert!(!dest.exists());
}

#[tokio::test]
async fn not_found_is_not_retried_and_creates_nothing() {
    let server = TestServer::start(|_, _| status(404, "Not Found")).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x");
    let err = fast_client()
        .get_to_file(&server.url("/x?X-Amz-Signature=topsecret"), &dest)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "HTTP 404 Not Found");
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(server.count(), 1);
    assert!(!dest.exists());
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let server = TestServer::start(|_, i| {
        if i < 2 {
            status(500, "Internal Server Error")
        } else {
            ok(b"third time")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x");
    fast_client()
        .get_to_file(&server.url("/x"), &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"third time");
    assert_eq!(server.count(), 3);
}

#[tokio::test]
async fn persistent_server_errors_fail_after_the_last_attempt() {
    let server = TestServer::start(|_, _| status(503, "Service Unavailable")).await;
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let err = fast_client()
        .get_to_file(&server.url("/x"), &dir.path().join("x"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "HTTP 503 Service Unavailable");
    assert_eq!(server.count(), 3);
    // 10 ms + 20 ms of backoff.
    assert!(started.elapsed() >= Duration::from_millis(30));
}

#[tokio::test]
async fn a_stalled_body_times_out_and_leaves_no_file() {
    let server = TestServer::start(|_, _| {
        Reply::Stall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a little".to_vec())
    })
    .await;
    let client = HttpClient::new(
        HttpOptions {
            read_timeout: Duration::from_millis(300),
            max_attempts: 2,
            ..fast_options()
        },
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x");
    let started = std::time::Instant::now();
    let err = client
        .get_to_file(&server.url("/x"), &dest)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "timed out after 300ms waiting for the server"
    );
    assert_eq!(server.count(), 2, "a timeout is retried");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!dest.exists());
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = TestServer::start(|_, _| Reply::Stall(Vec::new())).await;
    let client = HttpClient::new(
        HttpOptions {
            read_timeout: Duration::from_millis(200),
            max_attempts: 1,
            ..fast_options()
        },
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = client
        .get_to_file(&server.url("/x"), &dir.path().join("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HttpError::Timeout {
                phase: TimeoutPhase::Idle,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn connection_refused_is_reported_after_retries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let err = fast_client()
        .get_to_file(&format!("http://127.0.0.1:{port}/x"), &dir.path().join("x"))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("connection refused"), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn only_http_and_https_are_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let client = fast_client();
    let err = client
        .get_to_file("file:///etc/passwd", &dir.path().join("x"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported URL scheme \"file\" (only http and https are allowed)"
    );
    let err = client
        .get_to_file("ftp://example.com/x", &dir.path().join("x"))
        .await
        .unwrap_err();
    assert_eq!(err, HttpError::UnsupportedScheme("ftp".into()));
    let err = client
        .get_to_file("/just/a/path", &dir.path().join("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, HttpError::InvalidUrl(_)), "{err}");
    assert!(!dir.path().join("x").exists());
}

#[tokio::test]
async fn a_large_download_streams_to_disk() {
    const LEN: u64 = 50 * 1024 * 1024;
    let server = TestServer::start(|_, _| Reply::Pattern(LEN)).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big");
    let n = fast_client()
        .get_to_file(&server.url("/big"), &dest)
        .await
        .unwrap();
    assert_eq!(n, LEN);
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), LEN);

    let mut expected = DefaultHasher::new();
    let mut actual = DefaultHasher::new();
    let mut file = std::fs::File::open(&dest).unwrap();
    let mut offset = 0u64;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        actual.write(&buf[..n]);
        expected.write(&pattern(offset, n));
        offset += n as u64;
    }
    assert_eq!(offset, LEN);
    assert_eq!(actual.finish(), expected.finish());
}

#[tokio::test]
async fn put_file_sends_exact_bytes_and_headers() {
    let server = TestServer::start(|_, _| status(200, "OK")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("artifact.json");
    let content = pattern(7, 200_000);
    std::fs::write(&path, &content).unwrap();
    fast_client()
        .put_file(&server.url("/upload?sig=abc"), &path, "application/json")
        .await
        .unwrap();
    let seen = server.requests.lock().unwrap()[0].clone();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.path, "/upload?sig=abc");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["content-length"], "200000");
    assert!(seen.body == content, "uploaded bytes differ");
}

#[tokio::test]
async fn put_file_times_out_when_the_server_stops_reading() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = tokio::spawn(async move {
        let (_stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    std::fs::write(&path, vec![7u8; 32 * 1024 * 1024]).unwrap();
    let client = HttpClient::new(
        HttpOptions {
            read_timeout: Duration::from_millis(300),
            max_attempts: 1,
            ..fast_options()
        },
        None,
    )
    .unwrap();
    let err = client
        .put_file(
            &format!("http://{addr}/u"),
            &path,
            "application/octet-stream",
        )
        .await
        .unwrap_err();
    sink.abort();
    assert_eq!(
        err.to_string(),
        "timed out after 300ms waiting for the server"
    );
}

#[tokio::test]
async fn put_file_of_an_empty_file() {
    let server = TestServer::start(|_, _| status(204, "No Content")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty");
    std::fs::write(&path, b"").unwrap();
    fast_client()
        .put_file(&server.url("/u"), &path, "")
        .await
        .unwrap();
    let seen = server.requests.lock().unwrap()[0].clone();
    assert_eq!(seen.headers["content-length"], "0");
    assert!(!seen.headers.contains_key("content-type"));
}

#[tokio::test]
async fn put_file_retries_server_errors_with_the_whole_body() {
    let server = TestServer::start(|_, i| {
        if i == 0 {
            status(500, "Internal Server Error")
        } else {
            status(200, "OK")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.txt");
    std::fs::write(&path, b"artifact body").unwrap();
    fast_client()
        .put_file(&server.url("/u"), &path, "text/plain")
        .await
        .unwrap();
    let seen = server.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.body == b"artifact body"));
}

#[tokio::test]
async fn put_file_reports_client_errors_without_retrying() {
    let server = TestServer::start(|_, _| status(403, "Forbidden")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.txt");
    std::fs::write(&path, b"x").unwrap();
    let err = fast_client()
        .put_file(
            &server.url("/u?X-Amz-Credential=secret"),
            &path,
            "text/plain",
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "HTTP 403 Forbidden");
    assert_eq!(server.count(), 1);
    let err = fast_client()
        .put_file(&server.url("/u"), &dir.path().join("missing"), "text/plain")
        .await
        .unwrap_err();
    assert!(matches!(err, HttpError::Local(_)), "{err}");
}

#[tokio::test]
async fn put_follows_307_with_the_body_and_303_as_get() {
    let server = TestServer::start(|req, _| match (req.method.as_str(), req.path.as_str()) {
        ("PUT", "/first") => redirect(307, "/second"),
        ("PUT", "/second") => redirect(303, "/done"),
        ("GET", "/done") => ok(b""),
        _ => status(400, "Bad Request"),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.txt");
    std::fs::write(&path, b"payload").unwrap();
    fast_client()
        .put_file(&server.url("/first"), &path, "text/plain")
        .await
        .unwrap();
    let seen = server.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].body, b"payload");
    assert_eq!(seen[2].method, "GET");
    assert!(seen[2].body.is_empty());
}

#[test]
fn display_url_hides_credentials() {
    assert_eq!(
        display_url("https://user:pw@bucket.s3.amazonaws.com/a/b.zip?X-Amz-Signature=s#frag"),
        "https://bucket.s3.amazonaws.com/a/b.zip"
    );
    assert_eq!(display_url("http://h/x"), "http://h/x");
    assert_eq!(display_url("http://h/p@q?x=@"), "http://h/p@q");
    assert_eq!(display_url("not a url?secret"), "not a url");
}

#[test]
fn targets_parse() {
    let t = Target::parse("https://u:p%40ss@example.com:8443/a%20b?q=1#f").unwrap();
    assert!(t.https);
    assert_eq!(t.host, "example.com");
    assert_eq!(t.port, 8443);
    assert_eq!(t.host_header, "example.com:8443");
    assert_eq!(t.path_and_query, "/a%20b?q=1");
    assert_eq!(t.basic_auth.as_deref(), Some("Basic dTpwQHNz")); // u:p@ss
    let t = Target::parse("HTTP://[::1]?x").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("::1", 80));
    assert_eq!(t.path_and_query, "/?x");
    let t = Target::parse("http://h/my file.txt").unwrap();
    assert_eq!(t.path_and_query, "/my%20file.txt");
    assert!(matches!(
        Target::parse("http:///x"),
        Err(HttpError::InvalidUrl(_))
    ));
}

#[test]
fn locations_resolve() {
    let base = "https://h:1/a/b/c?q=1";
    assert_eq!(resolve_location(base, "http://o/x").unwrap(), "http://o/x");
    assert_eq!(resolve_location(base, "//o/x").unwrap(), "https://o/x");
    assert_eq!(resolve_location(base, "/x?y").unwrap(), "https://h:1/x?y");
    assert_eq!(resolve_location(base, "d").unwrap(), "https://h:1/a/b/d");
    assert_eq!(
        resolve_location(base, "../../../d").unwrap(),
        "https://h:1/d"
    );
    assert_eq!(resolve_location(base, "?z").unwrap(), "https://h:1/a/b/c?z");
    assert_eq!(resolve_location("http://h", "x").unwrap(), "http://h/x");
    assert_eq!(resolve_location(base, ""), None);
}

#[test]
fn base64_matches_rfc4648() {
    for (input, expected) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), expected);
    }
}

/// Writes a self-signed certificate for 127.0.0.1/localhost with openssl.
fn self_signed(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
}

fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> tokio_rustls::TlsAcceptor {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(cert_pem)
        .map(Result::unwrap)
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn https_checks_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let server =
        TestServer::start_with(Some(tls_acceptor(&cert, &key)), |_, _| ok(b"secure")).await;
    let url = format!("https://127.0.0.1:{}/s.txt", server.addr.port());
    let dest = dir.path().join("s.txt");

    let trusting = HttpClient::new(fast_options(), Some(&cert)).unwrap();
    trusting.get_to_file(&url, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"secure");
    let by_name = format!("https://localhost:{}/s.txt", server.addr.port());
    trusting.get_to_file(&by_name, &dest).await.unwrap();

    let dest2 = dir.path().join("s2.txt");
    let err = fast_client().get_to_file(&url, &dest2).await.unwrap_err();
    assert!(matches!(err, HttpError::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(!err.is_retryable());
    assert!(!dest2.exists());
    assert_eq!(
        server.count(),
        2,
        "the untrusted attempt never sent a request"
    );
}

#[test]
fn bad_extra_roots_are_rejected() {
    let err = HttpClient::new(HttpOptions::default(), Some(b"not pem")).unwrap_err();
    assert!(matches!(err, HttpError::InvalidConfig(_)), "{err}");
}
