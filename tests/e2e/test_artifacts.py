"""Artifacts: files written into `artifacts_dirs` are announced, the real
client's `on_artifact_upload_request` answers with a PUT URL, and the
runtime PUTs the bytes to a real HTTP server on 127.0.0.1.

Every request flushes its artifacts before its terminal message, so in the
one-shot flow (which closes the socket on the terminal) an upload is checked
the moment the call returns, without waiting."""
import asyncio
import os
import pathlib

import pytest
from runtimeuse_client import (
    CommandInterface,
    ExecuteCommandsOptions,
    RuntimeUseClient,
)

from helpers import command_execution, of_type, qopts, raw_connect, run, terminal_of, wait_until
from http_fixtures import ArtifactSink

BINARY = bytes(range(256)) * 40 + b"\r\n\x00end"


@pytest.fixture
def sink(http_server):
    return ArtifactSink(http_server)


@pytest.fixture
def adir(tmp_path) -> pathlib.Path:
    """A watched directory (canonical path, created by the runtime)."""
    return tmp_path.resolve() / "artifacts"


def cmds(*texts, cwd=None):
    return [CommandInterface(command=t, cwd=cwd) for t in texts]


def query(rt, prompt, sink, dirs, **kw):
    client = RuntimeUseClient(ws_url=rt.url)
    opts = qopts(artifacts_dirs=[str(d) for d in dirs], on_artifact_upload_request=sink.callback, **kw)
    return run(client.query(prompt, opts))


def execute(rt, commands, sink, dirs, **kw):
    client = RuntimeUseClient(ws_url=rt.url)
    opts = ExecuteCommandsOptions(
        artifacts_dirs=[str(d) for d in dirs], on_artifact_upload_request=sink.callback, **kw
    )
    return run(client.execute_commands(commands, opts))


def source_file(tmp_path, name, content: bytes) -> pathlib.Path:
    """A file outside the watched dirs for commands to `cp` in (any bytes)."""
    src = tmp_path / "sources"
    src.mkdir(exist_ok=True)
    path = src / name
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------
# Where artifacts come from
# ---------------------------------------------------------------------------
def test_from_pre_agent_commands(echo_runtime, sink, adir, tmp_path):
    src = source_file(tmp_path, "blob.bin", BINARY)
    result = query(
        echo_runtime,
        "ECHO:done",
        sink,
        [adir],
        pre_agent_invocation_commands=cmds(f"printf 'pre content\\n' > {adir}/pre.txt", f"cp {src} {adir}/blob.bin"),
    )
    assert result.data.text == "done"
    sink.assert_uploaded_now(adir / "pre.txt", b"pre content\n")
    sink.assert_uploaded_now(adir / "blob.bin", BINARY)
    assert sorted(sink.announced()) == [str(adir / "blob.bin"), str(adir / "pre.txt")]


def test_from_the_agent_one_shot_is_uploaded_before_the_terminal(echo_runtime, sink, adir):
    """The echo agent writes the file and returns at once; the one-shot client
    closes the socket on the terminal, so the PUT must already be done."""
    result = query(echo_runtime, f"WRITE_FILE:{adir}/agent.txt written by the agent", sink, [adir])
    assert result.data.text == f"wrote {adir}/agent.txt"
    # No waiting: the upload finished before the result was sent.
    sink.assert_uploaded_now(adir / "agent.txt", b"written by the agent")


def test_from_the_agent_in_a_new_subdirectory(echo_runtime, sink, adir):
    query(echo_runtime, f"WRITE_FILE:{adir}/new/sub/dir/deep.txt deep content", sink, [adir])
    sink.assert_uploaded_now(adir / "new/sub/dir/deep.txt", b"deep content")


def test_from_post_agent_commands_many_files_in_the_last_moment(echo_runtime, sink, adir):
    result = query(
        echo_runtime,
        "ECHO:ok",
        sink,
        [adir],
        post_agent_invocation_commands=cmds(
            f"for i in $(seq 1 25); do printf 'file %s\\n' $i > {adir}/post-$i.txt; done"
        ),
    )
    assert result.data.text == "ok"
    for i in range(1, 26):
        sink.assert_uploaded_now(adir / f"post-{i}.txt", f"file {i}\n".encode())
    assert len(sink.announced()) == 25


