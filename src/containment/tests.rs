use std::process::Stdio;
use std::time::Duration;

use super::*;

/// A cgroup containment, or `None` (the test is then a no-op, said on
/// stderr) where cgroup v2 is not writable.
fn cgroup_or_skip() -> Option<Arc<Containment>> {
    match Containment::start(ContainmentMode::Cgroup) {
        Ok(containment) => Some(containment),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Starts, in `scope`, a shell that puts `sleep 300` in a new session and
/// prints its pid; returns the shell (still waiting) and the escapee's pid.
async fn spawn_escapee(scope: &Scope) -> (tokio::process::Child, ChildTicket, u32) {
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .args([
            "-c",
            "setsid sleep 300 >/dev/null & echo $!; exec sleep 300",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let (mut child, ticket) = scope.spawn(&mut command).unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)
        .await
        .unwrap();
    (child, ticket, line.trim().parse().unwrap())
}

#[tokio::test]
async fn killing_a_cgroup_scope_kills_processes_outside_the_group() {
    let Some(containment) = cgroup_or_skip() else {
        return;
    };
    let scope = containment.scope('r');
    let (mut child, _ticket, escapee) = spawn_escapee(&scope).await;
    assert!(alive(escapee));
    scope.kill().await;
    assert!(!alive(escapee), "escapee {escapee} survived");
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap();
    containment.shutdown().await;
}

#[tokio::test]
async fn an_empty_cgroup_is_reused_and_everything_is_removed_at_shutdown() {
    let Some(containment) = cgroup_or_skip() else {
        return;
    };
    let Backend::Cgroup(tree) = &containment.backend else {
        unreachable!("cgroup was asked for");
    };
    let root = tree.root.clone();
    let scope = containment.scope('r');
    let (mut child, _ticket) = scope
        .spawn(tokio::process::Command::new("/bin/true").kill_on_drop(true))
        .unwrap();
    let dir = root.join(&scope.name);
    assert!(dir.is_dir());
    child.wait().await.unwrap();
    scope.release();
    // The empty cgroup is kept for the next scope instead of a new one.
    let next = containment.scope('r');
    let (mut child, _ticket) = next
        .spawn(tokio::process::Command::new("/bin/true").kill_on_drop(true))
        .unwrap();
    child.wait().await.unwrap();
    assert!(
        !root.join(&next.name).exists(),
        "the idle cgroup was reused"
    );
    next.release();
    // A scope dropped with work inside, then the shutdown sweep.
    let left = containment.scope('h');
    let (_child, _ticket, escapee) = spawn_escapee(&left).await;
    containment.shutdown().await;
    assert!(!alive(escapee));
    assert!(!root.exists(), "{} outlived the shutdown", root.display());
    drop(left);
}

#[tokio::test]
async fn an_unused_scope_costs_nothing() {
    let scope = Containment::off().scope('r');
    scope.release();
    scope.kill().await;
}

#[tokio::test]
async fn a_released_scope_leaves_its_processes_running_until_shutdown() {
    let Some(containment) = cgroup_or_skip() else {
        return;
    };
    let scope = containment.scope('r');
    let (_child, _ticket, escapee) = spawn_escapee(&scope).await;
    scope.release();
    drop(scope);
    assert!(
        alive(escapee),
        "a completed request's background work keeps running"
    );
    containment.shutdown().await;
    assert!(!alive(escapee), "escapee {escapee} outlived the shutdown");
}
