use super::pipes::{LineRead, read_line, trim_cr};
use super::protocol::{cancel_line, invoke_line};
use super::*;
use crate::agents::ECHO_SUBCOMMAND;
use crate::config::AgentSource;
use crate::outbox::Outbox;
use crate::redact::Redactor;
use crate::testing::{wait_group_gone, wait_pid_gone};
use crate::wire::OutboundMessage;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::BufReader;
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A test handler; behaviour picked by the user prompt.
const PY_HANDLER: &str = r#"
import json, os, signal, subprocess, sys, time

def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

while True:
    line = sys.stdin.readline()
    if not line:
        break
    msg = json.loads(line)
    if msg["type"] != "invoke":
        continue
    iid, p = msg["id"], msg["user_prompt"]
    if p == "text":
        send({"type": "result", "text": "hello", "metadata": {"n": 1}})
    elif p == "pid":
        send({"type": "result", "id": iid, "text": str(os.getpid())})
    elif p == "structured":
        send({"type": "result", "structured_output": {"a": [1, 2], "model": msg["model"]}})
    elif p == "stream":
        send({"type": "assistant", "text_blocks": ["one", "two"]})
        send({"type": "log", "level": "info", "message": "working"})
        send({"type": "assistant", "id": iid, "text": "three"})
        send({"type": "from_the_future", "x": 1})
        send({"type": "result", "text": "streamed"})
    elif p == "error":
        send({"type": "error", "error": "it failed", "metadata": {"code": 7}})
    elif p == "error_then_crash":
        send({"type": "error", "id": iid, "error": "reported first"})
        sys.stderr.write("Traceback: dying after the error\n")
        sys.exit(3)
    elif p == "error_then_slow_crash":
        send({"type": "error", "id": iid, "error": "reported first"})
        time.sleep(0.3)
        sys.exit(3)
    elif p == "count_then_crash":
        with open(msg["env"]["COUNT_FILE"], "a") as f:
            f.write("ran\n")
        sys.exit(5)
    elif p == "crash":
        sys.stderr.write("first stderr line\nboom: secret-token-123 leaked\n")
        sys.stderr.flush()
        sys.exit(7)
    elif p == "garbage":
        print("this is not json secret-token-123")
        sys.stdout.flush()
    elif p == "stale":
        send({"type": "assistant", "id": "old-invocation", "text": "stale"})
        send({"type": "result", "id": "old-invocation", "text": "stale result"})
        send({"type": "assistant", "id": iid, "text": "fresh"})
        send({"type": "result", "id": iid, "text": "current"})
    elif p == "secret":
        send({"type": "assistant", "text": "my secret-token-123"})
        send({"type": "result", "structured_output": {"k": "secret-token-123"},
              "metadata": {"m": "secret-token-123"}})
    elif p == "env":
        send({"type": "result", "structured_output": {
            "foo": msg["env"].get("FOO"),
            "auth": os.environ.get("RUNTIMEUSE_AUTH_TOKEN"),
            "format": msg["output_format"], "source_id": msg["source_id"],
            "secrets": msg["secrets"], "protocol": msg["protocol"]}})
    elif p == "bad_structured":
        send({"type": "result", "structured_output": [1, 2]})
    elif p == "big":
        send({"type": "result", "structured_output": {"blob": "x" * (4 * 1024 * 1024), "pid": os.getpid()}})
    elif p == "long_line":
        send({"type": "assistant", "text": "y" * 5000})
    elif p == "cooperative":
        send({"type": "assistant", "text": "started"})
        while True:
            nxt = json.loads(sys.stdin.readline())
            if nxt["type"] == "cancel" and nxt["id"] == iid:
                send({"type": "error", "id": iid, "error": "cancelled"})
                break
    elif p == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "60"])
        send({"type": "result", "id": "not-yet", "text": str(child.pid)})
        send({"type": "assistant", "text": str(child.pid)})
        while True:
            time.sleep(1)
    elif p == "grandchild":
        child = subprocess.Popen(["sleep", "60"])
        send({"type": "result", "text": str(child.pid)})
    else:
        send({"type": "result", "text": "unknown prompt " + p})
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    host: HandlerHost,
    outbox: Outbox,
    rx: Receiver<OutboundMessage>,
    redactor: Redactor,
    cancel: CancellationToken,
}

