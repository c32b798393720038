use std::hash::{DefaultHasher, Hasher};

use reqwest::StatusCode;
use tokio::net::TcpListener;

use super::*;
use crate::testing::TestCert;
use crate::testing::http_server::{
    Reply, TestServer, ok, ok_keep_alive, pattern, redirect, status,
};

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

#[tokio::test]
async fn https_checks_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::localhost();
    let server = TestServer::start_with(Some(cert.acceptor()), |_, _| ok(b"secure")).await;
    let url = format!("https://127.0.0.1:{}/s.txt", server.addr.port());
    let dest = dir.path().join("s.txt");

    let trusting = HttpClient::new(fast_options(), Some(cert.cert_pem.as_bytes())).unwrap();
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

#[tokio::test]
async fn many_uploads_to_one_host_share_a_connection() {
    let server = TestServer::start(|_, _| ok_keep_alive(b"")).await;
    let dir = tempfile::tempdir().unwrap();
    let client = fast_client();
    for i in 0..20 {
        let path = dir.path().join(format!("artifact-{i}.txt"));
        std::fs::write(&path, format!("artifact {i}")).unwrap();
        client
            .put_file(&server.url(&format!("/bucket/{i}")), &path, "text/plain")
            .await
            .unwrap();
    }
    assert_eq!(server.count(), 20);
    assert_eq!(
        server.connections(),
        1,
        "every upload reused the first connection"
    );
    let seen = server.requests.lock().unwrap().clone();
    assert!(
        seen.iter()
            .enumerate()
            .all(|(i, r)| r.body == format!("artifact {i}").as_bytes())
    );
}

/// An S3-style presigned URL: the signature covers the exact bytes of the
/// path and query, so one re-encoded `%2F` or `+` makes the server refuse.
const PRESIGNED: &str = "/bucket/dir%2Fkey%20name.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
    &X-Amz-Credential=AKIA%2F20260101%2Fus-east-1%2Fs3%2Faws4_request\
    &X-Amz-SignedHeaders=host&x-id=a+b%2Bc&X-Amz-Signature=0f%3D%3d";

#[tokio::test]
async fn presigned_urls_reach_the_server_byte_for_byte() {
    let server = TestServer::start(|_, _| ok(b"signed")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("up.txt");
    std::fs::write(&path, b"x").unwrap();
    let client = fast_client();
    client
        .put_file(&server.url(PRESIGNED), &path, "")
        .await
        .unwrap();
    client
        .get_to_file(&server.url(PRESIGNED), &dir.path().join("down"))
        .await
        .unwrap();
    assert_eq!(server.paths(), [PRESIGNED, PRESIGNED]);
}

#[tokio::test]
async fn url_credentials_become_basic_auth_and_leave_the_url() {
    let server = TestServer::start(|_, _| ok(b"")).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://us%40er:p%3Ass@{}/private", server.addr);
    fast_client()
        .get_to_file(&url, &dir.path().join("x"))
        .await
        .unwrap();
    let seen = server.requests.lock().unwrap()[0].clone();
    assert_eq!(seen.path, "/private");
    // base64("us@er:p:ss")
    assert_eq!(seen.headers["authorization"], "Basic dXNAZXI6cDpzcw==");
}

#[tokio::test]
async fn errors_never_show_the_query() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let err = fast_client()
        .get_to_file(
            &format!("http://127.0.0.1:{port}/x?X-Amz-Signature=topsecret"),
            &dir.path().join("x"),
        )
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains("topsecret"), "{err:?}");
}
