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
pub fn new_group(command: &mut tokio::process::Command) -> &mut tokio::process::Command {
    command.process_group(0)
}

/// Whether any process (zombies included) is still in the group.
pub fn group_alive(pgid: u32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid as i32), None), Err(Errno::ESRCH))
}

/// Sends a signal to a whole group, ignoring "already gone".
pub fn signal_group(pgid: u32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid as i32), signal);
}

/// Ends a group: SIGTERM to all of it, SIGKILL to whatever is left after
/// `grace`, and reaps the leader so no zombie stays behind.
pub async fn terminate_group(child: &mut Child, grace: Duration) {
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
pub async fn kill_group_remnants(pgid: u32, grace: Duration) {
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
