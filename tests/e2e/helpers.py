"""Helpers for the end-to-end tests: starting the built `runtimeuse`
binary, building protocol messages the way the real client does, a raw
WebSocket client, and process checks. The pytest fixtures built on them are
in conftest.py."""
import asyncio
import contextlib
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest
import websockets
from runtimeuse_client import (
    CancelledException,
    CommandInterface,
    ExecuteCommandsOptions,
    QueryOptions,
    RuntimeUseClient,
)

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

    def __init__(self, args, env=None, log_path=None, scheme="ws", cwd=None, preexec_fn=None, command=None, ready_timeout=20):
        self.port = free_port()
        self.scheme = scheme
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env.setdefault("RUNTIMEUSE_LOG", "info")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            # `command`: how the runtime is launched (default: the binary
            # itself; `npx runtimeuse` or an installed wheel's script).
            [*(command or [BIN]), "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL,
            stderr=open(log_path, "wb"),
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
        self._wait_ready(ready_timeout)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
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
                raise AssertionError("runtime did not exit within 20 s of SIGTERM") from None
        return self.proc.returncode


#: What the real client's `websockets.connect` accepts: frames over 1 MiB
#: close the connection (code 1009). Raw test clients mirror it.
CLIENT_MAX_FRAME = 2**20

TERMINALS = {"result_message", "command_execution_result_message", "error_message"}

OMITTED_RE = re.compile(r"\[runtimeuse: (\d+) bytes of output omitted\]")


def qopts(**kw) -> QueryOptions:
    """QueryOptions with the two required fields filled in."""
    kw.setdefault("system_prompt", "You are a test.")
    kw.setdefault("model", "echo-model")
    return QueryOptions(**kw)


def unique(prefix: str = "m") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def sleeper(directory: pathlib.Path, marker: str) -> str:
    """A `sleep` whose command line carries `marker`, so `pgrep -f marker`
    sees every process of a tree (shells and sleeps alike)."""
    path = pathlib.Path(directory) / f"sleep-{marker}"
    path.symlink_to(shutil.which("sleep"))
    return str(path)


def tree_command(directory, marker: str) -> str:
    """A command whose tree has a background grandchild that would print
    `marker` if it outlived a cancel; it prints `started` once the tree is up."""
    sl = sleeper(directory, marker)
    return f"sh -c '{sl} 60; echo {marker}' & echo started; {sl} 60"


def invocation(prompt: str, **fields) -> dict:
    """An invocation_message shaped like the client's (unset fields null)."""
    msg = {
        "message_type": "invocation_message",
        "source_id": None,
        "system_prompt": "You are a test.",
        "user_prompt": prompt,
        "agent_env": None,
        "output_format_json_schema_str": None,
        "secrets_to_redact": [],
        "artifacts_dirs": None,
        "artifacts_ignore_content": None,
        "pre_agent_invocation_commands": None,
        "post_agent_invocation_commands": None,
        "model": "echo-model",
        "pre_agent_downloadables": None,
    }
    msg.update(fields)
    return msg


def command_execution(commands, **fields) -> dict:
    """A command_execution_message shaped like the client's."""
    msg = {
        "message_type": "command_execution_message",
        "source_id": None,
        "secrets_to_redact": [],
        "commands": [c if isinstance(c, dict) else {"command": c, "cwd": None, "env": None} for c in commands],
        "artifacts_dirs": None,
        "artifacts_ignore_content": None,
        "pre_execution_downloadables": None,
    }
    msg.update(fields)
    return msg


class RawClient:
    """A bare WebSocket client that records every frame it receives."""

    def __init__(self, ws):
        self.ws = ws
        self.frames: list[str] = []

    async def send(self, message):
        if isinstance(message, (dict, list)):
            message = json.dumps(message)
        await self.ws.send(message)

    async def recv(self, timeout: float = 20.0) -> dict:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), f"runtime sent a binary frame: {raw[:100]!r}"
        assert len(raw.encode()) <= CLIENT_MAX_FRAME
        self.frames.append(raw)
        return json.loads(raw)

    async def until_terminal(self, timeout: float = 30.0) -> list[dict]:
        """Every message up to and including the next terminal one."""
        messages = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no terminal message within {timeout}s; got {messages[-5:]}")
            msg = await self.recv(remaining)
            messages.append(msg)
            if msg.get("message_type") in TERMINALS:
                return messages

    async def request(self, message, timeout: float = 30.0) -> list[dict]:
        await self.send(message)
        return await self.until_terminal(timeout)


