"""Custom agent handlers (`--handler PATH`) speaking the NDJSON protocol:
the runtime writes `{"type":"invoke",...}` lines to the handler's stdin and
reads `assistant` / `result` / `error` / `log` lines from its stdout."""
import asyncio
import json
import os
import subprocess
import time

import pytest
from runtimeuse_client import AgentRuntimeError, CancelledException, RuntimeUseClient

from helpers import (
    BIN,
    free_port,
    invocation,
    pgrep,
    qopts,
    raw_connect,
    run,
    sleeper,
    terminal_of,
    unique,
    wait_until,
)

SH_HANDLER = r"""
while IFS= read -r line; do
  case "$line" in
    *'"invoke"'*) ;;
    *) continue ;;
  esac
  case "$line" in
    *PING*) answer=pong ;;
    *) answer=other ;;
  esac
  printf '%s\n' '{"type":"assistant","text_blocks":["sh got a line"]}'
  printf '{"type":"result","text":"%s from sh"}\n' "$answer"
done
"""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_python_handler_receives_the_invocation(start_runtime, py_handler):
    rt = start_runtime("--handler", str(py_handler))
    schema = {"type": "object", "properties": {"pid": {"type": "integer"}}}
    secret = "sk-" + unique()
    result = run(
        RuntimeUseClient(ws_url=rt.url).query(
            "INFO",
            qopts(
                system_prompt="Be terse.",
                model="gpt-test-model",
                agent_env={"AGENT_A": "1", "AGENT_B": "two words"},
                output_format_json_schema_str=json.dumps({"type": "json_schema", "schema": schema}),
                secrets_to_redact=[secret],
            ),
        )
    )
    assert result.data.type == "structured_output"
    info = result.data.structured_output
    assert info["system_prompt"] == "Be terse."
    assert info["model"] == "gpt-test-model"
    assert info["env"] == {"AGENT_A": "1", "AGENT_B": "two words"}
    assert info["output_format"] == {"type": "json_schema", "schema": schema}
    # the handler is told the secrets (and echoing one back gets it redacted)
    assert info["secrets"] == ["[REDACTED]"]
    assert isinstance(info["id"], str) and info["id"]
    assert isinstance(info["pid"], int)
    assert result.metadata and result.metadata.get("handler") == "py"


def test_python_handler_assistant_messages_and_result(start_runtime, py_handler):
    rt = start_runtime("--handler", str(py_handler))

    async def main():
        async with raw_connect(rt.url) as c:
            return await c.request(invocation("SAY:hello from py"))

    msgs = run(main())
    kinds = [m["message_type"] for m in msgs if m["message_type"] != "heartbeat_message"]
    assert kinds == ["assistant_message", "result_message"]  # log lines stay in the runtime
    assert msgs[0]["text_blocks"] == ["hello from py", "second block"]
    assert msgs[-1]["data"] == {"type": "text", "text": "said"}
    assert msgs[-1]["metadata"].get("handler") == "py"
    assert "handling SAY:hello from py" in rt.log()


def test_warm_handler_serves_a_whole_session(start_runtime, py_handler):
    rt = start_runtime("--handler", str(py_handler))

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            pids = [int((await s.query("PID", qopts())).data.text) for _ in range(4)]
            assert (await s.query("SAY:x", qopts())).data.text == "said"
            pids.append(int((await s.query("PID", qopts())).data.text))
            assert pid_alive(pids[0])
        return pids

    pids = run(main())
    assert len(set(pids)) == 1, pids
    # The session is over: its handler must not linger.
    assert wait_until(lambda: not pid_alive(pids[0]), timeout=5), f"handler {pids[0]} outlived its session"


def test_handler_crash_mid_invocation(start_runtime, py_handler):
    rt = start_runtime("--handler", str(py_handler))

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            seen = []

            async def on_assistant(m):
                seen.append(m.text_blocks)

            with pytest.raises(AgentRuntimeError) as info:
                await s.query("CRASH", qopts(on_assistant_message=on_assistant, timeout=20))
            assert seen == [["about to crash"]]
            err = info.value.error
            assert "handler" in err.lower() and ("exit" in err.lower() or "3" in err), err
            assert "dying now" in err, f"the handler's last stderr lines are not quoted: {err}"
            assert (await s.query("ECHO-ME", qopts(timeout=20))).data.text == "py:ECHO-ME"

    run(main())


def test_handler_printing_garbage(start_runtime, py_handler):
    rt = start_runtime("--handler", str(py_handler))

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            with pytest.raises(AgentRuntimeError) as info:
                await s.query("GARBAGE", qopts(timeout=20))
            err = info.value.error
            assert "handler" in err.lower(), err
            assert "this is not json at all" in err, f"the offending line is not quoted: {err}"
            assert (await s.query("next", qopts(timeout=20))).data.text == "py:next"

    run(main())


def test_handler_error_then_exit_gives_exactly_one_error(start_runtime, py_handler):
    rt = start_runtime("--handler", str(py_handler))

    async def main():
        async with raw_connect(rt.url) as c:
            msgs = await c.request(invocation("ERROR_EXIT"))
            term = terminal_of(msgs)
            assert term["message_type"] == "error_message"
            assert term["error"] == "handler says no"
            msgs = await c.request(invocation("after the error"))
            kinds = [m["message_type"] for m in msgs if m["message_type"] != "heartbeat_message"]
            assert kinds == ["result_message"], msgs
            assert msgs[-1]["data"]["text"] == "py:after the error"
        # and through the real client, on a session
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            with pytest.raises(AgentRuntimeError) as info:
                await s.query("ERROR_EXIT", qopts())
            assert info.value.error == "handler says no"
            assert (await s.query("again", qopts())).data.text == "py:again"

    run(main())