fn write_script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

impl Fixture {
    fn python() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = write_script(dir.path(), "handler.py", PY_HANDLER, 0o644);
        let command = HandlerCommand::resolve(&AgentSource::Path(script)).unwrap();
        Self::with(dir, command)
    }

    fn with(dir: tempfile::TempDir, command: HandlerCommand) -> Self {
        let (outbox, rx) = Outbox::channel(64);
        Self {
            _dir: dir,
            host: HandlerHost::new(SparePool::none(Arc::new(command))),
            outbox,
            rx,
            redactor: Redactor::default(),
            cancel: CancellationToken::new(),
        }
    }

    async fn run(&mut self, prompt: &str) -> Result<AgentOutput, HandlerError> {
        let inv = invocation(prompt);
        self.run_inv(&inv).await
    }

    async fn run_inv(&mut self, inv: &Invocation) -> Result<AgentOutput, HandlerError> {
        let ctx = InvokeContext {
            outbox: &self.outbox,
            redactor: &self.redactor,
            cancel: &self.cancel,
            cancel_grace: Duration::from_millis(500),
            kill_grace: Duration::from_millis(300),
        };
        self.host.invoke(inv, &ctx).await
    }

    fn sent(&mut self) -> Vec<OutboundMessage> {
        let mut out = Vec::new();
        while let Ok(m) = self.rx.try_recv() {
            out.push(m);
        }
        out
    }

    async fn pid_via_prompt(&mut self) -> u32 {
        text_of(self.run("pid").await).parse().unwrap()
    }
}

fn invocation(prompt: &str) -> Invocation {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Invocation {
        id: format!("inv-{n}"),
        user_prompt: prompt.into(),
        model: "m1".into(),
        ..Invocation::default()
    }
}

fn text_of(r: Result<AgentOutput, HandlerError>) -> String {
    match r {
        Ok(AgentOutput {
            data: wire::ResultData::Text { text },
            ..
        }) => text,
        other => panic!("expected a text result, got {other:?}"),
    }
}

fn failed(r: Result<AgentOutput, HandlerError>) -> String {
    match r {
        Err(HandlerError::Failed(msg)) => msg,
        other => panic!("expected Failed, got {other:?}"),
    }
}

