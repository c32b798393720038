"""Process containment: a process that leaves its process group (`setsid`,
`setpgid`) is still killed on cancel, when the client vanishes mid-command,
with its handler at session end, and at shutdown, in both containment modes
(a cgroup v2 per request and handler, or the child subreaper with marked
environments).

The mode is chosen with RUNTIMEUSE_CONTAINMENT (not the flag), so the same
tests run against an older binary that has no such flag and show it leaving
the escapees alive. Each escapee writes its own pid to a file; the tests
wait for that file, then check /proc/PID.
"""
import asyncio
import os
import pathlib
import signal
import subprocess

import pytest
from runtimeuse_client import (
    AgentRuntimeError,
    CancelledException,
    CommandInterface,
    ExecuteCommandsOptions,
    RuntimeUseClient,
)
from test_pid1 import ORPHAN_FATE, UNSHARE, pid_namespaces_work, wait_for_port

from helpers import BIN, free_port, pgrep, qopts, run, unique, wait_until

HANDLERS = pathlib.Path(__file__).parent / "handlers"


def own_cgroup_dir() -> pathlib.Path | None:
    """Where this process's cgroup v2 is mounted, if cgroup2 is."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, after = line.partition(" - ")
            if after.split()[:1] == ["cgroup2"]:
                root, point = fields.split()[3:5]
                break
        else:
            return None
    with open("/proc/self/cgroup") as f:
        own = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    if own is None or not own.startswith(root.rstrip("/")):
        return None
    return pathlib.Path(point) / own[len(root.rstrip("/")):].lstrip("/")


def cgroup_writable() -> bool:
    base = own_cgroup_dir()
    if base is None:
        return False
    probe = base / f"containment-test-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / "cgroup.kill").exists()
    finally:
        probe.rmdir()


CGROUP = pytest.param(
    "cgroup",
    marks=pytest.mark.skipif(not cgroup_writable(), reason="cgroup v2 is not writable here (no cgroup.kill)"),
)
MODES = [CGROUP, "subreaper"]

ESCAPES = {
    # setsid: a new session and process group.
    "setsid": "setsid sh -c 'echo $$ > {pid_file}; exec sleep 300' >/dev/null 2>&1 &",
    # setpgid: same session, own process group.
    "setpgid": (
        "python3 -c 'import os,sys; os.setpgid(0, 0); open(sys.argv[1], \"w\").write(str(os.getpid())); "
        "os.execvp(\"sleep\", [\"sleep\", \"300\"])' {pid_file} >/dev/null 2>&1 &"
    ),
}

#: Shell: wait until the escapee wrote its pid.
WAIT_FOR_PID = "while [ ! -s {pid_file} ]; do sleep 0.01; done"


@pytest.fixture(autouse=True)
def kill_surviving_escapees(tmp_path):
    """A failing test (or an older binary) must not leave its 300 s
    sleepers behind: whatever pid the escapees wrote is killed at teardown
    if it is still that sleeper."""
    yield
    for pid_file in tmp_path.glob("*.pid"):
        try:
            pid = int(pid_file.read_text())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"sleep" in f.read():
                    os.kill(pid, signal.SIGKILL)
        except (ValueError, OSError):
            pass


def alive(pid: int) -> bool:
    """Running (a zombie is dead for our purposes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] not in "ZX"
    except FileNotFoundError:
        return False


def escapee_pid(pid_file: pathlib.Path) -> int:
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=10), "escapee never started"
    return int(pid_file.read_text())


def runtime(start_runtime, mode, *args):
    return start_runtime("--agent", "echo", *args, env={"RUNTIMEUSE_CONTAINMENT": mode})


def interrupt_mid_command(rt, pid_file: pathlib.Path, interrupt, raises) -> int:
    """Runs a command that starts a `setsid` escapee and then keeps running,
    calls `interrupt(task)` once the escapee has written its pid, expects the
    client's call to end with `raises`, and returns the escapee's pid."""
    command = ESCAPES["setsid"].format(pid_file=pid_file) + f" {WAIT_FOR_PID.format(pid_file=pid_file)}; sleep 300"

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        task = asyncio.create_task(client.execute_commands(cmds(command), ExecuteCommandsOptions()))
        pid = await asyncio.to_thread(escapee_pid, pid_file)
        interrupt(task)
        with pytest.raises(raises):
            await task
        return pid

    return run(main())


def cmds(*commands):
    return [CommandInterface(command=c) for c in commands]


