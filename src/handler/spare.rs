//! Spare handler processes, started ahead of need.
//!
//! Most clients open a connection per query (`client.query`), so a handler
//! started on a session's first invocation makes every query wait for a
//! process start: an interpreter and its imports, tens to hundreds of
//! milliseconds. The pool keeps `--spare-handlers` processes started and
//! idle; a session's first invocation takes one, and the keeper task starts
//! its replacement in the background.
//!
//! - The replacement starts [`REFILL_DELAY`] after a spare is taken, and off
//!   the async workers: an interpreter's start-up is tens of milliseconds of
//!   CPU, which would otherwise compete with the very query that took the
//!   spare (measured: a one-shot query with a trivial handler is answered
//!   in about a millisecond, and was several times slower while its
//!   replacement started).
//! - A spare has seen nothing of any session: it starts with the runtime's
//!   environment, and a session's data (env, secrets, prompts) reaches it
//!   only with `invoke`, after it was taken.
//! - A spare that exits while it waits is replaced, after a backoff that
//!   doubles with each consecutive early exit. The third in a row is
//!   reported once, as an error with the exit status and last stderr lines;
//!   the keeper then retries at most every [`MAX_BACKOFF`] instead of
//!   spinning, and sessions start the handler themselves (their invocations
//!   report its failure).
//! - At shutdown the idle spares are ended with their process groups.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::select_all;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::containment::{Containment, Scope};
use crate::redact::Redactor;

use super::pipes::MAX_LINE_BYTES;
use super::{HandlerCommand, HandlerError, HandlerProcess};

/// How long after a take the replacement starts.
pub(crate) const REFILL_DELAY: Duration = Duration::from_millis(50);
/// Backoff after the second early exit in a row; doubles with each one after.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two starts of a handler that keeps exiting.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A spare that lived this long started fine: its exit (killed, out of
/// memory) does not count towards a crash loop.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Consecutive early exits that make a crash loop, reported once.
const CRASH_LOOP_AFTER: u32 = 3;

/// The server's spare handlers; cheap to clone, one keeper task behind it.
#[derive(Clone)]
pub(crate) struct SparePool {
    shared: Arc<Shared>,
}

struct Shared {
    command: Arc<HandlerCommand>,
    /// Every handler process (spare or not) gets a scope of its own from it.
    containment: Arc<Containment>,
    target: usize,
    idle: Mutex<Vec<Spare>>,
    health: Mutex<Health>,
    /// A spare was taken (or found dead): the keeper tops the pool up.
    taken: Notify,
    /// Fired at shutdown: the keeper ends the idle spares and stops.
    stop: CancellationToken,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

/// An idle process, and when it was started.
struct Spare {
    process: HandlerProcess,
    started: Instant,
}

type ExitWatch = Pin<Box<dyn Future<Output = u32> + Send>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SparePool {
    /// Starts keeping `target` idle processes of `command` (none when 0),
    /// in a task on the current tokio runtime. `kill_grace` is what ending
    /// a spare's group allows it.
    pub(crate) fn start(
        command: Arc<HandlerCommand>,
        target: usize,
        kill_grace: Duration,
        containment: Arc<Containment>,
    ) -> Self {
        let shared = Arc::new(Shared {
            command,
            containment,
            target,
            idle: Mutex::new(Vec::new()),
            health: Mutex::new(Health::default()),
            taken: Notify::new(),
            stop: CancellationToken::new(),
            keeper: Mutex::new(None),
        });
        if target > 0 {
            *lock(&shared.keeper) = Some(tokio::spawn(keep(shared.clone(), kill_grace)));
        }
        Self { shared }
    }

    /// A pool that keeps nothing: every host starts its own handler
    /// (`check-handler`, which times exactly one start, and tests).
    pub(crate) fn none(command: Arc<HandlerCommand>) -> Self {
        Self::start(command, 0, Duration::ZERO, Containment::off())
    }

    /// What a session starts when no spare is ready.
    pub(crate) fn command(&self) -> &Arc<HandlerCommand> {
        &self.shared.command
    }

    /// A new scope for a handler process a session starts itself.
    pub(crate) fn new_scope(&self) -> Scope {
        self.shared.containment.scope('h')
    }

    /// A started, idle handler process, if one is ready; the keeper then
    /// starts its replacement. A spare found dead is dropped (which kills
    /// its group).
    pub(crate) fn take(&self) -> Option<HandlerProcess> {
        if self.shared.target == 0 {
            return None;
        }
        let mut idle = lock(&self.shared.idle);
        self.shared.taken.notify_one();
        while let Some(mut spare) = idle.pop() {
            if spare.process.is_usable() {
                lock(&self.shared.health).healthy();
                tracing::debug!(target: "handler", pid = spare.process.pid(), "took a spare handler");
                return Some(spare.process);
            }
        }
        None
    }

    /// The pids of the idle spares (for tests).
    #[cfg(test)]
    pub(crate) fn idle_pids(&self) -> Vec<u32> {
        lock(&self.shared.idle)
            .iter()
            .map(|s| s.process.pid())
            .collect()
    }

    /// Stops starting spares and ends the idle ones with their process
    /// groups; returns once they are gone.
    pub(crate) async fn shutdown(&self) {
        self.shared.stop.cancel();
        let keeper = lock(&self.shared.keeper).take();
        if let Some(keeper) = keeper {
            let _ = keeper.await;
        }
    }
}

/// The keeper: tops the pool up, replaces spares that die, and backs off
/// from a handler that keeps exiting.
async fn keep(shared: Arc<Shared>, kill_grace: Duration) {
    loop {
        let backoff = lock(&shared.health).backoff();
        if let Some(wait) = backoff {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shared.stop.cancelled() => break,
            }
        }
        if shared.stop.is_cancelled() {
            break;
        }
        if lock(&shared.idle).len() < shared.target {
            start_one(&shared).await;
            continue;
        }
        let exits = exit_watches(&shared);
        tokio::select! {
            () = shared.taken.notified() => {
                tokio::select! {
                    () = tokio::time::sleep(REFILL_DELAY) => {}
                    () = shared.stop.cancelled() => break,
                }
            }
            () = shared.stop.cancelled() => break,
            pid = first_exit(exits) => reap(&shared, pid, kill_grace).await,
        }
    }
    let idle = std::mem::take(&mut *lock(&shared.idle));
    for spare in idle {
        spare.process.shutdown(kill_grace).await;
    }
}