def test_from_execute_commands(echo_runtime, sink, adir, tmp_path):
    src = source_file(tmp_path, "data.bin", BINARY)
    result = execute(echo_runtime, cmds(f"cp {src} {adir}/copied.bin", "echo hi > out.txt", cwd=str(adir)), sink, [adir])
    assert [r.exit_code for r in result.results] == [0, 0]
    sink.assert_uploaded_now(adir / "copied.bin", BINARY)
    sink.assert_uploaded_now(adir / "out.txt", b"hi\n")


def test_pre_agent_and_post_sources_together(echo_runtime, sink, adir):
    query(
        echo_runtime,
        f"WRITE_FILE:{adir}/b-agent.txt from agent",
        sink,
        [adir],
        pre_agent_invocation_commands=cmds(f"echo from pre > {adir}/a-pre.txt"),
        post_agent_invocation_commands=cmds(f"echo from post > {adir}/c-post.txt"),
    )
    sink.assert_uploaded_now(adir / "a-pre.txt", b"from pre\n")
    sink.assert_uploaded_now(adir / "b-agent.txt", b"from agent")
    sink.assert_uploaded_now(adir / "c-post.txt", b"from post\n")


def test_several_directories_in_one_request(echo_runtime, sink, tmp_path):
    root = tmp_path.resolve()
    d1, d2, d3 = root / "one", root / "two" / "nested", root / "three"
    d1.mkdir()
    query(
        echo_runtime,
        f"WRITE_FILE:{d3}/three.txt third",
        sink,
        [d1, d2, d3],
        pre_agent_invocation_commands=cmds(f"echo first > {d1}/one.txt"),
        post_agent_invocation_commands=cmds(f"echo second > {d2}/two.txt"),
    )
    sink.assert_uploaded_now(d1 / "one.txt", b"first\n")
    sink.assert_uploaded_now(d2 / "two.txt", b"second\n")
    sink.assert_uploaded_now(d3 / "three.txt", b"third")
    assert d2.is_dir() and d3.is_dir()


def test_same_name_in_two_subdirectories_are_two_uploads(echo_runtime, sink, adir):
    execute(
        echo_runtime,
        cmds(
            f"mkdir -p {adir}/a {adir}/b",
            f"printf 'report from a' > {adir}/a/report.txt",
            f"printf 'report from b, longer' > {adir}/b/report.txt",
        ),
        sink,
        [adir],
    )
    sink.assert_uploaded_now(adir / "a/report.txt", b"report from a")
    sink.assert_uploaded_now(adir / "b/report.txt", b"report from b, longer")
    reqs = sorted((r.filename, r.filepath) for r in sink.requests)
    assert reqs == [("report.txt", str(adir / "a/report.txt")), ("report.txt", str(adir / "b/report.txt"))]


def test_callback_gets_base_name_and_absolute_path(echo_runtime, sink, adir):
    query(echo_runtime, f"WRITE_FILE:{adir}/sub/deeper/name.with.dots.txt x", sink, [adir])
    assert len(sink.requests) == 1
    req = sink.requests[0]
    assert req.filename == "name.with.dots.txt"
    assert req.filepath == str(adir / "sub/deeper/name.with.dots.txt")
    assert os.path.isabs(req.filepath)
    assert os.path.realpath(req.filepath) == req.filepath


def test_put_carries_content_type_and_presigned_query(echo_runtime, http_server, adir):
    sink = ArtifactSink(http_server, content_type="application/x-e2e+json")
    query(echo_runtime, f'WRITE_FILE:{adir}/doc.json {{"k": 1}}', sink, [adir])
    sink.assert_uploaded_now(adir / "doc.json", b'{"k": 1}')
    put = http_server.puts(sink.key(adir / "doc.json"))[0]
    assert put.headers.get("content-type") == "application/x-e2e+json"
    assert put.headers.get("content-length") == str(len(b'{"k": 1}'))
    assert put.query == "X-Amz-Signature=e2e-sig&X-Amz-Expires=60"


# ---------------------------------------------------------------------------
# Ignore rules
# ---------------------------------------------------------------------------
def test_ignore_content_from_the_request(echo_runtime, sink, adir):
    execute(
        echo_runtime,
        cmds(f"echo log line > {adir}/run.log", f"echo text > {adir}/keep.txt", f"mkdir -p {adir}/s && echo x > {adir}/s/deep.log"),
        sink,
        [adir],
        artifacts_ignore_content="*.log\n",
    )
    sink.assert_uploaded_now(adir / "keep.txt", b"text\n")
    assert sink.announced() == [str(adir / "keep.txt")]
    assert sink.uploaded_paths() == {str(adir / "keep.txt")}