@pytest.mark.parametrize("escape", sorted(ESCAPES))
@pytest.mark.parametrize("mode", MODES)
def test_cancel_kills_a_process_that_left_the_group(start_runtime, tmp_path, mode, escape):
    rt = runtime(start_runtime, mode)
    pid_file = tmp_path / "escapee.pid"
    # "started" once the escapee has written its pid (it is out of the group by then).
    command = ESCAPES[escape].format(pid_file=pid_file) + f" {WAIT_FOR_PID.format(pid_file=pid_file)}; echo started; sleep 300"

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            async def on_output(msg):
                if "started" in msg.text:
                    s.abort()

            with pytest.raises(CancelledException):
                await s.execute_commands(cmds(command), ExecuteCommandsOptions(on_command_output=on_output))
            pid = escapee_pid(pid_file)
            assert await asyncio.to_thread(wait_until, lambda: not alive(pid), 10), f"escapee {pid} survived the cancel"
            # The session goes on.
            result = await s.execute_commands(cmds("echo still here"), ExecuteCommandsOptions())
            assert result.results[0].stdout.strip() == "still here"

    run(main())


@pytest.mark.parametrize("mode", MODES)
def test_client_vanishing_mid_command_kills_escapees(start_runtime, tmp_path, mode):
    """The session ends while the command runs (the one-shot client's
    connection goes away): like a cancel, everything the request started
    dies, what left the group too."""
    rt = runtime(start_runtime, mode)
    # Cancelling the call closes the one-shot client's socket.
    pid = interrupt_mid_command(rt, tmp_path / "escapee.pid", lambda task: task.cancel(), asyncio.CancelledError)
    assert wait_until(lambda: not alive(pid), timeout=10), f"escapee {pid} outlived its session"
    if mode == "subreaper":
        # Its shell is gone, so it was the runtime's to reap: no zombie stays.
        assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10), f"escapee {pid} left a zombie"


@pytest.mark.parametrize("mode", MODES)
def test_what_a_completed_command_left_runs_on_until_shutdown(start_runtime, tmp_path, mode):
    """`server &` from a completed command keeps running after its session
    (a later connection may use it), escaped or not, but stays contained:
    shutdown kills it."""
    rt = runtime(start_runtime, mode)
    pid_file = tmp_path / "escapee.pid"

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        result = await client.execute_commands(cmds(ESCAPES["setsid"].format(pid_file=pid_file)), ExecuteCommandsOptions())
        assert result.results[0].exit_code == 0
        return escapee_pid(pid_file)

    pid = run(main())
    # A second one-shot connection still finds it running.
    check = run(RuntimeUseClient(ws_url=rt.url).execute_commands(cmds(f"kill -0 {pid} && echo up"), ExecuteCommandsOptions()))
    assert check.results[0].stdout.strip() == "up"
    assert rt.stop() == 0
    assert wait_until(lambda: not alive(pid), timeout=10), f"escapee {pid} outlived the runtime"


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_shutdown_kills_escapees(start_runtime, tmp_path, mode):
    rt = runtime(start_runtime, mode, "--kill-grace", "500ms")
    pid = interrupt_mid_command(
        rt, tmp_path / "escapee.pid", lambda _task: rt.proc.send_signal(signal.SIGTERM), AgentRuntimeError
    )
    assert rt.proc.wait(20) == 0
    assert wait_until(lambda: not alive(pid), timeout=10), f"escapee {pid} outlived the runtime"


@pytest.mark.parametrize("mode", MODES)
def test_handler_escapee_is_killed_at_session_end(start_runtime, tmp_path, mode):
    rt = start_runtime(
        "--handler", str(HANDLERS / "escaping_handler.py"), env={"RUNTIMEUSE_CONTAINMENT": mode}
    )
    pid_file = tmp_path / "handler-escapee.pid"

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            result = await s.query(str(pid_file), qopts())
            pid = int(result.data.text)
            assert alive(pid)
        return pid

    pid = run(main())
    assert wait_until(lambda: not alive(pid), timeout=10), f"the handler's escapee {pid} outlived the session"


@pytest.mark.parametrize("mode", MODES)
def test_startup_log_says_which_containment_is_in_force(start_runtime, mode):
    rt = runtime(start_runtime, mode)
    expected = "cgroup v2" if mode == "cgroup" else "child subreaper"
    assert wait_until(lambda: "process containment" in rt.log(), timeout=5), rt.log()
    line = next(line for line in rt.log().splitlines() if "process containment" in line)
    assert expected in line, line


