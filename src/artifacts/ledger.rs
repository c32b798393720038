//! The artifact ledger: what has been announced, answered and uploaded.
//! Pure bookkeeping, no I/O: the watcher, the flush scan and the client's
//! answers all go through it, under one lock.
//!
//! Every file goes through these states:
//!
//! ```text
//!  (unknown) ──decide──▶ pending ──claim──▶ uploading ──finish──▶ (known)
//!      ▲                 │   seq               seq
//!      │                 │
//!      └── unsend / forget_unanswered (announcement lost, try again)
//! ```
//!
//! - `known` holds the last announced (or baseline) [`Stamp`] of every
//!   eligible file. A file is announced only when its stamp differs from
//!   the known one, so the watcher and the scan, which both find files,
//!   never announce the same version twice.
//! - Each announcement gets a sequence number (`seq`). A flush waits for
//!   the announcements numbered after the previous flush (`flushed_through`)
//!   up to the latest when it started: later ones belong to the next flush,
//!   earlier ones were given up on (a late answer still uploads).
//! - A client answer is honoured only for a path that is `pending`: that is
//!   the whole defence against a client asking for `/etc/passwd`.
//! - Announcements carry the path redacted (a secret in a user name or a
//!   file name becomes `[REDACTED]`), and the client echoes that text back,
//!   so answers are matched by the text the client saw (`shown`). Several
//!   pending files that redact to the same text are matched in the order
//!   they were announced.

use std::collections::{HashMap, VecDeque};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ignore::gitignore::Gitignore;

use crate::redact::Redactor;
use crate::wire::OutboundMessage;

/// Most files whose state is remembered; beyond this new files are not
/// announced (and a warning says so) so memory stays bounded.
const MAX_TRACKED_FILES: usize = 200_000;

/// What one [`Artifacts::flush`](super::Artifacts::flush) saw, counted since
/// the previous flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FlushReport {
    /// Files announced (by events or by this flush's scan).
    pub(crate) announced: usize,
    /// Uploads that finished successfully.
    pub(crate) uploaded: usize,
    /// Uploads that failed (logged with the file name and the error).
    pub(crate) failed: usize,
    /// Announcements still unanswered, or uploads still running, when the
    /// bound ran out (or the client connection closed).
    pub(crate) timed_out: usize,
}

/// What identifies a version of a file: a change to any of these is a
/// change to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
    ino: u64,
}

impl Stamp {
    pub(crate) fn of(meta: &Metadata) -> Self {
        Self {
            len: meta.len(),
            mtime: meta.modified().ok(),
            ino: meta.ino(),
        }
    }
}

/// A watched directory.
pub(crate) struct Root {
    /// Canonical absolute path.
    pub(crate) path: PathBuf,
    pub(crate) rules: Arc<Gitignore>,
    /// The request's `artifacts_ignore_content` the rules came from; `None`
    /// when they come from the ignore file or the defaults.
    pub(crate) pinned: Option<String>,
}

/// Everything the watcher task, flushes, and responses share.
#[derive(Default)]
pub(crate) struct Ledger {
    pub(crate) roots: Vec<Root>,
    /// Last announced (or baseline) version of every eligible file.
    known: HashMap<PathBuf, Stamp>,
    /// Announced, not yet answered: path -> announcement sequence number.
    pending: HashMap<PathBuf, u64>,
    /// The announced (redacted) `filepath` -> the files announced under it,
    /// oldest first. May hold files no longer pending; claims skip them.
    shown: HashMap<String, VecDeque<PathBuf>>,
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
    pub(crate) closed: bool,
    warned_full: bool,
}

