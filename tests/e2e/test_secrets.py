"""Secrets never leave the runtime: not in any message, not in its log."""
import json
import uuid

import pytest
from runtimeuse_client import (
    AgentRuntimeError,
    CommandInterface,
    ExecuteCommandsOptions,
    RuntimeUseClient,
)

from helpers import command_execution, execute, invocation, qopts, raw_connect, run

R = "[REDACTED]"


@pytest.fixture
def secret():
    return f"sk-live-{uuid.uuid4().hex}"


def query(url, prompt, **kw):
    return run(RuntimeUseClient(ws_url=url).query(prompt, qopts(**kw)))


class Collector:
    def __init__(self):
        self.chunks = []

    async def __call__(self, msg):
        self.chunks.append(msg)

    def text(self, stream):
        return "".join(m.text for m in self.chunks if m.stream == stream)

    def dump(self):
        return json.dumps([m.model_dump() for m in self.chunks])


# ---------------------------------------------------------------- agent output


def test_result_text(echo_runtime, secret):
    result = query(echo_runtime.url, f"ECHO:token={secret}; again {secret} and {secret}.", secrets_to_redact=[secret])
    assert result.data.text == f"token={R}; again {R} and {R}."


def test_touching_occurrences_leave_nothing(echo_runtime, secret):
    # Adjacent occurrences may be merged into one marker; no byte may survive.
    result = query(echo_runtime.url, f"ECHO:<{secret}{secret}{secret[:5]}>", secrets_to_redact=[secret])
    assert secret not in result.data.text
    assert result.data.text.startswith(f"<{R}") and result.data.text.endswith(f"{secret[:5]}>")


def test_structured_output_values_and_keys(echo_runtime, secret):
    obj = {"token": secret, "nested": {"list": ["a", f"x{secret}y"], secret: 1}}
    result = query(echo_runtime.url, "STRUCTURED:" + json.dumps(obj), secrets_to_redact=[secret])
    dumped = json.dumps(result.data.structured_output)
    assert secret not in dumped
    assert result.data.structured_output["token"] == R
    assert result.data.structured_output["nested"]["list"] == ["a", f"x{R}y"]


def test_assistant_messages(echo_runtime, secret):
    seen = []

    async def on_assistant(m):
        seen.append(m.text_blocks)

    query(echo_runtime.url, f"STREAM_TEXT:the key is {secret}!", secrets_to_redact=[secret], on_assistant_message=on_assistant)
    assert seen == [[f"the key is {R}!"]]


def test_error_message(echo_runtime, secret):
    with pytest.raises(AgentRuntimeError) as info:
        query(echo_runtime.url, f"ERROR:leaked {secret}", secrets_to_redact=[secret])
    assert info.value.error == f"leaked {R}"
    assert secret not in str(info.value)


def test_regex_special_and_unicode_secret(echo_runtime):
    secret = "p@ss.w*rd+(ü)[x]$^"
    result = query(echo_runtime.url, f"ECHO:a {secret} b", secrets_to_redact=[secret])
    assert result.data.text == f"a {R} b"


def test_several_secrets(echo_runtime, secret):
    other = "other-secret-" + uuid.uuid4().hex[:8]
    result = query(echo_runtime.url, f"ECHO:{other}/{secret}", secrets_to_redact=[secret, other])
    assert result.data.text == f"{R}/{R}"


# ---------------------------------------------------------------- command output


def test_command_stdout_stderr_and_result(echo_runtime, secret):
    out = Collector()
    result = execute(echo_runtime.url, [f"echo out {secret}; echo err {secret} >&2"], secrets_to_redact=[secret], on_command_output=out)
    assert out.text("stdout") == f"out {R}\n"
    assert out.text("stderr") == f"err {R}\n"
    assert result.results[0].stdout == f"out {R}\n"
    assert secret not in out.dump()
    assert secret not in result.model_dump_json()  # the `command` field too


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_secret_split_across_reads(echo_runtime, secret, stream):
    half = len(secret) // 2
    redirect = " >&2" if stream == "stderr" else ""
    command = (
        f"printf '%s' '{secret[:half]}'{redirect}; sleep 0.3; "
        f"printf '%s\\n' '{secret[half:]}'{redirect}"
    )
    out = Collector()
    result = execute(echo_runtime.url, [command], secrets_to_redact=[secret], on_command_output=out)
    assert out.text(stream) == f"{R}\n"
    if stream == "stdout":
        assert result.results[0].stdout == f"{R}\n"
    assert secret not in out.dump()


