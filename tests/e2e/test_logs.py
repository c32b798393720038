"""The operator's log (the runtime's stderr): the start-up line, a WARN per
failed request naming its session, peer and source_id, handler stderr
levels, `--log-format json`, plain start-up errors and `--version`."""
from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess

import pytest
from runtimeuse_client import AgentRuntimeError, RuntimeUseClient

from helpers import BIN, ROOT, qopts, run, wait_until

SECRET = "op-secret-7f3a9c2e"

def lines_with(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


def json_lines(log: str) -> list[dict]:
    """Every line of a JSON log, parsed (a line that is not JSON fails)."""
    return [json.loads(line) for line in log.splitlines() if line.strip()]


def test_one_startup_line_names_version_agent_address_tls_and_token(start_runtime, py_handler):
    rt = start_runtime("--agent", "echo")
    [line] = lines_with(rt.log(), "runtimeuse listening")
    assert "INFO" in line
    for field in (f"version={package_version()}", f"addr=127.0.0.1:{rt.port}", "agent=echo", "tls=off", "token=off"):
        assert field in line, line
    rt = start_runtime("--handler", str(py_handler), env={"RUNTIMEUSE_AUTH_TOKEN": SECRET})
    [line] = lines_with(rt.log(), "runtimeuse listening")
    assert f"handler={py_handler}" in line and "token=on" in line and "agent=" not in line, line
    assert SECRET not in rt.log()


def package_version() -> str:
    return subprocess.run([BIN, "-V"], capture_output=True, text=True, check=True).stdout.split()[1]


def test_failed_request_logs_a_warning_with_session_peer_and_source_id(start_runtime):
    rt = start_runtime("--agent", "echo")
    client = RuntimeUseClient(ws_url=rt.url)
    with pytest.raises(AgentRuntimeError):
        run(client.query(f"ERROR:boom {SECRET}", qopts(source_id="job-42", secrets_to_redact=[SECRET])))
    assert run(client.query("ECHO:fine", qopts(source_id="job-43"))).data.text == "fine"
    log = rt.log()
    [warning] = lines_with(log, "request failed")
    assert " WARN " in warning, warning
    assert "boom [REDACTED]" in warning and SECRET not in log
    assert "source_id=job-42" in warning
    assert re.search(r"session\{id=\d+ peer=127\.0\.0\.1:\d+\}", warning), warning
    # A request that succeeds is no warning.
    [fine] = [line for line in lines_with(log, "request finished") if "job-43" in line]
    assert " INFO " in fine


def test_json_log_format(start_runtime):
    rt = start_runtime("--agent", "echo", env={"RUNTIMEUSE_LOG_FORMAT": "json"})
    client = RuntimeUseClient(ws_url=rt.url)
    with pytest.raises(AgentRuntimeError):
        run(client.query(f'ERROR:quoted "{SECRET}"', qopts(source_id="job-j", secrets_to_redact=[SECRET])))
    records = json_lines(rt.log())
    [startup] = [r for r in records if r.get("message") == "runtimeuse listening"]
    assert startup["level"] == "INFO" and startup["agent"] == "echo" and startup["tls"] == "off"
    assert startup["addr"] == f"127.0.0.1:{rt.port}"
    [failed] = [r for r in records if r.get("message") == "request failed"]
    assert failed["level"] == "WARN"
    assert failed["error"] == 'quoted "[REDACTED]"'
    session, request = failed["spans"]
    assert session["name"] == "session" and session["peer"].startswith("127.0.0.1:") and session["id"] >= 1
    assert request["name"] == "request" and request["source_id"] == "job-j"
    assert SECRET not in rt.log()


def test_handler_stderr_is_debug_unless_marked(start_runtime, py_handler):
    for env, plain_shown in (({}, False), ({"RUNTIMEUSE_LOG": "debug"}, True)):
        rt = start_runtime("--handler", str(py_handler), env=env)
        assert run(RuntimeUseClient(ws_url=rt.url).query("NOISY", qopts())).data.text == "noisy"
        assert wait_until(lambda rt=rt: "last line" in rt.log(), timeout=10), rt.log()
        log = rt.log()
        levels = {
            "marked warning": " WARN ",
            "marked error": " ERROR ",
            "marked info": " INFO ",
            "last line": " ERROR ",
            "log at warn": " WARN ",
        }
        for text, level in levels.items():
            [line] = lines_with(log, text)
            assert level in line, line
        assert bool(lines_with(log, "plain noise")) == plain_shown, log
        assert bool(lines_with(log, "log at debug")) == plain_shown, log
        if plain_shown:
            assert " DEBUG " in lines_with(log, "plain noise")[0]


@pytest.mark.parametrize(
    "args",
    [
        ["--handler", "/nonexistent/agent.py"],
        ["--agent", "echo", "--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
        ["--agent", "echo", "--ca-cert", "/nonexistent/ca.pem"],
    ],
)
def test_startup_errors_print_paths_plainly(args):
    out = subprocess.run([BIN, "--host", "127.0.0.1", "--port", "0", *args], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode != 0
    assert "/nonexistent/" in out.stderr and 'Path("' not in out.stderr and 'Bundled("' not in out.stderr, out.stderr


def test_version_names_protocols_and_the_tested_client():
    text = subprocess.run([BIN, "--version"], capture_output=True, text=True, check=True).stdout
    pinned = re.search(r"^runtimeuse-client==(\S+)$", (ROOT / "tests/requirements.txt").read_text(), re.MULTILINE)[1]
    assert pinned == importlib.metadata.version("runtimeuse-client")
    assert f"wire protocol: v1 (tested with runtimeuse-client {pinned})" in text.splitlines()
    assert "handler protocol: v1" in text.splitlines()
    assert "(v1" in (ROOT / "protocol/README.md").read_text()
