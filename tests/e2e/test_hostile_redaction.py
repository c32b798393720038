"""Hostile and edge cases of secret redaction (issue 11, "secrets, redaction
and logs"): bounded secrets per session, log redaction that never stops,
third-party trace logs, redacting exactly once, and artifacts whose path
holds a secret. Real binary, real client or raw WebSocket on 127.0.0.1, real
HTTP servers for downloads and uploads."""
import asyncio
import json

from runtimeuse_client import CommandInterface, ExecuteCommandsOptions, RuntimeUseClient

from helpers import command_execution, of_type, raw_connect, run, terminal_of
from http_fixtures import ArtifactSink

#: Past the old process-wide log redactor's cap (10,000), under the
#: session limit (50,000).
MANY = 10_001


def filler(n: int, tag: str) -> list[str]:
    return [f"filler-{tag}-{i:06d}" for i in range(n)]


async def request(url, message):
    async with raw_connect(url) as ws:
        return await ws.request(message)


# ---------------------------------------------------------------------------
# 1. Secrets per session are bounded
# ---------------------------------------------------------------------------

def test_too_many_secrets_is_a_clear_error_and_the_session_stays_usable(echo_runtime):
    async def go():
        async with raw_connect(echo_runtime.url) as ws:
            refused = await ws.request(
                command_execution(["echo never"], secrets_to_redact=filler(50_001, "flood")),
                timeout=120,
            )
            ok = await ws.request(
                command_execution(["echo the-kept-secret"], secrets_to_redact=["the-kept-secret"])
            )
            return refused, ok

    refused, ok = run(go())
    error = terminal_of(refused)
    assert error["message_type"] == "error_message"
    assert "secrets_to_redact" in error["error"] and "limit of 50000 per session" in error["error"]
    assert not of_type(refused, "command_output_message"), "the refused request must not run"
    result = terminal_of(ok)
    assert result["message_type"] == "command_execution_result_message"
    assert result["results"][0]["stdout"] == "[REDACTED]\n"


def test_one_oversized_secret_is_refused(echo_runtime):
    messages = run(request(echo_runtime.url, command_execution(["echo x"], secrets_to_redact=["k" * 70_000])))
    error = terminal_of(messages)
    assert error["message_type"] == "error_message"
    assert "70000 bytes" in error["error"] and "per secret" in error["error"]


# ---------------------------------------------------------------------------
# 2. Log redaction never silently stops
# ---------------------------------------------------------------------------

def test_log_lines_are_redacted_past_ten_thousand_secrets(start_runtime, http_server, tmp_path):
    rt = start_runtime("--agent", "echo", env={"RUNTIMEUSE_LOG": "info"})
    secret = "logged-secret-7d1f2a"
    later = "later-session-secret-93bc"
    url = http_server.serve(f"/files/{secret}/data.txt", b"payload\n")
    later_url = http_server.serve(f"/files/{later}/data.txt", b"payload\n")

    async def go():
        async with raw_connect(rt.url) as ws:
            first = await ws.request(
                command_execution(
                    [{"command": "true", "cwd": str(tmp_path / f"cwd-{secret}"), "env": None}],
                    secrets_to_redact=[*filler(MANY, "a"), secret],
                    pre_execution_downloadables=[
                        {"download_url": url, "working_dir": str(tmp_path / f"wd-{secret}")}
                    ],
                ),
                timeout=120,
            )
            # A bad message quoting the secret: logged as a warning.
            bad = await ws.request({"message_type": f"no-such-type-{secret}"})
        # A later session: the first one's flood must not switch its
        # redaction off.
        async with raw_connect(rt.url) as ws:
            second = await ws.request(
                command_execution(
                    ["true"],
                    secrets_to_redact=[later],
                    pre_execution_downloadables=[
                        {"download_url": later_url, "working_dir": str(tmp_path / f"wd-{later}")}
                    ],
                )
            )
        return first, bad, second

    first, bad, second = run(go())
    assert terminal_of(first)["message_type"] == "command_execution_result_message", first[-1]
    assert terminal_of(bad)["message_type"] == "error_message"
    assert terminal_of(second)["message_type"] == "command_execution_result_message", second[-1]
    log = rt.log()
    assert "downloading" in log and "bad message" in log, log[-3000:]
    assert secret not in log, [line for line in log.splitlines() if secret in line][:5]
    assert later not in log, [line for line in log.splitlines() if later in line][:5]
    assert "[REDACTED]" in log


# ---------------------------------------------------------------------------
# 3. Third-party libraries at trace level
# ---------------------------------------------------------------------------

class SignedSink(ArtifactSink):
    """Presigned URLs whose signature is a value that must never be logged."""

    SIGNATURE = "presigned-sig-0c4e9b71"

    def url_for(self, filepath) -> str:
        return super().url_for(filepath).replace("e2e-sig", self.SIGNATURE)


def test_trace_logs_hold_no_secrets_env_values_or_presigned_queries(start_runtime, http_server, tmp_path):
    rt = start_runtime("--agent", "echo", env={"RUNTIMEUSE_LOG": "trace"})
    secret = "trace-secret-5e2d"
    env_value = "env-value-a81c33"
    sink = SignedSink(http_server)
    adir = tmp_path.resolve() / "artifacts"
    opts = ExecuteCommandsOptions(
        secrets_to_redact=[secret],
        artifacts_dirs=[str(adir)],
        on_artifact_upload_request=sink.callback,
    )
    commands = [
        CommandInterface(command=f"echo {secret} $TOKEN > {adir}/out.txt", env={"TOKEN": env_value}),
    ]
    result = run(RuntimeUseClient(ws_url=rt.url).execute_commands(commands, opts))
    assert [r.exit_code for r in result.results] == [0]
    # Artifacts are files, uploaded as they are.
    sink.assert_uploaded_now(adir / "out.txt", f"{secret} {env_value}\n".encode())
    log = rt.log()
    assert "TRACE" in log or "DEBUG" in log, "the runtime's own trace lines still appear"
    for value in (secret, env_value, SignedSink.SIGNATURE):
        leaks = [line[:300] for line in log.splitlines() if value in line]
        assert not leaks, f"{value} in the trace log: {leaks[:3]}"


