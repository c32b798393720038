"""Every echo example (Python, Node and Go on their SDKs, plain sh on the raw
protocol) and a module written for the original Node runtime, through the
real runtime (`--handler PATH`, SDKs from the runtime's own cache) and the
real `runtimeuse-client`: the same suite for each, plus `check-handler`.
"""
import json
import pathlib
import shutil
import subprocess

import pytest
from runtimeuse_client import AgentRuntimeError, RuntimeUseClient

from helpers import (
    BIN,
    ROOT,
    abort_mid_request,
    invocation,
    qopts,
    raw_connect,
    run,
    terminal_of,
    unique,
)

EXAMPLES = ROOT / "handlers" / "examples"
NODE_RUNTIME_MODULE = pathlib.Path(__file__).resolve().parent / "handlers" / "node_runtime_echo.mjs"

#: name -> (handler path, the metadata["handler"] it answers with)
HANDLERS = {
    "python": (EXAMPLES / "echo.py", "echo-python"),
    "node": (EXAMPLES / "echo.mjs", "echo-node"),
    "go": (EXAMPLES / "echo_go.sh", "echo-go"),
    "sh": (EXAMPLES / "echo.sh", "echo-sh"),
    "node-runtime": (NODE_RUNTIME_MODULE, "echo-node-runtime"),
}

every_handler = pytest.mark.parametrize("name", list(HANDLERS))