def test_secret_everywhere_in_large_output(echo_runtime, secret):
    out = Collector()
    lines = 50_000  # ~2 MB: reads cut the secret at many different offsets
    result = execute(echo_runtime.url, [f"yes '{secret}' | head -n {lines}"], secrets_to_redact=[secret], on_command_output=out)
    assert out.text("stdout") == f"{R}\n" * lines
    assert secret not in result.results[0].stdout
    assert R in result.results[0].stdout


def test_command_env_value_is_redacted_without_being_listed(echo_runtime):
    value = "env-" + uuid.uuid4().hex[:12]
    out = Collector()
    result = execute(
        echo_runtime.url,
        [CommandInterface(command='echo "v=$API_TOKEN"; echo "e=$API_TOKEN" >&2', env={"API_TOKEN": value})],
        on_command_output=out,
    )
    assert result.results[0].stdout == f"v={R}\n"
    assert out.text("stdout") == f"v={R}\n"
    assert out.text("stderr") == f"e={R}\n"


def test_eight_char_env_value_is_redacted(echo_runtime):
    result = execute(echo_runtime.url, [CommandInterface(command='echo "[$EIGHT]"', env={"EIGHT": "Zq8!xW2p"})])
    assert result.results[0].stdout == f"[{R}]\n"


def test_short_env_value_is_not_redacted(echo_runtime):
    result = execute(echo_runtime.url, [CommandInterface(command='echo "flag=$FLAG debug=$DEBUG"', env={"FLAG": "1", "DEBUG": "true"})])
    assert result.results[0].stdout == "flag=1 debug=true\n"


def test_pre_and_post_command_output(echo_runtime, secret):
    out = Collector()
    query(
        echo_runtime.url,
        "ECHO:fine",
        secrets_to_redact=[secret],
        pre_agent_invocation_commands=[CommandInterface(command=f"echo pre {secret}")],
        post_agent_invocation_commands=[CommandInterface(command=f"echo post {secret} >&2")],
        on_command_output=out,
    )
    assert out.text("stdout") == f"pre {R}\n"
    assert out.text("stderr") == f"post {R}\n"
    assert secret not in out.dump()


def test_failed_pre_command_error_does_not_echo_the_secret(echo_runtime, secret):
    with pytest.raises(AgentRuntimeError) as info:
        query(
            echo_runtime.url,
            "ECHO:x",
            secrets_to_redact=[secret],
            pre_agent_invocation_commands=[CommandInterface(command=f"test {secret} = no")],
        )
    assert "failed with exit code: 1" in info.value.error
    assert secret not in str(info.value)


# ---------------------------------------------------------------- every frame, and the log


