"""pytest fixtures for the end-to-end tests: the built `runtimeuse` binary,
driven by the real `runtimeuse-client` over a real WebSocket on 127.0.0.1,
and the HTTP servers and proxy the download and artifact tests talk to.
The plain helpers are in helpers.py and http_fixtures.py.

Every test gets fresh runtimes from `start_runtime`; on teardown each is
stopped with SIGTERM and must exit 0 with no process of its group left.
"""
import itertools
import pathlib
import shutil
import subprocess

import pytest

from agent_rig import AGENTS, agent_rig, install_shared_cache
from helpers import PY_HANDLER, Runtime, process_group_members
from http_fixtures import ForwardProxy, HttpFixture


@pytest.fixture
def start_runtime(tmp_path):
    started = []
    attempts = itertools.count()

    def start(*args, env=None, scheme="ws", preexec_fn=None, command=None, ready_timeout=20):
        # Numbered by attempt, not by success: a runtime that fails to start
        # (tests of startup errors) must not make the next one collide.
        n = next(attempts)
        # Started in the test's own directory: a stray relative path lands there.
        workdir = tmp_path / f"runtime-{n}-cwd"
        workdir.mkdir()
        rt = Runtime(
            list(args),
            env=env,
            log_path=tmp_path / f"runtime-{n}.log",
            scheme=scheme,
            cwd=workdir,
            preexec_fn=preexec_fn,
            command=command,
            ready_timeout=ready_timeout,
        )
        started.append(rt)
        return rt

    yield start
    for rt in started:
        code = rt.stop()
        assert code == 0, f"runtime exited with {code}:\n{rt.log()[-3000:]}"
        leftovers = process_group_members(rt.proc.pid)
        assert not leftovers, f"processes left in the runtime's group: {leftovers}"


@pytest.fixture
def echo_runtime(start_runtime):
    return start_runtime("--agent", "echo")


@pytest.fixture
def cert(tmp_path):
    """A self-signed certificate for localhost and 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:FALSE"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture
def py_handler(tmp_path) -> pathlib.Path:
    """The Python handler above, as a non-executable .py file."""
    path = tmp_path / "handler.py"
    path.write_text(PY_HANDLER)
    return path


@pytest.fixture
def http_server():
    server = HttpFixture()
    yield server
    server.close()


@pytest.fixture
def forward_proxy():
    proxy = ForwardProxy()
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def agent_cache(tmp_path_factory) -> pathlib.Path:
    """A cache directory with both bundled agents installed, shared by the
    xdist workers of the run (installed once, by `install-agent all`)."""
    cache, outcome = install_shared_cache(tmp_path_factory.getbasetemp().parent)
    assert outcome["returncode"] == 0, outcome["stderr"][-3000:]
    return cache


@pytest.fixture(scope="session")
def cold_install(tmp_path_factory, agent_cache) -> dict:
    """How this run's `install-agent all` into the empty `agent_cache` went."""
    return install_shared_cache(tmp_path_factory.getbasetemp().parent)[1]


@pytest.fixture(params=AGENTS)
def rig(request, agent_cache, start_runtime, tmp_path):
    """Each bundled agent in turn, with its mock API and a warm runtime."""
    with agent_rig(request.param, agent_cache, start_runtime, tmp_path) as rig:
        yield rig
