"""Cancellation: abort(), cancel_message, and dropped connections.

Every long-running command here is a tree (a shell, a background shell and
two sleeps) whose every process carries a unique marker on its command line,
so `pgrep -f marker` sees all of it; a cancel must leave none of it behind.
"""
import asyncio
import time

import pytest
from runtimeuse_client import (
    CancelledException,
    CommandInterface,
    ExecuteCommandsOptions,
    RuntimeUseClient,
)

from helpers import (
    HeartbeatSeen,
    abort_mid_request,
    command_execution,
    invocation,
    of_type,
    pgrep,
    qopts,
    raw_connect,
    run,
    terminal_of,
    tree_command,
    unique,
    wait_until,
)


def tree_is_up(marker):
    # outer sh, background sh, and both sleeps
    return wait_until(lambda: len(pgrep(marker)) >= 4, timeout=5)


def assert_tree_gone(marker):
    assert wait_until(lambda: not pgrep(marker), timeout=2), f"survivors: {pgrep(marker)}"


class StartedThenAbort:
    """on_command_output callback: once the tree prints `started` (and is
    visible), abort the request through `abort`."""

    def __init__(self, marker, abort):
        self.marker = marker
        self.abort = abort
        self.fired = False

    async def __call__(self, msg):
        if not self.fired and "started" in msg.text:
            self.fired = True
            assert tree_is_up(self.marker)
            self.abort()


# ---------------------------------------------------------------- invocations


def test_session_abort_during_stream(echo_runtime):
    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        async with client.session() as s:
            seen = []

            async def on_assistant(msg):
                seen.append(msg)
                if len(seen) == 1:
                    s.abort()

            started = time.monotonic()
            with pytest.raises(CancelledException):
                await s.query("STREAM:100000", qopts(on_assistant_message=on_assistant))
            assert time.monotonic() - started < 10
            # The session goes on.
            assert (await s.query("ECHO:after stream", qopts())).data.text == "after stream"

    run(main())


def test_session_abort_during_slow(start_runtime):
    rt = start_runtime("--agent", "echo", "--heartbeat-interval", "100ms")

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            assert await abort_mid_request(s, "SLOW:30000") < 5
            assert (await s.query("ECHO:after slow", qopts())).data.text == "after slow"

    run(main())


def test_client_abort_one_shot_invocation(start_runtime):
    rt = start_runtime("--agent", "echo", "--heartbeat-interval", "100ms")

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        beat = HeartbeatSeen()
        task = asyncio.create_task(client.query("SLOW:30000", qopts(logger=beat.logger())))
        await asyncio.wait_for(beat.event.wait(), 10)
        client.abort()
        with pytest.raises(CancelledException):
            await asyncio.wait_for(task, 5)

    run(main())


