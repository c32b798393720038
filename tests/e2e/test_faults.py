"""Faults the runtime must survive: SIGTERM mid-request, a client vanishing,
a handler that hangs, an upload target that is down, a download server that
stalls, a write that fails. After each, no process is left behind (the
start_runtime fixture also checks the runtime's group on teardown)."""
import asyncio
import contextlib
import http.server
import signal
import stat
import threading
import time
import uuid

import pytest
from runtimeuse_client import (
    AgentRuntimeError,
    ArtifactUploadResult,
    CommandInterface,
    ExecuteCommandsOptions,
    QueryOptions,
    RuntimeEnvironmentDownloadableInterface,
    RuntimeUseClient,
)

from helpers import command_execution, free_port, pgrep, raw_connect, run, wait_until


@contextlib.contextmanager
def http_server(handler):
    """A throwaway HTTP server on 127.0.0.1; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def failed_download_then_a_command(rt, url, workdir):
    """On one session: a request whose download must fail, then a plain
    command. Returns the download's error and the command's stdout."""

    async def scenario():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as session:
            with pytest.raises(AgentRuntimeError) as err:
                await session.execute_commands(
                    [CommandInterface(command="echo never")],
                    ExecuteCommandsOptions(pre_execution_downloadables=[
                        RuntimeEnvironmentDownloadableInterface(download_url=url, working_dir=str(workdir))
                    ]),
                )
            after = await session.execute_commands([CommandInterface(command="echo fine")], ExecuteCommandsOptions())
        return err.value, after.results[0].stdout

    return run(scenario())


def marker() -> str:
    return "fault-" + uuid.uuid4().hex[:10]


def tree_command(mark: str) -> str:
    """A shell with a grandchild and a background job, all carrying `mark`."""
    return f"sh -c 'sleep 60; echo {mark}' & sleep 60 # {mark}"


def test_sigterm_cancels_running_request_with_a_terminal_and_exits_zero(start_runtime):
    rt = start_runtime("--agent", "echo", "--kill-grace", "500ms")
    mark = marker()

    async def scenario():
        client = RuntimeUseClient(ws_url=rt.url)
        task = asyncio.create_task(
            client.execute_commands([CommandInterface(command=tree_command(mark))], ExecuteCommandsOptions())
        )
        await asyncio.to_thread(wait_until, lambda: len(pgrep(mark)) >= 2)
        rt.proc.send_signal(signal.SIGTERM)
        with pytest.raises(AgentRuntimeError) as err:
            await task
        return err.value

    error = run(scenario())
    assert error.error == "Request cancelled: the runtime is shutting down"
    assert rt.proc.wait(10) == 0
    assert wait_until(lambda: not pgrep(mark), timeout=2), pgrep(mark)


def test_sigterm_closes_idle_sessions_promptly(start_runtime):
    rt = start_runtime("--agent", "echo")

    async def scenario():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as session:
            await session.query("ECHO:up", QueryOptions(system_prompt="", model="echo"))
            started = time.monotonic()
            rt.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(rt.proc.wait, 10)
            return code, time.monotonic() - started

    code, took = run(scenario())
    assert code == 0
    assert took < 5, took


def test_client_vanishing_mid_command_kills_the_tree_within_two_seconds(start_runtime):
    rt = start_runtime("--agent", "echo")
    mark = marker()

    async def scenario():
        client = RuntimeUseClient(ws_url=rt.url)
        task = asyncio.create_task(
            client.execute_commands([CommandInterface(command=tree_command(mark))], ExecuteCommandsOptions())
        )
        await asyncio.to_thread(wait_until, lambda: len(pgrep(mark)) >= 2)
        task.cancel()  # the one-shot client closes its socket
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert wait_until(lambda: not pgrep(mark), timeout=2.5), pgrep(mark)
    # The runtime is still healthy.
    assert b'"status":"ok"' in rt.health()


HANGING_HANDLER = """#!/bin/sh
# {mark}
while read line; do
  case "$line" in
    *HANG*) sleep 1000 ;;
    *) printf '{{"type":"result","text":"answered"}}\\n' ;;
  esac
