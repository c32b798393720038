//! Process containment: every process a request or a handler starts can be
//! found and killed, including those that left their process group
//! (`setsid`, `setpgid`, a daemonising server).
//!
//! Process groups ([`crate::process`]) end a well-behaved tree with a
//! SIGTERM and a grace period, but anything can leave its group. So each
//! unit of work also gets a [`Scope`], and ending the scope SIGKILLs
//! whatever is left in it, wherever it went:
//!
//! - **cgroup** ([`cgroup`]): a cgroup v2 per scope, under a directory of
//!   the runtime's own (`runtimeuse-<pidns>-<pid>-<n>` beside the runtime, in its
//!   own cgroup). A child is inside its scope's cgroup before it can start
//!   anything (a handler joins before it execs; a command's shell waits on
//!   a gate until the runtime moved it, see [`Scope::spawn_gated_shell`]);
//!   ending writes `cgroup.kill` and waits for `populated 0`, and an empty
//!   cgroup is kept for reuse or removed. No process can leave a cgroup
//!   without privileges it does not have.
//! - **subreaper** ([`reaper`]): when no cgroup can be created, the runtime
//!   is a child subreaper, so every orphan of its children is reparented to
//!   it (and reaped by it); each scope's processes carry an environment
//!   variable with the scope's token, which `setsid` does not drop, and
//!   ending the scope SIGKILLs every process whose environment has it.
//!
//! `--containment auto` (the default) takes cgroup when it can create one
//! and move a process into it, else subreaper; the start-up log says which
//! is in force and why.
//!
//! Scopes: each request that runs commands has one (its commands share it),
//! and each handler process has one. A cancelled request's scope is killed
//! with it (a client's cancel, a disconnect, shutdown), background jobs of
//! its completed commands included; what a request that completed left
//! running (a server started with `&`) keeps running, as it always did,
//! but stays contained and is killed at shutdown. A handler's scope dies
//! with the handler process.

mod cgroup;
mod reaper;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::process::Child;

/// How long ending a scope waits for its processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a dying scope is checked.
const POLL: Duration = Duration::from_millis(5);

/// What a gated shell runs before its command (see
/// [`Scope::spawn_gated_shell`]): wait until the runtime closes stdin, then
/// give the command the `/dev/null` stdin it always had. On the command's
/// own line, so line numbers in its error messages do not move.
pub(crate) const SHELL_GATE: &str = "read -r _ 2>/dev/null; exec </dev/null; ";

/// Numbers scopes across the process, so tokens stay unique even with
/// several servers in one process (the subreaper is per process).
static NEXT_SCOPE: AtomicU64 = AtomicU64::new(1);

/// Which containment the runtime uses (`--containment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ContainmentMode {
    /// A cgroup v2 per scope when the runtime can create one, otherwise
    /// the subreaper.
    #[default]
    Auto,
    /// A cgroup v2 per scope; the server refuses to start without it.
    Cgroup,
    /// The runtime is a child subreaper and marks each scope's processes.
    Subreaper,
}

/// Why the requested containment cannot be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ContainmentError {
    /// `--containment cgroup` on a machine where it cannot work.
    #[error("--containment cgroup is not possible here: {0}")]
    NoCgroup(cgroup::CgroupError),
    /// `prctl(PR_SET_CHILD_SUBREAPER)` failed.
    #[error("cannot become a child subreaper: {0}")]
    NoSubreaper(io::Error),
}

/// The server's containment: the backend in force and what it needs.
pub(crate) struct Containment {
    backend: Backend,
    /// What the start-up log says about it.
    description: String,
}

enum Backend {
    /// Nothing beyond process groups (unit tests of other modules).
    Off,
    Cgroup(cgroup::Tree),
    Subreaper(reaper::Reaper),
}

