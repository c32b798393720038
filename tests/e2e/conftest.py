"""End-to-end harness: the built `runtimeuse` binary, driven by the real
`runtimeuse-client` over a real WebSocket on 127.0.0.1.

Every test gets fresh runtimes from `start_runtime`; on teardown each is
stopped with SIGTERM and must exit 0 with no process of its group left.
"""
import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("RUNTIMEUSE_BIN", str(ROOT / "target" / "release" / "runtimeuse"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro):
    """Runs a coroutine to completion (tests stay plain functions)."""
    return asyncio.run(coro)


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
    members = []
    for line in out.splitlines():
        pid, group, stat = line.split(None, 2)
        if int(group) == pgid and not stat.startswith("Z"):
            members.append(int(pid))
    return members


def pgrep(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def wait_until(predicate, timeout=10.0, interval=0.02):
    """Polls a condition that has no event to wait on (a process exiting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Runtime:
    """One running `runtimeuse` process."""

    def __init__(self, args, env=None, log_path=None, scheme="ws"):
        self.port = free_port()
        self.scheme = scheme
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env.setdefault("RUNTIMEUSE_LOG", "info")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [BIN, "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL,
            stderr=open(log_path, "wb"),
            env=full_env,
            start_new_session=True,
        )
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _wait_ready(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"runtime exited early ({self.proc.returncode}):\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("runtime did not open its port")

    def health(self) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
            return r.read()

    def log(self) -> str:
        return pathlib.Path(self.log_path).read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError("runtime did not exit within 20 s of SIGTERM")
        return self.proc.returncode


@pytest.fixture
def start_runtime(tmp_path):
    started = []

    def start(*args, env=None, scheme="ws"):
        rt = Runtime(list(args), env=env, log_path=tmp_path / f"runtime-{len(started)}.log", scheme=scheme)
        started.append(rt)
        return rt

    yield start
    for rt in started:
        code = rt.stop()
        assert code == 0, f"runtime exited with {code}:\n{rt.log()[-3000:]}"
        leftovers = process_group_members(rt.proc.pid)
        assert not leftovers, f"processes left in the runtime's group: {leftovers}"


@pytest.fixture
def echo_runtime(start_runtime):
    return start_runtime("--agent", "echo")
