//! Uploads: an answered announcement becomes a PUT of the file to the
//! client's presigned URL, at most [`MAX_CONCURRENT_UPLOADS`] at a time.
//!
//! The uploader itself is a hook ([`UploadFn`]), so the ledger and watcher
//! are tested without HTTP and the session plugs in the real client.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::urls::display_url;

use super::Inner;
use super::rules::still_uploadable;

/// Uploads running at once.
pub(crate) const MAX_CONCURRENT_UPLOADS: usize = 8;

/// One upload for the [`UploadFn`]: PUT the bytes of `path` to `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UploadJob {
    /// The client's presigned URL; holds credentials in its query, so never
    /// log it whole.
    pub(crate) url: String,
    /// Canonical path of the announced file, streamed from disk.
    pub(crate) path: PathBuf,
    /// The client's `Content-Type` for the PUT; empty means none.
    pub(crate) content_type: String,
}

/// Uploads a file to a presigned URL. The error text is logged, so it must
/// not contain the URL's query string (the presigned credentials).
pub(crate) type UploadFn =
    Arc<dyn Fn(UploadJob) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

impl Inner {
    /// Uploads an answered announcement, at most [`MAX_CONCURRENT_UPLOADS`]
    /// at a time.
    pub(super) async fn upload(self: Arc<Self>, seq: u64, job: UploadJob) {
        let permit = self.uploads.clone().acquire_owned().await;
        let result = match permit {
            Err(_) => Err("the uploader is closed".to_owned()),
            Ok(_permit) => match still_uploadable(&job.path) {
                Err(why) => Err(why),
                Ok(()) => (self.upload)(job.clone()).await,
            },
        };
        self.finish_upload(seq, &job, result);
    }

    pub(super) fn finish_upload(&self, seq: u64, job: &UploadJob, result: Result<(), String>) {
        let filename = job
            .path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.ledger().finish(seq, result.is_ok());
        match result {
            Ok(()) => tracing::info!(filename, "artifact uploaded"),
            Err(error) => tracing::warn!(
                filename,
                url = %display_url(&job.url),
                error = %scrub_url(&error, &job.url),
                "artifact upload failed"
            ),
        }
        self.progress.notify_waiters();
    }
}

/// Removes the full URL from an upload error, in case the uploader put it in.
pub(crate) fn scrub_url(error: &str, url: &str) -> String {
    if url.is_empty() {
        return error.to_owned();
    }
    let mut text = error.replace(url, &display_url(url));
    if let Some((_, query)) = url.split_once('?')
        && !query.is_empty()
    {
        text = text.replace(query, "[query removed]");
    }
    text
}
