"""The release as users get it: the files `scripts/build-release` writes to
`dist/`, installed the way the README says (npm tarballs into an empty
directory, the wheel into a fresh virtualenv) and driven by the real client.

Skipped unless RUNTIMEUSE_DIST_DIR names such a directory (`.ci/run` sets
it after building the release; the rest of the suite then runs against the
same binary through RUNTIMEUSE_BIN)."""
import os
import pathlib
import subprocess
import sys

import pytest
from runtimeuse_client import CommandInterface, ExecuteCommandsOptions, RuntimeUseClient

from helpers import Runtime, process_group_members, qopts, run, wait_until
from http_fixtures import ArtifactSink

DIST = os.environ.get("RUNTIMEUSE_DIST_DIR")
pytestmark = pytest.mark.skipif(not DIST, reason="RUNTIMEUSE_DIST_DIR not set (run scripts/build-release)")


def dist_file(pattern: str) -> pathlib.Path:
    """The one file in dist/ matching `pattern`."""
    found = sorted(pathlib.Path(DIST).glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {DIST}, found {found}"
    return found[0]


def dist_binary() -> pathlib.Path:
    """The portable binary, `runtimeuse-<version>-<target>`."""
    found = [p for p in pathlib.Path(DIST).glob("runtimeuse-*-linux-*") if p.suffix not in (".sha256", ".whl")]
    assert len(found) == 1, f"expected one binary in {DIST}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def npm_dir(tmp_path_factory) -> pathlib.Path:
    """An empty directory into which both npm tarballs were installed."""
    directory = tmp_path_factory.mktemp("npm-install")
    tarballs = [str(dist_file("npm/runtimeuse-linux-*.tgz")), str(dist_file("npm/runtimeuse-[0-9]*.tgz"))]
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *tarballs],
        cwd=directory,
        check=True,
    )
    return directory


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> pathlib.Path:
    """A fresh virtualenv with only the wheel installed (no index needed)."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-index", str(dist_file("runtimeuse-*.whl"))],
        check=True,
    )
    return venv


@pytest.fixture
def sink(http_server):
    return ArtifactSink(http_server)


def assert_serves_a_query(rt: Runtime, sink: ArtifactSink, tmp_path: pathlib.Path):
    """A query that writes an artifact (uploaded before the result) and a
    command, through the real client."""
    out = tmp_path.resolve() / "out"
    client = RuntimeUseClient(ws_url=rt.url)
    opts = qopts(artifacts_dirs=[str(out)], on_artifact_upload_request=sink.callback)
    result = run(client.query(f"WRITE_FILE:{out}/report.md # Report", opts))
    assert result.data.text == f"wrote {out}/report.md"
    sink.assert_uploaded_now(out / "report.md", b"# Report")
    done = run(client.execute_commands([CommandInterface(command="echo hi")], ExecuteCommandsOptions()))
    assert done.results[0].exit_code == 0


def test_binary_is_static_and_checksummed():
    binary = dist_binary()
    described = subprocess.run(["file", "-L", str(binary)], capture_output=True, text=True, check=True).stdout
    assert "statically linked" in described or "static-pie linked" in described, described
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    assert "=>" not in ldd.stdout + ldd.stderr, ldd
    check = subprocess.run(["sha256sum", "-c", binary.name + ".sha256"], cwd=DIST, capture_output=True, text=True, check=False)
    assert check.returncode == 0 and ": OK" in check.stdout, check


def test_npx_runs_a_query_and_stops_on_sigterm(npm_dir, sink, tmp_path):
    # Exactly what a sandbox template runs. npx starts the launcher through
    # `sh -c`, so npx's SIGTERM reaches only that shell: the launcher must
    # notice and stop the runtime itself.
    rt = Runtime(["--agent", "echo"], command=["npx", "runtimeuse"], cwd=npm_dir, log_path=tmp_path / "npx.log")
    try:
        assert_serves_a_query(rt, sink, tmp_path)
        rt.proc.terminate()
        rt.proc.wait(20)
        assert wait_until(lambda: not process_group_members(rt.proc.pid), timeout=20), rt.log()
        assert "shutting down" in rt.log()
    finally:
        if process_group_members(rt.proc.pid):
            os.killpg(rt.proc.pid, 9)


def test_npm_launcher_forwards_signals_and_exit_status(npm_dir, start_runtime, sink, tmp_path):
    launcher = str(npm_dir / "node_modules" / ".bin" / "runtimeuse")
    # start_runtime's teardown sends SIGTERM to the launcher alone and needs
    # exit status 0 and nothing left of its process group.
    rt = start_runtime("--agent", "echo", command=[launcher])
    assert_serves_a_query(rt, sink, tmp_path)
    bad = subprocess.run([launcher, "--port", "not-a-port"], capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 2 and "not-a-port" in bad.stderr, bad
    version = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert version.stdout.startswith("runtimeuse "), version


def test_wheel_puts_the_runtime_on_path(wheel_venv, start_runtime, sink, tmp_path):
    script = wheel_venv / "bin" / "runtimeuse"
    assert script.read_bytes() == dist_binary().read_bytes()
    rt = start_runtime("--agent", "echo", command=[str(script)])
    assert_serves_a_query(rt, sink, tmp_path)
