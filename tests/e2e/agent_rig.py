"""Helpers of the bundled-agent tests: the agents installed once per test
run, a mock model API per test, and a runtime whose agents can reach
nothing but loopback. The fixtures over them (`agent_cache`,
`cold_install`, `rig`) are in conftest.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import subprocess
import time

from runtimeuse_client import QueryOptions, RuntimeUseClient

from helpers import BIN, run
from mock_anthropic import MockAnthropic
from mock_model_server import MockModelServer
from mock_openai import MockOpenAI
from net_guard import RefusingProxy

AGENTS = ["openai", "claude"]

#: Long enough for a cold `npm ci` of the claude agent (its SDK ships
#: Claude Code, a ~200 MB download) on a slow link.
INSTALL_TIMEOUT = 900

#: Never inherited from the developer's environment: a test must not reach
#: a real API with a real key.
VENDOR_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN")


def mock_for(agent: str) -> MockModelServer:
    return MockOpenAI() if agent == "openai" else MockAnthropic()


def key_variable(agent: str) -> str:
    return "OPENAI_API_KEY" if agent == "openai" else "ANTHROPIC_API_KEY"


def api_env(agent: str, mock: MockModelServer, key: str | None = "sk-test-key-0123456789") -> dict:
    """The variables that point an agent at `mock` (with `key`, if any)."""
    if agent == "openai":
        env = {"OPENAI_BASE_URL": mock.base_url}
    else:
        env = {"ANTHROPIC_BASE_URL": mock.url}
    if key is not None:
        env[key_variable(agent)] = key
    return env


def quiet_env(tmp_path: pathlib.Path, proxy: RefusingProxy) -> dict:
    """Runtime environment for agent tests: no vendor credentials inherited,
    every proxy-aware client pointed at the refusing proxy, Claude Code's
    state in the test's directory. Nothing here turns telemetry off: the
    handlers' own defaults must."""
    env = {name: "" for name in VENDOR_VARIABLES}
    env.update(proxy.env())
    env["CLAUDE_CONFIG_DIR"] = str(tmp_path / "claude-config")
    return env


def query_options(agent: str, **kw) -> QueryOptions:
    """QueryOptions for `agent` with the required fields filled in."""
    kw.setdefault("system_prompt", "You are a test agent.")
    kw.setdefault("model", f"{agent}-test-model")
    return QueryOptions(**kw)


def install_agents(cache: pathlib.Path, which: str = "all", env=None) -> subprocess.CompletedProcess:
    """`runtimeuse install-agent WHICH --cache-dir CACHE`."""
    return subprocess.run(
        [BIN, "install-agent", which, "--cache-dir", str(cache)],
        check=False,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        env={**os.environ, **(env or {})},
    )


@contextlib.contextmanager
def file_lock(path: pathlib.Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def install_shared_cache(shared: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """`shared/agent-cache` with both agents installed by `runtimeuse
    install-agent all`, once for all the xdist workers of a run: the first
    to take the lock installs into the empty directory and records how that
    went (`returncode`, `stdout`, `stderr`, `seconds`)."""
    cache = shared / "agent-cache"
    record = shared / "agent-cache-install.json"
    with file_lock(shared / "agent-cache.lock"):
        if not record.exists():
            assert not cache.exists()
            started = time.monotonic()
            done = install_agents(cache)
            outcome = {
                "returncode": done.returncode,
                "stdout": done.stdout,
                "stderr": done.stderr,
                "seconds": time.monotonic() - started,
            }
            record.write_text(json.dumps(outcome))
    return cache, json.loads(record.read_text())


def handler_processes(runtime_pid: int) -> list[int]:
    """The runtime's children that run a bundled Node handler (serving a
    session, or spare)."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == runtime_pid and b"handler.mjs" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


@dataclasses.dataclass
class Rig:
    """One agent, its mock API and a warm runtime serving it."""

    agent: str
    mock: MockModelServer
    runtime: object
    workdir: pathlib.Path

    def env(self, **extra) -> dict:
        """`agent_env` for a query: the mock's URL and a key."""
        return {**api_env(self.agent, self.mock), **extra}

    def options(self, **kw) -> QueryOptions:
        kw.setdefault("agent_env", self.env())
        return query_options(self.agent, **kw)

    def query(self, prompt: str, **kw):
        """A one-shot `client.query`."""
        return run(RuntimeUseClient(ws_url=self.runtime.url).query(prompt, self.options(**kw)))


@contextlib.contextmanager
def refusing_proxy():
    proxy = RefusingProxy()
    try:
        yield proxy
    finally:
        proxy.close()
    assert not proxy.requests, f"something tried to leave loopback through the proxy: {proxy.requests}"


def start_agent_runtime(start_runtime, agent, cache, tmp_path, proxy, *args, env=None, **kw):
    """A runtime serving `agent` from `cache`, working in a fresh directory."""
    env = {**quiet_env(tmp_path, proxy), **(env or {})}
    return start_runtime("--agent", agent, "--cache-dir", str(cache), *args, env=env, **kw)


@contextlib.contextmanager
def agent_rig(agent, cache, start_runtime, tmp_path, *args):
    """A `Rig` for `agent`: its mock API, and a warm runtime (with `args`)
    serving it from `cache` whose agents' attempts to leave loopback fail
    the test."""
    mock = mock_for(agent)
    with refusing_proxy() as proxy:
        try:
            runtime = start_agent_runtime(start_runtime, agent, cache, tmp_path, proxy, *args)
            workdir = tmp_path / "work"
            workdir.mkdir()
            yield Rig(agent, mock, runtime, workdir)
        finally:
            mock.close()