@pytest.fixture(autouse=True)
def _go_is_installed(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec and callspec.params.get("name") == "go":
        # scripts/test installs it; a missing go is a broken setup, not a skip.
        assert shutil.which("go"), "the Go example needs `go` on PATH (scripts/test installs golang-go)"


def start(start_runtime, name, *args):
    path, _ = HANDLERS[name]
    # debug: the log says when a handler process starts (warm checks). No
    # spare: its replacement would count as a start (test_spares covers them).
    return start_runtime(
        "--handler", str(path), "--spare-handlers", "0", *args, env={"RUNTIMEUSE_LOG": "debug"}
    )


def check_handler(*args) -> subprocess.CompletedProcess:
    """`runtimeuse check-handler ARGS`, its report captured."""
    return subprocess.run(
        [BIN, "check-handler", *map(str, args)], check=False, capture_output=True, text=True, timeout=300
    )


def handler_starts(rt) -> int:
    return rt.log().count("started agent handler")


@every_handler
def test_every_echo_verb_in_one_warm_session(start_runtime, tmp_path, name):
    rt = start(start_runtime, name)
    metadata = {"handler": HANDLERS[name][1]}
    target = tmp_path / "out" / "deep" / "file.txt"
    content = 'two words, "quotes", a backslash \\ and é'
    secret = "sk-" + unique()
    schema = json.dumps({"type": "json_schema", "schema": {"type": "object"}})

    async def main():
        async with RuntimeUseClient(ws_url=rt.url).session() as s:
            r = await s.query("ECHO:hello there", qopts())
            assert (r.data.type, r.data.text, r.metadata) == ("text", "hello there", metadata)

            r = await s.query("just some words", qopts())
            assert r.data.text == "just some words"

            obj = {"a": [1, 2, {"b": None}], "s": "x\ny"}
            r = await s.query("STRUCTURED:" + json.dumps(obj), qopts(output_format_json_schema_str=schema))
            assert r.data.type == "structured_output" and r.data.structured_output == obj

            streamed = []

            async def collect(msg):
                streamed.append(msg.text_blocks)

            r = await s.query("STREAM:3", qopts(on_assistant_message=collect))
            assert streamed == [["message 1 of 3"], ["message 2 of 3"], ["message 3 of 3"]]
            assert r.data.text == "streamed 3 messages"

            streamed.clear()
            r = await s.query("STREAM_TEXT:one block", qopts(on_assistant_message=collect))
            assert (streamed, r.data.text) == ([["one block"]], "done")

            r = await s.query("ENV:EXAMPLE_VAR", qopts(agent_env={"EXAMPLE_VAR": "from agent_env"}))
            assert r.data.text == "from agent_env"

            r = await s.query(f"WRITE_FILE:{target} {content}", qopts())
            assert r.data.text == f"wrote {target}"
            assert target.read_text() == content
            r = await s.query(f"READ_FILE:{target}", qopts())
            assert r.data.text == content

            r = await s.query(f"ECHO:key {secret}", qopts(secrets_to_redact=[secret]))
            assert r.data.text == "key [REDACTED]"

    run(main())
    assert handler_starts(rt) == 1, "one handler process served the whole session"


@every_handler
def test_an_error_is_exactly_one_error_and_the_session_goes_on(start_runtime, name):
    rt = start(start_runtime, name)
    metadata = {"handler": HANDLERS[name][1]}

    async def main():
        async with raw_connect(rt.url) as c:
            messages = await c.request(invocation("ERROR:it broke"))
            error = terminal_of(messages)
            assert error["message_type"] == "error_message"
            assert error["error"] == "it broke"
            assert error["metadata"] == metadata
            # A second error for the same request would arrive first here.
            messages = await c.request(invocation("ECHO:next"))
            assert terminal_of(messages)["data"] == {"type": "text", "text": "next"}

        with pytest.raises(AgentRuntimeError) as raised:
            await RuntimeUseClient(ws_url=rt.url).query("ERROR:via the client", qopts())
        assert "via the client" in str(raised.value)

    run(main())


@every_handler
def test_cancel_is_honoured_and_the_handler_stays_warm(start_runtime, name):
    rt = start(start_runtime, name, "--heartbeat-interval", "100ms")

    async def main():
        async with RuntimeUseClient(ws_url=rt.url).session() as s:
            assert (await s.query("ECHO:warm up", qopts())).data.text == "warm up"
            assert await abort_mid_request(s, "SLOW:60000") < 10
            assert (await s.query("ECHO:after cancel", qopts())).data.text == "after cancel"

    run(main())
    log = rt.log()
    assert "terminating it" not in log, "the handler answered the cancel within the grace"
    assert handler_starts(rt) == 1


@every_handler
def test_check_handler_passes_with_content_judging(name):
    done = check_handler("--echo", HANDLERS[name][0])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "judged by content" in done.stdout
    assert "10 passed, 0 failed" in done.stdout.splitlines()[-1]
    assert "FAIL" not in done.stdout


def test_the_node_runtime_module_gets_its_whole_interface(start_runtime):
    rt = start(start_runtime, "node-runtime")
    secret = "sk-" + unique()
    schema = {"type": "object", "properties": {"x": {"type": "string"}}}

    async def main():
        r = await RuntimeUseClient(ws_url=rt.url).query(
            "INTERFACE",
            qopts(
                system_prompt="Be the old runtime.",
                model="legacy-model",
                agent_env={"A": "1"},
                secrets_to_redact=[secret],
                output_format_json_schema_str=json.dumps({"type": "json_schema", "schema": schema}),
                source_id="src-legacy",
            ),
        )
        assert r.metadata == {"handler": "echo-node-runtime"}
        assert r.data.structured_output == {
            "systemPrompt": "Be the old runtime.",
            "userPrompt": "INTERFACE",
            "model": "legacy-model",
            "outputFormat": {"type": "json_schema", "schema": schema},
            "env": {"A": "1"},
            # Sent back, so redacted on the way.
            "secrets": ["[REDACTED]"],
            "sourceId": "src-legacy",
            "signalIsAbortSignal": True,
            "loggerMethods": ["log", "error", "debug"],
        }

    run(main())
    log = rt.log()
    # logger lines reach the runtime's log, redacted.
    assert "node-runtime echo handling INTERFACE" in log
    assert "secret to keep out of logs: [REDACTED]" in log
    assert secret not in log


def test_check_handler_fails_stray_stdout_and_an_ignored_cancel(tmp_path):
    banner = tmp_path / "banner_handler.py"
    banner.write_text(
        "import json, sys\n"
        "print('starting up', flush=True)\n"
        "for line in sys.stdin:\n"
        "    m = json.loads(line)\n"
        "    print(json.dumps({'type': 'result', 'id': m['id'], 'text': 'x'}), flush=True)\n"
    )
    done = check_handler(banner)
    assert done.returncode == 1, done.stdout + done.stderr
    assert 'FAIL  text               agent handler python3 ' in done.stdout
    assert 'not a JSON object: "starting up"' in done.stdout

    # Echoes, but sleeps without reading stdin: a cancel cannot reach it.
    deaf = tmp_path / "deaf_handler.py"
    deaf.write_text(
        "import json, sys, time\n"
        "for line in sys.stdin:\n"
        "    m = json.loads(line)\n"
        "    if m['type'] != 'invoke':\n"
        "        continue\n"
        "    p = m['user_prompt']\n"
        "    if p.startswith('SLOW:'):\n"
        "        time.sleep(int(p[5:]) / 1000)\n"
        "    print(json.dumps({'type': 'result', 'id': m['id'], 'text': p.split(':', 1)[-1]}), flush=True)\n"
    )
    done = check_handler("--handler-cancel-grace", "500ms", deaf)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = {line[6:24].strip(): line for line in done.stdout.splitlines() if line[:4] in ("PASS", "FAIL")}
    assert lines["text"].startswith("PASS")
    assert lines["cancel"].startswith("FAIL") and "the runtime terminated it" in lines["cancel"]
    assert "judged by content: the probe was echoed" in done.stdout

    done = check_handler(tmp_path / "missing.py")
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_the_sdks_are_unpacked_into_the_cache_dir_given(start_runtime, tmp_path):
    """`--cache-dir` holds the SDKs a handler imports, like the agents."""
    cache = tmp_path / "cache"
    path, handler = HANDLERS["python"]
    rt = start_runtime("--handler", str(path), "--cache-dir", str(cache))

    async def main():
        r = await RuntimeUseClient(ws_url=rt.url).query("ECHO:hi", qopts())
        assert (r.data.text, r.metadata) == ("hi", {"handler": handler})

    run(main())
    assert list(cache.glob("*/handlers/sdk/python/runtimeuse_handler")), sorted(cache.rglob("*"))[:20]