def test_cancel_message_terminal_is_request_cancelled(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send(invocation("SLOW:30000"))
            await c.send({"message_type": "cancel_message"})
            msgs = await c.until_terminal(timeout=10)
            term = terminal_of(msgs)
            assert term["message_type"] == "error_message"
            assert term["error"] == "Request cancelled"
            # Exactly one terminal: the next request's first terminal is its own.
            msgs = await c.request(invocation("ECHO:next"))
            assert terminal_of(msgs)["data"] == {"type": "text", "text": "next"}

    run(main())


def test_cancel_mid_stream_raw(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send(invocation("STREAM:100000"))
            first = await c.recv()
            while first["message_type"] != "assistant_message":
                first = await c.recv()
            await c.send({"message_type": "cancel_message"})
            msgs = await c.until_terminal(timeout=10)
            term = terminal_of(msgs)
            assert (term["message_type"], term.get("error")) == ("error_message", "Request cancelled")
            msgs = await c.request(invocation("ECHO:next"))
            assert of_type(msgs, "assistant_message") == []
            assert terminal_of(msgs)["data"]["text"] == "next"

    run(main())


def test_one_shot_timeout_drops_connection_and_cancels_invocation(echo_runtime):
    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        with pytest.raises(TimeoutError):
            await client.query("SLOW:30000", qopts(timeout=0.5))
        # The runtime is free and well: the next one-shot works at once.
        assert (await client.query("ECHO:alive", qopts(timeout=5))).data.text == "alive"

    run(main())


# ---------------------------------------------------------------- commands: process trees


def test_session_abort_kills_the_command_tree(echo_runtime, tmp_path):
    marker = unique("cancel-session-")

    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        async with client.session() as s:
            on_output = StartedThenAbort(marker, s.abort)
            with pytest.raises(CancelledException):
                await s.execute_commands(
                    [CommandInterface(command=tree_command(tmp_path, marker))],
                    ExecuteCommandsOptions(on_command_output=on_output),
                )
            assert on_output.fired
            assert_tree_gone(marker)
            result = await s.execute_commands([CommandInterface(command="echo next")], ExecuteCommandsOptions())
            assert result.results[0].stdout == "next\n"
            assert (await s.query("ECHO:then agent", qopts())).data.text == "then agent"

    run(main())


def test_client_abort_kills_the_command_tree(echo_runtime, tmp_path):
    marker = unique("cancel-oneshot-")

    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        on_output = StartedThenAbort(marker, client.abort)
        with pytest.raises(CancelledException):
            await client.execute_commands(
                [CommandInterface(command=tree_command(tmp_path, marker))],
                ExecuteCommandsOptions(on_command_output=on_output),
            )
        assert on_output.fired

    run(main())
    assert_tree_gone(marker)


def test_cancel_kills_a_pre_agent_command_tree(echo_runtime, tmp_path):
    marker = unique("cancel-pre-")

    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        async with client.session() as s:
            on_output = StartedThenAbort(marker, s.abort)
            with pytest.raises(CancelledException):
                await s.query(
                    f"WRITE_FILE:{tmp_path / 'agent.txt'} x",
                    qopts(
                        pre_agent_invocation_commands=[CommandInterface(command=tree_command(tmp_path, marker))],
                        on_command_output=on_output,
                    ),
                )
            assert_tree_gone(marker)
            assert not (tmp_path / "agent.txt").exists()
            assert (await s.query("ECHO:ok", qopts())).data.text == "ok"

    run(main())


def test_cancel_message_for_command_raw(echo_runtime, tmp_path):
    marker = unique("cancel-raw-")

    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send(command_execution([tree_command(tmp_path, marker), "echo never"]))
            msg = await c.recv()
            while "started" not in msg.get("text", ""):
                assert msg["message_type"] not in ("error_message", "command_execution_result_message"), msg
                msg = await c.recv()
            assert tree_is_up(marker)
            await c.send({"message_type": "cancel_message"})
            msgs = await c.until_terminal(timeout=10)
            term = terminal_of(msgs)
            assert term["message_type"] == "error_message"
            assert term["error"] == "Request cancelled"
            assert_tree_gone(marker)
            msgs = await c.request(command_execution(["echo after"]))
            assert terminal_of(msgs)["results"] == [{"command": "echo after", "exit_code": 0, "stdout": "after\n"}]

    run(main())


def test_dropped_connection_kills_the_command_tree(echo_runtime, tmp_path):
    """One-shot client with timeout=0.5: it closes the socket mid-request."""
    marker = unique("cancel-drop-")
    started = []

    async def on_output(msg):
        if "started" in msg.text:
            started.append(True)

    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        with pytest.raises(TimeoutError):
            await client.execute_commands(
                [CommandInterface(command=tree_command(tmp_path, marker))],
                ExecuteCommandsOptions(on_command_output=on_output, timeout=0.5),
            )

    run(main())
    assert started, "the command never started within the 0.5 s timeout"
    assert_tree_gone(marker)
    assert "version" in echo_runtime.health().decode()


def test_dropped_raw_connection_kills_the_command_tree(echo_runtime, tmp_path):
    marker = unique("cancel-rawdrop-")

    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send(command_execution([tree_command(tmp_path, marker)]))
            msg = await c.recv()
            while "started" not in msg.get("text", ""):
                msg = await c.recv()
            assert tree_is_up(marker)
        # leaving the block closed the connection

    run(main())
    assert_tree_gone(marker)


def test_cancel_with_nothing_running_sends_nothing(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send({"message_type": "cancel_message"})
            msgs = await c.request(invocation("ECHO:first"))
            assert [m["message_type"] for m in msgs if m["message_type"] != "heartbeat_message"] == ["result_message"]
            assert msgs[-1]["data"]["text"] == "first"

    run(main())
