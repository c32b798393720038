"""Hostile and vanished peers at the connection level (issue 11): a client
that floods pings without reading, one that never reads its output, one
that disappears without closing TCP. Each must be dropped (request
cancelled, processes killed, connection slot freed) instead of buffered
for or kept forever, while other clients carry on; a client that answers
pings, the real runtimeuse-client included, is never dropped.

The misbehaving peers speak WebSocket by hand over a raw socket (so they
can refuse to read, refuse to answer pings, shrink their receive buffer).
Timeouts are set through the environment variables, so the same tests run
against a binary without the flags and fail there for the right reason.
"""
import asyncio
import base64
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading

from runtimeuse_client import CommandInterface, ExecuteCommandsOptions, RuntimeUseClient

from helpers import command_execution, execute, pgrep, run, sleeper, unique, wait_until

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class RawPeer:
    """A WebSocket client over a bare socket, which does only what the test
    tells it: it reads nothing and answers no ping unless asked to."""

    def __init__(self, port: int, rcvbuf: int | None = None, timeout: float = 30.0):
        self.sock = socket.socket()
        if rcvbuf is not None:
            # Before connect, so the advertised window is small from the start.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte by byte: no frame byte is consumed
            byte = self.sock.recv(1)
            assert byte, f"connection closed during the upgrade: {head!r}"
            head += byte
        assert head.startswith(b"HTTP/1.1 101"), head

    @staticmethod
    def frame(opcode: int, payload: bytes) -> bytes:
        """One masked, final frame (clients must mask)."""
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + masked

    def send(self, opcode: int, payload: bytes):
        self.sock.sendall(self.frame(opcode, payload))

    def send_json(self, message: dict):
        self.send(OP_TEXT, json.dumps(message).encode())

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the runtime closed the connection")
            data += chunk
        return data

    def recv(self) -> tuple[int, bytes]:
        """The next frame (the runtime never fragments nor masks)."""
        b0, b1 = self._exact(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._exact(8))
        return b0 & 0x0F, self._exact(n)

    def close(self):
        self.sock.close()


def fifo_signal(tmp_path):
    """A FIFO the test reads and a command writes to: the event that says
    the command is running (no polling, no sleep)."""
    path = tmp_path / f"started-{unique()}"
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def wait(timeout=30.0):
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
            assert ready, "the command did not start"
            assert os.read(fd, 100)
        finally:
            os.close(fd)

    return path, wait


def active_sessions(rt) -> int:
    return json.loads(rt.health())["active_sessions"]


class PingFlood(threading.Thread):
    """Floods pings as fast as the socket takes them, never reading, until
    the runtime drops the connection or `budget` bytes went out."""

    def __init__(self, peer: RawPeer, budget: int):
        super().__init__(daemon=True)
        self.peer, self.budget = peer, budget
        self.sent = 0
        self.flooding = threading.Event()
        self.dropped: Exception | None = None

    def run(self):
        batch = b"".join(RawPeer.frame(OP_PING, b"p" * 125) for _ in range(1000))
        try:
            while self.sent < self.budget:
                self.peer.sock.sendall(batch)
                self.sent += len(batch)
                if self.sent >= 1 << 20:
                    self.flooding.set()
        except OSError as e:  # reset or broken pipe: the runtime let go
            self.dropped = e
        finally:
            self.flooding.set()


def test_a_ping_flood_from_a_peer_that_never_reads_is_dropped_while_others_carry_on(start_runtime):
    # A short deadline, so the flood (~100 MB/s here) stays far below its
    # budget before the runtime gives up on the peer.
    rt = start_runtime("--agent", "echo", env={"RUNTIMEUSE_PING_TIMEOUT": "250ms"})
    # A tiny receive window: the pongs owed to this peer back up at once.
    peer = RawPeer(rt.port, rcvbuf=4096)
    # 256 MB of pings: the baseline buffers a pong for each, and stays up.
    flood = PingFlood(peer, budget=256 << 20)

    async def other_client():
        # Connected through the whole flood, served before and after the drop.
        async with RuntimeUseClient(ws_url=rt.url).session() as session:
            flood.start()
            assert await asyncio.to_thread(flood.flooding.wait, 30)
            during = await session.execute_commands(
                [CommandInterface(command="echo during")], ExecuteCommandsOptions()
            )
            await asyncio.to_thread(flood.join, 120)
            after = await session.execute_commands(
                [CommandInterface(command="echo after")], ExecuteCommandsOptions()
            )
        return during, after

    during, after = run(other_client())
    assert during.results[0].stdout.strip() == "during"
    assert after.results[0].stdout.strip() == "after"
    assert not flood.is_alive(), "the flood neither finished nor was cut off"
    assert flood.dropped is not None, (
        f"the runtime took {flood.sent >> 20} MiB of pings from a peer that reads nothing "
        "without dropping it"
    )
    assert "has read nothing for --ping-timeout" in rt.log()
    assert wait_until(lambda: active_sessions(rt) == 0), "the flooder's slot was not freed"
    peer.close()


