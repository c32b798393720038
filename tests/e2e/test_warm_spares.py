"""A spare handler warms itself up while it waits (issue 12): the SDKs and
the Node launcher run a first invocation's code paths once on a made-up
invoke before reading stdin, so a one-shot query's first invocation runs
warm. Driven with the real client against the real runtime and handler
processes; these tests check the warm-up happened before the spare was
taken, and that it is invisible: the user's handler is not called for it,
and nothing of it reaches the runtime or the client. (How much it saves is
a figure, measured by `bench/run`, not asserted here.)"""
import json
import pathlib

from runtimeuse_client import RuntimeUseClient

from helpers import qopts, run, unique, wait_until

# An async Python SDK handler that notes its pid when it starts and answers
# with its pid and how many times it was called.
ASYNC_PY_HANDLER = r"""
import os
from runtimeuse_handler import run_handler

with open(PIDFILE, "w") as f:
    f.write(str(os.getpid()))
calls = []

async def handle(invocation, ctx):
    calls.append(invocation.id)
    return {"text": f"{os.getpid()} {len(calls)}"}

run_handler(handle)
"""

# A Node script handler that speaks the protocol itself, without
# node:readline: it answers with whether readline was loaded before it (by
# the launcher's warm-up) and its pid.
NODE_SCRIPT_HANDLER = r"""
import { writeFileSync } from "node:fs";
const warmedBefore = process.moduleLoadList.includes("NativeModule readline");
writeFileSync(PIDFILE, String(process.pid));
let buffered = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  buffered += chunk;
  let newline;
  while ((newline = buffered.indexOf("\n")) !== -1) {
    const message = JSON.parse(buffered.slice(0, newline));
    buffered = buffered.slice(newline + 1);
    if (message.type !== "invoke") continue;
    const text = JSON.stringify({ pid: process.pid, warmedBefore });
    process.stdout.write(JSON.stringify({ type: "result", id: message.id, text }) + "\n");
  }
});
"""

# A Node SDK handler counting its calls.
NODE_SDK_HANDLER = r"""
import { writeFileSync } from "node:fs";
import { runHandler } from "runtimeuse-handler";
writeFileSync(PIDFILE, String(process.pid));
let calls = 0;
runHandler(async () => {
  calls += 1;
  return { text: `${process.pid} ${calls}` };
});
"""


def handler(tmp_path: pathlib.Path, body: str, suffix: str) -> tuple[pathlib.Path, pathlib.Path]:
    pidfile = tmp_path / f"pid-{unique()}"
    path = tmp_path / f"handler-{unique()}{suffix}"
    path.write_text(f"const PIDFILE = {json.dumps(str(pidfile))};\n{body}" if suffix == ".mjs"
                    else f"PIDFILE = {str(pidfile)!r}\n{body}")
    return path, pidfile


def spare_pid(pidfile: pathlib.Path) -> int:
    assert wait_until(lambda: pidfile.exists() and pidfile.read_text()), "no spare was started"
    return int(pidfile.read_text())


def threads(pid: int) -> int:
    return len(list(pathlib.Path(f"/proc/{pid}/task").iterdir()))


def query(rt, prompt="hi") -> str:
    return run(RuntimeUseClient(ws_url=rt.url).query(prompt, qopts())).data.text


def test_an_async_python_spare_has_its_event_loop_running_before_it_is_taken(start_runtime, tmp_path):
    path, pidfile = handler(tmp_path, ASYNC_PY_HANDLER, ".py")
    rt = start_runtime("--handler", str(path))
    pid = spare_pid(pidfile)
    # The loop's thread, started by the warm-up: before, the first
    # invocation imported asyncio and started it (~120 ms).
    assert wait_until(lambda: threads(pid) == 2), (
        f"the spare {pid} has {threads(pid)} thread(s): its event loop was not started ahead"
    )
    # The spare answers, and the warm-up never called the handler.
    assert query(rt) == f"{pid} 1"
    assert "Traceback" not in rt.log()


def test_the_node_launcher_warms_up_before_a_script_handler_loads(start_runtime, tmp_path):
    path, pidfile = handler(tmp_path, NODE_SCRIPT_HANDLER, ".mjs")
    rt = start_runtime("--handler", str(path))
    pid = spare_pid(pidfile)
    assert json.loads(query(rt)) == {"pid": pid, "warmedBefore": True}
    # Its zero-byte stdout write reached the runtime as nothing at all.
    assert "protocol" not in rt.log()


def test_the_node_sdk_warm_up_never_calls_the_users_handler(start_runtime, tmp_path):
    path, pidfile = handler(tmp_path, NODE_SDK_HANDLER, ".mjs")
    rt = start_runtime("--handler", str(path))
    pid = spare_pid(pidfile)
    assert query(rt) == f"{pid} 1"
    assert "protocol" not in rt.log()