impl Ledger {
    /// Records a candidate file and returns the announcement to send, if
    /// it is new or changed and not already awaiting an answer since the
    /// last flush (the upload that answer starts reads the newest bytes).
    /// The message is redacted with `redactor` (the session's secrets),
    /// and the answer is expected to echo its `filepath`.
    pub(crate) fn decide(
        &mut self,
        path: PathBuf,
        stamp: Stamp,
        redactor: &Redactor,
    ) -> Option<OutboundMessage> {
        if self.known.get(&path) == Some(&stamp) {
            return None;
        }
        if !self.known.contains_key(&path) && !self.has_room() {
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
        let shown = redactor.redact_str(filepath).into_owned();
        let message = OutboundMessage::ArtifactUploadRequestMessage {
            filename: redactor.redact_str(filename).into_owned(),
            filepath: shown.clone(),
        };
        let queue = self.shown.entry(shown).or_default();
        if !queue.contains(&path) {
            queue.push_back(path.clone());
        }
        self.seq += 1;
        self.pending.insert(path, self.seq);
        self.window.announced += 1;
        Some(message)
    }

    /// Whether another file can be tracked; warns once when full.
    fn has_room(&mut self) -> bool {
        if self.known.len() < MAX_TRACKED_FILES {
            return true;
        }
        if !self.warned_full {
            self.warned_full = true;
            tracing::warn!(
                limit = MAX_TRACKED_FILES,
                "too many files in the artifacts dirs; further new files are not announced"
            );
        }
        false
    }

    /// Files already there when a dir starts being watched (or its rules
    /// change): known, never announced unless they change later.
    pub(crate) fn add_baseline(&mut self, files: Vec<(PathBuf, Stamp)>) {
        for (file, stamp) in files {
            if self.known.len() >= MAX_TRACKED_FILES {
                break;
            }
            self.known.entry(file).or_insert(stamp);
        }
    }

    /// An announcement that was recorded but never sent: forget it, so a
    /// later scan announces the file again.
    pub(crate) fn unsend(&mut self, path: &Path) {
        self.pending.remove(path);
        self.known.remove(path);
        self.window.announced = self.window.announced.saturating_sub(1);
    }

    /// The client answered for `shown` (the announced, redacted
    /// `filepath`): the oldest file announced under it that still awaits an
    /// answer moves to uploading, and its canonical path and sequence number
    /// are returned; if there is none, `None`.
    pub(crate) fn claim(&mut self, shown: &str) -> Option<(PathBuf, u64)> {
        let queue = self.shown.get_mut(shown)?;
        let claimed = std::iter::from_fn(|| queue.pop_front())
            .find_map(|path| self.pending.remove(&path).map(|seq| (path, seq)));
        if queue.is_empty() {
            self.shown.remove(shown);
        }
        let (path, seq) = claimed?;
        self.uploading.insert(seq, path.clone());
        Some((path, seq))
    }

    /// The upload of announcement `seq` ended.
    pub(crate) fn finish(&mut self, seq: u64, ok: bool) {
        self.uploading.remove(&seq);
        if ok {
            self.window.uploaded += 1;
        } else {
            self.window.failed += 1;
        }
    }

    /// Forgets every unanswered announcement (and the version it
    /// announced), so the next scan announces those files again.
    pub(crate) fn forget_unanswered(&mut self) {
        self.shown.clear();
        for (path, _) in self.pending.drain() {
            self.known.remove(&path);
        }
    }

    /// Opens a flush: the range of announcements it waits for,
    /// `(after, through]`.
    pub(crate) fn flush_range(&self) -> (u64, u64) {
        (self.flushed_through, self.seq)
    }

    /// Announcements in `after+1..=through` still unanswered or uploading.
    pub(crate) fn outstanding(&self, (after, through): (u64, u64)) -> usize {
        let counts = |seq: &u64| (after + 1..=through).contains(seq);
        self.pending.values().filter(|seq| counts(seq)).count()
            + self.uploading.keys().filter(|seq| counts(seq)).count()
    }

    /// Closes a flush: its counts, and the announcements it gave up on are
    /// not waited for again.
    pub(crate) fn close_flush(&mut self, range: (u64, u64)) -> FlushReport {
        let mut report = std::mem::take(&mut self.window);
        report.timed_out = self.outstanding(range);
        self.flushed_through = range.1;
        report
    }

    /// The most specific watched directory containing `path`.
    pub(crate) fn root_of(&self, path: &Path) -> Option<&Root> {
        self.roots
            .iter()
            .filter(|root| path.starts_with(&root.path))
            .max_by_key(|root| root.path.components().count())
    }

    /// Watched directories strictly inside `root` (scanned on their own,
    /// with their own rules).
    pub(crate) fn nested_in(&self, root: &Path) -> Vec<PathBuf> {
        self.roots
            .iter()
            .filter(|other| other.path != root && other.path.starts_with(root))
            .map(|other| other.path.clone())
            .collect()
    }

    /// A file (or, with `tree`, everything under a directory) went away.
    pub(crate) fn forget(&mut self, path: &Path, tree: bool) {
        if self.known.remove(path).is_none() && tree {
            self.known.retain(|known, _| !known.starts_with(path));
        }
    }

    /// Session end: nothing is watched or remembered any more.
    pub(crate) fn clear(&mut self) {
        self.roots.clear();
        self.known.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(len: u64) -> Stamp {
        Stamp {
            len,
            mtime: None,
            ino: 1,
        }
    }

    fn shown_path(message: &OutboundMessage) -> &str {
        match message {
            OutboundMessage::ArtifactUploadRequestMessage { filepath, .. } => filepath,
            other => panic!("not an announcement: {other:?}"),
        }
    }

    #[test]
    fn answers_are_matched_by_the_redacted_path_in_announcement_order() {
        let redactor = Redactor::new(["alice", "key-1", "key-2"]);
        let mut ledger = Ledger::default();
        let first = PathBuf::from("/home/alice/f-key-1.txt");
        let second = PathBuf::from("/home/alice/f-key-2.txt");
        let a = ledger.decide(first.clone(), stamp(1), &redactor).unwrap();
        let b = ledger.decide(second.clone(), stamp(2), &redactor).unwrap();
        let shown = "/home/[REDACTED]/f-[REDACTED].txt";
        assert_eq!((shown_path(&a), shown_path(&b)), (shown, shown));
        assert_eq!(
            ledger.claim("/home/alice/f-key-1.txt"),
            None,
            "the real path was never shown"
        );
        assert_eq!(ledger.claim(shown).map(|(p, _)| p), Some(first));
        assert_eq!(ledger.claim(shown).map(|(p, _)| p), Some(second));
        assert_eq!(
            ledger.claim(shown),
            None,
            "each announcement is answered once"
        );
    }

    #[test]
    fn a_forgotten_announcement_cannot_be_claimed() {
        let redactor = Redactor::new(["tok"]);
        let mut ledger = Ledger::default();
        let path = PathBuf::from("/out/tok.txt");
        ledger.decide(path.clone(), stamp(1), &redactor).unwrap();
        ledger.unsend(&path);
        assert_eq!(ledger.claim("/out/[REDACTED].txt"), None);
    }
}
