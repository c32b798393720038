"""run_handler through a real child process speaking handler protocol v1,
with plain-function and `async def` handlers alike."""

import os
import time

import pytest

SYNC = """
import os, subprocess, sys, threading
from runtimeuse_handler import HandlerError, run_handler

def handle(invocation, ctx):
    verb, _, rest = invocation.user_prompt.partition(":")
    if verb == "TEXT":
        return {"text": rest, "metadata": {"handler": "t"}}
    if verb == "BARE":
        return rest
    if verb == "STRUCT":
        import json
        return {"structured_output": json.loads(rest)}
    if verb == "INFO":
        return {"structured_output": invocation._asdict()}
    if verb == "SAY":
        ctx.send_assistant(rest)
        ctx.send_assistant([rest, "second"])
        for level in ("debug", "info", "warn", "error"):
            getattr(ctx.log, level)("log " + level)
        ctx.log.warning("warning alias")
        return {"text": "said"}
    if verb == "FAIL":
        raise HandlerError(rest, {"code": 7})
    if verb == "RAISE":
        raise ValueError("boom " + rest)
    if verb == "EXIT":
        sys.exit("exit " + rest)
    if verb == "PRINT":
        print("chatter on stdout", flush=True)
        subprocess.run(["echo", "child chatter"], check=True)
        os.write(1, b"raw fd chatter\\n")
        return {"text": "quiet"}
    if verb == "BAD":
        import json
        return json.loads(rest)
    if verb == "NAN":
        return {"structured_output": {"x": float("nan")}}
    if verb == "WAIT":
        ctx.send_assistant("waiting")
        if ctx.cancelled.wait(30):
            sys.stderr.write("saw cancel\\n")
            sys.stderr.flush()
            ctx.send_assistant("after cancel")
            return {"text": "late"}
        return {"text": "not cancelled"}
    if verb == "THREAD":
        return {"text": threading.current_thread().name}
    if verb == "MODULES":
        return {"text": " ".join(m for m in ("asyncio", "concurrent.futures") if m in sys.modules)}
    return {"text": invocation.user_prompt}

run_handler(handle)
sys.stderr.write("run_handler returned\\n")
"""

ASYNC = """
import asyncio, sys
from runtimeuse_handler import HandlerError, run_handler

async def handle(invocation, ctx):
    verb, _, rest = invocation.user_prompt.partition(":")
    if verb == "TEXT":
        await asyncio.sleep(0)
        ctx.send_assistant("thinking")
        return {"text": rest}
    if verb == "FAIL":
        raise HandlerError(rest, {"async": True})
    if verb == "RAISE":
        raise KeyError(rest)
    if verb == "WAIT":
        ctx.send_assistant("waiting")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            sys.stderr.write("saw cancel\\n")
            sys.stderr.flush()
            raise
    if verb == "SWALLOW":
        ctx.send_assistant("waiting")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return {"text": "swallowed"}
    if verb == "HANG":
        await asyncio.Event().wait()
    return {"text": invocation.user_prompt}

run_handler(handle)
sys.stderr.write("run_handler returned\\n")
"""


def test_text_results_carry_id_and_metadata(start):
    child = start(SYNC)
    child.invoke("a1", "TEXT:hello")
    assert child.next() == {"type": "result", "text": "hello", "metadata": {"handler": "t"}, "id": "a1"}
    child.invoke("a2", "BARE:just a string")
    assert child.next() == {"type": "result", "text": "just a string", "metadata": {}, "id": "a2"}
    assert child.close() == 0
    assert "run_handler returned" in child.stderr


def test_structured_output(start):
    child = start(SYNC)
    child.invoke("s", 'STRUCT:{"a": [1, 2], "b": {"c": null}}')
    message = child.next()
    assert message["structured_output"] == {"a": [1, 2], "b": {"c": None}}
    assert "text" not in message
    child.close()


def test_the_invocation_has_every_field(start):
    child = start(SYNC)
    output_format = {"type": "json_schema", "schema": {"type": "object"}}
    child.invoke(
        "i1",
        "INFO",
        source_id="src",
        system_prompt="be brief",
        model="gpt-x",
        output_format=output_format,
        env={"A": "1", "B": "two"},
        secrets=["s3cret"],
        future_field=1,
    )
    assert child.next()["structured_output"] == {
        "id": "i1",
        "source_id": "src",
        "system_prompt": "be brief",
        "user_prompt": "INFO",
        "model": "gpt-x",
        "output_format": output_format,
        "env": {"A": "1", "B": "two"},
        "secrets": ["s3cret"],
    }
    child.invoke("i2", "INFO")
    plain = child.next()["structured_output"]
    assert plain["source_id"] is None and plain["output_format"] is None
    child.close()