done
"""


def test_hung_handler_is_killed_and_the_next_request_works(start_runtime, tmp_path):
    mark = marker()
    handler = tmp_path / "hang.sh"
    handler.write_text(HANGING_HANDLER.format(mark=mark))
    handler.chmod(handler.stat().st_mode | stat.S_IXUSR)
    rt = start_runtime("--handler", str(handler), "--handler-cancel-grace", "300ms", "--kill-grace", "300ms")
    options = QueryOptions(system_prompt="", model="m")

    async def scenario():
        client = RuntimeUseClient(ws_url=rt.url)
        with pytest.raises(TimeoutError):
            await client.query("HANG", QueryOptions(system_prompt="", model="m", timeout=1))
        # The dropped connection cancels; the handler ignores the cancel and is killed.
        gone = await asyncio.to_thread(wait_until, lambda: not pgrep(mark), 5)
        result = await client.query("hello", options)
        return gone, result

    gone, result = run(scenario())
    assert gone, "hung handler still running"
    assert result.data.text == "answered"


def test_upload_target_down_still_completes_and_logs_the_failure(start_runtime, tmp_path):
    rt = start_runtime("--agent", "echo")
    out = tmp_path / "out"
    dead_port = free_port()  # nothing listens there

    async def on_upload(request):
        return ArtifactUploadResult(
            presigned_url=f"http://127.0.0.1:{dead_port}/bucket/{request.filename}?X-Amz-Signature=topsecretsig",
            content_type="text/plain",
        )

    async def scenario():
        client = RuntimeUseClient(ws_url=rt.url)
        started = time.monotonic()
        result = await client.execute_commands(
            [CommandInterface(command=f"echo data > {out}/a.txt")],
            ExecuteCommandsOptions(artifacts_dirs=[str(out)], on_artifact_upload_request=on_upload),
        )
        return result, time.monotonic() - started

    result, took = run(scenario())
    assert result.results[0].exit_code == 0
    assert took < 10, took
    log = rt.log()
    assert "a.txt" in log and "upload" in log.lower()
    assert "topsecretsig" not in log


class StallingHandler(http.server.BaseHTTPRequestHandler):
    """Sends headers and a little body, then stalls until the test ends."""

    release = threading.Event()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        self.wfile.write(b"x" * 10)
        self.wfile.flush()
        self.release.wait(30)

    def log_message(self, *args):
        pass


def test_stalled_download_fails_clearly_within_the_timeout(start_runtime, tmp_path):
    rt = start_runtime("--agent", "echo", "--http-read-timeout", "300ms")

    async def scenario(url):
        client = RuntimeUseClient(ws_url=rt.url)
        started = time.monotonic()
        with pytest.raises(AgentRuntimeError) as err:
            await client.execute_commands(
                [CommandInterface(command="echo never")],
                ExecuteCommandsOptions(pre_execution_downloadables=[
                    RuntimeEnvironmentDownloadableInterface(download_url=url, working_dir=str(tmp_path / "dl"))
                ]),
            )
        return err.value, time.monotonic() - started

    try:
        with http_server(StallingHandler) as base:
            error, took = run(scenario(f"{base}/big.bin"))
    finally:
        StallingHandler.release.set()  # let the stalled handler thread end
    assert error.error.startswith("Download failed"), error.error
    assert "big.bin" in error.error and "timed out" in error.error, error.error
    assert took < 8, took


class FileHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"payload"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_write_error_during_download_is_surfaced(start_runtime, tmp_path):
    """The download's destination cannot be written (a directory holds its
    name): the request fails with the reason, the session goes on."""
    workdir = tmp_path / "dl"
    (workdir / "data.txt").mkdir(parents=True)
    rt = start_runtime("--agent", "echo")
    with http_server(FileHandler) as base:
        error, after = failed_download_then_a_command(rt, f"{base}/data.txt", workdir)
    assert error.error.startswith("Download failed"), error.error
    assert after == "fine\n"


class BigFileHandler(http.server.BaseHTTPRequestHandler):
    size = 3 * 1024 * 1024

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        chunk = b"z" * 65536
        for _ in range(self.size // len(chunk)):
            self.wfile.write(chunk)

    def log_message(self, *args):
        pass


def limit_file_size():
    """In the runtime's process: files may not grow past 1 MiB (a full
    disk, as far as the writer can tell). SIGXFSZ is ignored so the write
    fails with EFBIG instead of the signal killing the process."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))


def test_disk_full_during_download_is_a_clear_error(start_runtime, tmp_path):
    rt = start_runtime("--agent", "echo", preexec_fn=limit_file_size)
    workdir = tmp_path / "dl"
    with http_server(BigFileHandler) as base:
        error, after = failed_download_then_a_command(rt, f"{base}/big.bin", workdir)
    assert error.error.startswith("Download failed"), error.error
    assert "big.bin" in error.error and "too large" in error.error.lower(), error.error
    assert after == "fine\n"
    # The partial file is not left behind under any name.
    assert not any(p.is_file() for p in workdir.rglob("*")), list(workdir.rglob("*"))


def test_health_stays_responsive_while_commands_run(start_runtime):
    rt = start_runtime("--agent", "echo")
    mark = marker()

    async def scenario():
        client = RuntimeUseClient(ws_url=rt.url)
        task = asyncio.create_task(client.execute_commands(
            [CommandInterface(command=f"yes {mark} | head -c 50000000 > /dev/null; sleep 1 # {mark}")],
            ExecuteCommandsOptions(),
        ))
        await asyncio.to_thread(wait_until, lambda: bool(pgrep(mark)))
        timings = []
        for _ in range(5):
            started = time.monotonic()
            body = await asyncio.to_thread(rt.health)
            timings.append(time.monotonic() - started)
            assert b'"status":"ok"' in body
        await task
        return timings

    timings = run(scenario())
    assert max(timings) < 0.5, timings


def test_cancel_during_the_artifact_flush_does_not_wait_out_its_bound(start_runtime, tmp_path):
    """A client that never answers an announcement holds the flush (30 s by
    default); a cancel ends the request at once."""
    rt = start_runtime("--agent", "echo")
    out = tmp_path / "out"

    async def scenario():
        async with raw_connect(rt.url) as client:
            await client.send(command_execution([f"mkdir -p {out} && echo x > {out}/a.txt"],
                                                artifacts_dirs=[str(out)]))
            while (await client.recv())["message_type"] != "artifact_upload_request_message":
                pass
            started = time.monotonic()
            await client.send({"message_type": "cancel_message"})
            terminal = (await client.until_terminal(timeout=10))[-1]
            return terminal, time.monotonic() - started

    terminal, took = run(scenario())
    assert terminal["message_type"] == "error_message"
    assert terminal["error"] == "Request cancelled"
    assert took < 3, took
