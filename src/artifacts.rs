//! Artifacts: files that commands and agents leave in watched directories,
//! announced to the client and uploaded to the presigned URLs it answers with.
//!
//! One [`Artifacts`] lives for a whole session; every request's
//! `artifacts_dirs` are added to it with [`Artifacts::watch`] and stay
//! watched until [`Artifacts::shutdown`].
//!
//! Two mechanisms find files, and they share one record of what has been
//! announced (`known`: full path -> (size, mtime, inode)), so a file is
//! announced once per change no matter which of them sees it first:
//!
//! * **Events** (`notify`, inotify on Linux) give timely announcements while
//!   a request runs. The watcher's callback thread forwards events into a
//!   bounded channel (dropped when full; the next scan catches up) drained by
//!   one task. A file is announced on close-after-write, or after other
//!   modifications once it has been unchanged for a moment.
//! * **The flush scan** is what correctness rests on. Before every terminal
//!   message the request calls [`Artifacts::flush`], which walks every
//!   watched directory and compares each file with `known`, so a file written
//!   in the request's last millisecond is announced no matter when (or
//!   whether) its events arrive. Flush then waits, bounded, until every
//!   announcement made so far has been answered and its upload has finished,
//!   because the one-shot client closes the socket once it has the terminal.
//!
//! A client can only get files uploaded that the runtime announced and that
//! are still awaiting an answer: a response naming any other path (say
//! `/etc/passwd`) is ignored. Symlinks are never followed or announced, and
//! a file is re-checked just before upload so a directory swapped for a
//! symlink in between cannot redirect the upload outside the watched tree.

mod ledger;
mod rules;
mod upload;
mod watcher;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ignore::gitignore::Gitignore;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use crate::outbox::Outbox;
use crate::session::SessionSecrets;
use crate::wire::{self, OutboundMessage};

use ledger::{Ledger, Root, Stamp};
use rules::{IGNORE_FILE, build_rules, eligible, load_rules, prepare_dir, scan_tree};
use upload::MAX_CONCURRENT_UPLOADS;
use watcher::Watching;

pub(crate) use ledger::FlushReport;
pub(crate) use upload::{UploadFn, UploadJob};

/// Why a directory could not be watched; the text goes to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ArtifactError {
    /// The client listed `""` as a directory.
    #[error("artifacts dir is an empty path")]
    EmptyPath,
    /// The path (or one of its parents) exists and is not a directory.
    #[error("artifacts dir {dir} is not a directory")]
    NotADirectory {
        /// The directory as the client gave it.
        dir: String,
    },
    /// Creating or resolving the directory failed (e.g. permission denied).
    #[error("cannot watch {dir}: {reason}")]
    CannotWatch {
        /// The directory as the client gave it.
        dir: String,
        /// The underlying error.
        reason: String,
    },
    /// Called outside a tokio runtime, where the watcher cannot run; a bug
    /// in the embedding program, not the client's fault.
    #[error("artifacts can only be watched from within the tokio runtime")]
    NoRuntime,
}

/// Announcements recorded but not sent yet; unrecorded if dropped unsent.
struct Unsent<'a> {
    inner: &'a Inner,
    messages: VecDeque<(PathBuf, OutboundMessage)>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.messages.is_empty() {
            return;
        }
        let mut ledger = self.inner.ledger();
        for (path, _) in self.messages.drain(..) {
            ledger.unsend(&path);
        }
        drop(ledger);
        self.inner.progress.notify_waiters();
    }
}

struct Inner {
    outbox: Outbox,
    /// The session's secrets: announcements are redacted here, so the ledger
    /// knows the text the client will echo back.
    secrets: SessionSecrets,
    upload: UploadFn,
    ledger: Mutex<Ledger>,
    /// Woken whenever an announcement is answered or an upload ends.
    progress: Notify,
    uploads: Arc<Semaphore>,
    watching: Mutex<Option<Watching>>,
}

/// A session's artifact watcher and uploader. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Artifacts {
    inner: Arc<Inner>,
}

