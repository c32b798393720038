"""The bundled Claude Code handler against a fake `claude` executable that
prints stream-json and records how it was run."""

import json
import os
import signal
import sys
import time

import pytest

from handler_harness import REPO, wait_gone

SCRIPT = REPO / "handlers" / "claude" / "handler.py"
NOT_INSTALLED = "the claude CLI is not installed (npm install -g @anthropic-ai/claude-code)"

# The fake CLI. FAKE_CLAUDE_MODE picks the behaviour, FAKE_CLAUDE_RECORD is
# where it writes its argv, environment, stdin and pids.
FAKE_CLAUDE = r"""
import json, os, signal, subprocess, sys, time

mode = os.environ.get("FAKE_CLAUDE_MODE", "text")
record_path = os.environ["FAKE_CLAUDE_RECORD"]
record = {"argv": sys.argv[1:], "env": dict(os.environ), "stdin": sys.stdin.read(),
          "pid": os.getpid(), "pgid": os.getpgid(0)}

def save():
    with open(record_path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(record_path + ".tmp", record_path)

def emit(event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()

def assistant(*blocks):
    emit({"type": "assistant", "session_id": "sess-1",
          "message": {"role": "assistant", "content": list(blocks)}})

def result(text, subtype="success", is_error=False):
    emit({"type": "result", "subtype": subtype, "is_error": is_error, "result": text,
          "session_id": "sess-1", "num_turns": 2, "duration_ms": 1234,
          "total_cost_usd": 0.0123,
          "usage": {"input_tokens": 10, "output_tokens": 5}})

emit({"type": "system", "subtype": "init", "session_id": "sess-1", "model": "fake-model",
      "tools": ["Bash", "Read"]})

if mode in ("sleep", "stubborn"):
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if mode == "stubborn" else ""
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; " + ignore + "time.sleep(120)"])
    record["child_pid"] = child.pid
    save()
    assistant({"type": "text", "text": "working"})
    time.sleep(120)
    sys.exit(0)

save()
if mode == "text":
    assistant({"type": "text", "text": "Let me look."},
              {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}})
    emit({"type": "user", "message": {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "a.txt"}]}})
    assistant({"type": "text", "text": "Found a.txt."}, {"type": "text", "text": "Done."})
    result("Found a.txt. Done.")
elif mode == "structured":
    assistant({"type": "text", "text": "Computing."})
    result('```json\n{"answer": 42, "why": "because"}\n```')
elif mode == "structured_bad":
    result("The answer is forty-two.")
elif mode == "structured_array":
    result("[1, 2, 3]")
elif mode == "error":
    result("API Error: overloaded with token hunter2-secret", subtype="success", is_error=True)
elif mode == "max_turns":
    emit({"type": "result", "subtype": "error_max_turns", "is_error": True,
          "session_id": "sess-1", "num_turns": 50})
elif mode == "crash":
    sys.stderr.write("fatal: could not authenticate\n")
    sys.exit(3)
elif mode == "noise":
    print("this is not json")
    result("ok")
"""


@pytest.fixture
def fake_claude(tmp_path):
    path = tmp_path / "fake-claude"
    path.write_text("#!%s\n%s" % (sys.executable, FAKE_CLAUDE))
    path.chmod(0o755)
    return path


@pytest.fixture
def record_path(tmp_path):
    return tmp_path / "record.json"


