//! The cgroup v2 backend: a directory of the runtime's own, one cgroup per
//! scope inside it.
//!
//! Layout: `<runtime's cgroup>/runtimeuse-<pidns>-<pid>-<n>/<scope>`, where
//! `<pidns>` is the inode of the runtime's PID namespace: a pid means
//! something only in its namespace, so start-up cleans only the directories
//! of dead runtimes of its own namespace (a runtime in another one, e.g. a
//! container's PID 1 with its own `/proc`, would see every other runtime's
//! pid as gone and kill their cgroups). The runtime
//! stays where it is; its directory holds no process itself, only scope
//! cgroups (cgroup v2's "no internal processes" rule is about controllers,
//! which the runtime never enables, so processes may live in the leaves).
//!
//! Joining before anything runs, two ways:
//! - a handler writes `0` ("myself") to its scope's `cgroup.procs` in a
//!   `pre_exec` hook, through a descriptor the parent opened, with a single
//!   `write(2)` (async-signal-safe, nothing allocated); its program only
//!   starts once it is inside. The hook forces a full `fork`, fine for a
//!   process started once per session.
//! - a command's shell is spawned with `posix_spawn` and waits on a gate
//!   (its stdin) until the runtime has written its pid ([`Group::adopt`]);
//!   see `Scope::spawn_gated_shell`.
//!
//! Either way nothing the program forks can be born outside: there is no
//! escape window.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

use super::POLL;

/// The prefix of every runtime's own directory, followed by `<pidns>-<pid>-<n>`.
const DIR_PREFIX: &str = "runtimeuse-";

/// Empty scope cgroups kept for reuse.
const IDLE_MAX: usize = 4;

/// How long start-up waits for a stale runtime's processes to die.
const STALE_KILL_WAIT: Duration = Duration::from_secs(5);

/// Distinguishes the trees of several servers in one process (tests).
static NEXT_TREE: AtomicU64 = AtomicU64::new(1);

/// Why cgroup v2 containment cannot be used here.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    /// No cgroup2 file system is mounted.
    #[error("no cgroup2 file system in /proc/self/mountinfo")]
    NotMounted,
    /// `/proc/self/cgroup` has no cgroup v2 line, or it lies outside the mount.
    #[error("the runtime's own cgroup v2 is unknown ({0})")]
    OwnCgroupUnknown(String),
    /// A directory or file could not be made or used.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The probe process could not be moved into a new cgroup.
    #[error("a process cannot be moved into a new cgroup ({0})")]
    ProbeFailed(String),
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io { what, path, source }
}

/// The runtime's own directory of scope cgroups.
pub(super) struct Tree {
    /// `<runtime's cgroup>/runtimeuse-<pidns>-<pid>-<n>`.
    pub(super) root: PathBuf,
    /// Empty scope cgroups kept for the next scopes: creating and removing
    /// one costs about 0.1 ms, a good part of a `true` command's round trip.
    idle: Mutex<Vec<Group>>,
    /// Cgroups of completed requests that left processes running: kept
    /// (not killed) until shutdown, pruned as they empty.
    detached: Mutex<Vec<Group>>,
}

impl fmt::Display for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.display().fmt(f)
    }
}

impl Tree {
    /// Finds the runtime's cgroup, removes the directories of runtimes that
    /// died without cleaning up, makes this runtime's directory and checks
    /// that a process can really be moved into a cgroup inside it.
    pub(super) fn create() -> Result<Self, CgroupError> {
        let parent = own_cgroup_dir()?;
        let namespace = own_pid_namespace();
        if let Some(namespace) = namespace {
            remove_stale_trees(&parent, namespace);
        }
        let name = format!(
            "{DIR_PREFIX}{}-{}-{}",
            namespace.unwrap_or(0),
            std::process::id(),
            NEXT_TREE.fetch_add(1, Ordering::Relaxed)
        );
        let root = parent.join(name);
        fs::create_dir(&root).map_err(io_error("cannot create", &root))?;
        let tree = Self {
            root,
            idle: Mutex::new(Vec::new()),
            detached: Mutex::new(Vec::new()),
        };
        if let Err(e) = tree.probe() {
            let _ = fs::remove_dir(&tree.root);
            return Err(e);
        }
        Ok(tree)
    }