# ---------------------------------------------------------------------------
# 4. Redact once
# ---------------------------------------------------------------------------

def test_a_one_char_secret_gives_exactly_the_marker(echo_runtime):
    messages = run(request(echo_runtime.url, command_execution(["echo E"], secrets_to_redact=["E"])))
    result = terminal_of(messages)
    assert result["results"][0]["stdout"] == "[REDACTED]\n"
    assert result["results"][0]["command"] == "echo [REDACTED]"
    streamed = "".join(m["text"] for m in of_type(messages, "command_output_message"))
    assert streamed == "[REDACTED]\n"


def test_output_near_the_frame_limit_full_of_one_char_secrets_is_fitted(start_runtime):
    # 200 KB of "E." becomes 1.1 MB of "[REDACTED].": the terminal must be
    # the fitted result, not a "too big" error.
    rt = start_runtime("--agent", "echo", "--stdout-tail-bytes", "1000000")
    result = run(
        RuntimeUseClient(ws_url=rt.url).execute_commands(
            [CommandInterface(command="python3 -c \"print('E.' * 100000)\"")],
            ExecuteCommandsOptions(secrets_to_redact=["E"]),
        )
    )
    [only] = result.results
    assert only.exit_code == 0
    assert only.stdout.startswith("[REDACTED].[REDACTED].")
    assert only.stdout.rstrip("\n").endswith("[REDACTED].")
    assert "[R[" not in only.stdout and "E." not in only.stdout
    assert 500_000 < len(only.stdout.encode()) < 2**20


# ---------------------------------------------------------------------------
# 5. Artifacts with a secret in their path
# ---------------------------------------------------------------------------

def test_artifact_with_a_secret_in_its_file_and_directory_name_is_uploaded(start_runtime, http_server, tmp_path):
    # A flush timeout far longer than the call's own deadline: the file
    # can only be uploaded before the terminal if its answer was matched.
    rt = start_runtime("--agent", "echo", "--artifact-flush-timeout", "300s")
    user, token = "alice-user-4f1", "tok-9a7b2c"
    adir = tmp_path.resolve() / "artifacts"
    sink = ArtifactSink(http_server)
    opts = ExecuteCommandsOptions(
        secrets_to_redact=[user, token],
        artifacts_dirs=[str(adir)],
        on_artifact_upload_request=sink.callback,
    )
    content = b"bytes of the report\n"
    src = tmp_path / "report.src"
    src.write_bytes(content)
    command = f"mkdir -p {adir}/home-{user} && cp {src} {adir}/home-{user}/report-{token}.txt"

    async def go():
        return await asyncio.wait_for(
            RuntimeUseClient(ws_url=rt.url).execute_commands([CommandInterface(command=command)], opts), 45
        )

    result = run(go())
    assert [r.exit_code for r in result.results] == [0]
    shown = str(adir / "home-[REDACTED]" / "report-[REDACTED].txt")
    assert sink.announced() == [shown]
    assert sink.requests[0].filename == "report-[REDACTED].txt"
    sink.assert_uploaded_now(shown, content)


def test_two_artifacts_that_redact_to_the_same_path_are_both_uploaded(echo_runtime, http_server, tmp_path):
    adir = tmp_path.resolve() / "artifacts"
    sink = ArtifactSink(http_server)
    secrets = ["first-key-11aa", "second-key-22bb"]
    opts = ExecuteCommandsOptions(
        secrets_to_redact=secrets, artifacts_dirs=[str(adir)], on_artifact_upload_request=sink.callback
    )
    command = " && ".join(f"echo content-{i} > {adir}/f-{s}.txt" for i, s in enumerate(secrets))
    result = run(RuntimeUseClient(ws_url=echo_runtime.url).execute_commands([CommandInterface(command=command)], opts))
    assert [r.exit_code for r in result.results] == [0]
    shown = str(adir / "f-[REDACTED].txt")
    assert sink.announced() == [shown, shown]
    assert sorted(sink.uploaded(shown)) == [b"content-0\n", b"content-1\n"]


def test_json_log_lines_are_redacted_of_escaped_secrets(start_runtime):
    # A secret with a quote and a backslash is written escaped in JSON lines,
    # and escaped twice when a warning quotes the input.
    rt = start_runtime("--agent", "echo", "--log-format", "json", env={"RUNTIMEUSE_LOG": "info"})
    secret = 'quo"te\\secret-31f'

    async def go():
        async with raw_connect(rt.url) as ws:
            await ws.request(command_execution(["true"], secrets_to_redact=[secret]))
            return await ws.request({"message_type": f"bad-{secret}"})

    assert terminal_of(run(go()))["message_type"] == "error_message"
    [line] = [line for line in rt.log().splitlines() if "bad message" in line]
    for form in (secret, json.dumps(secret)[1:-1], json.dumps(repr(secret)[1:-1])[1:-1], "secret-31f"):
        assert form not in line, line
    assert "[REDACTED]" in line