impl Artifacts {
    /// Makes an idle watcher that announces through `outbox` (redacted with
    /// the session's `secrets`) and uploads with `upload`.
    pub(crate) fn new(outbox: Outbox, upload: UploadFn, secrets: SessionSecrets) -> Self {
        Self {
            inner: Arc::new(Inner {
                outbox,
                secrets,
                upload,
                ledger: Mutex::new(Ledger::default()),
                progress: Notify::new(),
                uploads: Arc::new(Semaphore::new(MAX_CONCURRENT_UPLOADS)),
                watching: Mutex::new(None),
            }),
        }
    }

    /// Starts (or keeps) watching `dirs`, creating missing ones. Files
    /// already there are the baseline: they are announced only if they
    /// change later. `ignore_content` (gitignore syntax) pins the ignore
    /// rules of these dirs, replacing earlier pinned content (files the new
    /// rules newly admit join the baseline); an empty one counts as not
    /// given, and `None` keeps whatever was pinned before. Nothing is
    /// registered if any dir is unusable.
    ///
    /// Must be called within the tokio runtime. The baseline walk runs on
    /// the calling thread.
    pub(crate) fn watch(
        &self,
        dirs: &[String],
        ignore_content: Option<&str>,
    ) -> Result<(), ArtifactError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ArtifactError::NoRuntime)?;
        let mut paths = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let path = prepare_dir(dir)?;
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        let pin = ignore_content.filter(|content| !content.trim().is_empty());
        let mut added = Vec::new();
        for path in paths {
            let watched_pin = {
                let state = self.inner.ledger();
                state
                    .roots
                    .iter()
                    .find(|root| root.path == path)
                    .map(|root| root.pinned.clone())
            };
            if let Some(old_pin) = watched_pin {
                if let Some(content) = pin
                    && old_pin.as_deref() != Some(content)
                {
                    self.inner.repin(&path, content);
                }
                continue;
            }
            let rules = match pin {
                Some(content) => build_rules(&path, content, "artifacts_ignore_content"),
                None => load_rules(&path),
            };
            self.inner.ledger().roots.push(Root {
                path: path.clone(),
                rules: Arc::new(rules),
                pinned: pin.map(str::to_owned),
            });
            added.push(path);
        }
        if !added.is_empty() {
            self.inner.start_watching(&added, &runtime);
        }
        // After the watch is in place, so no file falls between the two.
        for path in &added {
            let baseline = self.inner.baseline(path);
            tracing::info!(dir = %path.display(), baseline, "watching artifacts dir");
        }
        Ok(())
    }

    /// Handles the client's answer to an announcement: uploads the file if
    /// we announced exactly that (redacted) path and it is still awaiting an
    /// answer;
    /// anything else is logged and ignored, so a client cannot get
    /// arbitrary files uploaded.
    pub(crate) fn on_upload_response(&self, response: wire::ArtifactUploadResponse) {
        let claimed = self.inner.ledger().claim(&response.filepath);
        let Some((path, seq)) = claimed else {
            tracing::warn!(
                filepath = %response.filepath,
                "artifact upload response for a file that was not announced or was already answered; ignored"
            );
            return;
        };
        let job = UploadJob {
            url: response.presigned_url,
            path,
            content_type: response.content_type,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(self.inner.clone().upload(seq, job).in_current_span());
            }
            Err(_) => {
                tracing::error!("artifact upload response handled outside the tokio runtime");
                self.inner
                    .finish_upload(seq, &job, Err("no runtime to upload on".into()));
            }
        }
    }

    /// End of session: [`flush`](Self::flush), after forgetting every
    /// announcement still unanswered so the scan announces those files
    /// again. An announcement made between requests can reach a client
    /// request that has no upload callback, which drops it; at the end of
    /// a session the client answers with its last callback.
    pub(crate) async fn drain(&self, bound: Duration) -> FlushReport {
        self.inner.ledger().forget_unanswered();
        self.flush(bound).await
    }

    /// Settles before a terminal message: scans every watched dir and
    /// announces whatever is new or changed, then waits until every
    /// announcement made since the previous flush is answered and its
    /// upload has finished, at most `bound` in all. Announcements an earlier
    /// flush gave up on are not waited for again (a late answer still
    /// uploads). Counts are since the previous flush.
    pub(crate) async fn flush(&self, bound: Duration) -> FlushReport {
        if !self.is_active() {
            return FlushReport::default();
        }
        let started = Instant::now();
        let deadline = started + bound;
        if tokio::time::timeout_at(deadline, self.inner.scan_and_announce())
            .await
            .is_err()
        {
            tracing::warn!(
                ?bound,
                "artifact scan did not finish within the flush bound"
            );
        }
        let range = self.inner.ledger().flush_range();
        loop {
            let progress = self.inner.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            {
                let ledger = self.inner.ledger();
                if ledger.closed || ledger.outstanding(range) == 0 {
                    break;
                }
            }
            tokio::select! {
                () = progress => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let report = self.inner.ledger().close_flush(range);
        if report.timed_out > 0 || report.failed > 0 {
            tracing::warn!(
                announced = report.announced,
                uploaded = report.uploaded,
                failed = report.failed,
                timed_out = report.timed_out,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "artifact flush incomplete"
            );
        } else if report.announced > 0 {
            tracing::info!(
                announced = report.announced,
                uploaded = report.uploaded,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "artifacts flushed"
            );
        }
        report
    }

    /// Whether any directory is watched (flush does nothing otherwise).
    pub(crate) fn is_active(&self) -> bool {
        !self.inner.ledger().roots.is_empty()
    }

    /// Stops watching (session end). Uploads already answered finish.
    pub(crate) fn shutdown(&self) {
        if let Some(watching) = self.inner.watching().take() {
            watching.stop();
        }
        self.inner.ledger().clear();
    }
}

impl Inner {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watching(&self) -> MutexGuard<'_, Option<Watching>> {
        self.watching.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the files under a watched dir as already announced (unless
    /// they are known already); returns how many there were.
    fn baseline(&self, path: &Path) -> usize {
        let (rules, nested) = {
            let state = self.ledger();
            let Some(root) = state.root_of(path) else {
                return 0;
            };
            (root.rules.clone(), state.nested_in(path))
        };
        let mut files = Vec::new();
        scan_tree(path, path, &rules, &nested, &mut files);
        let count = files.len();
        self.ledger().add_baseline(files);
        count
    }

    /// Replaces a watched dir's rules with pinned `content`. Files the new
    /// rules admit that are not known yet join the baseline, in the same
    /// step as the rules change so the event task cannot announce them.
    fn repin(&self, path: &Path, content: &str) {
        let rules = Arc::new(build_rules(path, content, "artifacts_ignore_content"));
        let nested = self.ledger().nested_in(path);
        let mut files = Vec::new();
        scan_tree(path, path, &rules, &nested, &mut files);
        let mut ledger = self.ledger();
        if let Some(root) = ledger.roots.iter_mut().find(|root| root.path == path) {
            root.rules = rules;
            root.pinned = Some(content.to_owned());
        }
        ledger.add_baseline(files);
        tracing::info!(dir = %path.display(), "artifacts ignore rules replaced");
    }

    /// Records candidates and sends the announcements they call for.
    ///
    /// Each is recorded as pending before it is sent (so the answer always
    /// finds it); if this future is dropped midway (a flush bound ran out
    /// while the socket was backed up), the unsent ones are unrecorded so a
    /// later scan announces them again.
    async fn announce(&self, candidates: Vec<(PathBuf, Stamp)>) {
        if candidates.is_empty() {
            return;
        }
        let mut unsent = Unsent {
            inner: self,
            messages: {
                let redactor = self.secrets.current();
                let mut state = self.ledger();
                candidates
                    .into_iter()
                    .filter_map(|(path, stamp)| {
                        let message = state.decide(path.clone(), stamp, &redactor)?;
                        Some((path, message))
                    })
                    .collect()
            },
        };
        while let Some((_, message)) = unsent.messages.front() {
            if let OutboundMessage::ArtifactUploadRequestMessage { filename, .. } = message {
                tracing::debug!(filename, "announcing artifact");
            }
            if self.outbox.send(message.clone()).await.is_err() {
                self.ledger().closed = true;
                self.progress.notify_waiters();
                return;
            }
            unsent.messages.pop_front();
        }
    }

    /// Walks every watched dir (re-reading each unpinned dir's ignore file)
    /// and announces what is new or changed.
    async fn scan_and_announce(&self) {
        let plan: Vec<(PathBuf, Arc<Gitignore>, bool, Vec<PathBuf>)> = {
            let state = self.ledger();
            state
                .roots
                .iter()
                .map(|root| {
                    (
                        root.path.clone(),
                        root.rules.clone(),
                        root.pinned.is_some(),
                        state.nested_in(&root.path),
                    )
                })
                .collect()
        };
        let walked = tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            let mut reloaded = Vec::new();
            for (path, rules, pinned, nested) in plan {
                let rules = if pinned {
                    rules
                } else {
                    let fresh = Arc::new(load_rules(&path));
                    reloaded.push((path.clone(), fresh.clone()));
                    fresh
                };
                scan_tree(&path, &path, &rules, &nested, &mut files);
            }
            (files, reloaded)
        })
        .await;
        let (files, reloaded) = match walked {
            Ok(walked) => walked,
            Err(e) => {
                tracing::error!(error = %e, "artifact scan failed");
                return;
            }
        };
        self.update_rules(reloaded);
        self.announce(files).await;
    }

    /// Installs freshly read ignore files (unless content got pinned since).
    fn update_rules(&self, reloaded: Vec<(PathBuf, Arc<Gitignore>)>) {
        let mut state = self.ledger();
        for (path, rules) in reloaded {
            if let Some(root) = state
                .roots
                .iter_mut()
                .find(|root| root.path == path && root.pinned.is_none())
            {
                root.rules = rules;
            }
        }
    }

    /// If `path` is the ignore file of an unpinned watched dir, reloads
    /// that dir's rules and returns true.
    fn reload_if_ignore_file(&self, path: &Path) -> bool {
        if path.file_name().is_none_or(|name| name != IGNORE_FILE) {
            return false;
        }
        let Some(dir) = path.parent() else {
            return false;
        };
        let unpinned = self
            .ledger()
            .roots
            .iter()
            .any(|root| root.path == dir && root.pinned.is_none());
        if unpinned {
            let rules = Arc::new(load_rules(dir));
            self.update_rules(vec![(dir.to_path_buf(), rules)]);
            tracing::info!(dir = %dir.display(), "reloaded {IGNORE_FILE}");
        }
        true
    }

    /// Checks files now and announces the eligible ones.
    async fn consider(&self, paths: Vec<PathBuf>) {
        let mut candidates = Vec::new();
        for path in paths {
            let located = {
                let state = self.ledger();
                state
                    .root_of(&path)
                    .map(|root| (root.path.clone(), root.rules.clone()))
            };
            if let Some((root, rules)) = located
                && let Some(stamp) = eligible(&root, &rules, &path)
            {
                candidates.push((path, stamp));
            }
        }
        self.announce(candidates).await;
    }

    /// Eligible files under a directory that appeared inside a watched dir.
    async fn files_under(&self, dir: PathBuf) -> Vec<(PathBuf, Stamp)> {
        let located = {
            let state = self.ledger();
            state.root_of(&dir).map(|root| {
                (
                    root.path.clone(),
                    root.rules.clone(),
                    state.nested_in(&root.path),
                )
            })
        };
        let Some((root, rules, nested)) = located else {
            return Vec::new();
        };
        tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            let ignored = dir
                .strip_prefix(&root)
                .map(|rel| {
                    !rel.as_os_str().is_empty()
                        && rules.matched_path_or_any_parents(rel, true).is_ignore()
                })
                .unwrap_or(true);
            if !ignored && !nested.contains(&dir) {
                scan_tree(&root, &dir, &rules, &nested, &mut files);
            }
            files
        })
        .await
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
