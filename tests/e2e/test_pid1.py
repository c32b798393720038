"""As a container's PID 1 the runtime reaps orphans (else every orphaned
background job becomes a zombie for good) and passes SIGTERM on to the
server, which shuts down gracefully."""
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
from runtimeuse_client import CommandInterface, ExecuteCommandsOptions, RuntimeUseClient

from helpers import BIN, free_port, run

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def pid_namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run([*UNSHARE, "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not pid_namespaces_work(), reason="needs unshare with PID namespaces (root)")


def wait_for_port(port, proc):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "runtime exited early"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError("port never opened")


# An orphan that exits while the runtime is PID 1: reaped (gone), or a zombie.
ORPHAN_FATE = """
cp /bin/sleep {dir}/orphanmark
sh -c '{dir}/orphanmark 0.2 &'
for i in $(seq 100); do
  state=$(ps -eo stat=,comm= | awk '$2 == "orphanmark" {{print substr($1, 1, 1)}}')
  case "$state" in
    "") echo REAPED; exit 0 ;;
    Z) echo ZOMBIE; exit 0 ;;
  esac
  sleep 0.05
done
echo STILL-RUNNING
"""


def test_pid1_reaps_orphans_and_forwards_sigterm(tmp_path):
    port = free_port()
    log = open(tmp_path / "runtime.log", "wb")
    proc = subprocess.Popen(
        [*UNSHARE, BIN, "--agent", "echo", "--host", "127.0.0.1", "--port", str(port)],
        stderr=log, start_new_session=True,
    )
    try:
        wait_for_port(port, proc)

        async def scenario():
            client = RuntimeUseClient(ws_url=f"ws://127.0.0.1:{port}")
            return await client.execute_commands(
                [CommandInterface(command=ORPHAN_FATE.format(dir=tmp_path))], ExecuteCommandsOptions()
            )

        fate = run(scenario()).results[0].stdout.strip()
        assert fate == "REAPED", fate

        # The namespace's PID 1 (our init) is unshare's child on the host.
        init_pid = int(subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)],
                                      capture_output=True, text=True).stdout.split()[0])
        os.kill(init_pid, signal.SIGTERM)
        assert proc.wait(20) == 0
        assert "shutting down" in (tmp_path / "runtime.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
