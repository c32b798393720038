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
use crate::http::{HttpClient, HttpError};
use crate::urls::{display_url, parse_http_url, percent_decode};
use crate::wire::Downloadable;

/// Why a download did not happen. The Display text goes to the client (after
/// secret redaction by the session) and never holds a URL's query string.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DownloadError {
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
pub(crate) enum DownloadFailure {
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
pub(crate) async fn download_all(
    items: &[Downloadable],
    client: &HttpClient,
    cancel: &CancellationToken,
) -> Result<(), DownloadError> {
    download_all_with_limits(items, client, cancel, ArchiveLimits::default()).await
}

/// [`download_all`] with explicit bounds for unpacked archives.
pub(crate) async fn download_all_with_limits(
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
    parse_http_url(url).map_err(|e| fail(HttpError::from(e).into()))?;
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
pub(crate) fn file_name_from_url(url: &str) -> Result<OsString, String> {
    let url = parse_http_url(url).map_err(|e| e.to_string())?;
    let segment = url
        .path_segments()
        .and_then(|mut segments| segments.next_back())
        .unwrap_or("");
    let decoded = percent_decode(segment);
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
mod tests;
