use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use tokio::sync::mpsc::Receiver;
use tokio::time::{Instant, sleep, timeout};

use super::output::{CHUNK_BYTES, Utf8Decoder};
use super::*;
use crate::process::group_alive;
use crate::testing::{pgrep, unique};
use crate::text::{ceil_boundary, floor_boundary, join_with_marker};
use crate::wire::OutboundMessage;

/// What a test run needs besides the command.
struct Rig {
    outbox: Outbox,
    redactor: Redactor,
    cancel: CancellationToken,
    processes: Scope,
    head: usize,
    tail: usize,
}

impl Rig {
    fn new(capacity: usize) -> (Self, Receiver<OutboundMessage>) {
        let (outbox, rx) = Outbox::channel(capacity);
        let rig = Self {
            outbox,
            redactor: Redactor::default(),
            cancel: CancellationToken::new(),
            processes: Scope::uncontained(),
            head: 128 * 1024,
            tail: 128 * 1024,
        };
        (rig, rx)
    }

    fn ctx(&self) -> CommandContext<'_> {
        CommandContext {
            outbox: &self.outbox,
            redactor: &self.redactor,
            cancel: &self.cancel,
            processes: &self.processes,
            kill_grace: Duration::from_millis(300),
            stdout_head_bytes: self.head,
            stdout_tail_bytes: self.tail,
        }
    }
}

fn sh(command: &str) -> wire::Command {
    wire::Command {
        command: command.into(),
        cwd: None,
        env: None,
    }
}

fn with_env(command: &str, env: &[(&str, &str)]) -> wire::Command {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    wire::Command {
        env: Some(env),
        ..sh(command)
    }
}

/// One streamed output message.
#[derive(Debug, Clone, PartialEq)]
struct Output {
    stream: Stream,
    text: String,
    command: String,
}

fn output(message: OutboundMessage) -> Output {
    match message {
        OutboundMessage::CommandOutputMessage {
            stream,
            text,
            command,
        } => Output {
            stream,
            text,
            command,
        },
        other => panic!("unexpected message {other:?}"),
    }
}

/// Drives `run` while draining `rx`, like the session's writer would.
async fn drive<F: Future>(run: F, rx: &mut Receiver<OutboundMessage>) -> (F::Output, Vec<Output>) {
    tokio::pin!(run);
    let mut got = Vec::new();
    loop {
        tokio::select! {
            result = &mut run => {
                while let Ok(message) = rx.try_recv() {
                    got.push(output(message));
                }
                return (result, got);
            }
            Some(message) = rx.recv() => got.push(output(message)),
        }
    }
}

async fn run(
    rig: &Rig,
    rx: &mut Receiver<OutboundMessage>,
    cmd: &wire::Command,
) -> (CommandOutcome, Vec<Output>) {
    let (result, got) = drive(run_command(cmd, &rig.ctx()), rx).await;
    (result.expect("command runs"), got)
}

fn joined(got: &[Output], stream: Stream) -> String {
    got.iter()
        .filter(|o| o.stream == stream)
        .map(|o| o.text.as_str())
        .collect()
}

#[test]
fn run_command_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let (rig, _rx) = Rig::new(1);
    let cmd = sh("true");
    let ctx = rig.ctx();
    assert_send(&run_command(&cmd, &ctx));
}

#[tokio::test]
async fn streams_stdout_and_stderr_with_their_tags() {
    let (rig, mut rx) = Rig::new(16);
    let cmd = sh("echo out; echo err >&2");
    let (outcome, got) = run(&rig, &mut rx, &cmd).await;
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(outcome.stdout, "out\n");
    assert_eq!(joined(&got, Stream::Stdout), "out\n");
    assert_eq!(joined(&got, Stream::Stderr), "err\n");
    assert!(got.iter().all(|o| o.command == cmd.command));
}