def test_artifactignore_file_in_the_directory(echo_runtime, sink, adir):
    adir.mkdir(parents=True)
    (adir / ".artifactignore").write_text("*.tmp\nbuild/\n")
    query(
        echo_runtime,
        "ECHO:x",
        sink,
        [adir],
        pre_agent_invocation_commands=cmds(
            f"echo t > {adir}/scratch.tmp",
            f"mkdir -p {adir}/build && echo b > {adir}/build/out.txt",
            f"echo keep > {adir}/keep.txt",
            f"echo changed >> {adir}/.artifactignore",
        ),
    )
    sink.assert_uploaded_now(adir / "keep.txt", b"keep\n")
    assert sink.announced() == [str(adir / "keep.txt")]
    assert sink.uploaded_paths() == {str(adir / "keep.txt")}


def test_ignore_content_takes_precedence_over_artifactignore(echo_runtime, sink, adir):
    adir.mkdir(parents=True)
    (adir / ".artifactignore").write_text("*.txt\n")
    execute(
        echo_runtime,
        cmds(f"echo a > {adir}/a.txt", f"echo b > {adir}/b.log"),
        sink,
        [adir],
        artifacts_ignore_content="*.log\n",
    )
    sink.assert_uploaded_now(adir / "a.txt", b"a\n")
    assert sink.announced() == [str(adir / "a.txt")]


def test_default_ignores(echo_runtime, sink, adir):
    ignored = ["node_modules/x.js", "pkg/node_modules/dep/index.js", "__pycache__/m.pyc", ".venv/lib.py", "dist/out.js"]
    script = " && ".join(f"mkdir -p $(dirname {adir}/{p}) && echo ignored > {adir}/{p}" for p in ignored)
    execute(echo_runtime, cmds(script, f"echo kept > {adir}/kept.js"), sink, [adir])
    sink.assert_uploaded_now(adir / "kept.js", b"kept\n")
    assert sink.announced() == [str(adir / "kept.js")]
    assert sink.uploaded_paths() == {str(adir / "kept.js")}


# ---------------------------------------------------------------------------
# Upload retries, sessions, late files
# ---------------------------------------------------------------------------
def test_upload_target_failing_twice_then_succeeding(echo_runtime, http_server, sink, adir, tmp_path):
    content = BINARY * 3
    src = source_file(tmp_path, "retry.bin", content)
    target = adir / "retry.bin"
    http_server.flaky_put(sink.key(target), failures=2, status=500)
    query(echo_runtime, "ECHO:x", sink, [adir], post_agent_invocation_commands=cmds(f"cp {src} {target}"))
    attempts = http_server.puts(sink.key(target), ok_only=False)
    assert [a.status for a in attempts] == [500, 500, 200]
    assert all(a.body == content for a in attempts), "every attempt must carry the whole file"
    sink.assert_uploaded_now(target, content)
    assert len(sink.requests) == 1, "one announcement, retried by the runtime"


def test_changed_file_is_uploaded_again_on_a_session(echo_runtime, sink, adir):
    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        opts = ExecuteCommandsOptions(artifacts_dirs=[str(adir)], on_artifact_upload_request=sink.callback)
        async with client.session() as s:
            await s.execute_commands(cmds(f"printf v1 > {adir}/x.txt"), opts)
            assert sink.uploaded(adir / "x.txt") == [b"v1"]
            await s.execute_commands(cmds(f"printf 'version two' > {adir}/x.txt"), opts)
            assert sink.uploaded(adir / "x.txt") == [b"v1", b"version two"]

    run(main())


def test_late_file_on_a_session_is_uploaded_by_end_session(echo_runtime, sink, adir):
    """A background job writes the file after its request returned; leaving
    the session (end_session_message) must drain it: uploaded by the time the
    `async with` exits."""
    late = adir / "late.txt"

    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        opts = ExecuteCommandsOptions(artifacts_dirs=[str(adir)], on_artifact_upload_request=sink.callback)
        async with client.session() as s:
            r = await s.execute_commands(cmds(f"(sleep 0.5; echo late > {late}) &"), opts)
            assert [x.exit_code for x in r.results] == [0]
            assert not late.exists(), "the command must return before the writer runs"
            assert sink.uploaded(late) == []
            # The file is written while no request runs; then the session ends.
            assert await asyncio.to_thread(wait_until, lambda: late.exists() and late.read_bytes() == b"late\n", 10)
        # end_session_confirm received: the late upload is done.
        sink.assert_uploaded_now(late, b"late\n")

    run(main())


