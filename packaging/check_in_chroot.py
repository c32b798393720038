"""Checks a runtimeuse binary on another Linux image, by hand (as root).

    debootstrap --variant=minbase bullseye /tmp/rootfs/bullseye http://deb.debian.org/debian
    .venv/bin/python packaging/check_in_chroot.py /tmp/rootfs/bullseye dist/runtimeuse-*-linux-musl

Copies the binary into ROOTFS/opt, starts it in a chroot of ROOTFS (same
network namespace, so the real client here reaches it on 127.0.0.1) and
runs one query with a download by host name (DL_HOST, default localhost,
resolved inside the image) and an artifact upload, and one command that
prints the image's name and libc. Prints what it saw; exits non-zero on
any failure. Not part of CI: it needs root and a root filesystem.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from runtimeuse_client import (
    CommandInterface,
    ExecuteCommandsOptions,
    QueryOptions,
    RuntimeEnvironmentDownloadableInterface,
    RuntimeUseClient,
)

from http_fixtures import ArtifactSink, HttpFixture

MOUNTS = (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"]))


def start(root: pathlib.Path, port: int) -> subprocess.Popen:
    """The runtime in a chroot of `root`, once its port accepts connections."""
    proc = subprocess.Popen(
        ["/usr/sbin/chroot", str(root), "/opt/runtimeuse", "--agent", "echo", "--host", "127.0.0.1", "--port", str(port)],
        env={"PATH": "/usr/bin:/bin", "HOME": "/root"},
    )
    for _ in range(400):
        if proc.poll() is not None:
            sys.exit(f"the runtime exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    sys.exit("the runtime did not open its port")


async def exercise(url: str, download: str, sink: ArtifactSink) -> None:
    client = RuntimeUseClient(ws_url=url)
    options = QueryOptions(
        system_prompt="",
        model="echo",
        artifacts_dirs=["/tmp/out"],
        on_artifact_upload_request=sink.callback,
        pre_agent_downloadables=[RuntimeEnvironmentDownloadableInterface(download_url=download, working_dir="/tmp/dl")],
    )
    result = await client.query("WRITE_FILE:/tmp/out/a.txt artifact", options)
    print("query:", result.data.text)
    report = ". /etc/os-release; echo $PRETTY_NAME; (ldd --version 2>&1 || echo no ldd) | head -1; cat /tmp/dl/payload.txt"
    done = await client.execute_commands([CommandInterface(command=report)], ExecuteCommandsOptions())
    print("image:", done.results[0].stdout.strip().replace("\n", " | "))


def main() -> None:
    root, binary = pathlib.Path(sys.argv[1]), sys.argv[2]
    (root / "opt").mkdir(exist_ok=True)
    shutil.copy(binary, root / "opt" / "runtimeuse")
    shutil.copy("/etc/hosts", root / "etc" / "hosts")
    for name, how in MOUNTS:
        (root / name).mkdir(exist_ok=True)
        subprocess.run(["mount", *how, str(root / name)], check=True)
    http = HttpFixture()
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start(root, port)
        sink = ArtifactSink(http)
        download = http.serve("/payload.txt", b"downloaded by name\n")
        download = download.replace("127.0.0.1", os.environ.get("DL_HOST", "localhost"))
        asyncio.run(asyncio.wait_for(exercise(f"ws://127.0.0.1:{port}", download, sink), 60))
        print("uploaded:", sink.uploaded(pathlib.Path("/tmp/out/a.txt")))
        proc.terminate()
        print("exit status after SIGTERM:", proc.wait(20))
    finally:
        http.close()
        for name, _ in reversed(MOUNTS):
            subprocess.run(["umount", str(root / name)], check=False)


if __name__ == "__main__":
    main()
