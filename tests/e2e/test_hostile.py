"""Hostile input corpus: each case is sent raw on a fresh connection; the
runtime must answer with a clear error_message (or refuse the frame) and the
SAME connection must then serve a normal request correctly."""
import json

import pytest
import websockets

from helpers import run

CLIENT_MAX_SIZE = 2**20  # what runtimeuse-client accepts


def cmd_msg(commands, **extra):
    msg = {"message_type": "command_execution_message", "secrets_to_redact": [], "commands": commands}
    msg.update(extra)
    return msg


def inv_msg(prompt="ECHO:x", **extra):
    msg = {
        "message_type": "invocation_message",
        "system_prompt": "s",
        "user_prompt": prompt,
        "model": "echo",
        "secrets_to_redact": [],
    }
    msg.update(extra)
    return msg


def dl(url, working_dir="/tmp/runtimeuse-hostile-dl"):
    return [{"download_url": url, "working_dir": working_dir}]


HUGE = "A" * (5 * 1024 * 1024)

# (case id, frame to send (str, bytes or dict), substring the error must contain)
CORPUS = [
    ("truncated-json", "{", "not valid JSON"),
    ("empty-frame", "", "not valid JSON"),
    ("json-array", "[]", "message_type"),
    ("json-string", '"hello"', "message_type"),
    ("json-number", "42", "message_type"),
    ("json-null", "null", "message_type"),
    ("no-message-type", {}, "message_type"),
    ("message-type-not-string", {"message_type": 5}, "message_type"),
    ("unknown-message-type", {"message_type": "format_disk"}, "unknown message_type"),
    ("message-type-wrong-case", {"message_type": "Invocation_Message"}, "unknown message_type"),
    ("binary-frame", b"\x00\x01binary", "binary frames"),
    ("invocation-without-user-prompt", {k: v for k, v in inv_msg().items() if k != "user_prompt"}, "user_prompt"),
    ("user-prompt-null", inv_msg(user_prompt=None), "user_prompt"),
    ("system-prompt-wrong-type", inv_msg(system_prompt=5), "invalid type"),
    ("commands-missing", {"message_type": "command_execution_message"}, "commands"),
    ("commands-not-a-list", cmd_msg("ls"), "invalid type"),
    ("command-item-without-command", cmd_msg([{"cwd": "/tmp"}]), "command"),
    ("command-is-a-number", cmd_msg([{"command": 7}]), "invalid type"),
    ("env-value-not-string", cmd_msg([{"command": "true", "env": {"A": 1}}]), "invalid type"),
    ("secrets-not-a-list", cmd_msg([{"command": "true"}], secrets_to_redact="s3cr3t"), "invalid type"),
    ("agent-env-not-a-map", inv_msg(agent_env=["A=1"]), "invalid type"),
    ("huge-unknown-type", {"message_type": "x" + HUGE}, "unknown message_type"),
    ("deeply-nested-json", "[" * 100_000 + "]" * 100_000, "recursion limit"),
    ("deeply-nested-field", {"message_type": "invocation_message", "user_prompt": "x", "agent_env": json.loads("[" * 100 + "]" * 100)}, "invalid type"),
    ("output-format-not-json", inv_msg(output_format_json_schema_str="not json"), "Invalid output_format_json_schema_str"),
    ("output-format-not-object", inv_msg(output_format_json_schema_str="[1]"), "Invalid output_format_json_schema_str"),
    ("output-format-no-schema", inv_msg(output_format_json_schema_str='{"type":"json_schema"}'), "Invalid output_format_json_schema_str"),
    ("download-file-scheme", cmd_msg([{"command": "true"}], pre_execution_downloadables=dl("file:///etc/passwd")), "Download failed"),
    ("download-ftp-scheme", cmd_msg([{"command": "true"}], pre_execution_downloadables=dl("ftp://127.0.0.1/x")), "Download failed"),
    ("download-empty-url", cmd_msg([{"command": "true"}], pre_execution_downloadables=dl("")), "Download failed"),
    ("download-traversal-name", cmd_msg([{"command": "true"}], pre_execution_downloadables=dl("http://127.0.0.1:9/..%2F..%2Fetc%2Fpasswd")), "Download failed"),
    ("download-dotdot-name", inv_msg(pre_agent_downloadables=dl("http://127.0.0.1:9/..")), "Download failed"),
    ("download-missing-working-dir", cmd_msg([{"command": "true"}], pre_execution_downloadables=[{"download_url": "http://127.0.0.1:9/x"}]), "working_dir"),
    ("cwd-is-a-file", cmd_msg([{"command": "true", "cwd": "/etc/passwd"}]), "not a directory"),
    ("pre-command-cwd-is-a-file", inv_msg(pre_agent_invocation_commands=[{"command": "true", "cwd": "/etc/hostname"}]), "not a directory"),
    ("artifacts-dir-is-a-file", cmd_msg([{"command": "true"}], artifacts_dirs=["/etc/passwd"]), "not a directory"),
    ("artifacts-dirs-wrong-type", cmd_msg([{"command": "true"}], artifacts_dirs="/tmp"), "invalid type"),
    ("artifact-response-missing-url", {"message_type": "artifact_upload_response_message", "filepath": "/etc/passwd"}, "presigned_url"),
]