def test_a_peer_that_never_reads_its_output_is_dropped_and_its_command_killed(start_runtime, tmp_path):
    # Pings off: only the write stall can notice this peer.
    rt = start_runtime(
        "--agent", "echo",
        env={"RUNTIMEUSE_PING_INTERVAL": "0", "RUNTIMEUSE_PING_TIMEOUT": "1s"},
    )
    marker = unique("unread")
    peer = RawPeer(rt.port, rcvbuf=4096)
    # Endless output: the pipe, the outbox and the socket fill, then stall.
    peer.send_json(command_execution([f"yes {marker}"]))
    assert wait_until(lambda: pgrep(marker), timeout=30), "the command did not start"
    # A second request must be refused ("already running"): with the outbox
    # full that answer cannot be queued, so the read loop waits on it. The
    # dead peer must be noticed all the same.
    peer.send_json(command_execution(["echo second"]))
    assert wait_until(lambda: not pgrep(marker), timeout=60), (
        "the command of a client that reads nothing still runs"
    )
    assert "has read nothing for --ping-timeout" in rt.log()
    assert "connection closed mid-request; cancelling it" in rt.log()
    assert wait_until(lambda: active_sessions(rt) == 0)
    peer.close()


def test_a_peer_that_vanished_is_dropped_its_command_killed_and_its_slot_freed(start_runtime, tmp_path):
    # One slot: the next client gets in only if the dead peer's is freed.
    rt = start_runtime(
        "--agent", "echo", "--max-connections", "1",
        env={"RUNTIMEUSE_PING_INTERVAL": "200ms", "RUNTIMEUSE_PING_TIMEOUT": "1s"},
    )
    marker = unique("vanished")
    started, wait_started = fifo_signal(tmp_path)
    sleep = sleeper(tmp_path, marker)
    peer = RawPeer(rt.port)
    peer.send_json(command_execution([f"echo up > {started}; {sleep} 600"]))
    wait_started()
    # From here the peer is silent: it neither reads nor answers pings,
    # and its TCP connection stays open (no FIN, no RST).
    assert wait_until(lambda: not pgrep(marker), timeout=60), (
        "the command of a vanished client still runs"
    )
    assert "answered no ping within --ping-timeout" in rt.log()
    assert wait_until(lambda: active_sessions(rt) == 0), "the dead peer still holds its slot"
    result = execute(rt.url, ["echo next-client"])
    assert result.results[0].stdout.strip() == "next-client"
    peer.close()


CLIENT_SCRIPT = """
import asyncio, os, sys
from runtimeuse_client import CommandInterface, ExecuteCommandsOptions, RuntimeUseClient
client = RuntimeUseClient(ws_url=sys.argv[1])
command = CommandInterface(command=os.environ["COMMAND"])
asyncio.run(client.execute_commands([command], ExecuteCommandsOptions()))
"""


def test_a_stopped_real_client_is_dropped_and_its_command_killed(start_runtime, tmp_path):
    """The real client, frozen mid-request (SIGSTOP): its kernel keeps the
    TCP connection open and acknowledges, but nothing answers pings."""
    rt = start_runtime(
        "--agent", "echo",
        env={"RUNTIMEUSE_PING_INTERVAL": "200ms", "RUNTIMEUSE_PING_TIMEOUT": "1s"},
    )
    marker = unique("stopped")
    started, wait_started = fifo_signal(tmp_path)
    sleep = sleeper(tmp_path, marker)
    # The command goes in the environment: in argv, `pgrep -f` would find
    # the client itself.
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, rt.url],
        env=dict(os.environ, COMMAND=f"echo up > {started}; {sleep} 600"),
    )
    try:
        wait_started()
        client.send_signal(signal.SIGSTOP)
        assert wait_until(lambda: not pgrep(marker), timeout=60), (
            "the command of a frozen client still runs"
        )
        assert "answered no ping within --ping-timeout" in rt.log()
        assert wait_until(lambda: active_sessions(rt) == 0), "the frozen client still holds its slot"
    finally:
        client.kill()
        client.wait()


def test_an_idle_peer_that_answers_pings_is_kept(start_runtime):
    rt = start_runtime(
        "--agent", "echo",
        env={"RUNTIMEUSE_PING_INTERVAL": "100ms", "RUNTIMEUSE_PING_TIMEOUT": "2s"},
    )
    peer = RawPeer(rt.port)
    # Idle, answering every ping: 30 pings span well over the 2 s deadline.
    for _ in range(30):
        opcode, payload = peer.recv()
        assert opcode == OP_PING, (opcode, payload)
        peer.send(OP_PONG, payload)
    peer.send_json(command_execution(["echo alive"]))
    while True:
        opcode, payload = peer.recv()
        if opcode == OP_PING:
            peer.send(OP_PONG, payload)
            continue
        assert opcode == OP_TEXT, (opcode, payload)
        message = json.loads(payload)
        if message["message_type"] == "command_execution_result_message":
            break
    assert message["results"][0]["stdout"].strip() == "alive"
    assert "dropping the connection" not in rt.log()
    peer.close()


def test_the_real_client_answers_server_pings_through_a_long_request(start_runtime):
    rt = start_runtime(
        "--agent", "echo",
        env={"RUNTIMEUSE_PING_INTERVAL": "100ms", "RUNTIMEUSE_PING_TIMEOUT": "2s"},
    )

    async def scenario():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as session:
            # Longer than the deadline, silent: only pongs keep it alive.
            first = await session.execute_commands(
                [CommandInterface(command="sleep 4; echo done")], ExecuteCommandsOptions()
            )
            second = await session.execute_commands(
                [CommandInterface(command="echo again")], ExecuteCommandsOptions()
            )
        return first, second

    first, second = run(scenario())
    assert first.results[0].stdout.strip() == "done"
    assert second.results[0].stdout.strip() == "again"
    assert "dropping the connection" not in rt.log()