impl Containment {
    /// Sets up `mode`: for auto, tries cgroup and falls back to subreaper,
    /// keeping the reason for the start-up log. Must run inside a tokio
    /// runtime (the subreaper's reaping task).
    pub(crate) fn start(mode: ContainmentMode) -> Result<Arc<Self>, ContainmentError> {
        let cgroup_attempt = match mode {
            ContainmentMode::Subreaper => None,
            ContainmentMode::Auto | ContainmentMode::Cgroup => Some(cgroup::Tree::create()),
        };
        let fallback_reason = match cgroup_attempt {
            Some(Ok(tree)) => {
                let description = format!("cgroup v2 per request and handler, under {}", tree);
                return Ok(Self::with(Backend::Cgroup(tree), description));
            }
            Some(Err(e)) if mode == ContainmentMode::Cgroup => {
                return Err(ContainmentError::NoCgroup(e));
            }
            Some(Err(e)) => format!("cgroup v2 unavailable: {e}"),
            None => "--containment subreaper".to_owned(),
        };
        let reaper = reaper::Reaper::start().map_err(ContainmentError::NoSubreaper)?;
        let description = format!(
            "child subreaper, processes marked with {} ({fallback_reason})",
            reaper::SCOPE_ENV
        );
        Ok(Self::with(Backend::Subreaper(reaper), description))
    }

    /// No containment beyond process groups.
    pub(crate) fn off() -> Arc<Self> {
        Self::with(Backend::Off, "off".to_owned())
    }

    fn with(backend: Backend, description: String) -> Arc<Self> {
        Arc::new(Self {
            backend,
            description,
        })
    }

    /// Which containment is in force, and why (for the start-up log).
    pub(crate) fn describe(&self) -> &str {
        &self.description
    }

    /// A new, empty scope; `kind` names it (`r` a request, `h` a handler).
    pub(crate) fn scope(self: &Arc<Self>, kind: char) -> Scope {
        let id = NEXT_SCOPE.fetch_add(1, Ordering::Relaxed);
        Scope {
            owner: self.clone(),
            name: format!("{kind}{id}"),
            state: Mutex::new(ScopeState::Unused),
        }
    }

    /// At shutdown: kills everything still contained and removes the
    /// runtime's cgroup directory.
    pub(crate) async fn shutdown(&self) {
        match &self.backend {
            Backend::Off => {}
            Backend::Cgroup(tree) => tree.sweep(KILL_WAIT).await,
            Backend::Subreaper(reaper) => reaper.kill_all(KILL_WAIT).await,
        }
    }
}

/// The processes of one request or one handler process.
///
/// Dropping a scope SIGKILLs what is left in it (best effort, without
/// waiting); [`Scope::kill`] also waits for them to be gone.
pub(crate) struct Scope {
    owner: Arc<Containment>,
    name: String,
    state: Mutex<ScopeState>,
}

enum ScopeState {
    /// Nothing was started in it yet (a cgroup is created on first use).
    Unused,
    /// Its cgroup exists.
    Cgroup(cgroup::Group),
    /// Processes were started with its token.
    Marked,
}

/// Keeps a spawned child known to the subreaper's reaping (which must not
/// take tokio's own children's exit statuses) until tokio has waited for it.
pub(crate) type ChildTicket = reaper::Ticket;

impl Scope {
    /// A scope that contains nothing (tests of commands and handlers that
    /// are not about containment).
    #[cfg(test)]
    pub(crate) fn uncontained() -> Self {
        Containment::off().scope('t')
    }

    /// The token its processes carry in subreaper mode.
    fn token(&self) -> String {
        reaper::token(&self.name)
    }

