"""protocol/schemas/ is the single source of truth: every frame the runtime
sends in a varied session validates against wire-outbound.schema.json, and
every message the real client builds validates against
wire-inbound.schema.json."""
import json

import jsonschema
from runtimeuse_client import CommandInterface, RuntimeEnvironmentDownloadableInterface
from runtimeuse_client.client import _build_command_execution, _build_invocation
from runtimeuse_client.types import ExecuteCommandsOptions, QueryOptions

from helpers import ROOT, command_execution, invocation, raw_connect, run

SCHEMAS = ROOT / "protocol" / "schemas"


def validator(name):
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_outbound_frame_matches_the_schema(start_runtime, tmp_path):
    # Nobody answers the artifact announcement here: keep the flush short.
    rt = start_runtime("--agent", "echo", "--heartbeat-interval", "100ms", "--artifact-flush-timeout", "300ms")
    out = tmp_path / "artifacts"
    schema = {"type": "json_schema", "schema": {"type": "object"}}

    async def scenario():
        async with raw_connect(rt.url) as client:
            await client.request(invocation("ECHO:text"))
            await client.request(invocation('STRUCTURED:{"a": [1, {"b": null}]}',
                                            output_format_json_schema_str=json.dumps(schema)))
            await client.request(invocation("STREAM:3"))
            await client.request(invocation("SLOW:350"))  # heartbeats
            await client.request(invocation("ERROR:failed on purpose"))
            await client.request(command_execution(["echo out; echo err >&2", "exit 4"]))
            await client.request(command_execution([f"mkdir -p {out} && echo a > {out}/f.txt"],
                                                   artifacts_dirs=[str(out)]))
            await client.send("not json")
            await client.until_terminal()
            await client.send({"message_type": "end_session_message"})
            # The unanswered announcement is repeated by the drain first.
            while (await client.recv())["message_type"] != "end_session_confirm_message":
                pass
            return client.frames

    frames = run(scenario())
    check = validator("wire-outbound.schema.json")
    seen = set()
    for raw in frames:
        message = json.loads(raw)
        errors = sorted(check.iter_errors(message), key=str)
        assert not errors, f"{message['message_type']}: {errors[0].message}"
        seen.add(message["message_type"])
    assert seen >= {
        "result_message", "assistant_message", "heartbeat_message", "error_message",
        "command_output_message", "command_execution_result_message",
        "artifact_upload_request_message", "end_session_confirm_message",
    }, seen


def test_what_the_real_client_sends_matches_the_inbound_schema():
    check = validator("wire-inbound.schema.json")
    command = CommandInterface(command="ls", cwd="/tmp", env={"A": "1"})
    download = RuntimeEnvironmentDownloadableInterface(download_url="https://x/y.zip", working_dir="/w")

    async def upload(_request):
        raise AssertionError("not called")

    messages = [
        _build_invocation("p", QueryOptions(system_prompt="s", model="m")),
        _build_invocation("p", QueryOptions(
            system_prompt="s", model="m", output_format_json_schema_str='{"type":"json_schema","schema":{}}',
            source_id="id", agent_env={"K": "V"}, secrets_to_redact=["x"], artifacts_dirs=["/a"],
            artifacts_ignore_content="*.log", pre_agent_invocation_commands=[command],
            post_agent_invocation_commands=[command], pre_agent_downloadables=[download],
            on_artifact_upload_request=upload)),
        _build_command_execution([command], ExecuteCommandsOptions()),
        _build_command_execution([command], ExecuteCommandsOptions(
            pre_execution_downloadables=[download], artifacts_dirs=["/a"], on_artifact_upload_request=upload)),
    ]
    dumped = [m.model_dump(mode="json") for m in messages] + [
        {"message_type": "cancel_message"},
        {"message_type": "end_session_message"},
        {"message_type": "artifact_upload_response_message", "filename": "f", "filepath": "/a/f",
         "presigned_url": "https://u", "content_type": "text/plain"},
    ]
    for message in dumped:
        errors = list(check.iter_errors(message))
        assert not errors, f"{message['message_type']}: {errors[0].message}"
    # And the schema is not vacuous: a message without its required field fails.
    assert list(check.iter_errors({"message_type": "command_execution_message"}))