def test_late_file_survives_a_request_without_artifacts_on_a_session(start_runtime, sink, adir):
    """A file appears between requests; the next request asks for no
    artifacts (so the real client has no callback and ignores any
    announcement it reads meanwhile); leaving the session must still upload
    the file. The flush bound is lowered so a failure does not cost 30 s."""
    rt = start_runtime("--agent", "echo", "--artifact-flush-timeout", "5s")
    late = adir / "after-query.txt"

    async def main():
        client = RuntimeUseClient(ws_url=rt.url)
        async with client.session() as s:
            await s.query(
                "ECHO:x",
                qopts(
                    artifacts_dirs=[str(adir)],
                    on_artifact_upload_request=sink.callback,
                    post_agent_invocation_commands=cmds(f"(sleep 0.3; printf 'after the query' > {late}) &"),
                ),
            )
            assert await asyncio.to_thread(wait_until, lambda: late.exists() and late.read_bytes() == b"after the query", 10)
            # A plain request in between (no artifacts options) must not lose it either.
            await s.execute_commands(cmds("true"), ExecuteCommandsOptions())
        sink.assert_uploaded_now(late, b"after the query")

    run(main())


# ---------------------------------------------------------------------------
# Security
# ---------------------------------------------------------------------------
def test_client_cannot_get_unannounced_files_uploaded(echo_runtime, http_server, sink, adir):
    passwd = pathlib.Path("/etc/passwd")
    secret_bytes = passwd.read_bytes()

    def bogus(filepath):
        return {
            "message_type": "artifact_upload_response_message",
            "filename": os.path.basename(filepath),
            "filepath": str(filepath),
            "presigned_url": sink.url_for(passwd),
            "content_type": "text/plain",
        }

    async def main():
        async with raw_connect(echo_runtime.url) as c:
            # Nothing running, nothing announced.
            await c.send(bogus(passwd))
            await c.send(
                command_execution(
                    [f"printf 'real artifact' > {adir}/real.txt"],
                    artifacts_dirs=[str(adir)],
                )
            )
            messages = []
            while True:
                m = await c.recv()
                messages.append(m)
                if m["message_type"] == "artifact_upload_request_message":
                    # Answer with forged paths first, then the real answer.
                    await c.send(bogus(passwd))
                    await c.send(bogus(f"{adir}/../../../../../../etc/passwd"))
                    await c.send(bogus(f"{adir}/passwd"))
                    await c.send(
                        {
                            "message_type": "artifact_upload_response_message",
                            "filename": m["filename"],
                            "filepath": m["filepath"],
                            "presigned_url": sink.url_for(m["filepath"]),
                            "content_type": "text/plain",
                        }
                    )
                if m["message_type"] in ("command_execution_result_message", "error_message"):
                    break
            assert terminal_of(messages)["message_type"] == "command_execution_result_message", messages
            assert [m["filepath"] for m in of_type(messages, "artifact_upload_request_message")] == [str(adir / "real.txt")]
            # After the request, once more (nothing pending at all now).
            await c.send(bogus(passwd))
            r = await c.request(command_execution(["echo alive"]))
            assert terminal_of(r)["message_type"] == "command_execution_result_message", r

    run(main())
    sink.assert_uploaded_now(adir / "real.txt", b"real artifact")
    # Give any stray upload a chance to show up: the server wakes us on every request.
    stray = http_server.wait_for(lambda: len(http_server.requests("PUT")) > 1, 1.0)
    puts = [(r.path, len(r.body)) for r in http_server.requests("PUT")]
    assert not stray, f"unexpected PUTs: {puts}"
    assert http_server.puts(sink.key(passwd), ok_only=False) == []
    assert all(r.body != secret_bytes for r in http_server.requests())


def test_symlinks_in_an_artifacts_dir_are_not_followed(echo_runtime, http_server, sink, adir):
    secret_bytes = pathlib.Path("/etc/passwd").read_bytes()
    execute(
        echo_runtime,
        cmds(
            f"ln -s /etc/passwd {adir}/passwd.txt",
            f"ln -s /etc {adir}/etc-dir",
            f"echo regular > {adir}/regular.txt",
        ),
        sink,
        [adir],
    )
    sink.assert_uploaded_now(adir / "regular.txt", b"regular\n")
    assert sink.announced() == [str(adir / "regular.txt")]
    assert all(r.body != secret_bytes for r in http_server.requests("PUT"))