def test_sh_script_handler_not_executable(start_runtime, tmp_path):
    path = tmp_path / "handler.sh"
    path.write_text(SH_HANDLER)
    path.chmod(0o644)
    rt = start_runtime("--handler", str(path))

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        seen = []

        async def on_assistant(m):
            seen.append(m.text_blocks)

        async with client.session() as s:
            assert (await s.query("PING", qopts(on_assistant_message=on_assistant))).data.text == "pong from sh"
            assert (await s.query("hello", qopts())).data.text == "other from sh"
        assert seen == [["sh got a line"]]

    run(main())


def test_executable_handler_is_run_directly(start_runtime, tmp_path):
    path = tmp_path / "my-agent"  # no extension: only its shebang says what it is
    path.write_text("#!/bin/sh\n" + SH_HANDLER)
    path.chmod(0o755)
    rt = start_runtime("--handler", str(path))
    result = run(RuntimeUseClient(ws_url=rt.url).query("PING", qopts()))
    assert result.data.text == "pong from sh"


def test_nonexistent_handler_fails_at_startup(tmp_path):
    proc = subprocess.run(
        [BIN, "--host", "127.0.0.1", "--port", str(free_port()), "--handler", "/nonexistent/agent.py"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode != 0
    assert "/nonexistent/agent.py" in proc.stderr, proc.stderr


def test_cancel_stops_the_handler_tree(start_runtime, py_handler, tmp_path):
    rt = start_runtime("--handler", str(py_handler), "--handler-cancel-grace", "200ms", "--heartbeat-interval", "100ms")
    marker = unique("handler-tree-")
    sleep_bin = sleeper(tmp_path, marker)

    async def main():
        async with raw_connect(rt.url) as c:
            await c.send(invocation(f"SPAWN:{sleep_bin} 60"))
            assert wait_until(lambda: bool(pgrep(marker)), timeout=10), "the handler never spawned its child"
            await c.send({"message_type": "cancel_message"})
            term = terminal_of(await c.until_terminal(timeout=10))
            assert (term["message_type"], term.get("error")) == ("error_message", "Request cancelled")
            cancelled_at = time.monotonic()
            assert wait_until(lambda: not pgrep(marker), timeout=5), f"survivors: {pgrep(marker)}"
            assert time.monotonic() - cancelled_at < 5
            # the session goes on with a working handler
            term = terminal_of(await c.request(invocation("still there")))
            assert term["data"]["text"] == "py:still there"

    run(main())


def test_abort_through_the_client_with_a_handler(start_runtime, py_handler, tmp_path):
    rt = start_runtime("--handler", str(py_handler), "--handler-cancel-grace", "200ms")
    marker = unique("handler-abort-")
    sleep_bin = sleeper(tmp_path, marker)

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            task = asyncio.create_task(s.query(f"SPAWN:{sleep_bin} 60", qopts()))
            for _ in range(500):
                if pgrep(marker):
                    break
                await asyncio.sleep(0.02)
            assert pgrep(marker)
            s.abort()
            with pytest.raises(CancelledException):
                await asyncio.wait_for(task, 10)
            assert wait_until(lambda: not pgrep(marker), timeout=5)
            assert (await s.query("PID", qopts())).data.text.isdigit()

    run(main())


def test_crashed_handler_takes_its_children_with_it(start_runtime, py_handler, tmp_path):
    """The handler starts a child (which inherits its stdout, as children do)
    and exits with status 4 mid-invocation: the invocation must fail at once
    with that exit, and the child must be ended with the handler's group."""
    rt = start_runtime("--handler", str(py_handler))
    marker = unique("handler-orphan-")
    sleep_bin = sleeper(tmp_path, marker)

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        with pytest.raises(AgentRuntimeError) as info:
            await client.query(f"ORPHAN:{sleep_bin} 60", qopts(timeout=10))
        assert "4" in info.value.error, info.value.error
        assert wait_until(lambda: not pgrep(marker), timeout=5), f"survivors: {pgrep(marker)}"
        assert (await client.query("fresh", qopts(timeout=10))).data.text == "py:fresh"

    run(main())


def test_handler_stderr_goes_to_the_runtime_log(start_runtime, py_handler):
    # Unmarked stderr lines are logged at DEBUG (levels: test_logs.py).
    rt = start_runtime("--handler", str(py_handler), env={"RUNTIMEUSE_LOG": "debug"})
    result = run(RuntimeUseClient(ws_url=rt.url).query("STDERR:hello log", qopts()))
    assert result.data.text == "logged"
    assert wait_until(lambda: "stderr says hello log" in rt.log(), timeout=5)


def test_unrunnable_handler_file_is_refused_at_startup(tmp_path):
    path = tmp_path / "agent.txt"  # neither executable nor a known extension
    path.write_text("not a program")
    proc = subprocess.run(
        [BIN, "--host", "127.0.0.1", "--port", str(free_port()), "--handler", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode != 0
    assert "agent.txt" in proc.stderr, proc.stderr
