use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::*;
use crate::config::AgentSource;
use crate::handler::{HandlerHost, Invocation, InvokeContext};
use crate::outbox::Outbox;
use crate::process;
use crate::wire::ResultData;

const GRACE: Duration = Duration::from_millis(300);

/// A shell handler that notes its pid in `starts` when it starts, then
/// answers every invoke with its pid.
fn answering_handler(starts: &Path) -> String {
    format!(
        r#"echo $$ >> {starts}
while IFS= read -r line; do
  case "$line" in
    '{{"type":"invoke",'*) printf '{{"type":"result","text":"%s"}}\n' "$$" ;;
  esac
done
"#,
        starts = starts.display()
    )
}

/// A shell handler that notes its pid, complains and exits at once.
fn crashing_handler(starts: &Path) -> String {
    format!(
        "echo $$ >> {}\necho 'cannot import the agent SDK' >&2\nexit 3\n",
        starts.display()
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    starts: PathBuf,
    pool: SparePool,
}

fn pool_running(script: fn(&Path) -> String, target: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let path = dir.path().join("handler.sh");
    std::fs::write(&path, script(&starts)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let command = HandlerCommand::resolve(&AgentSource::Path(path)).unwrap();
    let pool = SparePool::start(
        Arc::new(command),
        target,
        GRACE,
        crate::containment::Containment::off(),
    );
    Setup {
        _dir: dir,
        starts,
        pool,
    }
}

impl Setup {
    fn starts(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.starts)
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    }
}

/// Polls for something no event announces (a process starting or dying).
async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn idle_spare(pool: &SparePool, other_than: Option<u32>) -> u32 {
    wait_for("an idle spare", || {
        pool.idle_pids()
            .into_iter()
            .find(|pid| Some(*pid) != other_than)
    })
    .await
}

async fn invoke_pid(host: &mut HandlerHost) -> u32 {
    let (outbox, _rx) = Outbox::channel(8);
    let ctx = InvokeContext {
        outbox: &outbox,
        redactor: &Redactor::default(),
        cancel: &CancellationToken::new(),
        cancel_grace: GRACE,
        kill_grace: GRACE,
    };
    let inv = Invocation {
        id: "inv-1".into(),
        user_prompt: "pid".into(),
        ..Invocation::default()
    };
    match host.invoke(&inv, &ctx).await.unwrap().data {
        ResultData::Text { text } => text.parse().unwrap(),
        other => panic!("expected a text result, got {other:?}"),
    }
}

#[tokio::test]
async fn the_first_invocation_takes_the_spare_and_a_replacement_starts() {
    let setup = pool_running(answering_handler, 1);
    let spare = idle_spare(&setup.pool, None).await;
    let mut host = HandlerHost::new(setup.pool.clone());
    assert_eq!(invoke_pid(&mut host).await, spare, "the spare answered");
    let replacement = idle_spare(&setup.pool, Some(spare)).await;
    assert!(
        process::group_alive(spare),
        "the taken spare serves its session"
    );
    assert_eq!(setup.starts(), [spare, replacement]);
    host.shutdown(GRACE).await;
    setup.pool.shutdown().await;
    assert!(!process::group_alive(spare));
    assert!(!process::group_alive(replacement));
}

#[tokio::test]
async fn a_spare_that_dies_while_idle_is_replaced() {
    let setup = pool_running(answering_handler, 1);
    let spare = idle_spare(&setup.pool, None).await;
    kill(Pid::from_raw(spare as i32), Signal::SIGKILL).unwrap();
    let replacement = idle_spare(&setup.pool, Some(spare)).await;
    assert_eq!(
        setup.pool.idle_pids(),
        [replacement],
        "the dead one is gone"
    );
    let mut host = HandlerHost::new(setup.pool.clone());
    assert_eq!(invoke_pid(&mut host).await, replacement);
    host.shutdown(GRACE).await;
    setup.pool.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_every_idle_spare() {
    let setup = pool_running(answering_handler, 2);
    let first = idle_spare(&setup.pool, None).await;
    let second = idle_spare(&setup.pool, Some(first)).await;
    setup.pool.shutdown().await;
    assert!(setup.pool.idle_pids().is_empty());
    assert!(!process::group_alive(first), "{first} survived shutdown");
    assert!(!process::group_alive(second), "{second} survived shutdown");
    assert!(
        setup.pool.take().is_none(),
        "nothing is started after shutdown"
    );
}

#[tokio::test]
async fn a_crash_looping_handler_is_reported_once_and_retried_with_backoff() {
    let setup = pool_running(crashing_handler, 1);
    wait_for("a crash loop", || {
        (setup.starts().len() > CRASH_LOOP_AFTER as usize).then_some(())
    })
    .await;
    let (reported, early_exits) = {
        let health = lock(&setup.pool.shared.health);
        (health.reported, health.early_exits)
    };
    assert!(reported, "reported");
    assert!(early_exits >= CRASH_LOOP_AFTER, "{early_exits} early exits");
    // Not spinning: the waits double (400 ms, 800 ms, ...), so a second
    // sees at most two more starts; a loop without backoff would see
    // hundreds.
    let before = setup.starts().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let more = setup.starts().len() - before;
    assert!(more <= 3, "{more} starts in a second");
    // Sessions still start the handler themselves, and say why it fails.
    let mut host = HandlerHost::new(setup.pool.clone());
    let (outbox, _rx) = Outbox::channel(8);
    let ctx = InvokeContext {
        outbox: &outbox,
        redactor: &Redactor::default(),
        cancel: &CancellationToken::new(),
        cancel_grace: GRACE,
        kill_grace: GRACE,
    };
    let err = host.invoke(&Invocation::default(), &ctx).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(text.contains("cannot import the agent SDK"), "{text}");
    setup.pool.shutdown().await;
}

#[test]
fn backoff_waits_from_the_second_early_exit_and_doubles_up_to_the_cap() {
    let mut health = Health::default();
    let waits: Vec<_> = (0..12)
        .map(|_| {
            let wait = health.backoff();
            health.early_exits += 1;
            wait
        })
        .collect();
    assert_eq!(waits[0], None);
    assert_eq!(waits[1], None);
    assert_eq!(waits[2], Some(FIRST_BACKOFF));
    assert_eq!(waits[3], Some(FIRST_BACKOFF * 2));
    assert_eq!(waits[11], Some(MAX_BACKOFF));
    health.healthy();
    assert_eq!(health.backoff(), None);
}

#[test]
fn a_crash_loop_is_reported_once_until_the_handler_recovers() {
    let command = HandlerCommand {
        program: "/bin/false".into(),
        args: Vec::new(),
        display: "false".into(),
        env: Vec::new(),
    };
    let mut health = Health::default();
    for _ in 0..CRASH_LOOP_AFTER - 1 {
        health.exited_early(&command, "exit status: 1");
        assert!(!health.reported);
    }
    health.exited_early(&command, "exit status: 1");
    assert!(health.reported);
    health.healthy();
    assert!(!health.reported, "a later crash loop is reported again");
}
