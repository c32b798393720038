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
//!   modifications once it has been unchanged for [`STABLE_FOR`].
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

use std::collections::{HashMap, VecDeque};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;
use crate::wire::{self, OutboundMessage};

/// Per-directory ignore file, used when a request pins no ignore content.
pub const IGNORE_FILE: &str = ".artifactignore";

/// Ignore rules when a directory has neither pinned content nor an
/// [`IGNORE_FILE`].
pub const DEFAULT_IGNORES: [&str; 8] = [
    "node_modules/",
    ".venv/",
    "venv/",
    "env/",
    ".env/",
    "dist/",
    "__pycache__/",
    ".pytest_cache/",
];

/// A file modified without a close-after-write is announced once it has
/// been unchanged this long.
pub const STABLE_FOR: Duration = Duration::from_millis(150);

/// How often files waiting to become stable are re-checked.
const STABLE_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Watcher events buffered between notify's thread and the event task.
const EVENT_QUEUE: usize = 1024;

/// Least time between two full walks caused by lost watcher events.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Files waiting to become stable; beyond this, the flush scan catches up.
const MAX_STABILIZING: usize = 10_000;

/// Most files whose state is remembered; beyond this new files are not
/// announced (and a warning says so) so memory stays bounded.
const MAX_TRACKED_FILES: usize = 200_000;

/// Uploads running at once.
const MAX_CONCURRENT_UPLOADS: usize = 8;

/// One upload for the [`UploadFn`]: PUT the bytes of `path` to `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadJob {
    /// The client's presigned URL; holds credentials in its query, so never
    /// log it whole.
    pub url: String,
    /// Canonical path of the announced file, streamed from disk.
    pub path: PathBuf,
    /// The client's `Content-Type` for the PUT; empty means none.
    pub content_type: String,
}

/// Uploads a file to a presigned URL. The error text is logged, so it must
/// not contain the URL's query string (the presigned credentials).
pub type UploadFn = Arc<dyn Fn(UploadJob) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Why a directory could not be watched; the text goes to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArtifactError {
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

/// What one [`Artifacts::flush`] saw, counted since the previous flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Files announced (by events or by this flush's scan).
    pub announced: usize,
    /// Uploads that finished successfully.
    pub uploaded: usize,
    /// Uploads that failed (logged with the file name and the error).
    pub failed: usize,
    /// Announcements still unanswered, or uploads still running, when the
    /// bound ran out (or the client connection closed).
    pub timed_out: usize,
}

/// What identifies a version of a file: a change to any of these is a
/// change to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
    ino: u64,
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Self {
            len: meta.len(),
            mtime: meta.modified().ok(),
            ino: meta.ino(),
        }
    }
}

/// A watched directory.
struct Root {
    /// Canonical absolute path.
    path: PathBuf,
    rules: Arc<Gitignore>,
    /// The request's `artifacts_ignore_content` the rules came from; `None`
    /// when they come from [`IGNORE_FILE`] or the defaults.
    pinned: Option<String>,
}

/// Everything the watcher task, flushes, and responses share.
#[derive(Default)]
struct State {
    roots: Vec<Root>,
    /// Last announced (or baseline) version of every eligible file.
    known: HashMap<PathBuf, Stamp>,
    /// Announced, not yet answered: path -> announcement sequence number.
    pending: HashMap<PathBuf, u64>,
    /// Answered, upload running: sequence number -> path.
    uploading: HashMap<u64, PathBuf>,
    /// Sequence number of the latest announcement.
    seq: u64,
    /// Announcements up to this one belong to earlier flushes: a new flush
    /// does not wait for them again, and a change to their file is
    /// announced afresh.
    flushed_through: u64,
    /// Counts since the last flush.
    window: FlushReport,
    /// The outbox is closed: nobody will answer any more.
    closed: bool,
    warned_full: bool,
}

impl State {
    /// Records a candidate file and returns the announcement to send, if
    /// it is new or changed and not already awaiting an answer since the
    /// last flush (the upload that answer starts reads the newest bytes).
    fn decide(&mut self, path: PathBuf, stamp: Stamp) -> Option<OutboundMessage> {
        if self.known.get(&path) == Some(&stamp) {
            return None;
        }
        if !self.known.contains_key(&path) && self.known.len() >= MAX_TRACKED_FILES {
            if !self.warned_full {
                self.warned_full = true;
                tracing::warn!(
                    limit = MAX_TRACKED_FILES,
                    "too many files in the artifacts dirs; further new files are not announced"
                );
            }
            return None;
        }
        self.known.insert(path.clone(), stamp);
        if self
            .pending
            .get(&path)
            .is_some_and(|&seq| seq > self.flushed_through)
        {
            return None;
        }
        let (Some(filepath), Some(filename)) = (
            path.to_str(),
            path.file_name().and_then(|name| name.to_str()),
        ) else {
            tracing::warn!(path = %path.display(), "artifact path is not UTF-8; not announced");
            return None;
        };
        let message = OutboundMessage::ArtifactUploadRequestMessage {
            filename: filename.to_owned(),
            filepath: filepath.to_owned(),
        };
        self.seq += 1;
        self.pending.insert(path, self.seq);
        self.window.announced += 1;
        Some(message)
    }

    /// Announcements in `after+1..=through` still unanswered or uploading.
    fn outstanding(&self, after: u64, through: u64) -> usize {
        let counts = |seq: &u64| (after + 1..=through).contains(seq);
        self.pending.values().filter(|seq| counts(seq)).count()
            + self.uploading.keys().filter(|seq| counts(seq)).count()
    }

    /// The most specific watched directory containing `path`.
    fn root_of(&self, path: &Path) -> Option<&Root> {
        self.roots
            .iter()
            .filter(|root| path.starts_with(&root.path))
            .max_by_key(|root| root.path.components().count())
    }

    /// Watched directories strictly inside `root` (scanned on their own,
    /// with their own rules).
    fn nested_in(&self, root: &Path) -> Vec<PathBuf> {
        self.roots
            .iter()
            .filter(|other| other.path != root && other.path.starts_with(root))
            .map(|other| other.path.clone())
            .collect()
    }