    /// Spawns `command` inside the scope. Keep the ticket until tokio has
    /// waited for the child (or dropped it).
    pub(crate) fn spawn(
        &self,
        command: &mut tokio::process::Command,
    ) -> io::Result<(Child, ChildTicket)> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &self.owner.backend {
            Backend::Off => Ok((command.spawn()?, reaper::Ticket::none())),
            Backend::Cgroup(tree) => {
                let group = self.cgroup(&mut state, tree)?;
                group.enter_before_exec(command);
                Ok((command.spawn()?, reaper::Ticket::none()))
            }
            Backend::Subreaper(reaper) => {
                *state = ScopeState::Marked;
                command.env(reaper::SCOPE_ENV, self.token());
                reaper.spawn(command)
            }
        }
    }

    /// The state, leaving the scope unused (its processes are being killed).
    fn take_state(&self) -> ScopeState {
        std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(PoisonError::into_inner),
            ScopeState::Unused,
        )
    }

    /// Whether a shell command should be spawned with [`SHELL_GATE`] and
    /// [`Scope::spawn_gated_shell`] (the cgroup backend), rather than with
    /// [`Scope::spawn`].
    pub(crate) fn gates_shells(&self) -> bool {
        matches!(self.owner.backend, Backend::Cgroup(_))
    }

    /// Spawns a shell whose script starts with [`SHELL_GATE`] and whose
    /// stdin is piped: moves it into the scope's cgroup from here, then
    /// opens the gate by closing its stdin.
    ///
    /// This keeps `posix_spawn` (a `vfork`) for the hot path: a `pre_exec`
    /// hook would force a full `fork` of the runtime, which measured about
    /// 0.3 ms per command. No escape window: until its stdin closes the
    /// shell only waits in `read`, so nothing it runs can fork before it is
    /// inside the cgroup; if the move fails, the shell is killed unopened.
    pub(crate) fn spawn_gated_shell(
        &self,
        command: &mut tokio::process::Command,
    ) -> io::Result<(Child, ChildTicket)> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Backend::Cgroup(tree) = &self.owner.backend else {
            drop(state);
            return self.spawn(command);
        };
        let group = self.cgroup(&mut state, tree)?;
        let mut child = command.spawn()?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        if let Err(e) = group.adopt(pid) {
            let _ = child.start_kill();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot move it into its cgroup: {e}"),
            ));
        }
        drop(child.stdin.take());
        Ok((child, reaper::Ticket::none()))
    }

    /// The scope's cgroup, created on first use.
    fn cgroup<'s>(
        &self,
        state: &'s mut ScopeState,
        tree: &cgroup::Tree,
    ) -> io::Result<&'s cgroup::Group> {
        if !matches!(state, ScopeState::Cgroup(_)) {
            let group = tree
                .group(&self.name)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot create its cgroup: {e}")))?;
            *state = ScopeState::Cgroup(group);
        }
        match state {
            ScopeState::Cgroup(group) => Ok(group),
            _ => unreachable!("set just above"),
        }
    }

    /// Kills every process in the scope and waits (within a bound) until
    /// they are gone; the scope is empty and reusable afterwards.
    pub(crate) async fn kill(&self) {
        match (self.take_state(), &self.owner.backend) {
            (ScopeState::Cgroup(group), Backend::Cgroup(tree)) => {
                // Still populated after the wait (logged): recycling kills
                // again and leaves the directory to the shutdown sweep.
                group.kill_and_wait(KILL_WAIT).await;
                tree.recycle(group);
            }
            (ScopeState::Marked, Backend::Subreaper(reaper)) => {
                reaper.kill_marked(&self.token(), KILL_WAIT).await;
            }
            _ => {}
        }
    }

    /// After the scope's work completed normally: what it left running (a
    /// server a command started with `&`, escaped or not) keeps running,
    /// as background jobs always did, and is killed at shutdown; an empty
    /// cgroup is given back now (kept for the next scope, or removed).
    /// Afterwards the scope holds nothing, and dropping it kills nothing.
    pub(crate) fn release(&self) {
        // Marked processes (subreaper) stay findable by the runtime's prefix.
        if let (ScopeState::Cgroup(group), Backend::Cgroup(tree)) =
            (self.take_state(), &self.owner.backend)
        {
            tree.detach(group);
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        match (
            std::mem::replace(state, ScopeState::Unused),
            &self.owner.backend,
        ) {
            (ScopeState::Cgroup(group), _) => group.kill_now(),
            (ScopeState::Marked, Backend::Subreaper(_)) => {
                reaper::signal_marked(&reaper::token(&self.name));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