def test_assistant_and_log_lines_stream_before_the_terminal(start):
    child = start(SYNC)
    child.invoke("x", "SAY:hi")
    assert child.until_terminal() == [
        {"type": "assistant", "text_blocks": ["hi"], "id": "x"},
        {"type": "assistant", "text_blocks": ["hi", "second"], "id": "x"},
        {"type": "log", "level": "debug", "message": "log debug", "id": "x"},
        {"type": "log", "level": "info", "message": "log info", "id": "x"},
        {"type": "log", "level": "warn", "message": "log warn", "id": "x"},
        {"type": "log", "level": "error", "message": "log error", "id": "x"},
        {"type": "log", "level": "warn", "message": "warning alias", "id": "x"},
        {"type": "result", "text": "said", "metadata": {}, "id": "x"},
    ]
    child.close()


@pytest.mark.parametrize("source", [SYNC, ASYNC], ids=["sync", "async"])
def test_errors_are_one_error_each_and_the_process_stays_warm(start, source):
    child = start(source)
    pid = child.proc.pid
    metadata = {"code": 7} if source is SYNC else {"async": True}
    child.invoke("e1", "FAIL:nope")
    assert child.until_terminal() == [{"type": "error", "error": "nope", "metadata": metadata, "id": "e1"}]
    child.invoke("e2", "RAISE:x")
    error = child.terminal()
    assert error["id"] == "e2" and "x" in error["error"]
    child.invoke("ok", "TEXT:still here")
    assert child.terminal()["text"] == "still here"
    assert child.proc.pid == pid
    assert child.close() == 0
    # An unexpected exception leaves its traceback in the log; HandlerError does not.
    assert "Traceback" in child.stderr and "Error" in child.stderr
    assert "HandlerError" not in child.stderr


def test_sys_exit_in_a_handler_is_an_error_not_an_exit(start):
    child = start(SYNC)
    child.invoke("x", "EXIT:now")
    assert child.terminal() == {"type": "error", "error": "exit now", "metadata": {}, "id": "x"}
    child.invoke("y", "TEXT:alive")
    assert child.terminal()["text"] == "alive"
    child.close()


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ('BAD:{"text": "a", "structured_output": {}}', "exactly one of text and structured_output"),
        ("BAD:{}", "exactly one of text and structured_output"),
        ("BAD:null", "got NoneType"),
        ("BAD:42", "got int"),
        ('BAD:{"structured_output": [1]}', "structured_output must be a dict, got list"),
        ('BAD:{"text": 5}', "text must be a str"),
        ('BAD:{"text": "a", "metadata": "m"}', "metadata must be a dict"),
        ("NAN", "cannot be sent as JSON"),
    ],
)
def test_a_result_that_breaks_the_contract_is_an_error(start, prompt, expected):
    child = start(SYNC)
    child.invoke("b", prompt)
    seen = child.until_terminal()
    assert len(seen) == 1 and seen[0]["type"] == "error" and seen[0]["id"] == "b"
    assert expected in seen[0]["error"]
    child.close()


def test_print_subprocesses_and_fd_1_go_to_stderr(start):
    child = start(SYNC)
    child.invoke("p", "PRINT")
    assert child.until_terminal() == [{"type": "result", "text": "quiet", "metadata": {}, "id": "p"}]
    assert child.close() == 0
    for chatter in ("chatter on stdout", "child chatter", "raw fd chatter"):
        assert chatter in child.stderr


def test_sync_handlers_run_off_the_main_thread_without_asyncio(start):
    child = start(SYNC)
    child.invoke("t", "THREAD")
    assert child.terminal()["text"] != "MainThread"
    # asyncio is a good part of start-up, paid per client connection.
    child.invoke("m", "MODULES")
    assert child.terminal()["text"] == ""
    child.close()


