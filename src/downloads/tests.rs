use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;
use crate::archive::tests::{Item, tar_gz_bytes, zip_bytes};
use crate::http::tests::fast_client;
use crate::testing::http_server::{Reply, TestServer, ok, status};

fn item(url: String, dir: &Path) -> Downloadable {
    Downloadable {
        download_url: url,
        working_dir: dir.display().to_string(),
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn run(items: &[Downloadable]) -> Result<(), DownloadError> {
    download_all(items, &fast_client(), &CancellationToken::new()).await
}

#[tokio::test]
async fn files_land_in_their_working_dirs_in_order() {
    let server = TestServer::start(|req, _| ok(req.path.as_bytes())).await;
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a/new"), root.path().join("b"));
    run(&[
        item(server.url("/one.txt?sig=1"), &a),
        item(server.url("/x/two.bin"), &b),
    ])
    .await
    .unwrap();
    assert_eq!(std::fs::read(a.join("one.txt")).unwrap(), b"/one.txt?sig=1");
    assert_eq!(std::fs::read(b.join("two.bin")).unwrap(), b"/x/two.bin");
    assert_eq!(listing(&a), ["one.txt"], "no temporary file is left");
    assert_eq!(server.paths(), ["/one.txt?sig=1", "/x/two.bin"]);
}

#[tokio::test]
async fn a_404_is_a_download_failure_without_the_query() {
    let server = TestServer::start(|_, _| status(404, "Not Found")).await;
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/x.zip?X-Amz-Signature=topsecret");
    let err = run(&[item(url, dir.path())]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Download failed: http://{}/x.zip: HTTP 404 Not Found",
            server.addr
        )
    );
    assert!(listing(dir.path()).is_empty());
}

#[tokio::test]
async fn a_failure_stops_the_list() {
    let server = TestServer::start(|req, _| {
        if req.path == "/missing" {
            status(404, "Not Found")
        } else {
            ok(b"x")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let err = run(&[
        item(server.url("/missing"), dir.path()),
        item(server.url("/later.txt"), dir.path()),
    ])
    .await
    .unwrap_err();
    assert!(err.to_string().starts_with("Download failed"), "{err}");
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn bad_schemes_are_download_failures() {
    let dir = tempfile::tempdir().unwrap();
    for (url, reason) in [
        ("file:///etc/passwd", "unsupported URL scheme \"file\""),
        ("ftp://example.com/f.txt", "unsupported URL scheme \"ftp\""),
    ] {
        let err = run(&[item(url.into(), dir.path())]).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("Download failed: {url}: {reason}")),
            "{text}"
        );
    }
    assert!(listing(dir.path()).is_empty());
}

#[tokio::test]
async fn names_are_percent_decoded() {
    let server = TestServer::start(|_, _| ok(b"spaced")).await;
    let dir = tempfile::tempdir().unwrap();
    run(&[item(server.url("/dl/my%20file.txt"), dir.path())])
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("my file.txt")).unwrap(),
        b"spaced"
    );
}

#[tokio::test]
async fn names_that_escape_are_refused_before_any_request() {
    let server = TestServer::start(|_, _| ok(b"x")).await;
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("work");
    for path in ["/..%2F..%2Fetc", "/a/..", "/a/%2E%2E", "/", "/a%00b"] {
        let err = run(&[item(server.url(path), &dir)]).await.unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("Download failed: http://"), "{text}");
        assert!(text.contains("cannot name the file"), "{text}");
    }
    assert_eq!(server.count(), 0);
    assert_eq!(listing(outer.path()), Vec::<String>::new());
}

#[test]
fn file_names() {
    let name = |u: &str| file_name_from_url(u).map(|n| n.to_string_lossy().into_owned());
    assert_eq!(name("https://h/a/b/c.tar.gz?x=/y#z").unwrap(), "c.tar.gz");
    assert_eq!(
        name("https://h/r%C3%A9sum%C3%A9.pdf").unwrap(),
        "résumé.pdf"
    );
    assert_eq!(name("https://h/100%.txt").unwrap(), "100%.txt");
    assert!(name("https://h").is_err());
    assert!(name("https://h/dir/").is_err());
    assert!(
        name("https://h/..%2f..%2fetc")
            .unwrap_err()
            .contains("escape working_dir")
    );
}

