#!/usr/bin/env python3
"""Figures for the bundled agents (openai, claude), against the mock model
APIs of the test suite on 127.0.0.1. By hand, not in CI; prints one JSON
line per agent:

- `cold_install_s`: `runtimeuse install-agent NAME` into an empty cache dir
  with an empty npm cache (everything downloaded from the registry);
  `cold_install_npm_cached_s`: the same with npm's cache warm;
- `warm_start_ms`: exec to port open with the agent installed (probe.py
  `startup`, which also gives the runtime's idle RSS);
- `first_query_ms`: the first one-shot `client.query` of a fresh runtime,
  once its spare handler is up (Node and the SDK imported; Claude Code still
  starts per query); `first_query_no_spare_ms`: the same with
  `--spare-handlers 0` (the handler starts for the query);
  `oneshot_median_ms` / `oneshot_p95_ms`: later one-shot queries, 3 s apart
  so a replacement spare is ready (probe.py `oneshot`, GAP_MS=3000);
- `warm_handler_query_ms`: median of 5 queries in one session, whose
  handler process is already running;
- `handler_rss_kb`: the Node handler process after a query, `spare_rss_kb`
  an idle spare; for claude also `claude_code_rss_kb`, the Claude Code
  process it runs per query, sampled while a query is in flight.

    .venv/bin/python bench/agents.py [PROBE_PY]   (default ../shared/bench/probe.py)
"""

import asyncio
import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

from runtimeuse_client import CancelledException, RuntimeUseClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The mock model APIs and helpers of the e2e suite.
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from agent_rig import api_env, handler_processes, mock_for, query_options  # noqa: E402
from helpers import free_port  # noqa: E402

BIN = str(ROOT / "target" / "release" / "runtimeuse")
PROBE = sys.argv[1] if len(sys.argv) > 1 else str(ROOT.parent / "shared" / "bench" / "probe.py")


def timed_install(agent, cache, env=None):
    started = time.monotonic()
    done = subprocess.run(
        [BIN, "install-agent", agent, "--cache-dir", str(cache)],
        capture_output=True, text=True, check=False, env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return round(time.monotonic() - started, 1)


def probe(name, agent, cache, env, **extra):
    cmd = [sys.executable, PROBE, name, "--", BIN, "--agent", agent, "--cache-dir", str(cache),
           "--host", "127.0.0.1", "--port", "{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **env, **extra})
    return json.loads(out.stdout.strip().splitlines()[-1])


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def children(pid):
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 3) for line in out.strip().splitlines()]
    return [(int(p), int(r), a) for p, pp, r, a in rows if int(pp) == pid]


def rss_kb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def first_query(agent, cache, env, spares):
    """A fresh runtime's first one-shot query, once its spares are up."""
    port = free_port()
    proc = subprocess.Popen([BIN, "--agent", agent, "--cache-dir", str(cache), "--host", "127.0.0.1",
                             "--port", str(port), "--spare-handlers", str(spares)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env},
                            start_new_session=True)
    try:
        wait_port(port)
        while len(handler_processes(proc.pid)) < spares:
            time.sleep(0.05)
        time.sleep(3)  # the spare imports its SDK after it is spawned (about 1 s here)
        started = time.perf_counter()
        asyncio.run(RuntimeUseClient(ws_url=f"ws://127.0.0.1:{port}").query("MOCK:TEXT hi", query_options(agent)))
        return round((time.perf_counter() - started) * 1000, 1)
    finally:
        proc.terminate()
        proc.wait(10)


def wait_port(port):
    deadline = time.monotonic() + 30
    while not port_open(port):
        assert time.monotonic() < deadline, "the runtime did not open its port"
        time.sleep(0.01)


def session_figures(agent, cache, mock, env):
    port = free_port()
    proc = subprocess.Popen([BIN, "--agent", agent, "--cache-dir", str(cache), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env},
                            start_new_session=True)
    try:
        url = f"ws://127.0.0.1:{port}"
        wait_port(port)

        async def measure():
            # The handler stays warm for its session; a session keeps it to measure.
            async with RuntimeUseClient(ws_url=url).session() as session:
                await session.query("MOCK:TEXT hi", query_options(agent))
                warm = []
                for _ in range(5):
                    started = time.perf_counter()
                    await session.query("MOCK:TEXT hi", query_options(agent))
                    warm.append((time.perf_counter() - started) * 1000)
                # The session's handler is the spare started first; a newer
                # one replaced it as the spare.
                serving, *spare = handler_processes(proc.pid)
                figures = {
                    "warm_handler_query_ms": round(sorted(warm)[2], 1),
                    "handler_rss_kb": rss_kb(serving),
                    "spare_rss_kb": rss_kb(spare[-1]) if spare else None,
                }
                if agent == "claude":
                    task = asyncio.create_task(session.query("MOCK:HANG", query_options(agent)))
                    await asyncio.to_thread(mock.wait_hanging, 1)
                    (code,) = [c for c in children(serving) if "claude" in c[2]]
                    figures["claude_code_rss_kb"] = code[1]
                    session.abort()
                    with contextlib.suppress(CancelledException):
                        await task
                return figures

        return asyncio.run(measure())
    finally:
        proc.terminate()
        proc.wait(10)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for agent in ["openai", "claude"]:
            mock = mock_for(agent)
            env = {**api_env(agent, mock), "CLAUDE_CONFIG_DIR": str(tmp / "claude-config")}
            try:
                figures = {"agent": agent}
                figures["cold_install_s"] = timed_install(agent, tmp / f"cold-{agent}", {"npm_config_cache": str(tmp / f"npm-{agent}")})
                cache = tmp / f"cache-{agent}"
                figures["cold_install_npm_cached_s"] = timed_install(agent, cache, {"npm_config_cache": str(tmp / f"npm-{agent}")})
                start = probe("startup", agent, cache, env)
                figures["warm_start_ms"] = start["startup_ms"]
                figures["runtime_idle_rss_kb"] = start["idle_rss_kb"]
                figures["first_query_ms"] = first_query(agent, cache, env, spares=1)
                figures["first_query_no_spare_ms"] = first_query(agent, cache, env, spares=0)
                figures.update(session_figures(agent, cache, mock, env))
                oneshot = probe("oneshot", agent, cache, env, N="10", GAP_MS="3000")
                figures["oneshot_median_ms"] = oneshot["oneshot_median_ms"]
                figures["oneshot_p95_ms"] = oneshot["oneshot_p95_ms"]
                print(json.dumps(figures), flush=True)
            finally:
                mock.close()


if __name__ == "__main__":
    main()