@pytest.mark.skipif(not cgroup_writable(), reason="cgroup v2 is not writable here")
def test_auto_takes_cgroup_and_leaves_no_cgroup_behind(start_runtime, tmp_path):
    rt = start_runtime("--agent", "echo")  # auto
    assert "cgroup v2" in next(line for line in rt.log().splitlines() if "process containment" in line)
    mine = list(own_cgroup_dir().glob(f"runtimeuse-*-{rt.proc.pid}-*"))
    assert len(mine) == 1, mine
    tree = mine[0]
    pid_file = tmp_path / "bg.pid"

    def populated_cgroups():
        # Empty ones are kept for reuse; the spare handler has its own.
        return [p.name for p in tree.iterdir() if p.is_dir() and "populated 1" in (p / "cgroup.events").read_text()]

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            handler_only = populated_cgroups()
            await s.execute_commands(cmds("true"), ExecuteCommandsOptions())
            # A request whose processes all ended leaves nothing running.
            assert populated_cgroups() == handler_only
            await s.execute_commands(cmds(ESCAPES["setsid"].format(pid_file=pid_file)), ExecuteCommandsOptions())
            # One still running keeps its request's cgroup.
            assert len(populated_cgroups()) == len(handler_only) + 1
        return escapee_pid(pid_file)

    pid = run(main())
    rt.stop()
    assert not alive(pid)
    assert not tree.exists(), "the runtime's cgroup directory outlived it"


@pytest.mark.skipif(not cgroup_writable(), reason="cgroup v2 is not writable here")
def test_start_up_cleans_the_cgroups_of_a_runtime_that_died(start_runtime):
    # A runtime that died (SIGKILL) left a cgroup with a live process in it;
    # its pid is beyond pid_max, so it cannot be alive. The same pid in
    # another PID namespace says nothing: that directory is left alone.
    namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    stale = own_cgroup_dir() / f"runtimeuse-{namespace}-99999999-1"
    foreign = own_cgroup_dir() / "runtimeuse-1-99999999-1"
    scope, foreign_scope = stale / "r1", foreign / "r1"
    scope.mkdir(parents=True)
    foreign_scope.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "300"])
    foreign_sleeper = subprocess.Popen(["sleep", "300"])
    try:
        (scope / "cgroup.procs").write_text(str(sleeper.pid))
        (foreign_scope / "cgroup.procs").write_text(str(foreign_sleeper.pid))
        runtime(start_runtime, "cgroup")
        assert sleeper.wait(10) == -signal.SIGKILL
        assert not stale.exists()
        assert foreign_sleeper.poll() is None, "a runtime of another PID namespace lost its processes"
        assert foreign.exists()
    finally:
        for process in (sleeper, foreign_sleeper):
            process.kill()
            process.wait()
        for d in (scope, stale, foreign_scope, foreign):
            if d.exists():
                d.rmdir()


# Whose child an orphan becomes: the server (the subreaper; the command's
# shell's parent) rather than PID 1.
ADOPTER = """
cp /bin/sleep {dir}/adoptee
sh -c '{dir}/adoptee 2 &'
parent=$(ps -o ppid= -C adoptee | tr -d ' ')
if [ "$parent" = "$PPID" ]; then echo ADOPTED BY THE SERVER; else echo "ADOPTED BY $parent, server $PPID"; fi
"""


@pytest.mark.skipif(not pid_namespaces_work(), reason="needs unshare with PID namespaces (root)")
def test_subreaper_as_pid1_adopts_and_reaps_orphans(tmp_path):
    """As a container's PID 1 (the init fork) with the subreaper, an orphan
    goes to the server, not to init: the server must reap it, and still
    kill what escaped when it shuts down."""
    port = free_port()
    log = open(tmp_path / "runtime.log", "wb")
    proc = subprocess.Popen(
        [*UNSHARE, BIN, "--agent", "echo", "--host", "127.0.0.1", "--port", str(port)],
        stderr=log, start_new_session=True, env={**os.environ, "RUNTIMEUSE_CONTAINMENT": "subreaper"},
    )
    mark = unique("escapee")
    try:
        wait_for_port(port, proc)

        async def scenario():
            client = RuntimeUseClient(ws_url=f"ws://127.0.0.1:{port}")
            async with client.session() as s:
                adopter = await s.execute_commands(cmds(ADOPTER.format(dir=tmp_path)), ExecuteCommandsOptions())
                assert adopter.results[0].stdout.strip() == "ADOPTED BY THE SERVER"
                fate = await s.execute_commands(cmds(ORPHAN_FATE.format(dir=tmp_path)), ExecuteCommandsOptions())
                await s.execute_commands(
                    cmds(f"setsid sh -c 'sleep 300; echo {mark}' >/dev/null 2>&1 &"), ExecuteCommandsOptions()
                )
                assert await asyncio.to_thread(wait_until, lambda: pgrep(mark), 10)
                return fate.results[0].stdout.strip()

        assert run(scenario()) == "REAPED"
        # The namespace's PID 1 (our init) is unshare's child on the host.
        init_pid = int(subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)],
                                      capture_output=True, text=True).stdout.split()[0])
        os.kill(init_pid, signal.SIGTERM)
        assert proc.wait(20) == 0
        # Killed by the server's shutdown (pgrep runs outside the namespace,
        # which would otherwise outlive the runtime).
        assert not pgrep(mark), f"escapee survived the shutdown: {pgrep(mark)}"
        assert "child subreaper" in (tmp_path / "runtime.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
