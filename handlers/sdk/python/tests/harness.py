"""Runs a handler script as the runtime does (a child process speaking the
protocol on stdin/stdout) and lets a test talk to it message by message."""

from __future__ import annotations

import json
import os
import pathlib
import queue
import subprocess
import sys
import threading
from typing import Any

SDK_DIR = pathlib.Path(__file__).resolve().parents[1]
DEADLINE = 15.0


class Child:
    def __init__(self, script: pathlib.Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SDK_DIR), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr_lines: list[str] = []
        self._stderr_grew = threading.Condition()
        self.bad_lines: list[bytes] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            try:
                self.messages.put(json.loads(line))
            except ValueError:
                # Anything on stdout must be a protocol line.
                self.bad_lines.append(line)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            with self._stderr_grew:
                self.stderr_lines.append(line.decode("utf-8", "replace"))
                self._stderr_grew.notify_all()

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def wait_for_stderr(self, text: str) -> None:
        """Waits until the handler's log contains `text`."""
        with self._stderr_grew:
            if not self._stderr_grew.wait_for(lambda: text in self.stderr, DEADLINE):
                raise AssertionError(f"{text!r} not in the handler's log within {DEADLINE}s: {self.stderr}")

    def send(self, message: Any) -> None:
        line = message if isinstance(message, str) else json.dumps(message)
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def invoke(self, inv_id: str, prompt: str, **fields: Any) -> None:
        message = {
            "type": "invoke",
            "protocol": 1,
            "id": inv_id,
            "source_id": None,
            "system_prompt": "sys",
            "user_prompt": prompt,
            "model": "m",
            "output_format": None,
            "env": {},
            "secrets": [],
        }
        message.update(fields)
        self.send(message)

    def next(self) -> dict[str, Any]:
        try:
            return self.messages.get(timeout=DEADLINE)
        except queue.Empty:
            raise AssertionError(f"no message within {DEADLINE}s; stderr: {self.stderr}") from None

    def until_terminal(self) -> list[dict[str, Any]]:
        seen = []
        while True:
            message = self.next()
            seen.append(message)
            if message["type"] in ("result", "error"):
                return seen

    def terminal(self) -> dict[str, Any]:
        return self.until_terminal()[-1]

    def close(self) -> int:
        self.proc.stdin.close()
        code = self.proc.wait(DEADLINE)
        self._stderr_thread.join(DEADLINE)
        assert not self.bad_lines, self.bad_lines
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