#[tokio::test]
async fn stdin_is_empty() {
    let (rig, mut rx) = Rig::new(16);
    let started = Instant::now();
    let (outcome, _) = run(&rig, &mut rx, &sh("cat; echo done")).await;
    assert_eq!(outcome.stdout, "done\n");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn exit_codes_and_signals() {
    let (rig, mut rx) = Rig::new(16);
    for (command, code) in [
        ("true", 0),
        ("exit 3", 3),
        ("kill -KILL $$", 128 + 9),
        ("kill -TERM $$", 128 + 15),
    ] {
        let (outcome, _) = run(&rig, &mut rx, &sh(command)).await;
        assert_eq!(outcome.exit_code, code, "{command}");
    }
}

#[tokio::test]
async fn missing_cwd_is_created() {
    let (rig, mut rx) = Rig::new(16);
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("a/b");
    let cmd = wire::Command {
        cwd: Some(cwd.to_string_lossy().into_owned()),
        ..sh("pwd")
    };
    let (outcome, _) = run(&rig, &mut rx, &cmd).await;
    assert!(cwd.is_dir());
    assert_eq!(outcome.stdout.trim_end(), cwd.to_string_lossy());
}

#[tokio::test]
async fn cwd_that_is_a_file_is_a_start_error() {
    let (rig, mut rx) = Rig::new(16);
    let file = tempfile::NamedTempFile::new().unwrap();
    let cwd = file.path().to_string_lossy().into_owned();
    let cmd = wire::Command {
        cwd: Some(cwd.clone()),
        ..sh("echo never")
    };
    let (result, got) = drive(run_command(&cmd, &rig.ctx()), &mut rx).await;
    let err = result.unwrap_err();
    assert!(matches!(err, CommandError::Start { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("Command `echo never` could not start: cwd {cwd} is not a directory")
    );
    assert!(got.is_empty());
}

#[tokio::test]
async fn env_is_laid_over_the_runtime_env() {
    let (rig, mut rx) = Rig::new(16);
    // The real runtime environment is inherited.
    let (outcome, _) = run(&rig, &mut rx, &sh("printf %s \"$PATH\"")).await;
    assert_eq!(outcome.stdout, std::env::var("PATH").unwrap());
    // With an injected base: command values win, the token never passes.
    let base = vec![
        ("PATH".into(), std::env::var_os("PATH").unwrap()),
        ("ONLY_RUNTIME".into(), "r".into()),
        ("SHARED".into(), "runtime".into()),
        (crate::config::AUTH_TOKEN_ENV.into(), "base-token".into()),
    ];
    let cmd = with_env(
        "echo \"$ONLY_RUNTIME $SHARED ${RUNTIMEUSE_AUTH_TOKEN-unset}\"",
        &[("SHARED", "cmd")],
    );
    let (result, _) = drive(
        run_with_base_env(&cmd, &rig.ctx(), BaseEnv::Explicit(base.clone())),
        &mut rx,
    )
    .await;
    assert_eq!(result.unwrap().stdout, "r cmd unset\n");
    // Not even when the command itself asks for it.
    let cmd = with_env(
        "echo ${RUNTIMEUSE_AUTH_TOKEN-unset}",
        &[(crate::config::AUTH_TOKEN_ENV, "explicit")],
    );
    let (result, _) = drive(
        run_with_base_env(&cmd, &rig.ctx(), BaseEnv::Explicit(base)),
        &mut rx,
    )
    .await;
    assert_eq!(result.unwrap().stdout, "unset\n");
}

#[tokio::test]
async fn secret_split_across_reads_is_redacted() {
    let (mut rig, mut rx) = Rig::new(16);
    rig.redactor = Redactor::new(["hunter2-secret-value"]);
    let cmd = sh("printf 'a hunter2-sec'; sleep 0.2; printf 'ret-value b\\n'");
    let (outcome, got) = run(&rig, &mut rx, &cmd).await;
    assert!(
        got.len() >= 2,
        "the two halves were read separately: {got:?}"
    );
    assert_eq!(joined(&got, Stream::Stdout), "a [REDACTED] b\n");
    assert_eq!(outcome.stdout, "a [REDACTED] b\n");
}

#[tokio::test]
async fn env_values_are_secrets_unless_short() {
    let (mut rig, mut rx) = Rig::new(16);
    rig.redactor = Redactor::new(["request-secret"]);
    let cmd = with_env(
        "echo \"$TOKEN $FLAG\"; echo \"$TOKEN\" >&2; echo request-secret",
        &[("TOKEN", "supersecretvalue"), ("FLAG", "1")],
    );
    let (outcome, got) = run(&rig, &mut rx, &cmd).await;
    assert_eq!(outcome.stdout, "[REDACTED] 1\n[REDACTED]\n");
    assert_eq!(joined(&got, Stream::Stderr), "[REDACTED]\n");
    // The command string is redacted in every message too.
    let label = "echo \"$TOKEN $FLAG\"; echo \"$TOKEN\" >&2; echo [REDACTED]";
    assert!(got.iter().all(|o| o.command == label), "{got:?}");
}

#[tokio::test]
async fn invalid_utf8_becomes_replacement_chars() {
    let (rig, mut rx) = Rig::new(16);
    let (outcome, got) = run(&rig, &mut rx, &sh("printf '\\377\\376abc'")).await;
    assert_eq!(outcome.stdout, "\u{FFFD}\u{FFFD}abc");
    assert_eq!(joined(&got, Stream::Stdout), "\u{FFFD}\u{FFFD}abc");
}

#[tokio::test]
async fn multibyte_char_split_across_reads_survives() {
    let (rig, mut rx) = Rig::new(16);
    // The euro sign is e2 82 ac.
    let cmd = sh("printf 'x\\342\\202'; sleep 0.2; printf '\\254y\\n'");
    let (outcome, got) = run(&rig, &mut rx, &cmd).await;
    assert_eq!(outcome.stdout, "x€y\n");
    assert_eq!(joined(&got, Stream::Stdout), "x€y\n");
}

#[tokio::test]
async fn a_truncated_char_at_the_end_is_not_lost() {
    let (rig, mut rx) = Rig::new(16);
    let (outcome, _) = run(&rig, &mut rx, &sh("printf 'ok\\342\\202'")).await;
    assert_eq!(outcome.stdout, "ok\u{FFFD}");
}

fn seq_text(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

#[tokio::test]
async fn large_output_is_streamed_whole_and_captured_bounded() {
    let (mut rig, mut rx) = Rig::new(16);
    rig.head = 4096;
    rig.tail = 4096;
    let expected = seq_text(1_200_000);
    assert!(expected.len() >= 8 * 1024 * 1024);
    let (outcome, got) = run(&rig, &mut rx, &sh("seq 1 1200000")).await;
    let streamed = joined(&got, Stream::Stdout);
    assert_eq!(streamed.len(), expected.len());
    assert!(streamed == expected, "streamed output differs");
    assert!(got.len() < 1000, "{} messages for 8 MiB", got.len());
    assert!(got.iter().all(|o| o.text.len() <= CHUNK_BYTES));
    let omitted = expected.len() - 8192;
    assert_eq!(
        outcome.stdout,
        join_with_marker(
            &expected[..4096],
            omitted,
            &expected[expected.len() - 4096..]
        )
    );
}

#[tokio::test]
async fn frames_stay_small_whatever_the_output() {
    let (mut rig, mut rx) = Rig::new(16);
    // A one-byte secret grows fourfold here; NULs escape to six bytes.
    rig.redactor = Redactor::new(["a"]);
    let cmd = sh("yes ab | head -c 300000; head -c 300000 /dev/zero");
    let (outcome, got) = run(&rig, &mut rx, &cmd).await;
    assert_eq!(outcome.exit_code, 0);
    let streamed = joined(&got, Stream::Stdout);
    let expected = "[REDACTED]b\n".repeat(100_000) + &"\0".repeat(300_000);
    assert!(streamed == expected, "streamed output differs");
    for o in &got {
        assert!(o.text.len() <= CHUNK_BYTES);
        let frame = serde_json::to_vec(&OutboundMessage::CommandOutputMessage {
            stream: o.stream,
            text: o.text.clone(),
            command: o.command.clone(),
        })
        .unwrap();
        assert!(frame.len() < 512 * 1024, "{}", frame.len());
    }
}

#[tokio::test]
async fn a_cancel_before_the_start_runs_nothing() {
    let (rig, mut rx) = Rig::new(16);
    let dir = tempfile::tempdir().unwrap();
    let witness = dir.path().join("ran");
    rig.cancel.cancel();
    let cmd = sh(&format!("touch {}", witness.display()));
    let (result, got) = drive(run_command(&cmd, &rig.ctx()), &mut rx).await;
    assert!(matches!(result, Err(CommandError::Cancelled)), "{result:?}");
    assert!(got.is_empty());
    assert!(!witness.exists());
}

#[tokio::test]
async fn a_slow_reader_blocks_the_command() {
    let (rig, mut rx) = Rig::new(1);
    let cmd = sh("seq 1 1000000");
    let ctx = rig.ctx();
    let run = run_command(&cmd, &ctx);
    tokio::pin!(run);
    // Nobody reads: the outbox fills, then the pipe, then seq blocks.
    assert!(
        timeout(Duration::from_millis(300), &mut run).await.is_err(),
        "the command finished although nothing was read"
    );
    let (result, got) = drive(run, &mut rx).await;
    assert_eq!(result.unwrap().exit_code, 0);
    assert!(joined(&got, Stream::Stdout) == seq_text(1_000_000));
}

#[tokio::test]
async fn cancel_kills_the_whole_tree() {
    let (rig, mut rx) = Rig::new(16);
    let marker = unique("cancel-marker");
    let cmd = sh(&format!(
        "echo $$; sh -c 'sleep 60; echo {marker}' & sleep 60"
    ));
    let ctx = rig.ctx();
    let run = run_command(&cmd, &ctx);
    tokio::pin!(run);
    let pgid: u32 = tokio::select! {
        result = &mut run => panic!("finished early: {result:?}"),
        Some(message) = rx.recv() => output(message).text.trim().parse().unwrap(),
    };
    // Let the background shell start.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pgrep(&marker) && Instant::now() < deadline {
        sleep(Duration::from_millis(10)).await;
    }
    assert!(pgrep(&marker), "the grandchild never started");
    rig.cancel.cancel();
    let started = Instant::now();
    let result = run.await;
    assert!(matches!(result, Err(CommandError::Cancelled)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!group_alive(pgid), "group {pgid} is still alive");
    assert!(!pgrep(&marker), "the grandchild survived");
}

#[tokio::test]
async fn a_gone_client_kills_the_command() {
    let (rig, rx) = Rig::new(1);
    drop(rx);
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let cmd = sh(&format!(
        "echo $$ > {}; sleep 60 & echo hi; sleep 60",
        pid_file.display()
    ));
    let started = Instant::now();
    let result = run_command(&cmd, &rig.ctx()).await;
    assert!(
        matches!(result, Err(CommandError::ClientGone)),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let pgid: u32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!group_alive(pgid), "group {pgid} is still alive");
}

#[tokio::test]
async fn a_background_job_holding_the_pipes_does_not_hang_the_command() {
    let (rig, mut rx) = Rig::new(16);
    let started = Instant::now();
    let (outcome, _) = run(&rig, &mut rx, &sh("echo $$; sleep 5 &")).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(outcome.exit_code, 0);
    // A completed command's background jobs keep running (servers).
    let pgid: u32 = outcome.stdout.trim().parse().unwrap();
    assert!(group_alive(pgid), "the background job was killed");
    process::signal_group(pgid, Signal::SIGKILL);
}

#[tokio::test]
async fn cancel_after_the_shell_exited_kills_background_jobs() {
    let (rig, mut rx) = Rig::new(1);
    // ~106 KiB: more than one chunk, so the pump gets stuck on the full
    // outbox, but little enough for the pipe to take the rest, so the
    // shell exits: the run is past the shell, not done.
    let cmd = sh("echo $$; sleep 60 & seq 1 20000");
    let ctx = rig.ctx();
    let run = run_command(&cmd, &ctx);
    tokio::pin!(run);
    assert!(timeout(Duration::from_millis(300), &mut run).await.is_err());
    let first = output(rx.recv().await.unwrap()).text;
    let pgid: u32 = first.lines().next().unwrap().parse().unwrap();
    assert!(group_alive(pgid), "the background job is running");
    rig.cancel.cancel();
    let (result, _) = drive(run, &mut rx).await;
    assert!(matches!(result, Err(CommandError::Cancelled)), "{result:?}");
    assert!(!group_alive(pgid), "group {pgid} is still alive");
}

#[test]
fn capture_keeps_everything_when_it_fits() {
    let mut capture = Capture::new(4, 4);
    capture.push("abc");
    capture.push("defgh");
    assert_eq!(capture.finish(), "abcdefgh");
}

#[test]
fn capture_cuts_on_char_boundaries() {
    let mut capture = Capture::new(4, 5);
    capture.push("ab€cd€€");
    // Head "ab" (the € does not fit); the last 5 bytes start inside a €,
    // whose torn 2 bytes are dropped too: 11 - 5 + 2 omitted.
    assert_eq!(capture.finish(), join_with_marker("ab", 8, "€"));
}

/// `capture` on the whole text, written the obvious way.
fn reference_capture(text: &str, head: usize, tail: usize) -> String {
    let head_end = floor_boundary(text, head);
    let rest = &text[head_end..];
    if rest.len() <= tail {
        return text.to_owned();
    }
    let tail_start = ceil_boundary(text, text.len() - tail);
    join_with_marker(
        &text[..head_end],
        tail_start - head_end,
        &text[tail_start..],
    )
}

fn split_points(len: usize, cuts: &[prop::sample::Index]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points
}

/// Pieces of multibyte sequences plus bytes that are never valid.
const TRICKY_BYTES: [u8; 8] = [b'a', 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0xff, 0xc0];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn decoding_in_pieces_equals_lossy_on_the_whole(
        bytes in prop::collection::vec(prop::sample::select(TRICKY_BYTES.to_vec()), 0..40),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let points = split_points(bytes.len(), &cuts);
        let mut decoder = Utf8Decoder::default();
        let mut out = String::new();
        for w in points.windows(2) {
            decoder.push(&bytes[w[0]..w[1]], &mut out);
        }
        decoder.finish(&mut out);
        prop_assert_eq!(out, String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn capture_in_pieces_equals_reference(
        text in "[aé€😀]{0,40}",
        head in 0usize..12,
        tail in 0usize..12,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let points = split_points(text.len(), &cuts);
        let mut capture = Capture::new(head, tail);
        for w in points.windows(2) {
            let (a, b) = (floor_boundary(&text, w[0]), floor_boundary(&text, w[1]));
            capture.push(&text[a..b]);
        }
        prop_assert_eq!(capture.finish(), reference_capture(&text, head, tail));
    }

}