fn assistant_texts(msgs: &[OutboundMessage]) -> Vec<String> {
    msgs.iter()
        .flat_map(|m| match m {
            OutboundMessage::AssistantMessage { text_blocks } => text_blocks.clone(),
            other => panic!("unexpected outbound message {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn text_result_with_metadata() {
    let mut f = Fixture::python();
    let out = f.run("text").await.unwrap();
    assert_eq!(
        out.data,
        wire::ResultData::Text {
            text: "hello".into()
        }
    );
    assert_eq!(out.metadata, json!({"n": 1}).as_object().unwrap().clone());
    assert!(f.sent().is_empty());
    f.host.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn structured_result() {
    let mut f = Fixture::python();
    let out = f.run("structured").await.unwrap();
    assert_eq!(
        out.data,
        wire::ResultData::StructuredOutput {
            structured_output: json!({"a": [1, 2], "model": "m1"})
                .as_object()
                .unwrap()
                .clone()
        }
    );
    assert!(out.metadata.is_empty());
}

#[tokio::test]
async fn structured_output_must_be_an_object() {
    let mut f = Fixture::python();
    let msg = failed(f.run("bad_structured").await);
    assert!(msg.contains("\"structured_output\" is an array"), "{msg}");
    assert!(msg.contains("must be a JSON object"), "{msg}");
    assert_eq!(f.host.pid(), None, "a protocol breaker is not kept");
    assert_eq!(text_of(f.run("text").await), "hello");
}

#[tokio::test]
async fn assistant_messages_stream_and_unknown_types_are_ignored() {
    let mut f = Fixture::python();
    assert_eq!(text_of(f.run("stream").await), "streamed");
    assert_eq!(assistant_texts(&f.sent()), ["one", "two", "three"]);
}

#[tokio::test]
async fn reported_error_keeps_the_handler_warm() {
    let mut f = Fixture::python();
    let pid = f.pid_via_prompt().await;
    match f.run("error").await {
        Err(HandlerError::Reported { error, metadata }) => {
            assert_eq!(error, "it failed");
            assert_eq!(metadata["code"], 7);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.pid_via_prompt().await, pid);
}

#[tokio::test]
async fn error_then_crash_is_one_error_and_the_next_invoke_works() {
    let mut f = Fixture::python();
    let first = f.pid_via_prompt().await;
    match f.run("error_then_crash").await {
        Err(HandlerError::Reported { error, .. }) => assert_eq!(error, "reported first"),
        other => panic!("{other:?}"),
    }
    // Straight away, racing the crash: the next invocation must not see it.
    let second = f.pid_via_prompt().await;
    assert_ne!(first, second, "a fresh handler was started");
    assert!(f.sent().is_empty());
    wait_group_gone(first).await;
}

#[tokio::test]
async fn dead_between_invocations_respawns_after_a_pause_too() {
    let mut f = Fixture::python();
    let first = f.pid_via_prompt().await;
    assert!(matches!(
        f.run("error_then_crash").await,
        Err(HandlerError::Reported { .. })
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = f.pid_via_prompt().await;
    assert_ne!(first, second);
}

#[tokio::test]
async fn death_noticed_only_after_the_invoke_was_written_still_respawns() {
    // The handler dies 300 ms after its terminal: the next invoke line
    // goes into the pipe while it is still alive, then stdout closes
    // with the line unread. That invocation must run on a new process.
    let mut f = Fixture::python();
    let first = f.pid_via_prompt().await;
    assert!(matches!(
        f.run("error_then_slow_crash").await,
        Err(HandlerError::Reported { .. })
    ));
    let second = f.pid_via_prompt().await;
    assert_ne!(first, second);
    assert!(f.sent().is_empty());
}

#[tokio::test]
async fn a_warm_handler_that_read_the_invocation_and_died_is_not_rerun() {
    let mut f = Fixture::python();
    f.pid_via_prompt().await;
    let count = f._dir.path().join("count");
    let mut inv = invocation("count_then_crash");
    inv.env
        .insert("COUNT_FILE".into(), count.to_str().unwrap().into());
    let msg = failed(f.run_inv(&inv).await);
    assert!(msg.contains("exit status: 5"), "{msg}");
    assert_eq!(
        std::fs::read_to_string(&count).unwrap(),
        "ran\n",
        "ran exactly once"
    );
}

#[tokio::test]
async fn crash_before_terminal_reports_status_and_stderr() {
    let mut f = Fixture::python();
    f.redactor = Redactor::new(["secret-token-123"]);
    let msg = failed(f.run("crash").await);
    assert!(msg.contains("exited before sending a result"), "{msg}");
    assert!(msg.contains("exit status: 7"), "{msg}");
    assert!(msg.contains("first stderr line"), "{msg}");
    assert!(msg.contains("boom: [REDACTED] leaked"), "{msg}");
    assert!(!msg.contains("secret-token-123"), "{msg}");
    assert_eq!(f.host.pid(), None);
    assert_eq!(text_of(f.run("text").await), "hello");
}

#[tokio::test]
async fn garbage_line_fails_quoting_it_and_the_next_invoke_works() {
    let mut f = Fixture::python();
    f.redactor = Redactor::new(["secret-token-123"]);
    let pid = f.pid_via_prompt().await;
    let msg = failed(f.run("garbage").await);
    assert!(
        msg.contains("not a JSON object: \"this is not json [REDACTED]\""),
        "{msg}"
    );
    assert_eq!(f.host.pid(), None);
    wait_group_gone(pid).await;
    assert_ne!(f.pid_via_prompt().await, pid);
}

#[tokio::test]
async fn stale_id_messages_are_dropped() {
    let mut f = Fixture::python();
    assert_eq!(text_of(f.run("stale").await), "current");
    assert_eq!(assistant_texts(&f.sent()), ["fresh"]);
}

#[tokio::test]
async fn everything_sent_or_returned_is_redacted() {
    let mut f = Fixture::python();
    let mut inv = invocation("secret");
    inv.secrets = vec!["secret-token-123".into()];
    let out = f.run_inv(&inv).await.unwrap();
    assert_eq!(
        serde_json::to_value(&out.data).unwrap()["structured_output"]["k"],
        "[REDACTED]"
    );
    assert_eq!(out.metadata["m"], "[REDACTED]");
    assert_eq!(assistant_texts(&f.sent()), ["my [REDACTED]"]);
}

#[tokio::test]
async fn invoke_carries_every_field_and_no_auth_token() {
    let cmd = HandlerCommand {
        program: "/bin/true".into(),
        args: vec![],
        display: "true".into(),
        env: Vec::new(),
    }
    .to_process_command();
    assert!(
        cmd.as_std()
            .get_envs()
            .any(|(k, v)| k == crate::config::AUTH_TOKEN_ENV && v.is_none()),
        "the runtime's token is removed from the child's environment"
    );
    let mut f = Fixture::python();
    let mut inv = invocation("env");
    inv.env.insert("FOO".into(), "bar".into());
    inv.source_id = Some("src-1".into());
    inv.output_format = Some(json!({"type": "json_schema", "schema": {"type": "object"}}));
    inv.secrets = vec!["s3cr3t".into()];
    let out = f.run_inv(&inv).await.unwrap();
    let wire::ResultData::StructuredOutput { structured_output } = out.data else {
        panic!("{:?}", out.data)
    };
    assert_eq!(
        Value::Object(structured_output),
        json!({"foo": "bar", "auth": null, "source_id": "src-1", "secrets": ["[REDACTED]"],
            "format": {"type": "json_schema", "schema": {"type": "object"}}, "protocol": 1})
    );
}

#[tokio::test]
async fn warm_process_is_reused_across_invocations() {
    let mut f = Fixture::python();
    assert_eq!(f.host.pid(), None, "spawned lazily");
    let pid = f.pid_via_prompt().await;
    assert_eq!(f.host.pid(), Some(pid));
    for _ in 0..5 {
        assert_eq!(text_of(f.run("text").await), "hello");
    }
    assert_eq!(f.pid_via_prompt().await, pid);
    f.host.shutdown(Duration::from_secs(1)).await;
    wait_group_gone(pid).await;
}

#[tokio::test]
async fn cancel_with_a_cooperative_handler_keeps_it_warm() {
    let mut f = Fixture::python();
    let pid = f.pid_via_prompt().await;
    let cancel = f.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel();
    });
    let start = Instant::now();
    assert!(matches!(
        f.run("cooperative").await,
        Err(HandlerError::Cancelled)
    ));
    assert!(start.elapsed() < Duration::from_millis(500 + 200 + 100));
    assert_eq!(assistant_texts(&f.sent()), ["started"]);
    f.cancel = CancellationToken::new();
    assert_eq!(f.pid_via_prompt().await, pid, "still the same warm process");
}

#[tokio::test]
async fn cancel_with_a_hung_handler_kills_its_whole_group() {
    let mut f = Fixture::python();
    let cancel = f.cancel.clone();
    let mut rx = std::mem::replace(&mut f.rx, Outbox::channel(1).1);
    let (tx_pid, rx_pid) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // The grandchild's pid arrives as an assistant message.
        if let Some(OutboundMessage::AssistantMessage { text_blocks }) = rx.recv().await {
            let pid = text_blocks[0].parse::<u32>().unwrap();
            let _ = tx_pid.send((pid, Instant::now()));
        }
        cancel.cancel();
    });
    assert!(matches!(f.run("hang").await, Err(HandlerError::Cancelled)));
    let (grandchild, cancelled_at) = rx_pid.await.unwrap();
    // cancel grace 500 ms + SIGTERM ignored, SIGKILL after 300 ms.
    let took = cancelled_at.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(f.host.pid(), None);
    wait_pid_gone(grandchild).await;
    f.cancel = CancellationToken::new();
    assert_eq!(text_of(f.run("text").await), "hello");
}

#[tokio::test]
async fn cancelled_before_start_spawns_nothing() {
    let mut f = Fixture::python();
    f.cancel.cancel();
    assert!(matches!(f.run("text").await, Err(HandlerError::Cancelled)));
    assert_eq!(f.host.pid(), None);
}

#[tokio::test]
async fn shutdown_leaves_nothing_running() {
    let mut f = Fixture::python();
    let grandchild: u32 = text_of(f.run("grandchild").await).parse().unwrap();
    let pid = f.host.pid().unwrap();
    f.host.shutdown(Duration::from_millis(500)).await;
    assert_eq!(f.host.pid(), None);
    wait_group_gone(pid).await;
    wait_pid_gone(grandchild).await;
}

#[tokio::test]
async fn dropping_the_host_kills_the_handler() {
    let mut f = Fixture::python();
    let grandchild: u32 = text_of(f.run("grandchild").await).parse().unwrap();
    let pid = f.host.pid().unwrap();
    drop(f);
    wait_group_gone(pid).await;
    wait_pid_gone(grandchild).await;
}

#[tokio::test]
async fn four_megabyte_structured_output_line() {
    let mut f = Fixture::python();
    let out = f.run("big").await.unwrap();
    let wire::ResultData::StructuredOutput { structured_output } = out.data else {
        panic!("not structured")
    };
    assert_eq!(structured_output["blob"].as_str().unwrap().len(), 4 << 20);
    // Still warm and in sync after a big line.
    assert_eq!(
        structured_output["pid"].as_u64().unwrap() as u32,
        f.pid_via_prompt().await
    );
}

#[tokio::test]
async fn a_line_over_the_limit_fails() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "handler.py", PY_HANDLER, 0o644);
    let command = HandlerCommand::resolve(&AgentSource::Path(script)).unwrap();
    let mut f = Fixture::with(dir, command);
    f.host = HandlerHost::new(f.host.spares.clone()).with_max_line_bytes(1024);
    let msg = failed(f.run("long_line").await);
    assert!(msg.contains("wrote a line longer than 1024 bytes"), "{msg}");
    assert_eq!(text_of(f.run("text").await), "hello");
}

#[tokio::test]
async fn shell_handler_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(
        dir.path(),
        "handler.sh",
        r#"while IFS= read -r line; do
  case "$line" in
    *'"type":"invoke"'*) printf '{"type":"assistant","text":"from sh"}\n{"type":"result","text":"pid %s"}\n' "$$" ;;
  esac
done
"#,
        0o644,
    );
    let command = HandlerCommand::resolve(&AgentSource::Path(script.clone())).unwrap();
    assert_eq!(command.program, PathBuf::from("/bin/sh"));
    assert_eq!(
        command.args,
        [script.canonicalize().unwrap().to_str().unwrap()]
    );
    let mut f = Fixture::with(dir, command);
    let first = text_of(f.run("x").await);
    assert!(first.starts_with("pid "), "{first}");
    assert_eq!(text_of(f.run("y").await), first, "warm");
    assert_eq!(assistant_texts(&f.sent()), ["from sh", "from sh"]);
    f.host.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn handler_that_exits_at_once_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(
        dir.path(),
        "bad.sh",
        "echo 'cannot import agent sdk' >&2\nexit 2\n",
        0o644,
    );
    let command = HandlerCommand::resolve(&AgentSource::Path(script)).unwrap();
    let mut f = Fixture::with(dir, command);
    let msg = failed(f.run("x").await);
    assert!(msg.contains("exit status: 2"), "{msg}");
    assert!(msg.contains("cannot import agent sdk"), "{msg}");
}