#[tokio::test]
async fn zips_are_unpacked_and_removed() {
    let zip = zip_bytes(&[
        Item::File("tool/run.sh", b"#!/bin/sh\necho ran\n", 0o755),
        Item::File("tool/conf/deep/settings.json", b"{}", 0o644),
        Item::Dir("empty/"),
    ]);
    let server = TestServer::start(move |_, _| ok(&zip)).await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    run(&[item(server.url("/bundle.zip?sig=s"), &work)])
        .await
        .unwrap();
    assert_eq!(listing(&work), ["empty", "tool"]);
    let script = work.join("tool/run.sh");
    assert_eq!(
        std::fs::metadata(&script).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read(work.join("tool/conf/deep/settings.json")).unwrap(),
        b"{}"
    );
    let out = std::process::Command::new(&script).output().unwrap();
    assert_eq!(out.stdout, b"ran\n");
}

#[tokio::test]
async fn tar_gz_is_unpacked_and_removed() {
    let tgz = tar_gz_bytes(&[
        Item::File("bin/exe", b"#!/bin/sh\n", 0o755),
        Item::File("share/doc/readme", b"hello", 0o644),
        Item::Symlink("latest", "bin/exe"),
    ]);
    let server = TestServer::start(move |_, _| ok(&tgz)).await;
    let dir = tempfile::tempdir().unwrap();
    run(&[
        item(server.url("/pkg.tar.gz"), dir.path()),
        item(server.url("/again.tgz"), &dir.path().join("second")),
    ])
    .await
    .unwrap();
    assert_eq!(listing(dir.path()), ["bin", "latest", "second", "share"]);
    assert_eq!(
        std::fs::metadata(dir.path().join("bin/exe"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read(dir.path().join("share/doc/readme")).unwrap(),
        b"hello"
    );
    assert_eq!(
        listing(&dir.path().join("second")),
        ["bin", "latest", "share"]
    );
}

#[tokio::test]
async fn zip_slip_is_a_download_failure_that_writes_nothing() {
    let zip = zip_bytes(&[
        Item::File("fine.txt", b"ok", 0o644),
        Item::File("../evil.txt", b"evil", 0o644),
    ]);
    let server = TestServer::start(move |_, _| ok(&zip)).await;
    let outer = tempfile::tempdir().unwrap();
    let work = outer.path().join("work");
    let err = run(&[item(server.url("/slip.zip"), &work)])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Download failed: http://{}/slip.zip: archive entry \"../evil.txt\" escapes the target directory",
            server.addr
        )
    );
    assert_eq!(listing(outer.path()), ["work"]);
    assert!(listing(&work).is_empty(), "{:?}", listing(&work));
}

#[tokio::test]
async fn archive_limits_apply_to_downloads() {
    let zeros = vec![0u8; 512 * 1024];
    let zip = zip_bytes(&[Item::File("big", &zeros, 0o644)]);
    let server = TestServer::start(move |_, _| ok(&zip)).await;
    let dir = tempfile::tempdir().unwrap();
    let limits = ArchiveLimits {
        max_bytes: 1000,
        ..ArchiveLimits::default()
    };
    let err = download_all_with_limits(
        &[item(server.url("/bomb.zip"), dir.path())],
        &fast_client(),
        &CancellationToken::new(),
        limits,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("archive unpacks to more than 1000 bytes"),
        "{err}"
    );
    assert!(listing(dir.path()).is_empty());
}

#[tokio::test]
async fn cancel_stops_a_download_and_removes_the_partial_file() {
    let server = TestServer::start(|_, _| {
        Reply::Stall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial".to_vec())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let client = fast_client();
    let items = [item(server.url("/slow.bin"), dir.path())];
    let started = std::time::Instant::now();
    let err = download_all(&items, &client, &cancel).await.unwrap_err();
    assert!(matches!(err, DownloadError::Cancelled));
    assert_eq!(err.to_string(), "Request cancelled");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.count(), 1);
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
    // Already cancelled: nothing more is fetched.
    let err = download_all(&items, &client, &cancel).await.unwrap_err();
    assert!(matches!(err, DownloadError::Cancelled));
    assert_eq!(server.count(), 1);
}
