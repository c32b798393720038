#!/usr/bin/env python3
"""Soak: many mixed requests over many connections, then check that the
runtime's memory, file descriptors and child processes are flat.

Run by hand (not in CI):
    .venv/bin/python bench/soak.py [--requests 10000] [--connections 50]
Prints one JSON line of figures; exits non-zero if a request got a wrong
answer or resources did not return to their baseline.
"""
import argparse
import asyncio
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time
import uuid

import websockets

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = os.environ.get("RUNTIMEUSE_BIN", str(ROOT / "target" / "release" / "runtimeuse"))
TERMINALS = {"result_message", "command_execution_result_message", "error_message"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resources(pid):
    """RSS (KiB) of the runtime alone, its open fds, and its live descendants."""
    rss = int(pathlib.Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,stat="], capture_output=True, text=True, check=False).stdout
    kids, seen, stack = {}, 0, [pid]
    for line in out.splitlines():
        p, pp, stat = line.split(None, 2)
        if not stat.startswith("Z"):
            kids.setdefault(int(pp), []).append(int(p))
    while stack:
        for child in kids.get(stack.pop(), []):
            seen += 1
            stack.append(child)
    return {"rss_kb": rss, "fds": fds, "children": seen}


def command(cmds, secrets=()):
    return {"message_type": "command_execution_message", "source_id": str(uuid.uuid4()),
            "secrets_to_redact": list(secrets), "commands": [{"command": c} for c in cmds]}


def invocation(prompt):
    return {"message_type": "invocation_message", "source_id": str(uuid.uuid4()), "system_prompt": "s",
            "user_prompt": prompt, "model": "echo", "secrets_to_redact": ["soak-secret-value"]}


# (weight, message factory, check on the terminal, cancel after sending?)
MIX = [
    (30, lambda: command(["echo hi"]), lambda t: t["results"][0]["stdout"] == "hi\n", False),
    (10, lambda: command(["seq 1 20000"]), lambda t: t["results"][0]["stdout"].endswith("20000\n"), False),
    (10, lambda: command(["true", "exit 3", "echo never"]), lambda t: [r["exit_code"] for r in t["results"]] == [0, 3], False),
    (25, lambda: invocation("ECHO:soak"), lambda t: t["data"]["text"] == "soak", False),
    (10, lambda: invocation("STREAM:5"), lambda t: t["data"]["text"] == "streamed 5 messages", False),
    (5, lambda: invocation("ERROR:expected"), lambda t: t["error"] == "expected", False),
    (5, lambda: invocation("ECHO:soak-secret-value"), lambda t: t["data"]["text"] == "[REDACTED]", False),
    (3, lambda: command(["sleep 30 & sleep 30"]), lambda t: t["error"] == "Request cancelled", True),
    (2, lambda: invocation("SLOW:30000"), lambda t: t["error"] == "Request cancelled", True),
]


async def one_request(ws, rng):
    weights = [m[0] for m in MIX]
    _, make, check, cancel = rng.choices(MIX, weights)[0]
    await ws.send(json.dumps(make()))
    if cancel:
        await ws.send(json.dumps({"message_type": "cancel_message"}))
    while True:
        message = json.loads(await ws.recv())
        if message["message_type"] in TERMINALS:
            return check(message)


async def connection(url, count, seed, failures):
    rng = random.Random(seed)
    async with websockets.connect(url, max_size=2**20) as ws:
        for _ in range(count):
            if not await one_request(ws, rng):
                failures.append(seed)


async def soak(url, requests, connections):
    failures = []
    per = requests // connections
    await asyncio.gather(*[connection(url, per, i, failures) for i in range(connections)])
    return per * connections, failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    port = free_port()
    proc = subprocess.Popen([BIN, "--agent", "echo", "--host", "127.0.0.1", "--port", str(port),
                             "--kill-grace", "500ms", "--handler-cancel-grace", "500ms"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"ws://127.0.0.1:{port}"
    try:
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            time.sleep(0.01)
        # Warm up (allocator pools, first handler spawn), then take the baseline.
        asyncio.run(soak(url, 200, 10))
        time.sleep(1)
        before = resources(proc.pid)
        rounds = []
        started = time.perf_counter()
        done, failures = 0, []
        # Several rounds: a leak grows every round, a high-water mark does not.
        for _ in range(args.rounds):
            n, failed = asyncio.run(soak(url, args.requests // args.rounds, args.connections))
            done += n
            failures += failed
            time.sleep(1)  # sessions end after their sockets close
            rounds.append(resources(proc.pid))
        seconds = time.perf_counter() - started - args.rounds
        after = rounds[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    report = {"requests": done, "connections": args.connections, "seconds": round(seconds, 1),
              "req_per_s": round(done / seconds, 1), "wrong_answers": len(failures),
              "before": before, "after_each_round": rounds, "exit_code": code}
    print(json.dumps(report))
    # Flat: no fd or child left over, and RSS no longer growing between the
    # later rounds (the first round sets the allocator's high-water mark).
    flat = after["fds"] <= before["fds"] and after["children"] <= before["children"] \
        and rounds[-1]["rss_kb"] <= rounds[1]["rss_kb"] * 1.1
    sys.exit(0 if not failures and flat and code == 0 else 1)


if __name__ == "__main__":
    main()
