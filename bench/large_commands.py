#!/usr/bin/env python3
"""Large commands: the round trip of a heredoc command that writes a file,
for scripts passed inline (`sh -c <script>`, up to 64 KiB) and through a
private temporary file (over 64 KiB), with the real client. Prints one JSON
line per size: median and best wall time over the runs, and the runtime's
peak RSS (VmHWM) after them. By hand, not in CI:

    .venv/bin/python bench/large_commands.py
    RUNTIMEUSE_BIN=/path/to/runtimeuse BENCH_RUNS=20 .../python bench/large_commands.py

Environment: RUNTIMEUSE_BIN (default the release build), BENCH_RUNS
(default 10). A runtime that cannot run a size (E2BIG before the file path
existed) reports the error instead of times.
"""

import asyncio
import json
import os
import pathlib
import statistics
import tempfile
import time

from echo_runtime import EchoRuntime
from runtimeuse_client import (
    AgentRuntimeError,
    CommandInterface,
    ExecuteCommandsOptions,
    RuntimeUseClient,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = os.environ.get("RUNTIMEUSE_BIN", str(ROOT / "target" / "release" / "runtimeuse"))
RUNS = int(os.environ.get("BENCH_RUNS", "10"))
SIZES = [16 << 10, 64 << 10, 96 << 10, 1 << 20, 8 << 20]


def heredoc(target: pathlib.Path, size: int) -> str:
    line = "x" * 63 + "\n"
    body = line * (size // len(line))
    return f"cat > {target} <<'EOF'\n{body}EOF\n"


async def one(url: str, command: str) -> float:
    started = time.perf_counter()
    result = await RuntimeUseClient(ws_url=url).execute_commands(
        [CommandInterface(command=command)], ExecuteCommandsOptions()
    )
    elapsed = time.perf_counter() - started
    assert result.results[0].exit_code == 0, result
    return elapsed


def main() -> None:
    rt = EchoRuntime(BIN)
    try:
        url = rt.url
        with tempfile.TemporaryDirectory() as tmp:
            for size in SIZES:
                command = heredoc(pathlib.Path(tmp) / "out.txt", size)
                figure = {"figure": "large_command_round_trip", "command_bytes": len(command),
                          "runtime": BIN, "runs": RUNS}
                try:
                    times = [asyncio.run(one(url, command)) for _ in range(RUNS)]
                except AgentRuntimeError as e:
                    figure["error"] = e.error[:200]
                else:
                    figure["median_ms"] = round(statistics.median(times) * 1000, 2)
                    figure["best_ms"] = round(min(times) * 1000, 2)
                figure["runtime_peak_rss_kib"] = rt.kib("VmHWM")
                print(json.dumps(figure), flush=True)
    finally:
        rt.stop()


if __name__ == "__main__":
    main()
