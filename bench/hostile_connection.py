#!/usr/bin/env python3
"""Hostile connections: the runtime's memory while a client misbehaves.

Scenarios (each on a fresh runtime, `--agent echo`):
  flood   a raw WebSocket client with a 4 KiB receive buffer floods ping
          frames (125-byte payloads) as fast as it can and never reads: the
          runtime owes it one pong per ping.
  unread  the same client runs `yes` (endless output) and never reads.
  vanish  the client starts `sleep`, then neither reads nor answers pings,
          its TCP connection left open: how long until the runtime drops it.

Samples the runtime's RSS (VmRSS) every 0.5 s, and reports when the runtime
dropped the client (for `flood`/`unread`: the client's send or the
connection failed; for `vanish`: `/health` shows no active session). A
safety cap stops a scenario once the runtime passes --max-rss-mb, so an
unfixed binary does not take the machine down.

Run by hand (never in CI), e.g. against the baseline and this tree:
    python bench/hostile_connection.py --bin /path/to/older/runtimeuse
    python bench/hostile_connection.py --bin target/release/runtimeuse
    python bench/hostile_connection.py --scenario vanish --env RUNTIMEUSE_PING_INTERVAL=5s

Extra runtime settings go in --env NAME=VALUE (repeatable). Prints a table
per scenario and one JSON line of figures at the end.
"""
import argparse
import base64
import json
import os
import pathlib
import socket
import struct
import threading
import time

from echo_runtime import EchoRuntime

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_BIN = os.environ.get("RUNTIMEUSE_BIN", str(ROOT / "target" / "release" / "runtimeuse"))


def frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def connect(port, rcvbuf=None):
    """A raw WebSocket client socket, upgraded, that reads nothing more."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def command(commands):
    return json.dumps({
        "message_type": "command_execution_message",
        "secrets_to_redact": [],
        "commands": [{"command": c} for c in commands],
    }).encode()


def flood(sock, stop, state):
    batch = b"".join(frame(0x9, b"p" * 125) for _ in range(1000))
    try:
        while not stop.is_set():
            sock.sendall(batch)
            state["sent"] += len(batch)
    except OSError as e:
        state["dropped"] = type(e).__name__


def watch_closed(sock, stop, state):
    """For `unread` (the client must not read): a tiny unsolicited pong every
    0.2 s, a send that fails once the runtime has dropped the connection."""
    try:
        while not stop.wait(0.2):
            sock.send(frame(0xA, b""))  # an unsolicited pong: allowed, ignored
    except OSError as e:
        state["dropped"] = type(e).__name__


def run_scenario(name, args, env):
    rt = EchoRuntime(args.bin, env)
    state = {"sent": 0, "dropped": None}
    stop = threading.Event()
    samples = []
    start = time.monotonic()
    try:
        if name == "vanish":
            sock = connect(rt.port)
            sock.sendall(frame(0x1, command(["sleep 600"])))
        else:
            sock = connect(rt.port, rcvbuf=4096)
            if name == "flood":
                worker = threading.Thread(target=flood, args=(sock, stop, state), daemon=True)
            else:
                sock.sendall(frame(0x1, command(["yes bench-unread-output"])))
                worker = threading.Thread(target=watch_closed, args=(sock, stop, state), daemon=True)
            worker.start()
        dropped_at = None
        while time.monotonic() - start < args.seconds:
            time.sleep(0.5)
            t = time.monotonic() - start
            rss = rt.kib("VmRSS") / 1024
            samples.append((round(t, 1), round(rss, 1)))
            gone = state["dropped"] if name != "vanish" else (rt.active_sessions() == 0 or None)
            if gone and dropped_at is None:
                dropped_at = round(t, 1)
            if rss > args.max_rss_mb:
                print(f"  safety cap: RSS {rss:.0f} MiB > {args.max_rss_mb} MiB, stopping")
                break
            if dropped_at is not None and t - dropped_at >= 2:
                break
        stop.set()
        sock.close()
    finally:
        rt.stop()
    print(f"\n[{name}] {args.bin} env={env}")
    print("  t(s)   RSS(MiB)")
    for t, rss in samples:
        print(f"  {t:5.1f}  {rss:8.1f}")
    print(f"  sent by client: {state['sent'] / 2**20:.0f} MiB; dropped at: {dropped_at} s ({state['dropped']})")
    return {
        "scenario": name,
        "max_rss_mib": max(r for _, r in samples),
        "first_rss_mib": samples[0][1],
        "last_rss_mib": samples[-1][1],
        "dropped_after_s": dropped_at,
        "client_sent_mib": round(state["sent"] / 2**20),
        "seconds": samples[-1][0],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default=DEFAULT_BIN)
    parser.add_argument("--scenario", choices=["flood", "unread", "vanish", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--max-rss-mb", type=float, default=1024)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    names = ["flood", "unread", "vanish"] if args.scenario == "all" else [args.scenario]
    figures = [run_scenario(name, args, env) for name in names]
    print(json.dumps({"bin": args.bin, "env": env, "figures": figures}))


if __name__ == "__main__":
    main()