    /// A file (or, with `tree`, everything under a directory) went away.
    fn forget(&mut self, path: &Path, tree: bool) {
        if self.known.remove(path).is_none() && tree {
            self.known.retain(|known, _| !known.starts_with(path));
        }
    }
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
        let mut state = self.inner.state();
        for (path, _) in self.messages.drain(..) {
            state.pending.remove(&path);
            state.known.remove(&path);
            state.window.announced = state.window.announced.saturating_sub(1);
        }
        drop(state);
        self.inner.progress.notify_waiters();
    }
}

/// The running file watcher.
struct Watching {
    /// `None` when the watcher could not start: flush scans still work.
    watcher: Option<RecommendedWatcher>,
    stop: CancellationToken,
}

struct Inner {
    outbox: Outbox,
    upload: UploadFn,
    state: Mutex<State>,
    /// Woken whenever an announcement is answered or an upload ends.
    progress: Notify,
    uploads: Arc<Semaphore>,
    watching: Mutex<Option<Watching>>,
}

/// A session's artifact watcher and uploader. Cheap to clone.
#[derive(Clone)]
pub struct Artifacts {
    inner: Arc<Inner>,
}

impl Artifacts {
    /// Makes an idle watcher that announces through `outbox` and uploads
    /// with `upload`.
    pub fn new(outbox: Outbox, upload: UploadFn) -> Self {
        Self {
            inner: Arc::new(Inner {
                outbox,
                upload,
                state: Mutex::new(State::default()),
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
    pub fn watch(
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
                let state = self.inner.state();
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
            self.inner.state().roots.push(Root {
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
    /// we announced exactly that path and it is still awaiting an answer;
    /// anything else is logged and ignored, so a client cannot get
    /// arbitrary files uploaded.
    pub fn on_upload_response(&self, response: wire::ArtifactUploadResponse) {
        let requested = PathBuf::from(&response.filepath);
        let claimed = {
            let mut state = self.inner.state();
            match state.pending.remove_entry(&requested) {
                Some((path, seq)) => {
                    state.uploading.insert(seq, path.clone());
                    Some((path, seq))
                }
                None => None,
            }
        };
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
                runtime.spawn(self.inner.clone().upload(seq, job));
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
    pub async fn drain(&self, bound: Duration) -> FlushReport {
        {
            let mut state = self.inner.state();
            let unanswered: Vec<PathBuf> = state.pending.drain().map(|(path, _)| path).collect();
            for path in unanswered {
                state.known.remove(&path);
            }
        }
        self.flush(bound).await
    }

    /// Settles before a terminal message: scans every watched dir and
    /// announces whatever is new or changed, then waits until every
    /// announcement made since the previous flush is answered and its
    /// upload has finished, at most `bound` in all. Announcements an earlier
    /// flush gave up on are not waited for again (a late answer still
    /// uploads). Counts are since the previous flush.
    pub async fn flush(&self, bound: Duration) -> FlushReport {
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
        let (after, target) = {
            let state = self.inner.state();
            (state.flushed_through, state.seq)
        };
        loop {
            let progress = self.inner.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            {
                let state = self.inner.state();
                if state.closed || state.outstanding(after, target) == 0 {
                    break;
                }
            }
            tokio::select! {
                () = progress => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let report = {
            let mut state = self.inner.state();
            let mut report = std::mem::take(&mut state.window);
            report.timed_out = state.outstanding(after, target);
            state.flushed_through = target;
            report
        };
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
    pub fn is_active(&self) -> bool {
        !self.inner.state().roots.is_empty()
    }

    /// Stops watching (session end). Uploads already answered finish.
    pub fn shutdown(&self) {
        if let Some(watching) = self.inner.watching().take() {
            watching.stop.cancel();
            drop(watching.watcher);
        }
        let mut state = self.inner.state();
        state.roots.clear();
        state.known.clear();
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watching(&self) -> MutexGuard<'_, Option<Watching>> {
        self.watching.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `dirs` to the file watcher, starting it (and its event task)
    /// first if needed. A watcher that fails is logged, not fatal: the
    /// flush scan still finds every file.
    fn start_watching(self: &Arc<Self>, dirs: &[PathBuf], runtime: &tokio::runtime::Handle) {
        let mut slot = self.watching();
        let watching = slot.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            let overflow = Arc::new(AtomicBool::new(false));
            let stop = CancellationToken::new();
            let flag = overflow.clone();
            let handler = move |result: notify::Result<Event>| match result {
                Ok(event) => {
                    if is_relevant(&event) && tx.try_send(event).is_err() {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "file watcher error; artifacts will be found by the flush scan");
                    flag.store(true, Ordering::Relaxed);
                }
            };
            let config = notify::Config::default().with_follow_symlinks(false);
            let watcher = match RecommendedWatcher::new(handler, config) {
                Ok(watcher) => Some(watcher),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the file watcher; artifacts are only found when a request ends");
                    None
                }
            };
            runtime.spawn(event_loop(Arc::downgrade(self), rx, overflow, stop.clone()));
            Watching { watcher, stop }
        });
        if let Some(watcher) = watching.watcher.as_mut() {
            for dir in dirs {
                if let Err(e) = watcher.watch(dir, RecursiveMode::Recursive) {
                    tracing::warn!(
                        dir = %dir.display(),
                        error = %e,
                        "cannot watch for changes; files there are found when a request ends"
                    );
                }
            }
        }
    }

    /// Records the files under a watched dir as already announced (unless
    /// they are known already); returns how many there were.
    fn baseline(&self, path: &Path) -> usize {
        let (rules, nested) = {
            let state = self.state();
            let Some(root) = state.root_of(path) else {
                return 0;
            };
            (root.rules.clone(), state.nested_in(path))
        };
        let mut files = Vec::new();
        scan_tree(path, path, &rules, &nested, &mut files);
        let count = files.len();
        let mut state = self.state();
        for (file, stamp) in files {
            if state.known.len() >= MAX_TRACKED_FILES {
                break;
            }
            state.known.entry(file).or_insert(stamp);
        }
        count
    }

    /// Replaces a watched dir's rules with pinned `content`. Files the new
    /// rules admit that are not known yet join the baseline, in the same
    /// step as the rules change so the event task cannot announce them.
    fn repin(&self, path: &Path, content: &str) {
        let rules = Arc::new(build_rules(path, content, "artifacts_ignore_content"));
        let nested = self.state().nested_in(path);
        let mut files = Vec::new();
        scan_tree(path, path, &rules, &nested, &mut files);
        let mut state = self.state();
        if let Some(root) = state.roots.iter_mut().find(|root| root.path == path) {
            root.rules = rules;
            root.pinned = Some(content.to_owned());
        }
        for (file, stamp) in files {
            if state.known.len() >= MAX_TRACKED_FILES {
                break;
            }
            state.known.entry(file).or_insert(stamp);
        }
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
                let mut state = self.state();
                candidates
                    .into_iter()
                    .filter_map(|(path, stamp)| {
                        let message = state.decide(path.clone(), stamp)?;
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
                self.state().closed = true;
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
            let state = self.state();
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
        let mut state = self.state();
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
            .state()
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
                let state = self.state();
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
            let state = self.state();
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

    /// Uploads an answered announcement, at most [`MAX_CONCURRENT_UPLOADS`]
    /// at a time.
    async fn upload(self: Arc<Self>, seq: u64, job: UploadJob) {
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

    fn finish_upload(&self, seq: u64, job: &UploadJob, result: Result<(), String>) {
        let filename = job
            .path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        {
            let mut state = self.state();
            state.uploading.remove(&seq);
            match &result {
                Ok(()) => state.window.uploaded += 1,
                Err(_) => state.window.failed += 1,
            }
        }
        match result {
            Ok(()) => tracing::info!(filename, "artifact uploaded"),
            Err(error) => tracing::warn!(
                filename,
                url = %url_for_log(&job.url),
                error = %scrub_url(&error, &job.url),
                "artifact upload failed"
            ),
        }
        self.progress.notify_waiters();
    }
}

/// Creates `dir` if missing and returns its canonical path.
fn prepare_dir(dir: &str) -> Result<PathBuf, ArtifactError> {
    if dir.is_empty() {
        return Err(ArtifactError::EmptyPath);
    }
    let cannot = |e: io::Error| ArtifactError::CannotWatch {
        dir: dir.to_owned(),
        reason: e.to_string(),
    };
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(ArtifactError::NotADirectory {
                dir: dir.to_owned(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir).map_err(|e| {
            if e.kind() == io::ErrorKind::NotADirectory || e.kind() == io::ErrorKind::AlreadyExists
            {
                ArtifactError::NotADirectory {
                    dir: dir.to_owned(),
                }
            } else {
                cannot(e)
            }
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(ArtifactError::NotADirectory {
                dir: dir.to_owned(),
            });
        }
        Err(e) => return Err(cannot(e)),
    }
    fs::canonicalize(dir).map_err(cannot)
}

/// Gitignore rules rooted at `root`; invalid lines are skipped with a warning.
fn build_rules(root: &Path, content: &str, origin: &str) -> Gitignore {
    let mut builder = GitignoreBuilder::new(root);
    for line in content.lines() {
        if let Err(e) = builder.add_line(None, line) {
            tracing::warn!(origin, line, error = %e, "skipping invalid ignore pattern");
        }
    }
    builder.build().unwrap_or_else(|e| {
        tracing::warn!(origin, error = %e, "invalid ignore rules; ignoring nothing");
        Gitignore::empty()
    })
}

/// The rules of an unpinned dir: its [`IGNORE_FILE`], else the defaults.
fn load_rules(root: &Path) -> Gitignore {
    let file = root.join(IGNORE_FILE);
    let is_file = fs::symlink_metadata(&file).is_ok_and(|meta| meta.is_file());
    if is_file {
        match fs::read_to_string(&file) {
            Ok(text) => return build_rules(root, &text, IGNORE_FILE),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read; using the default ignores")
            }
        }
    }
    build_rules(root, &DEFAULT_IGNORES.join("\n"), "default ignores")
}

/// Adds every eligible file under `start` (which is `root` or inside it) to
/// `out`. Symlinks are neither followed nor listed; ignored directories and
/// other watched dirs (`nested`, scanned with their own rules) are pruned.
fn scan_tree(
    root: &Path,
    start: &Path,
    rules: &Gitignore,
    nested: &[PathBuf],
    out: &mut Vec<(PathBuf, Stamp)>,
) {
    let mut stack = vec![start.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            if file_type.is_dir() {
                if !nested.contains(&path) && !rules.matched(rel, true).is_ignore() {
                    stack.push(path);
                }
            } else if file_type.is_file()
                && entry.file_name() != IGNORE_FILE
                && !rules.matched(rel, false).is_ignore()
                && let Ok(meta) = entry.metadata()
                && meta.len() > 0
            {
                out.push((path, Stamp::of(&meta)));
            }
        }
    }
}

/// The version of `path` if it is an artifact: a non-empty regular file
/// (not a symlink) under `root`, reached without symlinks, not ignored.
fn eligible(root: &Path, rules: &Gitignore, path: &Path) -> Option<Stamp> {
    let rel = path.strip_prefix(root).ok()?;
    if rel.as_os_str().is_empty() || path.file_name()? == IGNORE_FILE {
        return None;
    }
    if rules.matched_path_or_any_parents(rel, false).is_ignore() {
        return None;
    }
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() == 0 || !reached_without_symlinks(path) {
        return None;
    }
    Some(Stamp::of(&meta))
}

/// Whether no directory on the way to `path` is a symlink (the watched
/// roots are canonical, so a canonical parent means a plain path).
fn reached_without_symlinks(path: &Path) -> bool {
    path.parent()
        .is_some_and(|parent| fs::canonicalize(parent).is_ok_and(|real| real == parent))
}

/// Re-checks an announced file right before it is read for upload.
fn still_uploadable(path: &Path) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Err(e) => Err(format!("the file is gone ({e})")),
        Ok(meta) if !meta.is_file() => Err("the path is no longer a regular file".into()),
        Ok(_) if !reached_without_symlinks(path) => {
            Err("the path now goes through a symlink".into())
        }
        Ok(_) => Ok(()),
    }
}

/// Events worth a look (opens and reads, including our own uploads', are not).
fn is_relevant(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A URL fit for logs: `scheme://host/path`, without credentials or query.
fn url_for_log(url: &str) -> String {
    let base = &url[..url.find(['?', '#']).unwrap_or(url.len())];
    let Some((scheme, rest)) = base.split_once("://") else {
        return "<not a URL>".into();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

/// Removes the full URL from an upload error, in case the uploader put it in.
fn scrub_url(error: &str, url: &str) -> String {
    if url.is_empty() {
        return error.to_owned();
    }
    let mut text = error.replace(url, &url_for_log(url));
    if let Some((_, query)) = url.split_once('?')
        && !query.is_empty()
    {
        text = text.replace(query, "[query removed]");
    }
    text
}

/// A file seen changing without close-after-write, or a new directory,
/// waiting to be stable.
struct Unsettled {
    /// Version at the last check (`None` until the first check).
    stamp: Option<Stamp>,
    /// When it last changed (or an event said it did).
    since: Instant,
}

/// Drains watcher events: announces closed-after-write files at once and
/// others once stable. Holds the artifacts weakly so it ends with them.
async fn event_loop(
    inner: Weak<Inner>,
    mut rx: mpsc::Receiver<Event>,
    overflow: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut unsettled: HashMap<PathBuf, Unsettled> = HashMap::new();
    let mut next_check: Option<Instant> = None;
    let mut rescan_at: Option<Instant> = None;
    let mut last_rescan: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = sleep_until_some(rescan_at) => {
                rescan_at = None;
                let Some(inner) = inner.upgrade() else { return };
                tracing::debug!("file events were lost; rescanning the artifacts dirs");
                inner.scan_and_announce().await;
                last_rescan = Some(Instant::now());
            }
            event = rx.recv() => {
                let Some(event) = event else { return };
                let Some(inner) = inner.upgrade() else { return };
                if (overflow.swap(false, Ordering::Relaxed) || event.need_rescan())
                    && rescan_at.is_none()
                {
                    // At most one full walk per RESCAN_EVERY under a flood.
                    let earliest = last_rescan.map_or_else(Instant::now, |at| at + RESCAN_EVERY);
                    rescan_at = Some(earliest.max(Instant::now()));
                }
                on_event(&inner, event, &mut unsettled).await;
            }
            () = sleep_until_some(next_check) => {
                next_check = None;
                let Some(inner) = inner.upgrade() else { return };
                let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = settle_check(&mut unsettled)
                    .into_iter()
                    .partition(|path| fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir()));
                inner.consider(files).await;
                // The second look at a new dir (see `on_event`).
                for dir in dirs {
                    for (file, stamp) in inner.files_under(dir).await {
                        mark_unsettled(&mut unsettled, file, Some(stamp));
                    }
                }
            }
        }
        if next_check.is_none() && !unsettled.is_empty() {
            next_check = Some(Instant::now() + STABLE_CHECK_EVERY);
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn on_event(inner: &Arc<Inner>, event: Event, unsettled: &mut HashMap<PathBuf, Unsettled>) {
    let mut paths = Vec::with_capacity(event.paths.len());
    for path in event.paths {
        if !inner.reload_if_ignore_file(&path) {
            paths.push(path);
        }
    }
    let mut now_paths = Vec::new();
    let mut appeared = Vec::new();
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            for path in paths {
                unsettled.remove(&path);
                now_paths.push(path);
            }
        }
        EventKind::Access(_) => {}
        EventKind::Remove(_) => {
            let mut state = inner.state();
            for path in paths {
                unsettled.remove(&path);
                state.forget(&path, false);
            }
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            let mut state = inner.state();
            for path in paths {
                unsettled.retain(|p, _| !p.starts_with(&path));
                state.forget(&path, true);
            }
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            if let [from, to] = paths.as_slice() {
                unsettled.retain(|p, _| !p.starts_with(from));
                inner.state().forget(from, true);
                appeared.push((to.clone(), true));
            }
        }
        EventKind::Modify(ModifyKind::Name(_)) => {
            // Renamed into place: complete already.
            appeared.extend(paths.into_iter().map(|path| (path, true)));
        }
        EventKind::Create(_) => appeared.extend(paths.into_iter().map(|path| (path, false))),
        _ => {
            for path in paths {
                mark_unsettled(unsettled, path, None);
            }
        }
    }
    for (path, complete) in appeared {
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir());
        if is_dir {
            // Files may land in a new dir before the watcher has added a
            // watch for it; those have no events. Look now, and once more
            // when the dir has been quiet for STABLE_FOR (surely watched by
            // then).
            for (file, stamp) in inner.files_under(path.clone()).await {
                mark_unsettled(unsettled, file, Some(stamp));
            }
            mark_unsettled(unsettled, path, None);
        } else if complete {
            now_paths.push(path);
        } else {
            mark_unsettled(unsettled, path, None);
        }
    }
    inner.consider(now_paths).await;
}

fn mark_unsettled(
    unsettled: &mut HashMap<PathBuf, Unsettled>,
    path: PathBuf,
    stamp: Option<Stamp>,
) {
    let now = Instant::now();
    if let Some(entry) = unsettled.get_mut(&path) {
        entry.since = now;
    } else if unsettled.len() < MAX_STABILIZING {
        unsettled.insert(path, Unsettled { stamp, since: now });
    }
}

/// Re-checks unsettled files; returns those unchanged for [`STABLE_FOR`].
fn settle_check(unsettled: &mut HashMap<PathBuf, Unsettled>) -> Vec<PathBuf> {
    let now = Instant::now();
    let mut ready = Vec::new();
    unsettled.retain(|path, entry| {
        let current = fs::symlink_metadata(path).ok().map(|meta| Stamp::of(&meta));
        if current.is_none() {
            return false;
        }
        if current != entry.stamp {
            entry.stamp = current;
            entry.since = now;
            return true;
        }
        if now.duration_since(entry.since) >= STABLE_FOR {
            ready.push(path.clone());
            return false;
        }
        true
    });
    ready
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicUsize;

    use tempfile::TempDir;

    use super::*;

    /// What the fake uploader received.
    #[derive(Debug, Clone)]
    struct Uploaded {
        path: PathBuf,
        bytes: Vec<u8>,
        url: String,
        content_type: String,
    }

    type Log<T> = Arc<Mutex<Vec<T>>>;

    /// An uploader that copies the file's bytes, failing the first
    /// `fail_first` calls.
    fn fake_upload(fail_first: usize) -> (UploadFn, Log<Uploaded>) {
        let log: Log<Uploaded> = Log::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let sink = log.clone();
        let upload: UploadFn = Arc::new(move |job: UploadJob| {
            let sink = sink.clone();
            let call = calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if call < fail_first {
                    return Err(format!("HTTP 503 from {}", job.url));
                }
                let bytes = tokio::fs::read(&job.path)
                    .await
                    .map_err(|e| e.to_string())?;
                sink.lock().unwrap().push(Uploaded {
                    path: job.path,
                    bytes,
                    url: job.url,
                    content_type: job.content_type,
                });
                Ok(())
            })
        });
        (upload, log)
    }

    fn response(filename: &str, filepath: &str) -> wire::ArtifactUploadResponse {
        wire::ArtifactUploadResponse {
            filename: filename.into(),
            filepath: filepath.into(),
            presigned_url: format!("https://bucket.example/up/{filename}?X-Amz-Signature=s3cr3t"),
            content_type: "text/plain".into(),
        }
    }

    /// Artifacts plus a simulated client that answers every announcement.
    struct Harness {
        artifacts: Artifacts,
        announced: Log<(String, String)>,
        uploads: Log<Uploaded>,
        dir: TempDir,
        root: PathBuf,
    }

    impl Harness {
        fn new() -> Self {
            Self::failing(0)
        }

        fn failing(fail_first: usize) -> Self {
            let (outbox, mut rx) = Outbox::channel(64);
            let (upload, uploads) = fake_upload(fail_first);
            let artifacts = Artifacts::new(outbox, upload);
            let announced = Log::default();
            let (client, log) = (artifacts.clone(), announced.clone());
            tokio::spawn(async move {
                while let Some(message) = rx.recv().await {
                    if let OutboundMessage::ArtifactUploadRequestMessage { filename, filepath } =
                        message
                    {
                        log.lock()
                            .unwrap()
                            .push((filename.clone(), filepath.clone()));
                        client.on_upload_response(response(&filename, &filepath));
                    }
                }
            });
            let dir = TempDir::new().unwrap();
            let root = fs::canonicalize(dir.path()).unwrap();
            Self {
                artifacts,
                announced,
                uploads,
                dir,
                root,
            }
        }

        fn watch(&self, ignore: Option<&str>) {
            self.artifacts
                .watch(&[self.root.to_str().unwrap().to_owned()], ignore)
                .unwrap();
        }

        async fn flush(&self) -> FlushReport {
            self.artifacts.flush(Duration::from_secs(10)).await
        }

        fn names(&self) -> BTreeSet<String> {
            self.announced
                .lock()
                .unwrap()
                .iter()
                .map(|(name, _)| name.clone())
                .collect()
        }

        fn announced_count(&self) -> usize {
            self.announced.lock().unwrap().len()
        }

        fn uploaded(&self) -> Vec<Uploaded> {
            self.uploads.lock().unwrap().clone()
        }
    }

    fn write(path: &Path, bytes: &[u8]) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, bytes).unwrap();
    }

    fn append(path: &Path, bytes: &[u8]) {
        use std::io::Write;
        let mut file = fs::OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(bytes).unwrap();
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn new_file_is_announced_once_with_name_and_absolute_path() {
        let h = Harness::new();
        h.watch(None);
        let file = h.root.join("report.txt");
        write(&file, b"hello");
        // Announced by the watcher on close-after-write, without a flush.
        eventually("the announcement", || h.announced_count() == 1).await;
        eventually("the upload", || h.uploaded().len() == 1).await;
        let report = h.flush().await;
        assert_eq!(report.announced, 1);
        assert_eq!(report.uploaded, 1);
        assert_eq!(report.timed_out, 0);
        assert_eq!(
            *h.announced.lock().unwrap(),
            vec![("report.txt".to_string(), file.to_str().unwrap().to_string())]
        );
        let up = &h.uploaded()[0];
        assert_eq!(up.path, file);
        assert_eq!(up.bytes, b"hello");
        assert_eq!(up.content_type, "text/plain");
        assert!(up.url.starts_with("https://bucket.example/up/report.txt?"));
        assert_eq!(h.flush().await, FlushReport::default());
    }

    #[tokio::test]
    async fn file_written_without_closing_is_announced_once_stable() {
        use std::io::Write;
        let h = Harness::new();
        h.watch(None);
        let mut open = fs::File::create(h.root.join("live.log")).unwrap();
        open.write_all(b"still open").unwrap();
        open.flush().unwrap();
        eventually("the announcement", || h.announced_count() == 1).await;
        assert_eq!(h.names(), BTreeSet::from(["live.log".to_string()]));
        drop(open);
    }

    #[tokio::test]
    async fn files_in_new_nested_dirs_are_found_without_a_flush() {
        let h = Harness::new();
        h.watch(None);
        // The file lands before the watcher can add the new dirs' watches.
        write(&h.root.join("a/b/c/deep.txt"), b"deep");
        eventually("the announcement", || h.announced_count() == 1).await;
        write(&h.root.join("a/b/c/d/deeper.txt"), b"deeper");
        eventually("the second announcement", || h.announced_count() == 2).await;
        let report = h.flush().await;
        assert_eq!((report.announced, report.uploaded), (2, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_files_is_caught_up_without_a_flush() {
        let h = Harness::new();
        h.watch(None);
        let count = 2_000;
        for i in 0..count {
            write(&h.root.join(format!("f{}/{i}.txt", i % 10)), b"x");
        }
        eventually("every announcement", || {
            let announced = h.announced_count();
            assert!(announced <= count, "announced {announced} times");
            announced == count
        })
        .await;
        let report = h.flush().await;
        assert_eq!((report.announced, report.uploaded), (count, count));
        let unique: BTreeSet<String> = h
            .announced
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect();
        assert_eq!(unique.len(), count);
    }

    #[tokio::test]
    async fn preexisting_files_are_the_baseline() {
        let h = Harness::new();
        write(&h.root.join("old.txt"), b"old");
        write(&h.root.join("sub/older.txt"), b"older");
        h.watch(None);
        let report = h.flush().await;
        assert_eq!(report, FlushReport::default());
        assert_eq!(h.announced_count(), 0);
    }

    #[tokio::test]
    async fn modified_file_is_announced_again() {
        let h = Harness::new();
        let old = h.root.join("old.txt");
        write(&old, b"v1");
        h.watch(None);
        let fresh = h.root.join("fresh.txt");
        write(&fresh, b"a");
        assert_eq!(h.flush().await.uploaded, 1);
        append(&fresh, b"b");
        append(&old, b" v2");
        let report = h.flush().await;
        assert_eq!((report.announced, report.uploaded), (2, 2));
        let uploads = h.uploaded();
        let last = |path: &Path| {
            uploads
                .iter()
                .rev()
                .find(|u| u.path == path)
                .unwrap()
                .bytes
                .clone()
        };
        assert_eq!(last(&fresh), b"ab");
        assert_eq!(last(&old), b"v1 v2");
        assert_eq!(h.announced_count(), 3);
    }

    #[tokio::test]
    async fn empty_file_waits_for_content() {
        let h = Harness::new();
        h.watch(None);
        let file = h.root.join("later.txt");
        write(&file, b"");
        assert_eq!(h.flush().await.announced, 0);
        append(&file, b"content");
        let report = h.flush().await;
        assert_eq!((report.announced, report.uploaded), (1, 1));
        assert_eq!(h.uploaded()[0].bytes, b"content");
    }

    #[tokio::test]
    async fn new_nested_dirs_and_repeated_names_are_separate_artifacts() {
        let h = Harness::new();
        h.watch(None);
        let a = h.root.join("run1/deep/out.txt");
        let b = h.root.join("run2/out.txt");
        write(&a, b"first");
        write(&b, b"second");
        let report = h.flush().await;
        assert_eq!((report.announced, report.uploaded), (2, 2));
        let paths: BTreeSet<String> = h
            .announced
            .lock()
            .unwrap()
            .iter()
            .map(|(name, path)| {
                assert_eq!(name, "out.txt");
                path.clone()
            })
            .collect();
        let expected = BTreeSet::from([
            a.to_str().unwrap().to_string(),
            b.to_str().unwrap().to_string(),
        ]);
        assert_eq!(paths, expected);
        let mut bytes: Vec<Vec<u8>> = h.uploaded().into_iter().map(|u| u.bytes).collect();
        bytes.sort();
        assert_eq!(bytes, vec![b"first".to_vec(), b"second".to_vec()]);
    }

    #[tokio::test]
    async fn pinned_ignore_content_applies_and_is_replaced() {
        let h = Harness::new();
        // Pinned content beats both the ignore file and the defaults.
        write(&h.root.join(IGNORE_FILE), b"*.txt\n");
        h.watch(Some("*.log\nsecret/\n"));
        write(&h.root.join("a.log"), b"x");
        write(&h.root.join("secret/key.txt"), b"x");
        write(&h.root.join("node_modules/m.js"), b"x");
        write(&h.root.join("keep.txt"), b"x");
        h.flush().await;
        assert_eq!(
            h.names(),
            BTreeSet::from(["keep.txt".to_string(), "m.js".to_string()])
        );
        // A later request's content replaces the pin; files the old rules
        // hid (a.log) are part of the baseline, not announced.
        h.watch(Some("*.txt\n"));
        write(&h.root.join("b.log"), b"x");
        write(&h.root.join("c.txt"), b"x");
        h.flush().await;
        assert_eq!(
            h.names(),
            BTreeSet::from([
                "keep.txt".to_string(),
                "m.js".to_string(),
                "b.log".to_string()
            ])
        );
    }

    #[tokio::test]
    async fn artifactignore_file_applies_and_reloads() {
        let h = Harness::new();
        let ignore_file = h.root.join(IGNORE_FILE);
        write(&ignore_file, b"# scratch files\n*.tmp\n");
        h.watch(None);
        write(&h.root.join("x.tmp"), b"x");
        write(&h.root.join("y.txt"), b"y");
        write(
            &h.root.join("node_modules/kept.js"),
            b"defaults are replaced",
        );
        h.flush().await;
        assert_eq!(
            h.names(),
            BTreeSet::from(["y.txt".to_string(), "kept.js".to_string()])
        );
        // Edit the rules: the new rule applies, the ignore file itself is
        // never an artifact, and x.tmp (hidden until now) becomes one.
        fs::write(&ignore_file, b"*.dat\n").unwrap();
        write(&h.root.join("z.tmp"), b"z");
        write(&h.root.join("w.dat"), b"w");
        h.flush().await;
        assert_eq!(
            h.names(),
            BTreeSet::from([
                "y.txt".to_string(),
                "kept.js".to_string(),
                "z.tmp".to_string(),
                "x.tmp".to_string()
            ])
        );
    }

    #[tokio::test]
    async fn default_ignores_apply() {
        let h = Harness::new();
        h.watch(None);
        for ignored in [
            "node_modules/pkg/x.js",
            "sub/node_modules/y.js",
            ".venv/lib/a.py",
            "venv/b.py",
            "env/c.py",
            ".env/d.py",
            "dist/bundle.js",
            "__pycache__/m.pyc",
            ".pytest_cache/v",
        ] {
            write(&h.root.join(ignored), b"x");
        }
        write(&h.root.join("src/app.js"), b"x");
        write(&h.root.join(".env.local"), b"a file, not the .env/ dir");
        let report = h.flush().await;
        assert_eq!(report.announced, 2);
        assert_eq!(
            h.names(),
            BTreeSet::from(["app.js".to_string(), ".env.local".to_string()])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_written_just_before_flush_is_uploaded_before_it_returns() {
        let h = Harness::new();
        h.watch(None);
        let file = h.root.join("last-millisecond.txt");
        fs::write(&file, b"just in time").unwrap();
        let report = h.flush().await;
        assert_eq!(report.announced, 1);
        assert_eq!(report.uploaded, 1);
        assert_eq!(report.timed_out, 0);
        let uploads = h.uploaded();
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0].path, file);
        assert_eq!(uploads[0].bytes, b"just in time");
    }

    #[tokio::test]
    async fn flush_is_bounded_when_the_client_never_answers() {
        let (artifacts, mut rx, uploads, _dir, root) = manual();
        write(&root.join("a.txt"), b"a");
        let started = Instant::now();
        let report = artifacts.flush(Duration::from_millis(300)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(report.announced, 1);
        assert_eq!(report.timed_out, 1);
        assert_eq!(report.uploaded, 0);
        assert!(matches!(
            rx.try_recv(),
            Ok(OutboundMessage::ArtifactUploadRequestMessage { .. })
        ));
        assert!(uploads.lock().unwrap().is_empty());
    }

    /// Artifacts with a client the test drives by hand.
    fn manual() -> (
        Artifacts,
        mpsc::Receiver<OutboundMessage>,
        Log<Uploaded>,
        TempDir,
        PathBuf,
    ) {
        let (outbox, rx) = Outbox::channel(8);
        let (upload, uploads) = fake_upload(0);
        let artifacts = Artifacts::new(outbox, upload);
        let dir = TempDir::new().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        artifacts
            .watch(&[root.to_str().unwrap().to_owned()], None)
            .unwrap();
        (artifacts, rx, uploads, dir, root)
    }

    async fn next_announcement(rx: &mut mpsc::Receiver<OutboundMessage>) -> (String, String) {
        let message = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an announcement in time");
        let Some(OutboundMessage::ArtifactUploadRequestMessage { filename, filepath }) = message
        else {
            panic!("expected an announcement, got {message:?}")
        };
        (filename, filepath)
    }

    #[tokio::test]
    async fn announcements_cut_off_by_the_bound_are_made_by_the_next_flush() {
        // Room for one message: the socket is backed up after that.
        let (outbox, mut rx) = Outbox::channel(1);
        let (upload, uploads) = fake_upload(0);
        let artifacts = Artifacts::new(outbox, upload);
        let dir = TempDir::new().unwrap();
        artifacts
            .watch(&[dir.path().to_str().unwrap().to_owned()], None)
            .unwrap();
        for name in ["a.txt", "b.txt", "c.txt"] {
            write(&dir.path().join(name), b"x");
        }
        let first = artifacts.flush(Duration::from_millis(300)).await;
        // One fits in the channel (the watcher may have more queued behind
        // it); what the flush's own scan could not send was unrecorded.
        assert!((1..=3).contains(&first.announced), "{first:?}");
        assert_eq!(first.timed_out, first.announced);
        // The client catches up: what was cut off is announced now.
        let client = artifacts.clone();
        tokio::spawn(async move {
            while let Some(OutboundMessage::ArtifactUploadRequestMessage { filename, filepath }) =
                rx.recv().await
            {
                client.on_upload_response(response(&filename, &filepath));
            }
        });
        let second = artifacts.flush(Duration::from_secs(10)).await;
        assert_eq!(first.announced + second.announced, 3);
        assert_eq!(second.timed_out, 0);
        eventually("three uploads", || uploads.lock().unwrap().len() == 3).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_while_awaiting_an_answer_are_not_announced_twice() {
        let (artifacts, mut rx, uploads, _dir, root) = manual();
        let file = root.join("grow.txt");
        write(&file, b"1");
        let (filename, filepath) = next_announcement(&mut rx).await;
        append(&file, b"2");
        // The pending answer's upload will read "12": no second announcement.
        let flushing = artifacts.clone();
        let flush = tokio::spawn(async move { flushing.flush(Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        artifacts.on_upload_response(response(&filename, &filepath));
        let report = flush.await.unwrap();
        assert_eq!(
            (report.announced, report.uploaded, report.timed_out),
            (1, 1, 0)
        );
        assert!(rx.try_recv().is_err(), "announced twice");
        assert_eq!(uploads.lock().unwrap()[0].bytes, b"12");
    }

    #[tokio::test]
    async fn a_flush_does_not_wait_again_for_what_an_earlier_one_gave_up_on() {
        let (artifacts, mut rx, uploads, _dir, root) = manual();
        let file = root.join("unanswered.txt");
        write(&file, b"1");
        let short = Duration::from_millis(100);
        assert_eq!(artifacts.flush(short).await.timed_out, 1);
        let (filename, filepath) = next_announcement(&mut rx).await;
        // Nothing new: the next request's flush returns at once.
        let started = Instant::now();
        let report = artifacts.flush(Duration::from_secs(30)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(report, FlushReport::default());
        // A change to the file is announced afresh, and a late answer to
        // either announcement uploads the newest bytes once.
        append(&file, b"2");
        assert_eq!(artifacts.flush(short).await.announced, 1);
        assert_eq!(
            next_announcement(&mut rx).await,
            (filename.clone(), filepath.clone())
        );
        artifacts.on_upload_response(response(&filename, &filepath));
        artifacts.on_upload_response(response(&filename, &filepath));
        eventually("the upload", || !uploads.lock().unwrap().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let uploads = uploads.lock().unwrap();
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0].bytes, b"12");
    }

    #[tokio::test]
    async fn responses_for_paths_not_awaiting_an_answer_upload_nothing() {
        let h = Harness::new();
        write(&h.root.join("baseline.txt"), b"present before watching");
        h.watch(None);
        let done = h.root.join("done.txt");
        write(&done, b"x");
        assert_eq!(h.flush().await.uploaded, 1);
        let done_path = done.to_str().unwrap();
        let baseline = h.root.join("baseline.txt");
        for (name, path) in [
            ("passwd", "/etc/passwd"),
            ("baseline.txt", baseline.to_str().unwrap()),
            // Already answered and uploaded: a replay does nothing.
            ("done.txt", done_path),
            ("x", "relative/x"),
        ] {
            h.artifacts.on_upload_response(response(name, path));
        }
        let report = h.flush().await;
        assert_eq!(report, FlushReport::default());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let uploads = h.uploaded();
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0].path, done);
    }

    #[tokio::test]
    async fn dirs_accumulate_and_two_can_be_watched_at_once() {
        let h = Harness::new();
        let a = h.root.join("a");
        let b = h.root.join("b");
        let c = h.root.join("c");
        h.artifacts
            .watch(
                &[
                    a.to_str().unwrap().to_owned(),
                    b.to_str().unwrap().to_owned(),
                ],
                None,
            )
            .unwrap();
        write(&a.join("one.txt"), b"1");
        write(&b.join("two.txt"), b"2");
        let report = h.flush().await;
        assert_eq!((report.announced, report.uploaded), (2, 2));
        // A later request adds a dir; the earlier ones stay watched.
        h.artifacts
            .watch(&[c.to_str().unwrap().to_owned()], None)
            .unwrap();
        write(&a.join("three.txt"), b"3");
        write(&c.join("four.txt"), b"4");
        write(&h.root.join("outside.txt"), b"not in a watched dir");
        let report = h.flush().await;
        assert_eq!((report.announced, report.uploaded), (2, 2));
        assert_eq!(
            h.names(),
            ["one.txt", "two.txt", "three.txt", "four.txt"]
                .map(String::from)
                .into()
        );
    }

    #[tokio::test]
    async fn symlinks_are_never_announced_or_uploaded() {
        let h = Harness::new();
        let outside = TempDir::new().unwrap();
        write(&outside.path().join("secret.txt"), b"secret");
        let watched = h.root.join("w");
        h.artifacts
            .watch(&[watched.to_str().unwrap().to_owned()], None)
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", watched.join("passwd")).unwrap();
        std::os::unix::fs::symlink(outside.path(), watched.join("linked")).unwrap();
        write(&watched.join("real.txt"), b"real");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let report = h.flush().await;
        assert_eq!((report.announced, report.uploaded), (1, 1));
        assert_eq!(h.names(), BTreeSet::from(["real.txt".to_string()]));
        // Even when asked directly.
        for path in [watched.join("passwd"), watched.join("linked/secret.txt")] {
            h.artifacts
                .on_upload_response(response("x", path.to_str().unwrap()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(h.uploaded().len(), 1);
    }

    #[tokio::test]
    async fn dir_swapped_for_a_symlink_before_upload_is_refused() {
        let (artifacts, mut rx, uploads, _dir, root) = manual();
        write(&root.join("sub/a.txt"), b"innocent");
        let (filename, filepath) = next_announcement(&mut rx).await;
        let outside = TempDir::new().unwrap();
        write(&outside.path().join("a.txt"), b"secret");
        fs::remove_dir_all(root.join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("sub")).unwrap();
        artifacts.on_upload_response(response(&filename, &filepath));
        let report = artifacts.flush(Duration::from_secs(10)).await;
        assert_eq!((report.uploaded, report.failed), (0, 1));
        assert!(uploads.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn failed_upload_is_reported_and_a_later_change_retries() {
        let h = Harness::failing(1);
        h.watch(None);
        let file = h.root.join("flaky.txt");
        write(&file, b"v1");
        let report = h.flush().await;
        assert_eq!(
            (report.announced, report.uploaded, report.failed),
            (1, 0, 1)
        );
        append(&file, b"v2");
        let report = h.flush().await;
        assert_eq!(
            (report.announced, report.uploaded, report.failed),
            (1, 1, 0)
        );
        assert_eq!(h.uploaded()[0].bytes, b"v1v2");
    }

    #[tokio::test]
    async fn missing_dirs_are_created_and_unusable_ones_are_errors() {
        let h = Harness::new();
        let missing = h.root.join("not/yet/there");
        h.artifacts
            .watch(&[missing.to_str().unwrap().to_owned()], None)
            .unwrap();
        assert!(missing.is_dir());
        let file = h.root.join("plain-file");
        write(&file, b"x");
        let err = h
            .artifacts
            .watch(&[file.to_str().unwrap().to_owned()], None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("artifacts dir {} is not a directory", file.display())
        );
        let under_file = file.join("sub");
        let err = h
            .artifacts
            .watch(&[under_file.to_str().unwrap().to_owned()], None)
            .unwrap_err();
        assert!(matches!(err, ArtifactError::NotADirectory { .. }), "{err}");
        assert_eq!(
            h.artifacts.watch(&[String::new()], None).unwrap_err(),
            ArtifactError::EmptyPath
        );
        drop(h.dir);
    }

    #[tokio::test]
    async fn flush_without_dirs_and_after_shutdown_returns_at_once() {
        let h = Harness::new();
        assert!(!h.artifacts.is_active());
        let started = Instant::now();
        assert_eq!(
            h.artifacts.flush(Duration::from_secs(30)).await,
            FlushReport::default()
        );
        h.watch(None);
        assert!(h.artifacts.is_active());
        h.artifacts.shutdown();
        assert!(!h.artifacts.is_active());
        write(&h.root.join("after.txt"), b"x");
        assert_eq!(h.flush().await, FlushReport::default());
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(h.announced_count(), 0);
    }

    #[test]
    fn logged_urls_carry_no_credentials() {
        assert_eq!(
            url_for_log("https://user:pw@bucket.s3.amazonaws.com/a/b.txt?X-Amz-Signature=abc#f"),
            "https://bucket.s3.amazonaws.com/a/b.txt"
        );
        assert_eq!(url_for_log("http://host:9000"), "http://host:9000");
        assert_eq!(url_for_log("garbage?token=1"), "<not a URL>");
        let url = "https://h/p?sig=abc";
        assert_eq!(
            scrub_url(&format!("error sending request for url ({url})"), url),
            "error sending request for url (https://h/p)"
        );
        assert_eq!(
            scrub_url("bad query sig=abc", url),
            "bad query [query removed]"
        );
    }
}