/// Starts one spare. `spawn` blocks until the child has exec'd (a
/// millisecond or more for a big binary), so it runs on the blocking pool,
/// not on a worker that sessions are waiting for.
async fn start_one(shared: &Shared) {
    let command = shared.command.clone();
    let processes = shared.containment.scope('h');
    let spawned = tokio::task::spawn_blocking(move || {
        HandlerProcess::spawn(command, MAX_LINE_BYTES, Redactor::default(), processes)
    })
    .await
    .unwrap_or_else(|e| {
        Err(HandlerError::Failed(format!(
            "the spawning task failed: {e}"
        )))
    });
    match spawned {
        Ok(process) => {
            tracing::debug!(target: "handler", pid = process.pid(), "started a spare handler");
            lock(&shared.idle).push(Spare {
                process,
                started: Instant::now(),
            });
        }
        Err(e) => lock(&shared.health).exited_early(&shared.command, &e.to_string()),
    }
}

/// One future per idle spare, resolving to its pid once it can no longer
/// answer an invocation (it exited, closed its stdout, or wrote garbage).
fn exit_watches(shared: &Shared) -> Vec<ExitWatch> {
    lock(&shared.idle)
        .iter()
        .map(|spare| {
            let pid = spare.process.pid();
            let done = spare.process.stdout_done();
            Box::pin(async move {
                done.cancelled_owned().await;
                pid
            }) as ExitWatch
        })
        .collect()
}

async fn first_exit(watches: Vec<ExitWatch>) -> u32 {
    if watches.is_empty() {
        return std::future::pending().await;
    }
    select_all(watches).await.0
}

/// Takes a dead spare out of the pool, ends what is left of its group and
/// counts the exit.
async fn reap(shared: &Shared, pid: u32, kill_grace: Duration) {
    let spare = {
        let mut idle = lock(&shared.idle);
        let Some(index) = idle.iter().position(|s| s.process.pid() == pid) else {
            return; // taken meanwhile: its session deals with it
        };
        idle.swap_remove(index)
    };
    let Spare {
        mut process,
        started,
    } = spare;
    let report = process.exit_report(kill_grace).await;
    if started.elapsed() >= HEALTHY_AFTER {
        tracing::info!(target: "handler", pid,
            "an idle spare agent handler exited ({report}); starting another");
        lock(&shared.health).healthy();
    } else {
        lock(&shared.health).exited_early(&shared.command, &report);
    }
}

/// Consecutive early exits, and whether the crash loop has been reported.
#[derive(Debug, Default)]
struct Health {
    early_exits: u32,
    reported: bool,
}

impl Health {
    /// How long to wait before the next start: nothing after one early
    /// exit (a fluke), then doubling up to [`MAX_BACKOFF`].
    fn backoff(&self) -> Option<Duration> {
        let doublings = self.early_exits.checked_sub(2)?;
        Some(
            FIRST_BACKOFF
                .saturating_mul(1 << doublings.min(16))
                .min(MAX_BACKOFF),
        )
    }

    /// A spare was taken alive, or lived long enough: the handler starts fine.
    fn healthy(&mut self) {
        self.early_exits = 0;
        self.reported = false;
    }

    /// Counts an early exit (or a failed start) and reports a crash loop once.
    fn exited_early(&mut self, command: &HandlerCommand, report: &str) {
        self.early_exits += 1;
        let name = &command.display;
        if self.early_exits < CRASH_LOOP_AFTER {
            tracing::warn!(target: "handler",
                "a spare agent handler {name} exited before it was used ({report})");
        } else if !self.reported {
            self.reported = true;
            tracing::error!(target: "handler",
                "agent handler {name} exits as soon as it starts ({} times in a row; last: \
                 {report}); spare handlers are retried at most every {}s, and invocations \
                 start it themselves and report its failure",
                self.early_exits,
                MAX_BACKOFF.as_secs());
        } else {
            tracing::debug!(target: "handler",
                "a spare agent handler {name} exited again ({report})");
        }
    }
}

#[cfg(test)]
mod tests;
