//! The subreaper backend, for machines where no cgroup can be created.
//!
//! - The runtime calls `prctl(PR_SET_CHILD_SUBREAPER)`: a process orphaned
//!   anywhere below it (the shell of a `setsid sleep &` exited) is
//!   reparented to the runtime instead of init, so it stays findable.
//! - Each scope's processes carry `RUNTIMEUSE_SCOPE=<pid>-<scope>` in their
//!   environment, inherited by everything they start; `setsid` and
//!   `setpgid` keep it. Ending a scope SIGKILLs every process whose
//!   `/proc/PID/environ` has its token, until none is left.
//! - Orphans reparented to the runtime must be reaped by it, but tokio
//!   waits for the children it spawned by pid, so reaping "any child"
//!   (`waitpid(-1)`) would steal their exit statuses. On SIGCHLD the runtime
//!   lists its adopted children (`/proc/PID/task/PID/children`) and reaps, by
//!   pid, only those it did not spawn itself. Spawning registers the child
//!   under the same lock, so a child is never seen before it is known.
//!
//! Known limit: a process that both leaves its group and clears its
//! environment (`setsid env -i ...`) is still reparented to the runtime
//! and reaped, but not killed with its scope. The cgroup backend has no
//! such hole.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use super::POLL;

/// The variable that marks a scope's processes.
pub(crate) const SCOPE_ENV: &str = "RUNTIMEUSE_SCOPE";

/// Pids of the children tokio spawned and waits for: never reaped here.
static OWNED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn owned() -> MutexGuard<'static, BTreeSet<u32>> {
    OWNED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The token of a scope of this process.
pub(super) fn token(scope: &str) -> String {
    format!("{}-{scope}", std::process::id())
}

/// The subreaper in force: its reaping task runs while it lives.
pub(super) struct Reaper {
    task: JoinHandle<()>,
}

impl Reaper {
    /// Makes the runtime a child subreaper and starts reaping adopted
    /// orphans on SIGCHLD.
    pub(super) fn start() -> io::Result<Self> {
        // SAFETY: prctl with an integer argument has no memory effects.
        let rc = unsafe { nix::libc::prctl(nix::libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut sigchld = signal(SignalKind::child())?;
        let task = tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                reap_adopted();
            }
        });
        Ok(Self { task })
    }

    /// Spawns `command` and registers its child as tokio's.
    pub(super) fn spawn(
        &self,
        command: &mut tokio::process::Command,
    ) -> io::Result<(Child, Ticket)> {
        let mut owned = owned();
        let child = command.spawn()?;
        let pid = child.id();
        if let Some(pid) = pid {
            owned.insert(pid);
        }
        Ok((child, Ticket(pid)))
    }

    /// SIGKILLs every process marked with `token`, until none is left.
    pub(super) async fn kill_marked(&self, token: &str, wait: Duration) {
        let entry = format!("{SCOPE_ENV}={token}");
        kill_until_none(|var| var == entry.as_bytes(), wait).await;
    }

    /// SIGKILLs every process marked by any scope of this runtime.
    pub(super) async fn kill_all(&self, wait: Duration) {
        let prefix = format!("{SCOPE_ENV}={}-", std::process::id());
        kill_until_none(|var| var.starts_with(prefix.as_bytes()), wait).await;
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Held while tokio owns a child; dropping it lets the reaper take the pid.
#[derive(Debug)]
pub(crate) struct Ticket(Option<u32>);

impl Ticket {
    /// A child the reaper does not know about (no subreaper in force).
    pub(super) fn none() -> Self {
        Self(None)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            owned().remove(&pid);
        }
    }
}

/// SIGKILLs matching processes round after round (a process may fork
/// while the first round runs) until a round finds none, within `wait`.
async fn kill_until_none(matches: impl Fn(&[u8]) -> bool, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let signalled = signal_matching(&matches);
        reap_adopted();
        if signalled == 0 {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                signalled,
                "processes of a scope are still alive after SIGKILL"
            );
            return;
        }
        sleep(POLL).await;
    }
}

/// One round without waiting, for `Drop`.
pub(super) fn signal_marked(token: &str) {
    let entry = format!("{SCOPE_ENV}={token}");
    signal_matching(&|var: &[u8]| var == entry.as_bytes());
}

/// SIGKILLs every live process (but the runtime) with an environment
/// entry that `matches`; returns how many.
fn signal_matching(matches: &dyn Fn(&[u8]) -> bool) -> usize {
    let me = std::process::id();
    let mut signalled = 0;
    for pid in all_pids().into_iter().filter(|&pid| pid != me) {
        // Zombies and kernel threads have an empty environment.
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(matches) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            signalled += 1;
        }
    }
    signalled
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Reaps the runtime's children that tokio does not own (adopted orphans).
/// The lock keeps a spawn from registering between the listing and the
/// `waitpid`.
pub(super) fn reap_adopted() {
    let owned = owned();
    for pid in own_children() {
        if !owned.contains(&pid) {
            let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// The runtime's adopted children: the main thread's `children` list. An
/// orphan is reparented to the first live thread of its subreaper, which is
/// the main thread while the runtime serves (it runs the async runtime's
/// `block_on`); children the runtime spawned itself are listed under the
/// thread that spawned them, and are tokio's to reap anyway. One read
/// instead of one per thread (the blocking pool can have dozens).
fn own_children() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
