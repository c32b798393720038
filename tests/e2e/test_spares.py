"""Spare handlers (`--spare-handlers N`, default 1): the runtime starts a
handler process ahead of need, so a one-shot `client.query()` takes one that
is already running instead of waiting for a process start. Driven with the
real client; the handler notes every start of itself in a file, so the tests
see which process answered and when it began."""
import json
import os
import pathlib
import signal
import time

from runtimeuse_client import AgentRuntimeError, RuntimeUseClient

from helpers import qopts, run, unique, wait_until

# Notes "<pid> <start time>" when it starts, then answers PID with its pid and
# ENV with what it can see of the invocation's agent_env.
NOTING_HANDLER = r"""
import json, os, sys, time
with open(STARTS, "a") as f:
    f.write(f"{os.getpid()} {time.time()}\n")
for line in sys.stdin:
    inv = json.loads(line)
    if inv["type"] != "invoke":
        continue
    if inv["user_prompt"] == "ENV":
        text = json.dumps({"in_invoke": inv["env"].get("SPARE_SECRET"),
                           "in_environ": os.environ.get("SPARE_SECRET")})
    else:
        text = str(os.getpid())
    sys.stdout.write(json.dumps({"type": "result", "id": inv["id"], "text": text}) + "\n")
    sys.stdout.flush()
"""

CRASHING_HANDLER = r"""
import os, sys
with open(STARTS, "a") as f:
    f.write(f"{os.getpid()} 0\n")
sys.stderr.write("ImportError: no module named agent_sdk\n")
sys.exit(3)
"""

CRASH_LOOP_LOG = "exits as soon as it starts"


def handler(tmp_path, body):
    starts = tmp_path / f"starts-{unique()}"
    path = tmp_path / f"handler-{unique()}.py"
    path.write_text(f"STARTS = {str(starts)!r}\n{body}")
    return path, starts


def started(starts) -> list[tuple[int, float]]:
    """(pid, start time) of every process of the handler so far."""
    if not starts.exists():
        return []
    return [(int(pid), float(at)) for pid, at in (line.split() for line in starts.read_text().splitlines())]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def query(rt, prompt, **kw) -> str:
    return run(RuntimeUseClient(ws_url=rt.url).query(prompt, qopts(**kw))).data.text


def test_a_one_shot_query_is_answered_by_the_spare_started_ahead(start_runtime, tmp_path):
    path, starts = handler(tmp_path, NOTING_HANDLER)
    rt = start_runtime("--handler", str(path))
    assert wait_until(lambda: len(started(starts)) == 1), "no spare was started ahead of the first query"
    (spare, _), = started(starts)
    assert int(query(rt, "PID")) == spare
    # Its replacement starts in the background, for the next query.
    assert wait_until(lambda: len(started(starts)) == 2), "the taken spare was not replaced"
    replacement = started(starts)[1][0]
    assert replacement != spare and alive(replacement)
    assert int(query(rt, "PID")) == replacement


def test_a_spare_sees_no_session_data_until_its_invocation(start_runtime, tmp_path):
    path, starts = handler(tmp_path, NOTING_HANDLER)
    token = "tok-" + unique()
    rt = start_runtime("--handler", str(path), env={"RUNTIMEUSE_AUTH_TOKEN": token})
    assert wait_until(lambda: started(starts))
    (spare, _), = started(starts)
    environ = pathlib.Path(f"/proc/{spare}/environ").read_bytes()
    assert token.encode() not in environ, "the spare can read the runtime's token"
    secret = "sk-" + unique()
    url = f"ws://:{token}@127.0.0.1:{rt.port}"
    result = run(RuntimeUseClient(ws_url=url).query(
        "ENV", qopts(agent_env={"SPARE_SECRET": secret}, secrets_to_redact=[secret])))
    # The value arrived with the invocation only (and is redacted on the way out).
    assert json.loads(result.data.text) == {"in_invoke": "[REDACTED]", "in_environ": None}


def test_a_spare_that_dies_while_idle_is_replaced(start_runtime, tmp_path):
    path, starts = handler(tmp_path, NOTING_HANDLER)
    rt = start_runtime("--handler", str(path))
    assert wait_until(lambda: started(starts))
    (spare, _), = started(starts)
    os.kill(spare, signal.SIGKILL)
    assert wait_until(lambda: len(started(starts)) == 2), "the dead spare was not replaced"
    replacement = started(starts)[1][0]
    assert int(query(rt, "PID")) == replacement
    assert "exits as soon as it starts" not in rt.log()


def test_idle_spares_end_with_the_runtime(start_runtime, tmp_path):
    path, starts = handler(tmp_path, NOTING_HANDLER)
    rt = start_runtime("--handler", str(path), "--spare-handlers", "2")
    assert wait_until(lambda: len(started(starts)) == 2)
    spares = [pid for pid, _ in started(starts)]
    assert all(alive(pid) for pid in spares)
    assert rt.stop() == 0
    assert wait_until(lambda: not any(alive(pid) for pid in spares), timeout=5), spares


def test_with_no_spares_the_handler_starts_on_the_first_query(start_runtime, tmp_path):
    path, starts = handler(tmp_path, NOTING_HANDLER)
    rt = start_runtime("--handler", str(path), "--spare-handlers", "0")
    before = time.time()
    pid = int(query(rt, "PID"))
    (first, at), = started(starts)
    assert pid == first and at >= before, "a process was started before it was needed"


def test_a_crash_looping_handler_is_reported_once_and_not_restarted_in_a_loop(start_runtime, tmp_path):
    path, starts = handler(tmp_path, CRASHING_HANDLER)
    rt = start_runtime("--handler", str(path))
    assert wait_until(lambda: CRASH_LOOP_LOG in rt.log()), rt.log()
    # Retried with a doubling backoff: a few more starts in two seconds, not
    # the hundreds a restart loop would make.
    count = len(started(starts))
    time.sleep(2)
    assert len(started(starts)) - count <= 4, f"{len(started(starts)) - count} restarts in 2 s"
    log = rt.log()
    assert log.count(CRASH_LOOP_LOG) == 1, log
    line = next(line for line in log.splitlines() if CRASH_LOOP_LOG in line)
    assert "exit status: 3" in line and "no module named agent_sdk" in log
    # A query still gets the handler's failure as a clear error, and the
    # runtime stays usable.
    try:
        query(rt, "PID")
        raise AssertionError("the query succeeded with a crashing handler")
    except AgentRuntimeError as e:
        assert "exit status: 3" in str(e) and "agent_sdk" in str(e), str(e)
    assert rt.health()
