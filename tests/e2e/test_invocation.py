"""Agent invocations through the real client, against the echo agent."""
import asyncio
import json
import time

import pytest
from runtimeuse_client import AgentRuntimeError, RuntimeUseClient

from helpers import qopts, run


def query(url, prompt, **kw):
    return run(RuntimeUseClient(ws_url=url).query(prompt, qopts(**kw)))


def test_echo_prefix_returns_text(echo_runtime):
    result = query(echo_runtime.url, "ECHO:hello world")
    assert result.data.type == "text"
    assert result.data.text == "hello world"


def test_prompt_without_prefix_is_echoed(echo_runtime):
    result = query(echo_runtime.url, "just a plain prompt, no prefix")
    assert result.data.type == "text"
    assert result.data.text == "just a plain prompt, no prefix"


def test_unicode_and_multiline_prompt_round_trips(echo_runtime):
    text = 'héllo ✓ 日本語 🚀\nsecond line\t"quoted" \\ backslash'
    assert query(echo_runtime.url, "ECHO:" + text).data.text == text


def test_large_prompt_round_trips(echo_runtime):
    text = "x" * 600_000  # well under the 1 MiB frame both ways
    assert query(echo_runtime.url, "ECHO:" + text).data.text == text


def test_structured_output(echo_runtime):
    obj = {"answer": 42, "items": ["a", "b"], "nested": {"ok": True, "none": None}}
    result = query(echo_runtime.url, "STRUCTURED:" + json.dumps(obj))
    assert result.data.type == "structured_output"
    assert result.data.structured_output == obj


def test_structured_output_with_schema(echo_runtime):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    result = query(
        echo_runtime.url,
        'STRUCTURED:{"answer": 7}',
        output_format_json_schema_str=json.dumps({"type": "json_schema", "schema": schema}),
    )
    assert result.data.type == "structured_output"
    assert result.data.structured_output == {"answer": 7}


def test_stream_sends_assistant_messages_in_order(echo_runtime):
    seen = []

    async def on_assistant(msg):
        seen.append(msg.text_blocks)

    result = query(echo_runtime.url, "STREAM:5", on_assistant_message=on_assistant)
    assert [" ".join(blocks) for blocks in seen] == [f"message {i} of 5" for i in range(1, 6)]
    assert result.data.text == "streamed 5 messages"


def test_stream_text_sends_one_assistant_message(echo_runtime):
    seen = []

    async def on_assistant(msg):
        seen.append(msg.text_blocks)

    result = query(echo_runtime.url, "STREAM_TEXT:thinking about it…", on_assistant_message=on_assistant)
    assert seen == [["thinking about it…"]]
    assert result.data.text == "done"


def test_slow_waits_then_answers(echo_runtime):
    started = time.monotonic()
    result = query(echo_runtime.url, "SLOW:400")
    elapsed = time.monotonic() - started
    assert result.data.text == "done"
    assert 0.4 <= elapsed < 10


def test_error_prefix_raises_agent_runtime_error(echo_runtime):
    with pytest.raises(AgentRuntimeError) as info:
        query(echo_runtime.url, "ERROR:the agent broke")
    assert info.value.error == "the agent broke"


def test_write_file_then_read_file(echo_runtime, tmp_path):
    path = tmp_path / "agent-out.txt"
    result = query(echo_runtime.url, f"WRITE_FILE:{path} some content here")
    assert result.data.text == f"wrote {path}"
    assert path.read_text() == "some content here"
    assert query(echo_runtime.url, f"READ_FILE:{path}").data.text == "some content here"


def test_read_file_sees_files_written_outside(echo_runtime, tmp_path):
    path = tmp_path / "given.txt"
    path.write_text("written by the test")
    assert query(echo_runtime.url, f"READ_FILE:{path}").data.text == "written by the test"


def test_result_metadata_is_a_mapping(echo_runtime):
    result = query(echo_runtime.url, "ECHO:meta")
    assert result.metadata is None or isinstance(result.metadata, dict)


def test_concurrent_one_shot_clients(echo_runtime):
    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        prompts = [f"ECHO:client {i}" for i in range(6)] + ["SLOW:300"] * 2
        return await asyncio.gather(*(client.query(p, qopts()) for p in prompts))

    started = time.monotonic()
    results = run(main())
    texts = [r.data.text for r in results]
    assert texts == [f"client {i}" for i in range(6)] + ["done", "done"]
    # The two SLOW requests ran side by side on their own connections.
    assert time.monotonic() - started < 5


def test_runtime_survives_many_one_shot_connections(echo_runtime):
    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        for i in range(30):
            result = await client.query(f"ECHO:{i}", qopts())
            assert result.data.text == str(i)

    run(main())
    assert "version" in json.loads(echo_runtime.health())


def test_agent_env_reaches_the_agent(echo_runtime):
    result = query(echo_runtime.url, "ENV:MY_SETTING", agent_env={"MY_SETTING": "on", "OTHER": "x"})
    assert result.data.text == "on"
