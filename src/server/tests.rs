use super::*;
use crate::testing::TestCert;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "unit-test-token";

/// A server on 127.0.0.1:0 (its handler is never run: these tests send
/// no invocation), and the token that stops it.
/// A handler that is never asked anything: these tests are about the server.
fn true_handler() -> HandlerCommand {
    HandlerCommand {
        program: PathBuf::from("/bin/true"),
        args: Vec::new(),
        display: "true".into(),
        env: Vec::new(),
    }
}

async fn start(config: Config) -> (SocketAddr, CancellationToken) {
    // Its handler is never run (these tests send no invocation): no spares.
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        spare_handlers: 0,
        ..config
    };
    let handler = true_handler();
    let server = Server::bind_with_handler(config, handler).await.unwrap();
    let addr = server.local_addr().unwrap();
    let stop = server.shutdown_token();
    tokio::spawn(server.run());
    (addr, stop)
}

/// Sends a raw HTTP request; returns the open stream and the response
/// head (status line and headers) plus whatever body came with it.
async fn send(addr: SocketAddr, target: &str, extra: &str, upgrade: bool) -> (TcpStream, String) {
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
    let handler = true_handler();
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        auth_token: Some(Secret::new("")),
        ..Default::default()
    };
    let err = Server::bind_with_handler(config, handler)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test]
async fn slow_tls_handshake_neither_blocks_accept_nor_lingers() {
    let dir = tempfile::tempdir().unwrap();
    let files = TestCert::localhost().write_to(dir.path());
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
    let a = TestCert::localhost().write_to(one.path());
    let b = TestCert::localhost().write_to(two.path());
    let mixed = crate::config::TlsFiles {
        cert: a.cert,
        key: b.key,
    };
    let err = format!("{:#}", tls::acceptor(&mixed).err().unwrap());
    assert!(err.contains("cannot be used together"), "{err}");
}

/// `run` serves from a task of its own (on a worker thread), but stays
/// tied to its caller: dropping the `run` future stops accepting and
/// releases the port, as when the loop ran in the caller's future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_run_stops_the_accept_loop() {
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        spare_handlers: 0,
        ..Config::default()
    };
    let handler = true_handler();
    let server = Server::bind_with_handler(config, handler).await.unwrap();
    let addr = server.local_addr().unwrap();
    let running = tokio::spawn(server.run());
    let (_, head) = send(addr, "/health", "", false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    // The listener is gone once the aborted loop is dropped; the abort is
    // asynchronous, so poll for it (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting on {addr} after run was dropped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
