"""Installing the bundled agents: on first start (before the port opens),
with `runtimeuse install-agent`, and not at all on a warm start; and each
start-up error, which must stop the runtime, non-zero, before the port
opens, saying what to do.

Installs use the real npm and the npm registry (npm's own cache makes the
repeats cheap); everything after the install stays on loopback.
"""

import os
import pathlib
import shutil
import subprocess

import pytest
from runtimeuse_client import RuntimeUseClient

from agent_rig import (
    INSTALL_TIMEOUT,
    api_env,
    install_agents,
    mock_for,
    query_options,
    quiet_env,
    refusing_proxy,
    start_agent_runtime,
)
from helpers import BIN, free_port, run

NODE = shutil.which("node")

# A cold `npm ci` of the claude agent alone takes 20-30 s on an idle 2-core
# machine and several minutes on a loaded one: the suite-wide 120 s limit
# (pytest.ini) would fail a slow install that is still making progress.
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 60)


def agent_dirs(cache: pathlib.Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def ask(runtime, agent, mock, prompt="MOCK:TEXT installed and answering"):
    options = query_options(agent, agent_env=api_env(agent, mock))
    return run(RuntimeUseClient(ws_url=runtime.url).query(prompt, options)).data.text


def recording_npm(directory: pathlib.Path) -> pathlib.Path:
    """A directory whose `npm` records each call (and fails): put first on
    PATH, it shows whether anything ran npm."""
    directory.mkdir()
    log = directory / "npm-calls.log"
    npm = directory / "npm"
    npm.write_text(f'#!/bin/sh\necho "npm $*" >> {log}\nexit 1\n')
    npm.chmod(0o755)
    return log


@pytest.mark.parametrize("agent", ["openai", "claude"])
def test_first_start_installs_before_the_port_opens_and_the_next_runs_no_npm(agent, start_runtime, tmp_path):
    cache = tmp_path / "empty-cache"
    mock = mock_for(agent)
    calls = recording_npm(tmp_path / "bin")
    no_npm = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    try:
        with refusing_proxy() as proxy:
            first = start_agent_runtime(start_runtime, agent, cache, tmp_path, proxy, ready_timeout=INSTALL_TIMEOUT)
            log = first.log()
            # Progress on stderr, all of it before the port opened.
            installing = log.index(f"installing the {agent} agent's dependencies")
            npm_output = log.index("added ")
            installed = log.index("agent installed")
            listening = log.index("runtimeuse listening")
            assert installing < npm_output < installed < listening, log
            (copy,) = agent_dirs(cache)
            assert copy.startswith(f"agent-handlers-{agent}-")
            assert (cache / copy / "handlers" / agent / "node_modules").is_dir()
            assert ask(first, agent, mock) == "installed and answering"
            assert first.stop() == 0

            # Warm: with an npm that records being called first on PATH.
            second = start_agent_runtime(start_runtime, agent, cache, tmp_path, proxy, env=no_npm)
            assert "installing" not in second.log()
            assert ask(second, agent, mock) == "installed and answering"
            again = install_agents(cache, agent, env=no_npm)
            assert again.returncode == 0 and again.stdout == f"{agent} {cache / copy}\n", again.stderr
    finally:
        mock.close()
    assert not calls.exists(), calls.read_text()
    assert agent_dirs(cache) == [copy]


def test_install_agent_all_into_an_empty_cache(agent_cache, cold_install):
    """The shared cache of this run was made by `install-agent all` into an
    empty directory: what that run did and said."""
    (openai,) = agent_cache.glob("agent-handlers-openai-*")
    (claude,) = agent_cache.glob("agent-handlers-claude-*")
    assert len(agent_dirs(agent_cache)) == 2
    assert cold_install["stdout"] == f"openai {openai}\nclaude {claude}\n"
    stderr = cold_install["stderr"]
    assert stderr.count("npm http fetch") > 20, stderr[-2000:]
    assert stderr.count("agent installed") == 2
    assert (openai / "handlers/openai/node_modules/@openai/agents/package.json").is_file()
    assert (claude / "handlers/claude/node_modules/@anthropic-ai/claude-agent-sdk/package.json").is_file()
    # The SDK the handlers import is the embedded one, linked as packaged.
    for copy, agent in [(openai, "openai"), (claude, "claude")]:
        linked = copy / "handlers" / agent / "node_modules/runtimeuse-handler"
        assert linked.resolve() == (copy / "handlers/sdk/node").resolve()


def test_warm_cache_is_used_from_the_default_location(agent_cache, start_runtime, tmp_path):
    """No --cache-dir: $XDG_CACHE_HOME/runtimeuse (holding a copy of the
    shared cache's openai agent)."""
    (installed,) = agent_cache.glob("agent-handlers-openai-*")
    xdg = tmp_path / "xdg"
    shutil.copytree(installed, xdg / "runtimeuse" / installed.name, symlinks=True)
    calls = recording_npm(tmp_path / "bin")
    env = {"XDG_CACHE_HOME": str(xdg), "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    mock = mock_for("openai")
    try:
        with refusing_proxy() as proxy:
            runtime = start_runtime("--agent", "openai", env={**quiet_env(tmp_path, proxy), **env})
            assert ask(runtime, "openai", mock) == "installed and answering"
    finally:
        mock.close()
    assert not calls.exists(), calls.read_text()


def tool_dir(tmp_path, name, tools: dict) -> str:
    """A directory holding exactly `tools` (name -> script or real path)."""
    directory = tmp_path / name
    directory.mkdir()
    for tool, target in tools.items():
        path = directory / tool
        if isinstance(target, pathlib.Path):
            path.symlink_to(target)
        else:
            path.write_text(target)
            path.chmod(0o755)
    return str(directory)


def start_fails(*args, env=None) -> str:
    """Starts the runtime expecting a start-up error; returns its stderr."""
    proc = subprocess.run(
        [BIN, "--host", "127.0.0.1", "--port", str(free_port()), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode != 0, proc.stderr
    assert "listening" not in proc.stderr, proc.stderr
    return proc.stderr


FAILING_NPM = """#!/bin/sh
echo "npm http fetch GET 200 somewhere 12ms"
echo "npm error code ECONNRESET" >&2
echo "npm error network aborted while fetching @openai/agents" >&2
exit 1
"""


@pytest.mark.parametrize(
    "case, tools, expected",
    [
        ("no node", {}, ["needs Node.js >= 20", "`node` is not on PATH"]),
        (
            "old node",
            {"node": "#!/bin/sh\necho v16.20.2\n"},
            ["needs Node.js >= 20", "version v16.20.2"],
        ),
        ("no npm", {"node": pathlib.Path(NODE)}, ["`npm` is not on PATH", "runtimeuse install-agent openai"]),
        (
            "npm fails",
            {"node": pathlib.Path(NODE), "npm": FAILING_NPM},
            ["`npm ci` exit status: 1", "npm error network aborted while fetching @openai/agents"],
        ),
    ],
)
def test_node_and_npm_problems_stop_the_start(case, tools, expected, tmp_path):
    cache = tmp_path / "cache"
    env = {"PATH": tool_dir(tmp_path, "bin", tools)}
    stderr = start_fails("--agent", "openai", "--cache-dir", str(cache), env=env)
    for text in expected:
        assert text in stderr, stderr
    if case != "npm fails":
        assert "--agent echo and --handler PATH need no Node" in stderr, stderr
    # Nothing half-installed is left to be mistaken for an installed agent.
    assert agent_dirs(cache) == []


def test_install_agent_reports_the_same_problems(tmp_path):
    env = {**os.environ, "PATH": tool_dir(tmp_path, "bin", {"node": pathlib.Path(NODE)})}
    proc = subprocess.run(
        [BIN, "install-agent", "all", "--cache-dir", str(tmp_path / "c")],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "`npm` is not on PATH" in proc.stderr


def test_an_unwritable_cache_dir_stops_the_start(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    stderr = start_fails("--agent", "claude", "--cache-dir", str(blocker / "cache"))
    assert f"cannot write to the cache directory {blocker / 'cache'}" in stderr, stderr
    assert "--cache-dir" in stderr
