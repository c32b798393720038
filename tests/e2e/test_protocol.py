"""The raw wire protocol, spoken with a bare `websockets` client that has
the real client's 1 MiB frame limit."""
import asyncio
import json
import urllib.request

import pytest
import websockets
from runtimeuse_client import RuntimeUseClient

from helpers import command_execution, invocation, of_type, qopts, raw_connect, run, terminal_of


def test_health(echo_runtime):
    with urllib.request.urlopen(f"http://127.0.0.1:{echo_runtime.port}/health", timeout=5) as r:
        assert r.status == 200
        body = json.loads(r.read())
    assert isinstance(body["version"], str) and body["version"]


def test_health_while_a_session_is_busy(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send(invocation("SLOW:500"))
            body = await asyncio.to_thread(echo_runtime.health)
            assert "version" in json.loads(body)
            assert terminal_of(await c.until_terminal())["data"]["text"] == "done"

    run(main())


# ---------------------------------------------------------------- nulls and extras


def test_nulls_everywhere_in_an_invocation(echo_runtime):
    msg = {k: None for k in invocation("x")}
    msg.update(message_type="invocation_message", user_prompt="ECHO:nulls ok")
    msg["artifacts_dir"] = None

    async def main():
        async with raw_connect(echo_runtime.url) as c:
            return terminal_of(await c.request(msg))

    term = run(main())
    assert term["message_type"] == "result_message", term
    assert term["data"] == {"type": "text", "text": "nulls ok"}


def test_nulls_everywhere_in_a_command_execution(echo_runtime):
    msg = {k: None for k in command_execution([])}
    msg.update(
        message_type="command_execution_message",
        commands=[{"command": "echo nulls", "cwd": None, "env": None}],
        artifacts_dir=None,
    )

    async def main():
        async with raw_connect(echo_runtime.url) as c:
            return terminal_of(await c.request(msg))

    term = run(main())
    assert term["message_type"] == "command_execution_result_message", term
    assert term["results"][0]["stdout"] == "nulls\n"
    assert term["results"][0]["exit_code"] == 0


def test_null_pre_and_post_command_fields(echo_runtime):
    msg = invocation(
        "ECHO:ok",
        pre_agent_invocation_commands=[{"command": "true", "cwd": None, "env": None}],
        post_agent_invocation_commands=[{"command": "true", "cwd": None, "env": None}],
    )

    async def main():
        async with raw_connect(echo_runtime.url) as c:
            return terminal_of(await c.request(msg))

    assert run(main())["data"]["text"] == "ok"


def test_unknown_fields_are_ignored(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            return terminal_of(await c.request(invocation("ECHO:fine", some_future_field={"a": 1})))

    assert run(main())["data"]["text"] == "fine"


# ---------------------------------------------------------------- bad input


BAD_INPUTS = {
    "invalid_json": ('{"message_type": "invocation_message", ', ["json"]),
    "not_an_object": ("[1, 2, 3]", ["message_type"]),
    "no_message_type": ('{"user_prompt": "hi"}', ["message_type"]),
    "unknown_message_type": ('{"message_type": "teleport_message"}', ["teleport_message"]),
    "missing_commands": ('{"message_type": "command_execution_message", "secrets_to_redact": []}', ["commands"]),
    "missing_user_prompt": (
        '{"message_type": "invocation_message", "system_prompt": "s", "model": "m", "secrets_to_redact": []}',
        ["user_prompt"],
    ),
    "wrong_type": ('{"message_type": "command_execution_message", "commands": "echo hi"}', ["command_execution_message"]),
    "binary_frame": (b'{"message_type": "cancel_message"}', ["binary"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_clear_error_and_the_connection_goes_on(echo_runtime, case):
    frame, words = BAD_INPUTS[case]

    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send(frame)
            err = await c.recv(timeout=10)
            assert err["message_type"] == "error_message", err
            text = err["error"].lower()
            for word in words:
                assert word in text, err["error"]
            # The same connection then serves normal requests.
            term = terminal_of(await c.request(invocation("ECHO:still here")))
            assert term["data"]["text"] == "still here"
            term = terminal_of(await c.request(command_execution(["echo cmd"])))
            assert term["results"][0]["stdout"] == "cmd\n"

    run(main())


def test_real_client_after_bad_input_on_another_connection(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send("garbage")
            assert (await c.recv())["message_type"] == "error_message"
        return await RuntimeUseClient(ws_url=echo_runtime.url).query("ECHO:ok", qopts())

    assert run(main()).data.text == "ok"


# ---------------------------------------------------------------- heartbeats and liveness


def test_heartbeats_while_a_request_runs(start_runtime):
    rt = start_runtime("--agent", "echo", "--heartbeat-interval", "200ms")

    async def main():
        async with raw_connect(rt.url) as c:
            return await c.request(invocation("SLOW:1000"))

    msgs = run(main())
    beats = of_type(msgs, "heartbeat_message")
    assert len(beats) >= 2, msgs
    for beat in beats:
        assert isinstance(beat["phase"], str) and beat["phase"]
        assert isinstance(beat["elapsed_ms"], int) and beat["elapsed_ms"] >= 0
    elapsed = [b["elapsed_ms"] for b in beats]
    assert elapsed == sorted(elapsed)
    assert 100 <= elapsed[0] <= 900 and elapsed[-1] <= 3000
    assert terminal_of(msgs)["data"]["text"] == "done"


def test_heartbeats_during_commands(start_runtime):
    rt = start_runtime("--agent", "echo", "--heartbeat-interval", "200ms")

    async def main():
        async with raw_connect(rt.url) as c:
            return await c.request(command_execution(["sleep 0.7"]))

    msgs = run(main())
    assert len(of_type(msgs, "heartbeat_message")) >= 2
    assert terminal_of(msgs)["results"][0]["exit_code"] == 0


def test_real_client_ignores_heartbeats(start_runtime):
    rt = start_runtime("--agent", "echo", "--heartbeat-interval", "100ms")
    result = run(RuntimeUseClient(ws_url=rt.url).query("SLOW:500", qopts()))
    assert result.data.text == "done"


def test_pings_are_answered_while_work_runs(echo_runtime):
    """The client gives up when a ping goes unanswered; here pings are tight."""

    async def main():
        async with raw_connect(echo_runtime.url, ping_interval=0.1, ping_timeout=0.5) as c:
            assert terminal_of(await c.request(invocation("SLOW:1500")))["data"]["text"] == "done"
            term = terminal_of(await c.request(command_execution(["sleep 1.5; echo ok"])))
            assert term["results"][0]["stdout"] == "ok\n"

    run(main())


# ---------------------------------------------------------------- ending a session


def test_end_session_is_confirmed_then_closed(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            assert terminal_of(await c.request(invocation("ECHO:x")))["data"]["text"] == "x"
            await c.send({"message_type": "end_session_message"})
            assert await c.recv(timeout=10) == {"message_type": "end_session_confirm_message"}
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(c.ws.recv(), 10)

    run(main())


def test_end_session_without_any_request(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send({"message_type": "end_session_message"})
            assert await c.recv(timeout=10) == {"message_type": "end_session_confirm_message"}
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(c.ws.recv(), 10)

    run(main())


def test_end_session_during_a_request_waits_for_its_terminal(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.send(invocation("SLOW:500"))
            await c.send({"message_type": "end_session_message"})
            msgs = await c.until_terminal()
            assert terminal_of(msgs)["data"]["text"] == "done"
            msg = await c.recv()
            while msg["message_type"] == "heartbeat_message":
                msg = await c.recv()
            assert msg == {"message_type": "end_session_confirm_message"}

    run(main())


def test_runtime_serves_new_connections_after_a_session_ends(echo_runtime):
    async def main():
        for i in range(3):
            async with raw_connect(echo_runtime.url) as c:
                assert terminal_of(await c.request(invocation(f"ECHO:{i}")))["data"]["text"] == str(i)
                await c.send({"message_type": "end_session_message"})
                assert (await c.recv())["message_type"] == "end_session_confirm_message"

    run(main())