async def send_raw(ws, frame):
    if isinstance(frame, dict):
        frame = json.dumps(frame)
    await ws.send(frame)


async def recv_until_terminal(ws):
    """Collects messages up to the first terminal; returns (terminal, others)."""
    others = []
    while True:
        message = json.loads(await ws.recv())
        if message["message_type"] in ("error_message", "result_message", "command_execution_result_message"):
            return message, others
        others.append(message)


async def assert_session_still_works(ws):
    await send_raw(ws, cmd_msg([{"command": "echo still-alive"}]))
    terminal, _ = await recv_until_terminal(ws)
    assert terminal["message_type"] == "command_execution_result_message", terminal
    assert terminal["results"][0]["stdout"] == "still-alive\n"
    await send_raw(ws, inv_msg("ECHO:after-hostile"))
    terminal, _ = await recv_until_terminal(ws)
    assert terminal["data"]["text"] == "after-hostile", terminal


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("frame,expected", [(f, e) for _, f, e in CORPUS], ids=[c for c, _, _ in CORPUS])
def test_hostile_input_gets_clear_error_and_session_survives(echo_runtime, frame, expected):
    async def scenario():
        async with websockets.connect(echo_runtime.url, max_size=CLIENT_MAX_SIZE) as ws:
            await send_raw(ws, frame)
            terminal, _ = await recv_until_terminal(ws)
            assert terminal["message_type"] == "error_message", terminal
            assert expected in terminal["error"], terminal["error"][:500]
            assert isinstance(terminal["metadata"], dict)
            await assert_session_still_works(ws)

    run(scenario())


@pytest.mark.parametrize(
    "frame",
    [
        {"message_type": "cancel_message"},
        {"message_type": "artifact_upload_response_message", "filename": "passwd", "filepath": "/etc/passwd",
         "presigned_url": "http://127.0.0.1:9/steal", "content_type": "text/plain"},
        cmd_msg([]),
        dict(cmd_msg([{"command": "true"}]), unexpected_field={"nested": [1, 2, 3]}),
    ],
    ids=["cancel-when-idle", "artifact-response-never-announced", "empty-command-list", "unknown-extra-field"],
)
def test_harmless_oddities_are_not_errors(echo_runtime, frame):
    """Input that is odd but valid: no error is invented, the session goes on."""
    async def scenario():
        async with websockets.connect(echo_runtime.url, max_size=CLIENT_MAX_SIZE) as ws:
            await send_raw(ws, frame)
            if frame.get("message_type") == "command_execution_message":
                terminal, _ = await recv_until_terminal(ws)
                assert terminal["message_type"] == "command_execution_result_message", terminal
                assert len(terminal["results"]) == len(frame["commands"])
            await assert_session_still_works(ws)

    run(scenario())
    assert "/etc/passwd" not in echo_runtime.log() or "not announced" in echo_runtime.log()


def test_hostile_input_quoting_a_known_secret_is_redacted_in_reply_and_log(echo_runtime):
    """A bad message that quotes a secret named earlier on the session: the
    error sent back and the runtime's log line about it are both redacted."""
    secret = "hostile-secret-" + "q" * 20

    async def scenario():
        async with websockets.connect(echo_runtime.url, max_size=CLIENT_MAX_SIZE) as ws:
            await send_raw(ws, cmd_msg([{"command": "true"}], secrets_to_redact=[secret]))
            terminal, _ = await recv_until_terminal(ws)
            assert terminal["message_type"] == "command_execution_result_message"
            await send_raw(ws, {"message_type": secret})
            terminal, _ = await recv_until_terminal(ws)
            return terminal

    terminal = run(scenario())
    assert terminal["message_type"] == "error_message"
    assert secret not in terminal["error"] and "[REDACTED]" in terminal["error"]
    log = echo_runtime.log()
    assert "unknown message_type" in log
    assert secret not in log


def test_secrets_that_spell_protocol_names_do_not_break_the_client(echo_runtime):
    """Secrets like `message`, `type` or `text` are redacted from content
    only, never from field names and tags the client parses."""
    from runtimeuse_client import CommandInterface, ExecuteCommandsOptions, QueryOptions, RuntimeUseClient

    secrets = ["message", "type", "text", "result", "stdout", "data"]

    async def scenario():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        streamed = []

        async def on_assistant(msg):
            streamed.extend(msg.text_blocks)

        result = await client.query("STREAM_TEXT:a text message", QueryOptions(
            system_prompt="", model="echo", secrets_to_redact=secrets, on_assistant_message=on_assistant))
        commands = await client.execute_commands(
            [CommandInterface(command="echo result data")],
            ExecuteCommandsOptions(secrets_to_redact=secrets))
        return result, streamed, commands

    result, streamed, commands = run(scenario())
    assert result.data.text == "done"
    assert streamed == ["a [REDACTED] [REDACTED]"]
    assert commands.results[0].stdout == "[REDACTED] [REDACTED]\n"
