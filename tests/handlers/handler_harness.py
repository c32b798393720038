"""Runs a bundled handler script as a child process and speaks handler
protocol v1 to it over its stdin/stdout; process-liveness helpers."""

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"result", "error"}


class HandlerProcess:
    def __init__(self, script, env=None):
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else dict(os.environ),
        )
        self.messages = queue.Queue()
        self.stderr_lines = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self):
        for raw in self.proc.stdout:
            # Every stdout line must be one JSON object.
            self.messages.put(json.loads(raw.decode("utf-8")))
        self.messages.put(None)

    def _read_stderr(self):
        for raw in self.proc.stderr:
            self.stderr_lines.append(raw.decode("utf-8", "replace"))

    @property
    def stderr(self):
        return "".join(self.stderr_lines)

    def send(self, message):
        self.proc.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
        self.proc.stdin.flush()

    def invoke(self, inv_id="inv-1", **fields):
        message = {
            "type": "invoke",
            "protocol": 1,
            "id": inv_id,
            "source_id": None,
            "system_prompt": "You are terse.",
            "user_prompt": "Say hi.",
            "model": "test-model",
            "output_format": None,
            "env": {},
            "secrets": [],
        }
        message.update(fields)
        self.send(message)

    def recv(self, timeout=10.0):
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no message within %s s; stderr:\n%s" % (timeout, self.stderr)) from None
        if message is None:
            raise AssertionError("handler closed stdout; stderr:\n%s" % self.stderr)
        return message

    def until_terminal(self, timeout=10.0):
        """All messages up to and including the next terminal one."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.01, deadline - time.monotonic()))
            seen.append(message)
            if message["type"] in TERMINAL:
                return seen

    def assert_silent(self, seconds):
        """Nothing more arrives on stdout for `seconds`."""
        try:
            message = self.messages.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError("unexpected message: %r" % (message,))

    def close(self, timeout=5.0):
        """Closes stdin (EOF) and returns the exit code."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def pid_gone(pid):
    """True when pid no longer exists or is only a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(pid_gone(p) for p in pids):
            return True
        time.sleep(0.02)
    return all(pid_gone(p) for p in pids)
