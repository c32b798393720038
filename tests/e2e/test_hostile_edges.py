"""Wire edges and clear errors (issue 11, hardening round 2): bare output
schemas, numbers out of range in unknown fields, commands too large for the
command line, bad `cwd`s, requests sent after `end_session_message`,
invalid UTF-8 text frames, and a shutdown that ends a running request.

Each test drives the real binary the way users do: the real client where it
can express the case, a raw WebSocket where only a raw frame can."""
import asyncio
import json
import os
import pathlib
import signal
import tempfile

import pytest
import websockets
from runtimeuse_client import (
    AgentRuntimeError,
    CommandInterface,
    ExecuteCommandsOptions,
    RuntimeUseClient,
)

from helpers import (
    CLIENT_MAX_FRAME,
    command_execution,
    execute,
    invocation,
    of_type,
    qopts,
    raw_connect,
    run,
    terminal_of,
)

#: What the runtime quotes of a command at most (`MAX_QUOTED_COMMAND_BYTES`),
#: plus room for the "… (N bytes)" suffix.
QUOTE_LIMIT = 8 * 1024 + 64


# --- 1. bare output schema ------------------------------------------------

@pytest.mark.parametrize(
    "format_str",
    [
        '{"type":"object"}',
        '{"type":"json_schema","schema":{"type":"object"}}',
    ],
    ids=["bare", "wrapped"],
)
def test_bare_and_wrapped_output_schemas_reach_the_handler_alike(start_runtime, py_handler, format_str):
    rt = start_runtime("--handler", str(py_handler))
    result = run(RuntimeUseClient(ws_url=rt.url).query("INFO", qopts(output_format_json_schema_str=format_str)))
    assert result.data.type == "structured_output"
    assert result.data.structured_output["output_format"] == {"type": "json_schema", "schema": {"type": "object"}}


def test_a_wrapper_without_a_schema_is_refused_clearly(echo_runtime):
    with pytest.raises(AgentRuntimeError) as err:
        run(RuntimeUseClient(ws_url=echo_runtime.url).query(
            "ECHO:x", qopts(output_format_json_schema_str='{"type":"json_schema"}')
        ))
    assert err.value.error.startswith("Invalid output_format_json_schema_str: ")
    assert '"schema" object' in err.value.error


# --- 2. numbers out of f64 range in unknown fields -------------------------

def with_raw_fields(message: dict, raw: str) -> str:
    """`message` as JSON with `raw` (JSON text Python cannot produce, such as
    `1e400`) spliced in as extra top-level fields."""
    text = json.dumps(message)
    return text[:-1] + ", " + raw + "}"


def test_out_of_range_numbers_in_unknown_fields_are_ignored(echo_runtime):
    command = {"command": "echo ok", "cwd": None, "env": None, "note": 1e300}
    frame = with_raw_fields(command_execution([command]), '"x": 1e400, "y": {"deep": [-1e400]}')
    frame = frame.replace("1e+300", "1e400")  # nested, inside the command
    assert frame.count("1e400") == 3

    async def main():
        async with raw_connect(echo_runtime.url) as c:
            first = terminal_of(await c.request(frame))
            invocation_frame = with_raw_fields(invocation("ECHO:fine"), '"z": 1e400')
            second = terminal_of(await c.request(invocation_frame))
            return first, second

    first, second = run(main())
    assert first["message_type"] == "command_execution_result_message", first
    assert first["results"][0]["stdout"] == "ok\n"
    assert second["message_type"] == "result_message", second


# --- 3. large commands ----------------------------------------------------

def test_a_one_mib_heredoc_command_writes_its_file(echo_runtime, tmp_path):
    target = tmp_path / "big.txt"
    content = "".join(f"line {i:07d} of the heredoc\n" for i in range(40_000))
    assert len(content) > 1024 * 1024
    # The script also reports what its stdin holds and its $0: both must
    # be what a small command sees (stdin is /dev/null, $0 is the shell).
    command = (
        f"cat > {target} <<'EOF'\n{content}EOF\n"
        'echo "stdin=$(wc -c) zero=$0"'
    )
    small = execute(echo_runtime.url, ['echo "stdin=$(wc -c) zero=$0"'])
    result = execute(echo_runtime.url, [command])
    assert target.read_text() == content
    assert result.results[0].exit_code == 0
    assert result.results[0].stdout == small.results[0].stdout
    assert result.results[0].stdout.startswith("stdin=0 ")
    # The echoed command is clipped, not 1 MiB per message.
    echoed = result.results[0].command
    assert len(echoed.encode()) <= QUOTE_LIMIT
    assert echoed.startswith(f"cat > {target} <<'EOF'\nline 0000000")
    assert echoed.endswith(f"({len(command.encode())} bytes)")


def test_an_error_quoting_a_huge_command_is_clipped_and_fits_a_frame(echo_runtime):
    huge = "false # " + "x" * 1_500_000

    async def main():
        async with raw_connect(echo_runtime.url) as c:
            frames = await c.request(invocation("ECHO:never", pre_agent_invocation_commands=[
                {"command": huge, "cwd": None, "env": None},
            ]))
            return frames, c.frames

    messages, raw_frames = run(main())
    error = terminal_of(messages)
    assert error["message_type"] == "error_message"
    assert error["error"].startswith("Pre-agent command `false # xxx")
    assert error["error"].endswith(f"({len(huge)} bytes)` failed with exit code: 1")
    assert len(error["error"].encode()) <= QUOTE_LIMIT + 100
    assert error["metadata"]["exit_code"] == 1
    assert all(len(f.encode()) <= CLIENT_MAX_FRAME for f in raw_frames)


