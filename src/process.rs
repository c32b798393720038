//! Process groups: how the runtime makes sure nothing it started outlives
//! the work it was started for.
//!
//! Every command and every handler runs as the leader of its own process
//! group, so one signal reaches its whole tree: grandchildren, pipelines and
//! `&` background jobs included (a shell's `kill` of the leader alone leaves
//! them running as orphans, which is what the Node original did).

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::time::{Instant, sleep};

/// How often a dying group is checked for survivors.
const POLL: Duration = Duration::from_millis(10);

/// Puts the child in a new process group whose id is its pid.
pub(crate) fn new_group(command: &mut tokio::process::Command) -> &mut tokio::process::Command {
    command.process_group(0)
}

/// Removes the runtime's own credential from a child's environment.
pub(crate) fn without_runtime_credentials(
    command: &mut tokio::process::Command,
) -> &mut tokio::process::Command {
    command.env_remove(crate::config::AUTH_TOKEN_ENV)
}

/// Whether a child started by `command` would get the runtime's credential
/// (the runtime has one, or the command sets it). Checked before removing
/// it from frequent spawns: a removal marks the environment changed, and a
/// changed environment is copied whole at every spawn.
pub(crate) fn would_inherit_credentials(command: &tokio::process::Command) -> bool {
    let token = crate::config::AUTH_TOKEN_ENV;
    std::env::var_os(token).is_some() || command.as_std().get_envs().any(|(name, _)| name == token)
}

/// Whether any live process is still in the group.
///
/// Zombies do not count: an orphaned grandchild that died is reparented to
/// init, and an init that never reaps (common in containers) would keep it
/// as a zombie forever, making every kill wait out its whole grace period.
pub(crate) fn group_alive(pgid: u32) -> bool {
    if matches!(killpg(Pid::from_raw(pgid as i32), None), Err(Errno::ESRCH)) {
        return false;
    }
    live_members_in_proc(pgid).unwrap_or(true)
}

/// Scans `/proc` for non-zombie members of a group; `None` if `/proc` is
/// unreadable (the caller then trusts `killpg`).
fn live_members_in_proc(pgid: u32) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, group)) = parse_stat(&stat)
            && group == pgid
            && state != 'Z'
            && state != 'X'
        {
            return Some(true);
        }
    }
    Some(false)
}

/// Extracts (state, pgrp) from a `/proc/PID/stat` line. The command name
/// can contain spaces and parentheses, so fields are counted after the
/// last `)`.
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Sends a signal to a whole group, ignoring "already gone".
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid as i32), signal);
}

/// Ends a group: SIGTERM to all of it, SIGKILL to whatever is left after
/// `grace`, and reaps the leader so no zombie stays behind.
pub(crate) async fn terminate_group(child: &mut Child, grace: Duration) {
    let Some(pgid) = child.id() else {
        // Already reaped: nothing of ours can be signalled by pid safely.
        return;
    };
    signal_group(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        let _ = child.try_wait();
        if !group_alive(pgid) {
            return;
        }
        sleep(POLL).await;
    }
    signal_group(pgid, Signal::SIGKILL);
    let _ = child.wait().await;
}

/// Kills whatever remains of a group whose leader was already reaped.
///
/// Background jobs of a cancelled command can outlive the shell; their
/// group id is the shell's old pid, which stays reserved while any member
/// lives, so signalling it cannot hit an unrelated process.
pub(crate) async fn kill_group_remnants(pgid: u32, grace: Duration) {
    if !group_alive(pgid) {
        return;
    }
    signal_group(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !group_alive(pgid) {
            return;
        }
        sleep(POLL).await;
    }
    signal_group(pgid, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        assert_eq!(parse_stat("42 (a) b) S 1 42 42 0"), Some(('S', 42)));
        assert_eq!(parse_stat("7 (sleep) Z 1 9 9"), Some(('Z', 9)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[tokio::test]
    async fn terminate_reaches_background_grandchildren() {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("sleep 30 & sh -c 'sleep 30' & wait")
            .stdin(Stdio::null());
        let mut child = new_group(&mut cmd).spawn().unwrap();
        let pgid = child.id().unwrap();
        // The group exists as soon as spawn returns.
        assert!(group_alive(pgid));
        terminate_group(&mut child, Duration::from_secs(2)).await;
        assert!(!group_alive(pgid), "group {pgid} survived");
    }

    #[tokio::test]
    async fn sigterm_ignorers_are_killed_after_grace() {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("trap '' TERM; sleep 30 & wait")
            .stdin(Stdio::null());
        let mut child = new_group(&mut cmd).spawn().unwrap();
        let pgid = child.id().unwrap();
        terminate_group(&mut child, Duration::from_millis(200)).await;
        // SIGKILL was sent; the kernel delivers it before killpg returns
        // ESRCH once the members are reaped by us or init.
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_alive(pgid) && Instant::now() < deadline {
            sleep(POLL).await;
        }
        assert!(!group_alive(pgid));
    }
}