@pytest.mark.parametrize("source", [SYNC, ASYNC], ids=["sync-event", "async-task"])
def test_cancel_is_answered_at_once_and_the_late_outcome_dropped(start, source):
    child = start(source)
    child.invoke("w", "WAIT")
    assert child.next()["text_blocks"] == ["waiting"]
    child.send({"type": "cancel", "id": "w"})
    assert child.until_terminal() == [{"type": "error", "error": "cancelled", "metadata": {}, "id": "w"}]
    # The handler saw the cancel (event set / task cancelled)...
    child.wait_for_stderr("saw cancel")
    child.invoke("n", "plain")
    assert child.until_terminal() == [{"type": "result", "text": "plain", "metadata": {}, "id": "n"}]
    assert child.close() == 0
    # ...and what it sent or returned afterwards never arrived.
    assert child.messages.empty()


def test_an_async_handler_that_swallows_the_cancel_is_still_cancelled(start):
    child = start(ASYNC)
    child.invoke("s", "SWALLOW")
    assert child.next()["text_blocks"] == ["waiting"]
    child.send({"type": "cancel", "id": "s"})
    assert child.terminal() == {"type": "error", "error": "cancelled", "metadata": {}, "id": "s"}
    child.invoke("n", "plain")
    assert child.terminal() == {"type": "result", "text": "plain", "metadata": {}, "id": "n"}
    assert child.close() == 0
    assert child.messages.empty()


def test_stray_cancels_and_a_second_invoke_are_handled(start):
    child = start(ASYNC)
    child.invoke("t", "TEXT:one")
    assert child.terminal()["text"] == "one"
    child.send({"type": "cancel", "id": "t"})
    child.invoke("h", "HANG")
    child.send({"type": "cancel", "id": "not-h"})
    child.invoke("second", "TEXT:no")
    refused = child.next()
    assert refused["id"] == "second"
    assert "another invocation (h) is still running" in refused["error"]
    child.send({"type": "cancel", "id": "h"})
    assert child.terminal() == {"type": "error", "error": "cancelled", "metadata": {}, "id": "h"}
    child.close()


def test_bad_lines_are_skipped_and_a_wrong_protocol_is_an_error(start):
    child = start(SYNC)
    child.send("this is not json")
    child.send("[1, 2]")
    child.send({"type": "mystery"})
    child.send({"type": "invoke", "protocol": 1, "user_prompt": "no id"})
    child.send("")
    child.invoke("v", "TEXT:x", protocol=2)
    refused = child.next()
    assert refused["id"] == "v" and "unsupported handler protocol 2" in refused["error"]
    child.proc.stdin.write(b'{"type":"invoke","protocol":1,"id":"crlf","user_prompt":"BARE:ok"}\r\n')
    child.proc.stdin.flush()
    assert child.next() == {"type": "result", "text": "ok", "metadata": {}, "id": "crlf"}
    child.close()
    for complaint in ("not JSON", "not an object", "unknown type 'mystery'", "without a string id"):
        assert complaint in child.stderr


@pytest.mark.parametrize("source", [SYNC, ASYNC], ids=["sync", "async"])
def test_eof_returns_from_run_handler_while_an_invocation_runs(start, source):
    child = start(source)
    child.invoke("w", "WAIT")
    assert child.next()["text_blocks"] == ["waiting"]
    assert child.close() == 0
    assert "run_handler returned" in child.stderr
    assert "never awaited" not in child.stderr
    assert child.messages.empty()


def test_a_big_invocation_arrives_whole(start):
    child = start(SYNC)
    big = "x" * (3 * 1024 * 1024) + "é"
    child.invoke("big", "BARE:" + big)
    assert child.next()["text"] == big
    child.close()


COUNTING_ASYNC = """
from runtimeuse_handler import run_handler

calls = []

async def handle(invocation, ctx):
    calls.append(invocation.id)
    return {"text": " ".join(calls)}

run_handler(handle)
"""


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _wait_until(predicate, timeout: float = 10.0) -> bool:
    """Polls a condition no event announces (another process's threads)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_an_async_handler_has_its_loop_running_before_the_first_line(start):
    # A spare waits for its first line with the event loop already started
    # (before, the first invocation imported asyncio and started it, ~120 ms
    # of a one-shot query); the warm-up's no-op never reaches the handler.
    child = start(COUNTING_ASYNC)
    assert _wait_until(lambda: _threads(child.proc.pid) == 2), "the event loop was not started ahead"
    child.invoke("first", "hi")
    assert child.terminal()["text"] == "first"
    child.close()
    assert child.bad_lines == []