    /// Runs `/bin/sh -c :` in a fresh cgroup the way commands will be run.
    fn probe(&self) -> Result<(), CgroupError> {
        let group = self
            .new_group("probe")
            .map_err(io_error("cannot create", &self.root))?;
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", ":"]);
        group.enter_before_exec_std(&mut command);
        let outcome = command.status();
        group.remove_if_empty();
        match outcome {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(CgroupError::ProbeFailed(status.to_string())),
            Err(e) => Err(CgroupError::ProbeFailed(e.to_string())),
        }
    }

    /// A cgroup for a scope: an idle one, else a new one named `name`.
    pub(super) fn group(&self, name: &str) -> io::Result<Group> {
        if let Some(group) = self.idle().pop() {
            return Ok(group);
        }
        self.new_group(name)
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Group>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes back the cgroup of a scope whose processes are all gone: kept
    /// for reuse (up to [`IDLE_MAX`]) or removed; one still populated is
    /// killed and removed.
    pub(super) fn recycle(&self, group: Group) {
        if group.is_populated() {
            group.kill_now();
            return;
        }
        let mut idle = self.idle();
        if idle.len() < IDLE_MAX {
            idle.push(group);
        } else {
            drop(idle);
            group.remove_if_empty();
        }
    }

    /// Takes the cgroup of a completed request: kept while something in
    /// it runs, recycled once empty (checked whenever another is detached).
    pub(super) fn detach(&self, group: Group) {
        let mut detached = self.detached.lock().unwrap_or_else(PoisonError::into_inner);
        let (live, empty): (Vec<Group>, Vec<Group>) = std::mem::take(&mut *detached)
            .into_iter()
            .chain(std::iter::once(group))
            .partition(Group::is_populated);
        *detached = live;
        drop(detached);
        for group in empty {
            self.recycle(group);
        }
    }

    /// Creates the cgroup of a scope.
    fn new_group(&self, name: &str) -> io::Result<Group> {
        let dir = self.root.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            // A scope killed while its directory could not be removed yet.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        Ok(Group { dir, procs })
    }

    /// Kills every scope left and removes the runtime's directory.
    pub(super) async fn sweep(&self, wait: Duration) {
        self.idle().clear();
        self.detached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        sweep_tree(&self.root, wait).await;
    }
}

impl Drop for Tree {
    /// A server dropped without its shutdown (an embedder, a test): kill
    /// what is left and remove what can be removed right away; a runtime's
    /// next start-up cleans the rest.
    fn drop(&mut self) {
        self.idle().clear();
        self.detached
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        for dir in child_dirs(&self.root) {
            kill_cgroup(&dir);
            let _ = fs::remove_dir(&dir);
        }
        let _ = fs::remove_dir(&self.root);
    }
}

/// The cgroup v2 directory the runtime is in: the cgroup2 mount point from
/// `/proc/self/mountinfo` joined with the `0::` path of `/proc/self/cgroup`.
fn own_cgroup_dir() -> Result<PathBuf, CgroupError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_error("cannot read", Path::new("/proc/self/mountinfo")))?;
    let (mount_root, mount_point) = cgroup2_mount(&mountinfo).ok_or(CgroupError::NotMounted)?;
    let cgroups = fs::read_to_string("/proc/self/cgroup")
        .map_err(io_error("cannot read", Path::new("/proc/self/cgroup")))?;
    let own = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| CgroupError::OwnCgroupUnknown("no 0:: line in /proc/self/cgroup".into()))?;
    let relative = relative_to_mount(own, &mount_root).ok_or_else(|| {
        CgroupError::OwnCgroupUnknown(format!("{own} is outside the mount's root {mount_root}"))
    })?;
    Ok(Path::new(&mount_point).join(relative))
}

