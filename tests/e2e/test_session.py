"""Persistent sessions: many requests on one connection, one terminal each."""
import asyncio
import json
import time

import pytest
from runtimeuse_client import (
    AgentRuntimeError,
    CommandInterface,
    ExecuteCommandsOptions,
    RuntimeUseClient,
)

from helpers import command_execution, invocation, of_type, qopts, raw_connect, run, terminal_of


def cmd(text, **kw):
    return [CommandInterface(command=text, **kw)]


def test_hundred_alternating_requests_in_order(echo_runtime):
    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        async with client.session() as s:
            for i in range(100):
                if i % 2 == 0:
                    result = await s.query(f"ECHO:request {i}", qopts())
                    assert result.data.text == f"request {i}"
                else:
                    result = await s.execute_commands(cmd(f"echo command {i}"), ExecuteCommandsOptions())
                    assert [(r.exit_code, r.stdout) for r in result.results] == [(0, f"command {i}\n")]

    started = time.monotonic()
    run(main())
    assert time.monotonic() - started < 60


def test_callbacks_only_see_their_own_request(echo_runtime):
    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        async with client.session() as s:
            for round_ in range(3):
                assistant, output = [], []

                async def on_assistant(m, assistant=assistant):
                    assistant.append(m.text_blocks)

                async def on_output(m, output=output):
                    output.append(m.text)

                r = await s.query(f"STREAM:{round_ + 2}", qopts(on_assistant_message=on_assistant, on_command_output=on_output))
                assert r.data.text == f"streamed {round_ + 2} messages"
                assert len(assistant) == round_ + 2 and output == []
                assistant.clear()
                r = await s.execute_commands(
                    cmd(f"echo round {round_}"),
                    ExecuteCommandsOptions(on_command_output=on_output, on_assistant_message=on_assistant),
                )
                assert "".join(output) == f"round {round_}\n" and assistant == []

    run(main())


def test_error_then_next_request_gets_its_own_result(echo_runtime):
    """The Node original sent two error messages; the second answered the next request."""

    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        async with client.session() as s:
            with pytest.raises(AgentRuntimeError) as info:
                await s.query("ERROR:boom", qopts())
            assert info.value.error == "boom"
            assert (await s.query("ECHO:after", qopts())).data.text == "after"
            with pytest.raises(AgentRuntimeError):
                await s.query("ERROR:boom again", qopts())
            result = await s.execute_commands(cmd("echo cmd-after"), ExecuteCommandsOptions())
            assert result.results[0].stdout == "cmd-after\n"

    run(main())


def test_exactly_one_terminal_per_request_raw(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            requests = [
                invocation("ERROR:boom"),
                invocation("ECHO:after"),
                command_execution(["exit 2"]),
                invocation("ECHO:x", pre_agent_invocation_commands=[{"command": "exit 5", "cwd": None, "env": None}]),
                invocation("STREAM:3"),
                command_execution(["echo done"]),
            ]
            for req in requests:
                await c.send(req)
                msgs = await c.until_terminal()
                terminal_of(msgs)
            # After the last terminal nothing else may be pending: an end of
            # session is answered straight away with its confirmation.
            await c.send({"message_type": "end_session_message"})
            msg = await c.recv()
            while msg["message_type"] == "heartbeat_message":
                msg = await c.recv()
            assert msg == {"message_type": "end_session_confirm_message"}
            return c.frames

    frames = run(main())
    terminals = [json.loads(f) for f in frames if json.loads(f)["message_type"] in
                 ("result_message", "error_message", "command_execution_result_message")]
    kinds = [t["message_type"] for t in terminals]
    assert kinds == [
        "error_message",
        "result_message",
        "command_execution_result_message",
        "error_message",
        "result_message",
        "command_execution_result_message",
    ]
    assert terminals[0]["error"] == "boom"
    assert terminals[1]["data"]["text"] == "after"
    assert terminals[2]["results"][0]["exit_code"] == 2
    assert "failed with exit code: 5" in terminals[3]["error"]


def test_second_request_while_one_runs_is_refused(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send(invocation("SLOW:1000"))
            await c.send(invocation("ECHO:intruder"))
            errors, result = [], None
            while result is None:
                msg = await c.recv(timeout=20)
                if msg["message_type"] == "error_message":
                    errors.append(msg)
                elif msg["message_type"] == "result_message":
                    result = msg
            assert len(errors) == 1, errors
            assert errors[0]["error"] and errors[0]["error"] != "Request cancelled"
            assert result["data"] == {"type": "text", "text": "done"}
            # The connection is still good, and nothing of the refused request
            # comes back later.
            msgs = await c.request(invocation("ECHO:next"))
            assert [m["message_type"] for m in msgs if m["message_type"] != "heartbeat_message"] == ["result_message"]
            assert msgs[-1]["data"]["text"] == "next"

    run(main())


def test_second_command_request_while_one_runs_is_refused(echo_runtime, tmp_path):
    ran = tmp_path / "ran"

    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send(command_execution(["sleep 0.5; echo first"]))
            await c.send(command_execution([f"touch {ran}"]))
            msgs = []
            while not msgs or msgs[-1]["message_type"] != "command_execution_result_message":
                msgs.append(await c.recv())
            assert len(of_type(msgs, "error_message")) == 1
            assert msgs[-1]["results"] == [{"command": "sleep 0.5; echo first", "exit_code": 0, "stdout": "first\n"}]

    run(main())
    assert not ran.exists()


def test_failed_pre_command_then_next_request(echo_runtime):
    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        async with client.session() as s:
            with pytest.raises(AgentRuntimeError) as info:
                await s.query("ECHO:x", qopts(pre_agent_invocation_commands=cmd("exit 9")))
            assert "failed with exit code: 9" in info.value.error
            assert (await s.query("ECHO:y", qopts())).data.text == "y"

    run(main())


def test_sessions_in_parallel_do_not_mix(echo_runtime):
    async def one(name):
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        async with client.session() as s:
            for i in range(10):
                assert (await s.query(f"ECHO:{name}-{i}", qopts())).data.text == f"{name}-{i}"
                r = await s.execute_commands(cmd(f"echo {name}-c{i}"), ExecuteCommandsOptions())
                assert r.results[0].stdout == f"{name}-c{i}\n"

    async def main():
        await asyncio.gather(*(one(n) for n in ("alpha", "beta", "gamma")))

    run(main())


def test_session_close_is_confirmed_promptly(echo_runtime):
    """Leaving `client.session()` sends end_session_message and waits (up to
    60 s) for the confirmation: it must come at once."""

    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        async with client.session() as s:
            await s.query("ECHO:x", qopts())
            closing = time.monotonic()
        return time.monotonic() - closing

    assert run(main()) < 3
