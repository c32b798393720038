//! The file watcher: timely announcements while a request runs.
//!
//! notify (inotify on Linux) calls back on its own thread; the callback
//! forwards events into a bounded channel (dropping them when it is full
//! and flagging a rescan: the flush scan catches up anyway), drained by one
//! task, [`event_loop`]. A file is announced on close-after-write, or once
//! it has been unchanged for [`STABLE_FOR`] after other modifications. The
//! watcher is an optimisation: correctness rests on the flush scan.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Inner;
use super::ledger::Stamp;

/// A file modified without a close-after-write is announced once it has
/// been unchanged this long.
const STABLE_FOR: Duration = Duration::from_millis(150);

/// How often files waiting to become stable are re-checked.
const STABLE_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Watcher events buffered between notify's thread and the event task.
const EVENT_QUEUE: usize = 1024;

/// Least time between two full walks caused by lost watcher events.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Files waiting to become stable; beyond this, the flush scan catches up.
const MAX_STABILIZING: usize = 10_000;

/// The running file watcher.
pub(crate) struct Watching {
    /// `None` when the watcher could not start: flush scans still work.
    watcher: Option<RecommendedWatcher>,
    stop: CancellationToken,
}

impl Watching {
    /// Stops the watcher and its event task.
    pub(crate) fn stop(self) {
        self.stop.cancel();
        drop(self.watcher);
    }
}

impl Inner {
    /// Adds `dirs` to the file watcher, starting it (and its event task)
    /// first if needed. A watcher that fails is logged, not fatal: the
    /// flush scan still finds every file.
    pub(super) fn start_watching(
        self: &Arc<Self>,
        dirs: &[PathBuf],
        runtime: &tokio::runtime::Handle,
    ) {
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
            // In the session's scope (the first watching request's span),
            // so its log lines are redacted with the session's secrets.
            runtime.spawn(
                event_loop(Arc::downgrade(self), rx, overflow, stop.clone()).in_current_span(),
            );
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
}

/// Events worth a look (opens and reads, including our own uploads', are not).
fn is_relevant(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
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
            let mut state = inner.ledger();
            for path in paths {
                unsettled.remove(&path);
                state.forget(&path, false);
            }
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            let mut state = inner.ledger();
            for path in paths {
                unsettled.retain(|p, _| !p.starts_with(&path));
                state.forget(&path, true);
            }
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            if let [from, to] = paths.as_slice() {
                unsettled.retain(|p, _| !p.starts_with(from));
                inner.ledger().forget(from, true);
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