def read_record(path, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "the fake CLI never wrote its record"
        time.sleep(0.01)
    return json.loads(path.read_text())


@pytest.fixture
def handler(spawn, fake_claude, record_path):
    env = dict(os.environ)
    env["RUNTIMEUSE_CLAUDE_BIN"] = str(fake_claude)
    env["FAKE_CLAUDE_RECORD"] = str(record_path)
    env.pop("FAKE_CLAUDE_MODE", None)
    return spawn(SCRIPT, env)


def invoke(handler, mode, inv_id="inv-1", **fields):
    env = fields.pop("env", {})
    env["FAKE_CLAUDE_MODE"] = mode
    handler.invoke(inv_id, env=env, **fields)


def test_text_result_streams_assistant_messages(handler, record_path):
    invoke(
        handler,
        "text",
        system_prompt="You are careful.",
        user_prompt="List the files.\nThen stop.",
        model="claude-test",
        env={"MY_TOKEN": "abc"},
    )
    messages = handler.until_terminal()
    assert messages == [
        {"type": "assistant", "text_blocks": ["Let me look."], "id": "inv-1"},
        {"type": "assistant", "text_blocks": ["Found a.txt.", "Done."], "id": "inv-1"},
        {
            "type": "result",
            "text": "Found a.txt. Done.",
            "metadata": {
                "total_cost_usd": 0.0123,
                "usage": {"input_tokens": 10, "output_tokens": 5},
                "num_turns": 2,
                "session_id": "sess-1",
                "duration_ms": 1234,
                "subtype": "success",
            },
            "id": "inv-1",
        },
    ]
    record = read_record(record_path)
    assert record["argv"] == [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "bypassPermissions",
        "--model",
        "claude-test",
        "--append-system-prompt",
        "You are careful.",
    ]
    assert record["stdin"] == "List the files.\nThen stop."
    assert record["env"]["MY_TOKEN"] == "abc"  # invocation env applied
    assert record["env"]["PATH"] == os.environ["PATH"]  # over the process env
    # Its own process group (and session), so it can be killed as a whole.
    assert record["pgid"] == record["pid"]
    if os.geteuid() == 0:
        assert record["env"]["IS_SANDBOX"] == os.environ.get("IS_SANDBOX", "1")


def test_no_model_and_no_system_prompt_flags_when_empty(handler, record_path):
    invoke(handler, "text", model="", system_prompt="")
    assert handler.until_terminal()[-1]["type"] == "result"
    argv = read_record(record_path)["argv"]
    assert "--model" not in argv
    assert "--append-system-prompt" not in argv


def test_structured_output(handler, record_path):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    invoke(
        handler,
        "structured",
        system_prompt="Base prompt.",
        output_format={"type": "json_schema", "schema": schema},
    )
    messages = handler.until_terminal()
    assert messages[0]["type"] == "assistant"
    result = messages[-1]
    assert result["type"] == "result"
    assert result["structured_output"] == {"answer": 42, "why": "because"}
    assert "text" not in result
    assert result["metadata"]["session_id"] == "sess-1"
    argv = read_record(record_path)["argv"]
    system_prompt = argv[argv.index("--append-system-prompt") + 1]
    assert system_prompt.startswith("Base prompt.")
    assert json.dumps(schema, indent=2) in system_prompt
    assert "JSON" in system_prompt


def test_structured_output_not_json_is_an_error(handler):
    invoke(handler, "structured_bad", output_format={"type": "json_schema", "schema": {}})
    error = handler.until_terminal()[-1]
    assert error["type"] == "error"
    assert "not valid JSON" in error["error"]
    assert error["metadata"]["session_id"] == "sess-1"


def test_structured_output_must_be_an_object(handler):
    invoke(handler, "structured_array", output_format={"type": "json_schema", "schema": {}})
    error = handler.until_terminal()[-1]
    assert error["type"] == "error"
    assert "not an object" in error["error"]


def test_error_result(handler):
    invoke(handler, "error", secrets=["hunter2-secret"])
    error = handler.until_terminal()[-1]
    assert error["type"] == "error"
    assert error["error"] == "API Error: overloaded with token [REDACTED]"
    assert error["metadata"]["num_turns"] == 2
    assert "hunter2-secret" not in handler.stderr


def test_error_subtype_without_text(handler):
    invoke(handler, "max_turns")
    error = handler.until_terminal()[-1]
    assert error["type"] == "error"
    assert "error_max_turns" in error["error"]
    assert error["metadata"]["subtype"] == "error_max_turns"


def test_cli_exiting_without_result(handler):
    invoke(handler, "crash")
    error = handler.until_terminal()[-1]
    assert error["type"] == "error"
    assert "code 3" in error["error"]
    assert "could not authenticate" in error["error"]


def test_non_json_stdout_is_skipped(handler):
    invoke(handler, "noise")
    assert handler.until_terminal()[-1]["text"] == "ok"
    assert "this is not json" in handler.stderr


def test_missing_cli(spawn, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RUNTIMEUSE_CLAUDE_BIN"}
    handler = spawn(SCRIPT, env)
    handler.invoke(env={"PATH": str(empty)})
    error = handler.until_terminal()[-1]
    assert error == {"type": "error", "error": NOT_INSTALLED, "metadata": {}, "id": "inv-1"}


def test_override_pointing_nowhere(spawn, tmp_path):
    env = dict(os.environ, RUNTIMEUSE_CLAUDE_BIN=str(tmp_path / "nope"))
    handler = spawn(SCRIPT, env)
    handler.invoke()
    error = handler.until_terminal()[-1]
    assert error["type"] == "error" and "RUNTIMEUSE_CLAUDE_BIN" in error["error"]


@pytest.mark.parametrize("mode,grace", [("sleep", 1.5), ("stubborn", 4.0)])
def test_cancel_kills_the_cli_group(handler, record_path, mode, grace):
    invoke(handler, mode, "long")
    assert handler.recv() == {"type": "assistant", "text_blocks": ["working"], "id": "long"}
    record = read_record(record_path)
    pids = [record["pid"], record["child_pid"]]

    started = time.monotonic()
    handler.send({"type": "cancel", "id": "long"})
    assert handler.recv(timeout=2) == {
        "type": "error",
        "error": "cancelled",
        "metadata": {},
        "id": "long",
    }
    assert time.monotonic() - started < 1.0
    # The CLI and its child (same group) die: SIGTERM, or SIGKILL after 2 s.
    assert wait_gone(pids, grace), "CLI group survived the cancel"
    handler.assert_silent(0.3)

    # The handler stays warm for the next invocation.
    record_path.unlink()
    invoke(handler, "text", "after")
    assert handler.until_terminal()[-1]["id"] == "after"


def test_two_invocations_on_one_warm_process(handler, record_path):
    invoke(handler, "text", "one", user_prompt="first")
    assert handler.until_terminal()[-1]["id"] == "one"
    assert read_record(record_path)["stdin"] == "first"
    record_path.unlink()
    invoke(handler, "structured", "two", output_format={"type": "json_schema", "schema": {}})
    result = handler.until_terminal()[-1]
    assert result["id"] == "two" and result["structured_output"]["answer"] == 42
    assert read_record(record_path)["stdin"] == "Say hi."
    assert handler.close() == 0


def test_eof_kills_the_running_cli_and_exits_0(handler, record_path):
    invoke(handler, "sleep")
    assert handler.recv()["type"] == "assistant"
    record = read_record(record_path)
    assert handler.close(timeout=5) == 0
    assert wait_gone([record["pid"], record["child_pid"]], 2.0)


def test_sigterm_to_the_handler_kills_the_cli(handler, record_path):
    invoke(handler, "sleep")
    assert handler.recv()["type"] == "assistant"
    record = read_record(record_path)
    handler.proc.send_signal(signal.SIGTERM)
    assert handler.proc.wait(timeout=5) == 0
    assert wait_gone([record["pid"], record["child_pid"]], 2.0)


def test_wrong_protocol_version(handler):
    handler.invoke(protocol=0)
    error = handler.recv()
    assert error["type"] == "error" and "protocol" in error["error"]
