"""The bundled agents, `--agent openai` (OpenAI Agents SDK) and `--agent
claude` (Claude Agent SDK, Claude Code), through the real runtime and the
real client, against mock model APIs on 127.0.0.1 that stream what the real
APIs stream. Every test runs for both agents; the `rig` fixture fails a test
whose agent tried to leave loopback through a proxy, and
`test_agents_keep_to_loopback` watches the system calls themselves.
"""

import asyncio
import json
import time

import pytest
from runtimeuse_client import AgentRuntimeError, CancelledException, RuntimeUseClient

from agent_rig import (
    AGENTS,
    agent_rig,
    api_env,
    handler_processes,
    key_variable,
    mock_for,
    query_options,
    refusing_proxy,
    start_agent_runtime,
)
from helpers import pgrep, run, unique, wait_until
from net_guard import SyscallGuard, outside_loopback

SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer"},
        "files": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
    },
    "required": ["count"],
}


def system_text(agent, body) -> str:
    if agent == "openai":
        return body.get("instructions") or ""
    return "\n".join(block.get("text", "") for block in body.get("system") or [])


def sent_key(agent, recorded) -> str:
    headers = {k.lower(): v for k, v in recorded.headers.items()}
    if agent == "openai":
        return headers.get("authorization", "").removeprefix("Bearer ")
    return headers.get("x-api-key", "")


def test_text_result_and_streamed_assistant_messages(rig):
    seen = []

    async def on_assistant(msg):
        seen.extend(msg.text_blocks)

    result = rig.query(
        "MOCK:TEXT Hello from the mock model",
        system_prompt="You answer in riddles.",
        on_assistant_message=on_assistant,
    )
    assert result.data.text == "Hello from the mock model"
    assert seen == ["Hello from the mock model"]
    (request,) = [r for r in rig.mock.requests if r.method == "POST"]
    # The invocation's system prompt, model and key (from agent_env) reached the API.
    assert "You answer in riddles." in system_text(rig.agent, request.body)
    assert request.body["model"] == f"{rig.agent}-test-model"
    assert request.body["stream"] is True
    assert sent_key(rig.agent, request) == "sk-test-key-0123456789"
    # The agent's tools are offered: a shell, and web search (openai) or
    # Claude Code's preset (claude).
    tools = {tool.get("name") or tool.get("type") for tool in request.body["tools"]}
    expected = {"shell", "web_search"} if rig.agent == "openai" else {"Bash", "Read", "Edit", "Write"}
    assert expected <= tools, tools
    metadata = result.metadata
    if rig.agent == "openai":
        assert metadata["usage"]["total_tokens"] == 28
        assert metadata["usage"]["requests"] == 1
    else:
        for field in ("duration_ms", "duration_api_ms", "num_turns", "total_cost_usd", "session_id"):
            assert field in metadata, metadata
        assert metadata["usage"]["output_tokens"] == 9
        assert metadata["num_turns"] == 1


def test_tool_command_runs_in_the_sandbox_with_agent_env(rig, tmp_path):
    target = tmp_path / "made-by-the-agent.txt"
    value = unique("v")
    command = f'printf %s "$TOOL_VALUE" > {target}; echo "wrote $(wc -c < {target}) bytes"'
    result = rig.query(f"MOCK:SHELL {command}", agent_env=rig.env(TOOL_VALUE=value))
    # The command really ran, with the invocation's env.
    assert target.read_text() == value
    # Its output went back to the model with the next request...
    follow_up = rig.mock.posts("/v1/")[-1].body
    assert f"wrote {len(value)} bytes" in json.dumps(follow_up)
    # ...whose answer is the result.
    assert result.data.text.startswith("tool said: ")
    assert f"wrote {len(value)} bytes" in result.data.text


def test_structured_output_matches_the_schema(rig):
    answer = {"count": 2, "files": [{"name": "a.txt"}, {"name": "b.txt"}]}
    result = rig.query(f"MOCK:JSON {json.dumps(answer)}", output_format_json_schema_str=json.dumps({"type": "json_schema", "schema": SCHEMA}))
    assert result.data.structured_output == answer
    body = rig.mock.posts("/v1/")[0].body
    if rig.agent == "openai":
        # Strict, as the Responses API demands: closed objects, all required.
        fmt = body["text"]["format"]
        assert fmt["type"] == "json_schema" and fmt["strict"] is True
        schema = fmt["schema"]
        assert schema["required"] == ["count", "files"]
        assert schema["additionalProperties"] is False
        item = schema["properties"]["files"]["items"]
        assert item["required"] == ["name"] and item["additionalProperties"] is False
    else:
        # Claude Code offers the schema as its StructuredOutput tool.
        tool = next(t for t in body["tools"] if t["name"] == "StructuredOutput")
        assert tool["input_schema"]["properties"].keys() >= {"count", "files"}


def test_model_error_is_one_agent_runtime_error_naming_the_cause(rig):
    async def main():
        async with RuntimeUseClient(ws_url=rig.runtime.url).session() as session:
            with pytest.raises(AgentRuntimeError) as failure:
                await session.query("MOCK:ERROR 400 The model `nope-1` does not exist", rig.options())
            message = str(failure.value)
            assert "The model `nope-1` does not exist" in message
            assert "400" in message
            # Exactly one terminal: the session's next request gets its own.
            after = await session.query("MOCK:TEXT still here", rig.options())
            assert after.data.text == "still here"

    run(main())


def test_missing_api_key_fails_at_once_naming_the_variable(rig):
    variable = key_variable(rig.agent)
    with pytest.raises(AgentRuntimeError) as failure:
        rig.query("MOCK:TEXT unreachable", agent_env=api_env(rig.agent, rig.mock, key=None))
    assert variable in str(failure.value)
    assert not rig.mock.requests, "the model was called without a key"


