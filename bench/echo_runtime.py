"""What the hand-run hostile and large-command benches share: an
`--agent echo` runtime on a free loopback port, and its memory figures
from /proc. (bench/bench.py and bench/soak.py keep their own harness.)"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_kib(pid: int, field: str) -> int:
    """A /proc/<pid>/status memory field (`VmRSS`, `VmHWM`) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class EchoRuntime:
    """`binary --agent echo` on 127.0.0.1, started and ready (its port
    accepts), logging at WARN to nowhere; `env` is laid over ours."""

    def __init__(self, binary: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "--agent", "echo", "--host", "127.0.0.1", "--port", str(self.port)],
            env=dict(os.environ, RUNTIMEUSE_LOG="warn", **(env or {})),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{binary} did not start") from None
                time.sleep(0.02)

    def kib(self, field: str) -> int:
        return proc_status_kib(self.proc.pid, field)

    def active_sessions(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
            return json.loads(r.read())["active_sessions"]

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