/// The (root, mount point) of the first cgroup2 mount in a mountinfo text.
fn cgroup2_mount(mountinfo: &str) -> Option<(String, String)> {
    mountinfo.lines().find_map(|line| {
        let (fields, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = fields.split_whitespace().skip(3);
        let root = fields.next()?;
        let point = fields.next()?;
        Some((unescape_mountinfo(root), unescape_mountinfo(point)))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// `own` (a cgroup path) relative to the mount's root, if it is below it.
fn relative_to_mount(own: &str, mount_root: &str) -> Option<String> {
    let rest = own.strip_prefix(mount_root.trim_end_matches('/'))?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    Some(rest.trim_start_matches('/').to_owned())
}

/// Kills and removes the directories left by runtimes that are gone (a
/// crash, a SIGKILL): `runtimeuse-<pidns>-<pid>-<n>` of this PID namespace
/// whose pid no longer exists.
fn remove_stale_trees(parent: &Path, namespace: u64) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| stale_owner(name, namespace)) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::info!(dir = %entry.path().display(), "removing the cgroups of a runtime that is gone");
        let root = entry.path();
        let children = child_dirs(&root);
        for dir in &children {
            kill_cgroup(dir);
        }
        // At start-up, before anything else runs: blocking is fine.
        let deadline = std::time::Instant::now() + STALE_KILL_WAIT;
        for dir in &children {
            while populated(dir) && std::time::Instant::now() < deadline {
                std::thread::sleep(POLL);
                kill_cgroup(dir);
            }
            let _ = fs::remove_dir(dir);
        }
        if let Err(e) = fs::remove_dir(&root) {
            tracing::warn!(dir = %root.display(), error = %e, "cannot remove a stale runtime's cgroup");
        }
    }
}

/// The pid in a `runtimeuse-<pidns>-<pid>-<n>` directory name, if it is of
/// the PID namespace `namespace` (other namespaces' pids cannot be checked).
fn stale_owner(name: &str, namespace: u64) -> Option<u32> {
    let (dir_namespace, rest) = name.strip_prefix(DIR_PREFIX)?.split_once('-')?;
    let (pid, serial) = rest.split_once('-')?;
    serial.parse::<u64>().ok()?;
    (dir_namespace.parse::<u64>().ok()? == namespace).then_some(())?;
    pid.parse().ok()
}

/// The inode of the runtime's PID namespace (`/proc/self/ns/pid` reads
/// `pid:[4026531836]`); `None` if unreadable, and then nothing is taken for
/// stale.
fn own_pid_namespace() -> Option<u64> {
    let link = fs::read_link("/proc/self/ns/pid").ok()?;
    link.to_str()?
        .strip_prefix("pid:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn child_dirs(root: &Path) -> Vec<PathBuf> {
    fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

async fn sweep_tree(root: &Path, wait: Duration) {
    let children = child_dirs(root);
    for dir in &children {
        kill_cgroup(dir);
    }
    let deadline = Instant::now() + wait;
    for dir in &children {
        wait_empty(dir, deadline).await;
        if let Err(e) = fs::remove_dir(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a scope's cgroup");
        }
    }
    if let Err(e) = fs::remove_dir(root) {
        tracing::warn!(dir = %root.display(), error = %e, "cannot remove the runtime's cgroup");
    }
}

/// SIGKILLs everything in a cgroup: `cgroup.kill` (Linux 5.14+), else each
/// pid in `cgroup.procs` (repeated by the waiters until it is empty).
fn kill_cgroup(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), b"1").is_ok() {
        return;
    }
    for pid in procs(dir) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether a live process is in the cgroup (`populated 1` in
/// `cgroup.events`; exited processes no longer count, even unreaped).
fn populated(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l.trim() == "populated 1"),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// Waits until the cgroup is empty, killing again whatever appears (the
/// fallback without `cgroup.kill` may miss a process forked meanwhile).
async fn wait_empty(dir: &Path, deadline: Instant) {
    while populated(dir) {
        if Instant::now() >= deadline {
            tracing::warn!(dir = %dir.display(), "processes of a scope are still alive after SIGKILL");
            return;
        }
        sleep(POLL).await;
        kill_cgroup(dir);
    }
}

/// One scope's cgroup.
pub(super) struct Group {
    dir: PathBuf,
    /// `cgroup.procs`, opened by the runtime; children write to it.
    procs: fs::File,
}

impl Group {
    /// Makes the child of `command` move itself into this cgroup before it
    /// execs (see the module's doc).
    pub(super) fn enter_before_exec(&self, command: &mut tokio::process::Command) {
        let fd = self.procs.as_raw_fd();
        // SAFETY: the hook only calls write(2) on a descriptor that stays
        // open while the command is spawned (`self` outlives the spawn
        // call), which is async-signal-safe and allocates nothing.
        unsafe {
            command.pre_exec(move || join_self(fd));
        }
    }

    /// [`Group::enter_before_exec`] for a std command (the start-up probe).
    fn enter_before_exec_std(&self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let fd = self.procs.as_raw_fd();
        // SAFETY: as in `enter_before_exec`.
        unsafe {
            command.pre_exec(move || join_self(fd));
        }
    }

    /// Moves a process (and its threads) into it, from the runtime.
    pub(super) fn adopt(&self, pid: u32) -> io::Result<()> {
        (&self.procs).write_all(pid.to_string().as_bytes())
    }

    /// Whether a live process is in it.
    pub(super) fn is_populated(&self) -> bool {
        populated(&self.dir)
    }

    /// Removes the directory; it may fail if something is still inside.
    pub(super) fn remove_if_empty(self) {
        let _ = fs::remove_dir(&self.dir);
    }

    /// SIGKILLs everything in it without waiting, and removes it if that
    /// was quick (a shutdown sweep removes what is left).
    pub(super) fn kill_now(self) {
        kill_cgroup(&self.dir);
        let _ = fs::remove_dir(&self.dir);
    }

    /// SIGKILLs everything in it and waits (within `wait`) until it is
    /// empty.
    pub(super) async fn kill_and_wait(&self, wait: Duration) {
        kill_cgroup(&self.dir);
        wait_empty(&self.dir, Instant::now() + wait).await;
    }
}

/// In a forked child: moves the calling process into the cgroup whose
/// `cgroup.procs` is `fd`.
fn join_self(fd: RawFd) -> io::Result<()> {
    // SAFETY: the descriptor is valid (see the callers); a borrowed File
    // is never closed here (ManuallyDrop).
    let mut file = std::mem::ManuallyDrop::new(unsafe {
        <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    file.write_all(b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_mountinfo() {
        let info = "\
25 31 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 41 0:40 / /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory";
        assert_eq!(
            cgroup2_mount(info),
            Some(("/".into(), "/sys/fs/cgroup/unified".into()))
        );
        let spaced = "1 2 0:3 /a\\040b /mnt/c\\040g rw - cgroup2 none rw";
        assert_eq!(
            cgroup2_mount(spaced),
            Some(("/a b".into(), "/mnt/c g".into()))
        );
        assert_eq!(cgroup2_mount("1 2 0:3 / /x rw - ext4 /dev/sda rw"), None);
    }

    #[test]
    fn own_cgroup_is_taken_relative_to_the_mount_root() {
        assert_eq!(relative_to_mount("/", "/").as_deref(), Some(""));
        assert_eq!(
            relative_to_mount("/system.slice/x.scope", "/").as_deref(),
            Some("system.slice/x.scope")
        );
        assert_eq!(
            relative_to_mount("/docker/abc/x", "/docker/abc").as_deref(),
            Some("x")
        );
        assert_eq!(relative_to_mount("/docker/abcd", "/docker/abc"), None);
        assert_eq!(relative_to_mount("/other", "/docker/abc"), None);
    }

    #[test]
    fn stale_directory_names() {
        assert_eq!(stale_owner("runtimeuse-77-123-4", 77), Some(123));
        // Another PID namespace's pid says nothing about liveness here.
        assert_eq!(stale_owner("runtimeuse-78-123-4", 77), None);
        assert_eq!(stale_owner("runtimeuse-77-123", 77), None);
        assert_eq!(stale_owner("runtimeuse-77-x-1", 77), None);
        assert_eq!(stale_owner("other-77-1-2", 77), None);
    }

    #[test]
    fn the_own_pid_namespace_is_read() {
        assert!(own_pid_namespace().is_some());
    }
}