def test_every_message_kind_raw(start_runtime, secret):
    rt = start_runtime("--agent", "echo", "--heartbeat-interval", "100ms")
    env_value = "envval-" + uuid.uuid4().hex[:10]
    half = len(secret) // 2
    pre = {"command": f"echo pre {secret}; echo pre-err {secret} >&2", "cwd": None, "env": None}
    requests = [
        invocation(f"STREAM_TEXT:thinking {secret}", secrets_to_redact=[secret], pre_agent_invocation_commands=[pre]),
        invocation(f"ECHO:result {secret}", secrets_to_redact=[secret], source_id=f"src-{secret}"),
        invocation("STRUCTURED:" + json.dumps({"v": secret}), secrets_to_redact=[secret]),
        invocation(f"ERROR:error {secret}", secrets_to_redact=[secret]),
        invocation("SLOW:300", secrets_to_redact=[secret],
                   post_agent_invocation_commands=[{"command": f"echo {secret}; exit 3", "cwd": None, "env": None}]),
        command_execution(
            [
                f"echo cmd {secret}; echo cmd-err {secret} >&2",
                f"printf '%s' '{secret[:half]}'; sleep 0.3; printf '%s\\n' '{secret[half:]}'",
                {"command": 'echo "env $TOKEN_X"', "cwd": None, "env": {"TOKEN_X": env_value}},
            ],
            secrets_to_redact=[secret],
        ),
    ]

    async def main():
        async with raw_connect(rt.url) as c:
            for req in requests:
                await c.request(req)
            return c.frames

    frames = run(main())
    kinds_redacted = set()
    for frame in frames:
        assert secret not in frame, frame[:500]
        assert env_value not in frame, frame[:500]
        msg = json.loads(frame)
        if R in frame:
            kinds_redacted.add(msg["message_type"])
    assert kinds_redacted >= {
        "assistant_message",
        "command_output_message",
        "result_message",
        "error_message",
        "command_execution_result_message",
    }
    assert any(json.loads(f)["message_type"] == "heartbeat_message" for f in frames)
    outputs = [json.loads(f) for f in frames if json.loads(f)["message_type"] == "command_output_message"]
    assert {o["stream"] for o in outputs if R in o["text"]} == {"stdout", "stderr"}


def test_secret_never_reaches_the_log(start_runtime, secret):
    rt = start_runtime("--agent", "echo", env={"RUNTIMEUSE_LOG": "debug"})
    env_value = "envval-" + uuid.uuid4().hex[:10]

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            await s.query(
                f"STREAM_TEXT:{secret}",
                qopts(
                    secrets_to_redact=[secret],
                    source_id=f"source-{secret}",
                    system_prompt=f"system {secret}",
                    agent_env={"AGENT_KEY": secret},
                    pre_agent_invocation_commands=[CommandInterface(command=f"echo {secret}")],
                ),
            )
            with pytest.raises(AgentRuntimeError):
                await s.query(f"ERROR:{secret}", qopts(secrets_to_redact=[secret]))
            with pytest.raises(AgentRuntimeError):
                await s.query("ECHO:x", qopts(
                    secrets_to_redact=[secret],
                    pre_agent_invocation_commands=[CommandInterface(command=f"echo {secret}; exit 2")],
                ))
            await s.execute_commands(
                [
                    CommandInterface(command=f"echo {secret} >&2; echo $TOKEN_Y", env={"TOKEN_Y": env_value}),
                    CommandInterface(command=f"nonexistent-{secret}"),
                ],
                ExecuteCommandsOptions(secrets_to_redact=[secret], source_id=f"cmd-{secret}"),
            )

    run(main())
    log = rt.log()
    assert log.strip(), "the runtime logged nothing at debug level"
    assert secret not in log
    assert env_value not in log


def test_handler_log_lines_are_redacted(start_runtime, py_handler, secret):
    rt = start_runtime("--handler", str(py_handler))
    # The handler logs "handling <prompt>" for every invocation.
    result = query(rt.url, f"about {secret}", secrets_to_redact=[secret])
    assert result.data.text == f"py:about {R}"
    log = rt.log()
    assert f"handling about {R}" in log
    assert secret not in log


def test_handler_stderr_and_crash_report_are_redacted(start_runtime, py_handler, secret):
    # DEBUG: unmarked stderr lines are logged at that level.
    rt = start_runtime("--handler", str(py_handler), env={"RUNTIMEUSE_LOG": "debug"})

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            assert (await s.query(f"STDERR:{secret}", qopts(secrets_to_redact=[secret]))).data.text == "logged"
            with pytest.raises(AgentRuntimeError) as info:
                await s.query(f"CRASH {secret}", qopts(secrets_to_redact=[secret]))
            assert secret not in str(info.value)
            assert "dying now" in info.value.error

    run(main())
    log = rt.log()
    assert "stderr says" in log
    assert secret not in log