def test_a_start_error_quoting_a_huge_command_is_clipped(echo_runtime):
    huge = "echo never # " + "y" * 1_500_000
    with pytest.raises(AgentRuntimeError) as err:
        execute(echo_runtime.url, [CommandInterface(command=huge, cwd="")])
    assert "cwd is empty" in err.value.error
    assert len(err.value.error.encode()) <= QUOTE_LIMIT + 200


# --- 4. cwd errors --------------------------------------------------------

def test_an_empty_cwd_is_blamed_not_the_shell(echo_runtime):
    with pytest.raises(AgentRuntimeError) as err:
        execute(echo_runtime.url, [CommandInterface(command="echo never", cwd="")])
    assert err.value.error.startswith("Command `echo never` could not start: cwd is empty")
    assert "/bin/sh" not in err.value.error


def test_a_cwd_under_a_file_says_so(echo_runtime, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cwd = f"{blocker}/sub"
    with pytest.raises(AgentRuntimeError) as err:
        execute(echo_runtime.url, [CommandInterface(command="echo never", cwd=cwd)])
    assert err.value.error == (
        f"Command `echo never` could not start: cwd {cwd} is not a directory: part of its path is a file"
    )


def as_nobody():
    """preexec_fn: the runtime runs as `nobody`, so a root-only directory is
    one it may not enter (as root, permissions are never refused)."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the runtime as nobody")
def test_a_cwd_the_runtime_may_not_enter_says_so(start_runtime):
    rt = start_runtime("--agent", "echo", preexec_fn=as_nobody)
    private = pathlib.Path(tempfile.mkdtemp(prefix="runtimeuse-private-"))  # 0700, root's
    try:
        errors = []
        # Entering it (the shell's chdir fails), and looking inside it.
        for cwd in (str(private), f"{private}/inner"):
            with pytest.raises(AgentRuntimeError) as err:
                execute(rt.url, [CommandInterface(command="echo never", cwd=cwd)])
            errors.append((cwd, err.value.error))
    finally:
        private.rmdir()
    for cwd, error in errors:
        assert error == f"Command `echo never` could not start: cwd {cwd} is not accessible: permission denied"


# --- 5. a request right after end_session_message --------------------------

def test_a_request_sent_right_after_end_session_gets_one_terminal(echo_runtime):
    """Whether the request reaches the runtime before or after its confirm
    depends on timing, so the scenario runs on several connections: every
    one must get the refusal. Like the real client, the test closes the
    connection once it has what it waits for."""

    async def once():
        async with raw_connect(echo_runtime.url) as c:
            await c.send({"message_type": "end_session_message"})
            await c.send(command_execution(["echo never"]))
            received = []
            while not (of_type(received, "error_message") and of_type(received, "end_session_confirm_message")):
                try:
                    received.append(await c.recv(timeout=10))
                except websockets.ConnectionClosed:
                    break
            return received

    async def main():
        return [await once() for _ in range(10)]

    for received in run(main()):
        errors = of_type(received, "error_message")
        assert len(errors) == 1, received
        assert "session is ending" in errors[0]["error"]
        assert of_type(received, "end_session_confirm_message"), received
        assert not of_type(received, "command_output_message")


# --- 6. invalid UTF-8 in a text frame ---------------------------------------

def test_invalid_utf8_text_frame_closes_with_1007(echo_runtime):
    async def main():
        async with raw_connect(echo_runtime.url) as c:
            await c.ws.send(b'{"message_type":"cancel_message","x":"\xff\xfe"}', text=True)
            await asyncio.wait_for(c.ws.wait_closed(), 10)
            return c.ws.close_code

    assert run(main()) == 1007
    # The runtime itself is fine: the next connection is served.
    assert execute(echo_runtime.url, ["echo still-up"]).results[0].stdout == "still-up\n"


# --- 7. SIGTERM ending a running request -------------------------------------

def test_sigterm_mid_request_says_the_runtime_is_shutting_down(start_runtime):
    rt = start_runtime("--agent", "echo", "--kill-grace", "500ms")

    async def main():
        started = asyncio.Event()

        async def on_output(message):
            if "started" in message.text:
                started.set()

        client = RuntimeUseClient(ws_url=rt.url)
        task = asyncio.create_task(client.execute_commands(
            [CommandInterface(command="echo started; sleep 30")],
            ExecuteCommandsOptions(on_command_output=on_output),
        ))
        await asyncio.wait_for(started.wait(), 20)
        rt.proc.send_signal(signal.SIGTERM)
        with pytest.raises(AgentRuntimeError) as err:
            await asyncio.wait_for(task, 20)
        return err.value

    error = run(main())
    assert error.error == "Request cancelled: the runtime is shutting down"
    assert rt.proc.wait(10) == 0