def test_cancel_mid_run_then_a_fresh_query_works(rig):
    async def main():
        client = RuntimeUseClient(ws_url=rig.runtime.url)
        task = asyncio.create_task(client.query("MOCK:HANG", rig.options()))
        # The model request is in flight.
        assert await asyncio.to_thread(rig.mock.wait_hanging, 1)
        started = time.monotonic()
        client.abort()
        with pytest.raises(CancelledException):
            await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 5
        # The cancel reached the SDK: it dropped the model request.
        assert await asyncio.to_thread(rig.mock.wait_released, 1)
        fresh = await RuntimeUseClient(ws_url=rig.runtime.url).query("MOCK:TEXT fresh start", rig.options())
        assert fresh.data.text == "fresh start"

    run(main())


def test_cancel_ends_the_command_the_agent_started(rig, tmp_path):
    marker = unique("agentcmd")
    started = tmp_path / "started"
    command = f"touch {started}; exec -a {marker} sleep 300"

    async def main():
        async with RuntimeUseClient(ws_url=rig.runtime.url).session() as session:
            task = asyncio.create_task(session.query(f"MOCK:SHELL {command}", rig.options()))
            assert await asyncio.to_thread(wait_until, started.exists, 60)
            assert await asyncio.to_thread(wait_until, lambda: pgrep(marker), 10)
            session.abort()
            with pytest.raises(CancelledException):
                await asyncio.wait_for(task, 5)
            assert await asyncio.to_thread(wait_until, lambda: not pgrep(marker), 10), pgrep(marker)
            again = await session.query("MOCK:TEXT next", rig.options())
            assert again.data.text == "next"

    run(main())


@pytest.mark.parametrize("agent", AGENTS)
def test_two_sessions_at_once_get_their_own_handler_processes(agent, agent_cache, start_runtime, tmp_path):
    # No spare handler, so every handler process is one a session asked for.
    with agent_rig(agent, agent_cache, start_runtime, tmp_path, "--spare-handlers", "0") as rig:

        async def main():
            clients = [RuntimeUseClient(ws_url=rig.runtime.url) for _ in range(2)]
            tasks = [asyncio.create_task(c.query("MOCK:HANG", rig.options())) for c in clients]
            # Both model requests in flight at the same time...
            assert await asyncio.to_thread(rig.mock.wait_hanging, 2)
            # ...from two handler processes.
            assert len(handler_processes(rig.runtime.proc.pid)) == 2
            for client in clients:
                client.abort()
            for task in tasks:
                with pytest.raises(CancelledException):
                    await asyncio.wait_for(task, 5)

        run(main())


@pytest.mark.parametrize("agent", ["openai", "claude"])
def test_agents_keep_to_loopback(agent, agent_cache, start_runtime, tmp_path):
    """Every system call that could send a packet off this machine, by the
    runtime, the handler and everything they start (Claude Code included),
    across text, tool, structured, error and cancel: none leaves loopback.
    The handlers' defaults do this (tracing export off, Claude Code's
    non-essential traffic off); the test sets no switch of its own."""
    mock = mock_for(agent)
    with refusing_proxy() as proxy:
        runtime = start_agent_runtime(
            start_runtime, agent, agent_cache, tmp_path, proxy, env=api_env(agent, mock)
        )
        # The spare handler the first query will take is running already:
        # watched from the start, like the runtime.
        assert wait_until(lambda: handler_processes(runtime.proc.pid), 60)
        pids = [runtime.proc.pid, *handler_processes(runtime.proc.pid)]
        guard = SyscallGuard(pids, tmp_path / "strace.txt")
        try:
            schema = json.dumps({"type": "json_schema", "schema": SCHEMA})

            def options(**kw):
                return query_options(agent, **kw)

            async def main():
                async with RuntimeUseClient(ws_url=runtime.url).session() as session:
                    await session.query("MOCK:TEXT hi", options())
                    await session.query(f"MOCK:SHELL echo tool > {tmp_path}/tool.txt", options())
                    await session.query('MOCK:JSON {"count": 1}', options(output_format_json_schema_str=schema))
                    with pytest.raises(AgentRuntimeError):
                        await session.query("MOCK:ERROR 400 bad request", options())
                    task = asyncio.create_task(session.query("MOCK:HANG", options()))
                    assert await asyncio.to_thread(mock.wait_hanging, 1)
                    session.abort()
                    with pytest.raises(CancelledException):
                        await asyncio.wait_for(task, 5)

            run(main())
            runtime.stop()
        finally:
            trace = guard.stop()
            mock.close()
    assert "connect(" in trace, "strace recorded no connection at all: it was not watching"
    assert not outside_loopback(trace), outside_loopback(trace)



def test_the_syscall_guard_flags_only_destinations_off_this_machine():
    lines = [
        '1 connect(11, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '2 connect(3, {sa_family=AF_INET6, sin6_port=htons(80), inet_pton(AF_INET6, "::1", &sin6_addr)}, 28) = 0',
        '3 connect(4, {sa_family=AF_UNIX, sun_path="/run/x.sock"}, 110) = 0',
        '4 connect(10, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
        '5 sendto(7, "q", 1, 0, {sa_family=AF_INET6, inet_pton(AF_INET6, "2001:db8::1", &sin6_addr)}, 28) = 1',
        '6 connect(9, {sa_family=AF_INET6, inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr)}, 28) = 0',
    ]
    trace = "\n".join(lines)
    assert [line.split()[0] for line in outside_loopback(trace)] == ["4", "5"]
