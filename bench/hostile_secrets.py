"""Secret flood: RSS and time per request when a session names many secrets,
and RSS once the session has closed. Run by hand, never in CI:

    .venv/bin/python bench/hostile_secrets.py --bin target/release/runtimeuse
    .venv/bin/python bench/hostile_secrets.py --bin target/release/runtimeuse \
        --requests 4 --secrets 500000          # the flood from issue 11

Starts the binary on a free port, opens one WebSocket session and sends
`--requests` command executions (`true`), each naming `--secrets` new
distinct 24-byte secrets. Prints, per request, the wall time to its terminal
message, what the terminal was (result or error, with the error's start) and
the runtime's RSS (VmRSS from /proc) right after; then closes the session and
prints RSS after close (settled: the lowest of ten samples over 2 s) and the
peak (VmHWM). Figures depend on the machine and its load: compare runs made
side by side.
"""
import argparse
import asyncio
import json
import sys
import time

import websockets
from echo_runtime import EchoRuntime, proc_status_kib


def mib(kib: int) -> str:
    return f"{kib / 1024:7.1f} MiB"


async def flood(url: str, pid: int, requests: int, per_request: int) -> None:
    async with websockets.connect(url, max_size=2**20) as ws:
        print(f"idle session            rss {mib(proc_status_kib(pid, 'VmRSS'))}")
        for n in range(requests):
            secrets = [f"flood-{n:02d}-{i:09d}-xyzw" for i in range(per_request)]
            message = json.dumps({
                "message_type": "command_execution_message",
                "secrets_to_redact": secrets,
                "commands": [{"command": "true"}],
            })
            started = time.monotonic()
            await ws.send(message)
            while True:
                reply = json.loads(await ws.recv())
                kind = reply["message_type"]
                if kind in ("command_execution_result_message", "error_message"):
                    break
            took = time.monotonic() - started
            what = "result" if kind != "error_message" else "error: " + reply["error"][:70]
            print(f"request {n + 1}: {took:6.2f} s   rss {mib(proc_status_kib(pid, 'VmRSS'))}   {what}")
        await ws.send(json.dumps({"message_type": "end_session_message"}))
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default="target/release/runtimeuse")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--secrets", type=int, default=12_500, help="new secrets per request")
    args = parser.parse_args()
    rt = EchoRuntime(args.bin)
    try:
        print(f"{args.bin}: {args.requests} requests x {args.secrets} secrets")
        print(f"started                 rss {mib(rt.kib('VmRSS'))}")
        asyncio.run(flood(rt.url, rt.proc.pid, args.requests, args.secrets))
        samples = []
        for _ in range(10):
            time.sleep(0.2)
            samples.append(rt.kib("VmRSS"))
        print(f"after close             rss {mib(min(samples))}   peak {mib(rt.kib('VmHWM'))}")
    finally:
        rt.stop()


if __name__ == "__main__":
    sys.exit(main())