#[tokio::test]
async fn spawn_failure_names_the_program_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fixture::with(
        dir,
        HandlerCommand {
            program: "/nonexistent/handler".into(),
            args: vec![],
            display: "/nonexistent/handler".into(),
            env: Vec::new(),
        },
    );
    let msg = failed(f.run("x").await);
    assert!(msg.contains("could not start agent handler"), "{msg}");
    assert!(msg.contains("/nonexistent/handler: not found"), "{msg}");

    // Executable but no #! line.
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "noshebang", "echo hi\n", 0o755);
    let command = HandlerCommand::resolve(&AgentSource::Path(script)).unwrap();
    let mut f = Fixture::with(dir, command);
    let msg = failed(f.run("x").await);
    assert!(msg.contains("#! line"), "{msg}");
}

#[test]
fn resolve_path_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.py");
    let err = HandlerCommand::resolve(&AgentSource::Path(missing.clone()))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("agent handler {}: does not exist", missing.display())
    );

    let odd = write_script(dir.path(), "handler.xyz", "", 0o644);
    let err = HandlerCommand::resolve(&AgentSource::Path(odd))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not executable"), "{err}");
    assert!(err.contains("(.xyz)"), "{err}");
    assert!(err.contains(".py"), "{err}");

    let err = HandlerCommand::resolve(&AgentSource::Path(dir.path().into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a file"), "{err}");
}

#[test]
fn resolve_by_extension_or_executable_bit() {
    let dir = tempfile::tempdir().unwrap();
    let py = write_script(dir.path(), "h.py", "", 0o644);
    let cmd = HandlerCommand::resolve(&AgentSource::Path(py.clone())).unwrap();
    assert_eq!(cmd.program.file_name().unwrap(), "python3");
    assert_eq!(cmd.args, [py.to_str().unwrap()]);
    assert_eq!(cmd.display, format!("python3 {}", py.display()));

    let js = write_script(dir.path(), "h.mjs", "", 0o644);
    let cmd = HandlerCommand::resolve(&AgentSource::Path(js)).unwrap();
    assert_eq!(cmd.program.file_name().unwrap(), "node");

    let exe = write_script(dir.path(), "h.py2", "#!/bin/sh\n", 0o755);
    // A relative path with `..` is canonicalised.
    let indirect = dir.path().join("sub/../h.py2");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let cmd = HandlerCommand::resolve(&AgentSource::Path(indirect)).unwrap();
    assert_eq!(cmd.program, exe.canonicalize().unwrap());
    assert!(cmd.args.is_empty());
}

#[test]
fn js_handlers_run_through_the_sdk_launcher_with_the_sdks_in_their_env() {
    use super::command::resolve_path_with;
    use super::sdks::Sdks;
    let dir = tempfile::tempdir().unwrap();
    let sdks = Sdks::at(Path::new("/cache/sdks"));
    let launcher = "/cache/sdks/handlers/sdk/node/launch.js";
    let through_launcher = |path: &Path| {
        let cmd = resolve_path_with(path, Some(&sdks)).unwrap();
        assert_eq!(cmd.program.file_name().unwrap(), "node", "{cmd:?}");
        assert_eq!(cmd.args, [launcher, path.to_str().unwrap()]);
        assert_eq!(cmd.display, format!("node {}", path.display()));
        cmd
    };
    for (name, body, mode) in [
        ("plain.js", "", 0o644),
        ("module.mjs", "export const handler = {};\n", 0o644),
        ("common.cjs", "", 0o644),
        // Executable without a #! line, or with node's: still a Node module.
        ("exe.js", "module.exports = {};\n", 0o755),
        ("shebang.mjs", "#!/usr/bin/env node\n", 0o755),
    ] {
        let cmd = through_launcher(&write_script(dir.path(), name, body, mode));
        let env: std::collections::HashMap<_, _> = cmd.env.into_iter().collect();
        assert_eq!(
            env[std::ffi::OsStr::new("RUNTIMEUSE_SDK_DIR")],
            "/cache/sdks/handlers/sdk"
        );
        assert!(
            env[std::ffi::OsStr::new("PYTHONPATH")]
                .to_str()
                .unwrap()
                .starts_with("/cache/sdks/handlers/sdk/python")
        );
    }
    // Its author chose another interpreter: run as it is.
    let other = write_script(dir.path(), "other.js", "#!/bin/sh\n", 0o755);
    let cmd = resolve_path_with(&other, Some(&sdks)).unwrap();
    assert_eq!(cmd.program, other.canonicalize().unwrap());
    // Every handler gets the SDKs' env, whatever its language.
    let py = write_script(dir.path(), "h.py", "", 0o644);
    let cmd = resolve_path_with(&py, Some(&sdks)).unwrap();
    assert_eq!(cmd.program.file_name().unwrap(), "python3");
    assert_eq!(cmd.env.len(), 2);
    // No SDKs (unwritable cache): plain node, no env.
    let js = write_script(dir.path(), "late.mjs", "", 0o644);
    let cmd = resolve_path_with(&js, None).unwrap();
    assert_eq!(cmd.args, [js.to_str().unwrap()]);
    assert!(cmd.env.is_empty());
}

#[test]
fn resolve_bundled() {
    let cmd = HandlerCommand::resolve(&AgentSource::Bundled("echo".into())).unwrap();
    assert_eq!(cmd.program, std::env::current_exe().unwrap());
    assert_eq!(cmd.args, [ECHO_SUBCOMMAND]);
    // openai and claude need npm: tests/e2e/test_agent_install.py.

    let err = HandlerCommand::resolve(&AgentSource::Bundled("gpt".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown bundled agent \"gpt\""), "{err}");
    assert!(err.contains("echo, openai, claude"), "{err}");
}

#[test]
fn errors_read_as_the_client_expects() {
    assert_eq!(HandlerError::Cancelled.to_string(), "Request cancelled");
    assert_eq!(
        HandlerError::Reported {
            error: "x".into(),
            metadata: Map::new()
        }
        .to_string(),
        "x"
    );
}

#[test]
fn invoke_line_shape() {
    let inv = Invocation {
        id: "i-1".into(),
        source_id: None,
        system_prompt: "sys".into(),
        user_prompt: "user".into(),
        model: "m".into(),
        output_format: Some(json!({"type": "json_schema", "schema": {"type": "object"}})),
        env: [("K".to_owned(), "v".to_owned())].into(),
        secrets: vec!["s".into()],
    };
    let line = invoke_line(&inv);
    // Documented: compact, `type` first, so line tools can dispatch.
    assert!(line.starts_with(br#"{"type":"invoke","protocol":1,"#));
    assert!(cancel_line("i-1").starts_with(br#"{"type":"cancel","#));
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(
        serde_json::from_slice::<Value>(&line).unwrap(),
        json!({"type": "invoke", "protocol": 1, "id": "i-1", "source_id": null,
            "system_prompt": "sys", "user_prompt": "user", "model": "m",
            "output_format": {"type": "json_schema", "schema": {"type": "object"}},
            "env": {"K": "v"}, "secrets": ["s"]})
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&cancel_line("i-1")).unwrap(),
        json!({"type": "cancel", "id": "i-1"})
    );
}

/// The fenced block of `lang` in the protocol document.
fn doc_example(lang: &str) -> String {
    let doc = include_str!("../../protocol/handler-protocol.md");
    let start = doc
        .split(&format!("```{lang}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no {lang} example in the protocol doc"));
    start.split("```").next().unwrap().to_owned()
}

#[tokio::test]
async fn the_documented_python_example_works() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "example.py", &doc_example("python"), 0o644);
    let mut f = Fixture::with(
        dir,
        HandlerCommand::resolve(&AgentSource::Path(script)).unwrap(),
    );
    assert_eq!(text_of(f.run("shout").await), "SHOUT");
    let mut inv = invocation("shout");
    inv.output_format = Some(json!({"type": "json_schema", "schema": {}}));
    let out = f.run_inv(&inv).await.unwrap();
    assert_eq!(
        serde_json::to_value(out.data).unwrap()["structured_output"],
        json!({"answer": "SHOUT"})
    );
    assert_eq!(out.metadata["handler"], "example");
    assert_eq!(assistant_texts(&f.sent()), ["Thinking...", "Thinking..."]);
    f.host.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_documented_shell_example_works() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "example.sh", &doc_example("sh"), 0o755);
    let mut f = Fixture::with(
        dir,
        HandlerCommand::resolve(&AgentSource::Path(script)).unwrap(),
    );
    for _ in 0..2 {
        let out = f.run("anything").await.unwrap();
        assert_eq!(
            out.data,
            wire::ResultData::Text {
                text: "hello from sh".into()
            }
        );
        assert_eq!(out.metadata["handler"], "sh");
    }
    assert_eq!(
        assistant_texts(&f.sent()),
        ["working on it", "working on it"]
    );
    f.host.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn line_reader_bounds_and_splits() {
    let data: &[u8] = b"one\r\ntwo\n\nlonger line here\nlast";
    let mut r = BufReader::with_capacity(4, data);
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    loop {
        match read_line(&mut r, &mut buf, 10).await.unwrap() {
            LineRead::Eof => break,
            LineRead::Line => lines.push(String::from_utf8(trim_cr(&buf).to_vec()).unwrap()),
            LineRead::TooLong => lines.push(format!("TOOLONG:{}", String::from_utf8_lossy(&buf))),
        }
    }
    assert_eq!(
        lines,
        ["one", "two", "", "TOOLONG:longer lin", "e here", "last"]
    );
}