@contextlib.asynccontextmanager
async def raw_connect(url: str, **kw):
    kw.setdefault("max_size", CLIENT_MAX_FRAME)
    async with websockets.connect(url, **kw) as ws:
        yield RawClient(ws)


def execute(url, commands, **kw):
    """One-shot `execute_commands` with the real client; plain strings are
    turned into commands."""
    cmds = [c if isinstance(c, CommandInterface) else CommandInterface(command=c) for c in commands]
    return run(RuntimeUseClient(ws_url=url).execute_commands(cmds, ExecuteCommandsOptions(**kw)))


def of_type(messages, message_type: str) -> list[dict]:
    return [m for m in messages if m.get("message_type") == message_type]


def terminal_of(messages) -> dict:
    terminals = [m for m in messages if m.get("message_type") in TERMINALS]
    assert len(terminals) == 1 and terminals[0] is messages[-1], messages
    return terminals[0]


class HeartbeatSeen(logging.Handler):
    """Sets an asyncio.Event when the real client logs a heartbeat: passed as
    QueryOptions.logger, it tells a test that the runtime is mid-request."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.event = asyncio.Event()

    def emit(self, record):
        if "heartbeat" in record.getMessage().lower():
            self.event.set()

    def logger(self) -> logging.Logger:
        log = logging.getLogger(f"heartbeat-seen-{id(self)}")
        log.setLevel(logging.INFO)
        log.propagate = False
        log.addHandler(self)
        return log


async def abort_mid_request(session, prompt: str, **options) -> float:
    """Runs `prompt` on a client session, aborts it once the runtime's
    heartbeat shows it is mid-request (start the runtime with a short
    --heartbeat-interval), and returns how long the abort took to end it
    with CancelledException."""
    beat = HeartbeatSeen()
    task = asyncio.create_task(session.query(prompt, qopts(logger=beat.logger(), **options)))
    await asyncio.wait_for(beat.event.wait(), 20)
    started = time.monotonic()
    session.abort()
    with pytest.raises(CancelledException):
        await asyncio.wait_for(task, 20)
    return time.monotonic() - started


#: A handler speaking the NDJSON handler protocol, driven by the prompt.
PY_HANDLER = r'''
import json, os, subprocess, sys

def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("type") != "invoke":
        continue
    p = msg["user_prompt"]
    send({"type": "log", "level": "info", "message": "handling " + p})
    if p == "INFO":
        keys = ("id", "system_prompt", "model", "env", "output_format", "secrets")
        info = {k: msg.get(k) for k in keys}
        info["pid"] = os.getpid()
        send({"type": "result", "structured_output": info, "metadata": {"handler": "py"}})
    elif p == "PID":
        send({"type": "result", "text": str(os.getpid())})
    elif p.startswith("SAY:"):
        send({"type": "assistant", "text_blocks": [p[4:], "second block"]})
        send({"type": "result", "text": "said", "metadata": {"handler": "py"}})
    elif p.startswith("CRASH"):
        send({"type": "assistant", "text_blocks": ["about to crash"]})
        sys.stderr.write("dying now" + p[5:] + "\n")
        sys.stderr.flush()
        os._exit(3)
    elif p.startswith("ORPHAN:"):
        subprocess.Popen(p[7:].split())
        os._exit(4)
    elif p.startswith("STDERR:"):
        sys.stderr.write("stderr says " + p[7:] + "\n")
        sys.stderr.flush()
        send({"type": "result", "text": "logged"})
    elif p == "NOISY":
        # Unmarked and level-marked stderr lines, `log` messages of two
        # levels, and a last marked line to wait for (stderr is read in order).
        sys.stderr.write("plain noise\nWARNING:root:marked warning\n[error] marked error\nINFO: marked info\n")
        send({"type": "log", "level": "debug", "message": "log at debug"})
        send({"type": "log", "level": "warn", "message": "log at warn"})
        sys.stderr.write("ERROR: last line\n")
        sys.stderr.flush()
        send({"type": "result", "text": "noisy"})
    elif p == "GARBAGE":
        sys.stdout.write("this is not json at all\n")
        sys.stdout.flush()
    elif p == "ERROR_EXIT":
        send({"type": "error", "error": "handler says no"})
        sys.exit(1)
    elif p.startswith("SPAWN:"):
        subprocess.run(p[6:].split())
        send({"type": "result", "text": "spawned"})
    else:
        send({"type": "result", "text": "py:" + p})
'''
