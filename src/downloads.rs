//! `pre_agent_downloadables` / `pre_execution_downloadables`: fetching files
//! into the sandbox before anything runs.
//!
//! Each URL is saved in its `working_dir` under the last segment of the URL
//! path (percent-decoded). The body goes to a hidden temporary name first
//! and is renamed into place only when complete, so a failed or cancelled
//! download never leaves a truncated file under the real name. A `.zip`,
//! `.tar.gz` or `.tgz` is unpacked into `working_dir` straight from the
//! temporary file, which is then removed: the archive itself never appears.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::archive::{self, ArchiveError, ArchiveKind, ArchiveLimits};
use crate::http_client::{HttpClient, HttpError, display_url, percent_decode, validate_url};
use crate::wire::Downloadable;

/// Why a download did not happen. The Display text goes to the client (after
/// secret redaction by the session) and never holds a URL's query string.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// One item failed; the downloads after it were not attempted.
    #[error("Download failed: {url}: {reason}")]
    Failed {
        /// The URL as [`display_url`] shows it.
        url: String,
        /// What went wrong, worded for the client.
        reason: DownloadFailure,
    },
    /// The request was cancelled; the partial file has been removed.
    #[error("Request cancelled")]
    Cancelled,
}

/// The reason part of [`DownloadError::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum DownloadFailure {
    /// The URL was refused or the fetch failed (after any retries).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The URL's last path segment is not a safe file name (empty, `.`,
    /// `..`, or contains `/` or NUL once decoded).
    #[error("cannot name the file: {0}")]
    FileName(String),
    /// The downloadable gave no `working_dir`.
    #[error("working_dir is empty")]
    NoWorkingDir,
    /// `working_dir` could not be created.
    #[error("cannot create working_dir {}: {source}", path.display())]
    WorkingDir {
        /// The directory as the client gave it.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The complete download could not be renamed to its final name.
    #[error("cannot save {}: {source}", path.display())]
    Save {
        /// The final path the file was to get.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The archive was refused or failed to unpack; what it wrote is gone.
    #[error(transparent)]
    Archive(ArchiveError),
}

/// Downloads every item in order with the default archive limits; stops at
/// the first failure.
pub async fn download_all(
    items: &[Downloadable],
    client: &HttpClient,
    cancel: &CancellationToken,
) -> Result<(), DownloadError> {
    download_all_with_limits(items, client, cancel, ArchiveLimits::default()).await
}

/// [`download_all`] with explicit bounds for unpacked archives.
pub async fn download_all_with_limits(
    items: &[Downloadable],
    client: &HttpClient,
    cancel: &CancellationToken,
    limits: ArchiveLimits,
) -> Result<(), DownloadError> {
    for item in items {
        if cancel.is_cancelled() {
            return Err(DownloadError::Cancelled);
        }
        download_one(item, client, cancel, limits).await?;
    }
    Ok(())
}

async fn download_one(
    item: &Downloadable,
    client: &HttpClient,
    cancel: &CancellationToken,
    limits: ArchiveLimits,
) -> Result<(), DownloadError> {
    let url = item.download_url.trim();
    let fail = |reason: DownloadFailure| DownloadError::Failed {
        url: display_url(url),
        reason,
    };
    validate_url(url).map_err(|e| fail(e.into()))?;
    let name = file_name_from_url(url).map_err(|e| fail(DownloadFailure::FileName(e)))?;
    if item.working_dir.is_empty() {
        return Err(fail(DownloadFailure::NoWorkingDir));
    }
    let dir = Path::new(&item.working_dir);
    tokio::fs::create_dir_all(dir).await.map_err(|source| {
        fail(DownloadFailure::WorkingDir {
            path: dir.to_owned(),
            source,
        })
    })?;

    let temp = TempFile(dir.join(temp_name()));
    tracing::info!(url = %display_url(url), dir = %dir.display(), "downloading");
    let bytes = tokio::select! {
        biased;
        () = cancel.cancelled() => return Err(DownloadError::Cancelled),
        result = client.get_to_file(url, &temp.0) => result.map_err(|e| fail(e.into()))?,
    };

    let name_str = name.to_string_lossy();
    match ArchiveKind::from_file_name(&name_str) {
        Some(kind) => {
            let stats = archive::unpack(&temp.0, kind, dir, limits, Some(cancel.clone()))
                .await
                .map_err(|e| match e {
                    ArchiveError::Cancelled => DownloadError::Cancelled,
                    e => fail(DownloadFailure::Archive(e)),
                })?;
            tracing::info!(
                url = %display_url(url),
                bytes,
                entries = stats.entries,
                unpacked = stats.bytes,
                "unpacked archive"
            );
        }
        None => {
            let final_path = dir.join(&name);
            tokio::fs::rename(&temp.0, &final_path)
                .await
                .map_err(|source| {
                    fail(DownloadFailure::Save {
                        path: final_path.clone(),
                        source,
                    })
                })?;
            temp.disarm();
            tracing::info!(url = %display_url(url), path = %final_path.display(), bytes, "downloaded");
        }
    }
    Ok(())
}

/// The file name a URL is saved under: the last segment of its path,
/// percent-decoded. Refuses names that could land outside `working_dir`.
pub fn file_name_from_url(url: &str) -> Result<OsString, String> {
    let url = url.trim();
    let url = &url[..url.find(['?', '#']).unwrap_or(url.len())];
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    let segment = &path[path.rfind('/').map_or(0, |i| i + 1)..];
    let decoded = percent_decode(segment.as_bytes());
    let shown = String::from_utf8_lossy(&decoded).into_owned();
    if decoded.is_empty() {
        return Err("the URL path does not end in a file name".into());
    }
    if decoded == b"." || decoded == b".." {
        return Err(format!(
            "{shown:?} is not a file name (it would escape working_dir)"
        ));
    }
    if decoded.contains(&b'/') || decoded.contains(&0) {
        return Err(format!(
            "{shown:?} contains '/' or NUL once decoded (it would escape working_dir)"
        ));
    }
    Ok(OsString::from_vec(decoded))
}

/// A unique hidden name for an in-progress download (not derived from the
/// real name, which may already be as long as a name can be).
fn temp_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        ".runtimeuse-download-{}-{}.part",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the temporary file when dropped, unless disarmed.
struct TempFile(PathBuf);

impl TempFile {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Best effort; NotFound is the normal case after a failed transfer.
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::archive::tests::{Item, tar_gz_bytes, zip_bytes};
    use crate::http_client::tests::{Reply, TestServer, fast_client, ok, status};

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
}
