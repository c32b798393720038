"""Downloads: `pre_agent_downloadables` / `pre_execution_downloadables`,
fetched from a real HTTP server on 127.0.0.1 before anything else runs."""
import io
import os
import stat
import tarfile
import time
import zipfile

import pytest
from runtimeuse_client import (
    AgentRuntimeError,
    CommandInterface,
    ExecuteCommandsOptions,
    RuntimeUseClient,
)
from runtimeuse_client import (
    RuntimeEnvironmentDownloadableInterface as Downloadable,
)

from helpers import qopts, run
from http_fixtures import GeneratedBody, MiB, RssSampler

BINARY = bytes(range(256)) * 64 + b"\x00\xff tail"


def cmds(*texts, cwd=None):
    return [CommandInterface(command=t, cwd=cwd) for t in texts]


def dl(url, working_dir) -> Downloadable:
    return Downloadable(download_url=url, working_dir=str(working_dir))


def execute(url, commands, downloads, **kw):
    client = RuntimeUseClient(ws_url=url)
    return run(client.execute_commands(commands, ExecuteCommandsOptions(pre_execution_downloadables=downloads, **kw)))


def stdouts(result):
    return [(r.exit_code, r.stdout) for r in result.results]


def entries(directory) -> list[str]:
    return sorted(os.listdir(directory))


def download_error(url, commands, downloads) -> str:
    with pytest.raises(AgentRuntimeError) as info:
        execute(url, commands, downloads)
    return str(info.value)


def zip_bytes(members) -> bytes:
    """members: (name, data-or-None for a directory, mode)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 5))
            if data is None:
                info.external_attr = (stat.S_IFDIR | mode) << 16 | 0x10
                zf.writestr(info, b"")
            else:
                info.external_attr = (stat.S_IFREG | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
    return buf.getvalue()


def tar_gz_bytes(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.mtime = 1_700_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


SCRIPT = b"#!/bin/sh\necho \"script ran in $(pwd)\"\ncat \"$(dirname \"$0\")/../conf/deep/settings.json\"\n"
SETTINGS = b'{"nested": true}\n'
ARCHIVE_MEMBERS = [
    ("tool/", None, 0o755),
    ("tool/bin/", None, 0o755),
    ("tool/bin/run.sh", SCRIPT, 0o755),
    ("tool/conf/deep/settings.json", SETTINGS, 0o644),
    ("tool/data.bin", BINARY, 0o644),
]


# ---------------------------------------------------------------------------
# Files land before anything runs
# ---------------------------------------------------------------------------
def test_single_file_lands_byte_for_byte_before_commands(echo_runtime, http_server, tmp_path):
    url = http_server.serve("/files/notes.txt", b"hello from the download\nsecond line\n")
    bin_url = http_server.serve("/files/blob.bin", BINARY)
    work = tmp_path / "not" / "yet" / "there"
    result = execute(
        echo_runtime.url,
        cmds("cat notes.txt", "wc -c < blob.bin", "sha256sum blob.bin | cut -d' ' -f1", cwd=str(work)),
        [dl(url, work), dl(bin_url, work)],
    )
    import hashlib

    assert stdouts(result) == [
        (0, "hello from the download\nsecond line\n"),
        (0, f"{len(BINARY)}\n"),
        (0, hashlib.sha256(BINARY).hexdigest() + "\n"),
    ]
    assert (work / "notes.txt").read_bytes() == b"hello from the download\nsecond line\n"
    assert (work / "blob.bin").read_bytes() == BINARY
    assert entries(work) == ["blob.bin", "notes.txt"], "no temporary files are left behind"


def test_download_before_pre_agent_commands_and_agent(echo_runtime, http_server, tmp_path):
    url = http_server.serve("/input.txt", b"agent input")
    work = tmp_path / "agent-work"
    seen = []

    async def on_output(m):
        seen.append(m.text)

    client = RuntimeUseClient(ws_url=echo_runtime.url)
    result = run(
        client.query(
            f"READ_FILE:{work}/input.txt",
            qopts(
                pre_agent_downloadables=[dl(url, work)],
                pre_agent_invocation_commands=cmds(f"cat {work}/input.txt"),
                on_command_output=on_output,
            ),
        )
    )
    assert "".join(seen) == "agent input"
    assert result.data.text == "agent input"


def test_multiple_downloads_in_order(echo_runtime, http_server, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    urls = [
        http_server.serve("/v1/data.txt", b"first version"),
        http_server.serve("/other/extra.txt", b"extra"),
        http_server.serve("/v2/data.txt", b"second version"),
        http_server.serve("/v3/data.txt", b"elsewhere"),
    ]
    result = execute(
        echo_runtime.url,
        cmds(f"cat {a}/data.txt {a}/extra.txt {b}/data.txt"),
        [dl(urls[0], a), dl(urls[1], a), dl(urls[2], a), dl(urls[3], b)],
    )
    # The later download of the same name into the same dir wins: order kept.
    assert stdouts(result) == [(0, "second versionextraelsewhere")]
    assert [r.path for r in http_server.requests("GET")] == ["/v1/data.txt", "/other/extra.txt", "/v2/data.txt", "/v3/data.txt"]
    assert entries(a) == ["data.txt", "extra.txt"]
    assert entries(b) == ["data.txt"]


def test_download_follows_redirects(echo_runtime, http_server, tmp_path):
    http_server.serve("/storage/blob-7f3a", b"redirected body")
    url = http_server.redirect("/get/report.txt", http_server.url("/storage/blob-7f3a"), status=302)
    work = tmp_path / "w"
    result = execute(echo_runtime.url, cmds("cat *", cwd=str(work)), [dl(url, work)])
    assert stdouts(result) == [(0, "redirected body")]
    assert [(r.path, r.status) for r in http_server.requests("GET")] == [("/get/report.txt", 302), ("/storage/blob-7f3a", 200)]
    assert len(entries(work)) == 1


def test_transient_server_errors_are_retried(echo_runtime, http_server, tmp_path):
    url = http_server.flaky("/flaky.txt", b"eventually", failures=2, status=503)
    work = tmp_path / "w"
    result = execute(echo_runtime.url, cmds("cat flaky.txt", cwd=str(work)), [dl(url, work)])
    assert stdouts(result) == [(0, "eventually")]
    assert [r.status for r in http_server.requests("GET", "/flaky.txt")] == [503, 503, 200]


# ---------------------------------------------------------------------------
# Archives
# ---------------------------------------------------------------------------
def _check_unpacked(work):
    assert entries(work) == ["tool"], f"archive removed, nothing else left: {entries(work)}"
    script = work / "tool" / "bin" / "run.sh"
    assert script.read_bytes() == SCRIPT
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert (work / "tool" / "conf" / "deep" / "settings.json").read_bytes() == SETTINGS
    assert stat.S_IMODE((work / "tool" / "conf" / "deep" / "settings.json").stat().st_mode) & 0o111 == 0
    assert (work / "tool" / "data.bin").read_bytes() == BINARY


@pytest.mark.parametrize(
    "name,make", [("bundle.zip", zip_bytes), ("bundle.tar.gz", tar_gz_bytes), ("bundle.tgz", tar_gz_bytes)]
)
def test_archive_is_unpacked_removed_and_runnable(echo_runtime, http_server, tmp_path, name, make):
    url = http_server.serve(f"/dist/{name}", make(ARCHIVE_MEMBERS)) + "?sig=abc"
    work = tmp_path / "unpack-here"
    result = execute(
        echo_runtime.url,
        cmds("./tool/bin/run.sh", "ls -A", cwd=str(work)),
        [dl(url, work)],
    )
    assert stdouts(result) == [
        (0, f"script ran in {work}\n" + SETTINGS.decode()),
        (0, "tool\n"),
    ]
    _check_unpacked(work)


def test_archive_for_the_agent_flow(echo_runtime, http_server, tmp_path):
    url = http_server.serve("/a/kit.zip", zip_bytes(ARCHIVE_MEMBERS))
    work = tmp_path / "kit"
    client = RuntimeUseClient(ws_url=echo_runtime.url)
    result = run(
        client.query(
            f"READ_FILE:{work}/tool/conf/deep/settings.json",
            qopts(
                pre_agent_downloadables=[dl(url, work)],
                pre_agent_invocation_commands=[CommandInterface(command="./tool/bin/run.sh", cwd=str(work))],
            ),
        )
    )
    assert result.data.text == SETTINGS.decode()
    _check_unpacked(work)


# ---------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("status", [404, 500])
def test_http_error_is_download_failed_naming_the_url(echo_runtime, http_server, tmp_path, status):
    url = http_server.fail(f"/missing/file-{status}.txt", status)
    work = tmp_path / "w"
    marker = tmp_path / "commands-ran"
    text = download_error(echo_runtime.url, cmds(f"touch {marker}"), [dl(url, work)])
    assert text.startswith("Download failed"), text
    assert url in text, text
    assert str(status) in text, text
    assert not marker.exists(), "commands must not run after a failed download"
    assert not work.exists() or entries(work) == [], entries(work)
    assert len(http_server.requests("GET")) >= 1


def test_failure_does_not_leak_the_presigned_query(echo_runtime, http_server, tmp_path):
    base = http_server.fail("/private/thing.bin", 403)
    text = download_error(echo_runtime.url, cmds("true"), [dl(base + "?X-Amz-Signature=topsecret123", tmp_path / "w")])
    assert text.startswith("Download failed"), text
    assert base in text and "topsecret123" not in text, text


def test_failure_stops_the_list(echo_runtime, http_server, tmp_path):
    first = http_server.fail("/gone.txt", 404)
    second = http_server.serve("/later.txt", b"later")
    text = download_error(echo_runtime.url, cmds("true"), [dl(first, tmp_path / "w"), dl(second, tmp_path / "w")])
    assert text.startswith("Download failed") and first in text, text
    assert [r.path for r in http_server.requests("GET")] == ["/gone.txt"]


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
@pytest.mark.parametrize("evil", ["dotdot", "absolute"])
def test_escaping_archive_entries_are_rejected(echo_runtime, http_server, tmp_path, fmt, evil):
    outer = tmp_path / "outer"
    work = outer / "work"
    work.mkdir(parents=True)
    target = outer / "evil.txt" if evil == "dotdot" else tmp_path / f"abs-evil-{fmt}.txt"
    name = "../evil.txt" if evil == "dotdot" else str(target)
    members = [("fine.txt", b"fine", 0o644), (name, b"pwned", 0o644)]
    data = zip_bytes(members) if fmt == "zip" else tar_gz_bytes(members)
    url = http_server.serve(f"/slip.{fmt}", data)
    marker = tmp_path / "commands-ran"
    text = download_error(echo_runtime.url, cmds(f"touch {marker}"), [dl(url, work)])
    assert text.startswith("Download failed"), text
    assert url in text, text
    assert not target.exists(), f"{target} was written"
    assert entries(outer) == ["work"], entries(outer)
    assert not marker.exists()
    leftovers = [n for n in entries(work) if n.endswith((".zip", ".gz", ".part")) or "evil" in n]
    assert leftovers == [], leftovers
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*")), "evil.txt landed somewhere"


def test_file_url_is_rejected(echo_runtime, tmp_path):
    work = tmp_path / "w"
    text = download_error(echo_runtime.url, cmds("true"), [dl("file:///etc/passwd", work)])
    assert text.startswith("Download failed"), text
    assert "file:///etc/passwd" in text, text
    assert not (work / "passwd").exists()


def test_session_stays_usable_after_failed_downloads(echo_runtime, http_server, tmp_path):
    bad = http_server.fail("/nope.txt", 404)
    good = http_server.serve("/yes.txt", b"fine now")
    work = tmp_path / "w"

    async def main():
        client = RuntimeUseClient(ws_url=echo_runtime.url)
        async with client.session() as s:
            for downloads in ([dl(bad, work)], [dl("file:///etc/passwd", work)]):
                with pytest.raises(AgentRuntimeError) as info:
                    await s.execute_commands(cmds("true"), ExecuteCommandsOptions(pre_execution_downloadables=downloads))
                assert str(info.value).startswith("Download failed")
            with pytest.raises(AgentRuntimeError) as info:
                await s.query("ECHO:never", qopts(pre_agent_downloadables=[dl(bad, work)]))
            assert str(info.value).startswith("Download failed")

            r = await s.execute_commands(cmds("echo still here"), ExecuteCommandsOptions())
            assert stdouts(r) == [(0, "still here\n")]
            r = await s.execute_commands(
                cmds(f"cat {work}/yes.txt"), ExecuteCommandsOptions(pre_execution_downloadables=[dl(good, work)])
            )
            assert stdouts(r) == [(0, "fine now")]
            q = await s.query(f"READ_FILE:{work}/yes.txt", qopts(pre_agent_downloadables=[dl(good, work)]))
            assert q.data.text == "fine now"

    run(main())


# ---------------------------------------------------------------------------
# Large files stream through flat memory
# ---------------------------------------------------------------------------
def test_large_download_streams_with_flat_memory(echo_runtime, http_server, tmp_path):
    body = GeneratedBody(200 * MiB, seed=11)
    expected = body.sha256()
    url = http_server.generated("/big/blob.bin", body)
    work = tmp_path / "big"
    pid = echo_runtime.proc.pid
    started = time.monotonic()
    with RssSampler(pid, every=0.01) as rss:
        result = execute(
            echo_runtime.url,
            cmds("stat -c %s blob.bin", "sha256sum blob.bin | cut -d' ' -f1", cwd=str(work)),
            [dl(url, work)],
        )
    elapsed = time.monotonic() - started
    assert stdouts(result) == [(0, f"{body.size}\n"), (0, expected + "\n")]
    assert entries(work) == ["blob.bin"]
    assert len(rss.samples) >= 10, f"too few RSS samples ({len(rss.samples)}) to judge memory"
    peak_mib = rss.peak_kib / 1024
    assert peak_mib < 64, f"runtime RSS peaked at {peak_mib:.1f} MiB while downloading 200 MiB"
    assert elapsed < 30, f"200 MiB download took {elapsed:.1f}s"


def test_host_names_resolve(echo_runtime, http_server, tmp_path):
    # The released binary is static (musl, or glibc without NSS modules):
    # a URL by host name must still resolve, from /etc/hosts here.
    url = http_server.serve("/by-name.txt", b"found by name\n").replace("127.0.0.1", "localhost")
    work = tmp_path / "by-name"
    result = execute(echo_runtime.url, cmds("cat by-name.txt", cwd=str(work)), [dl(url, work)])
    assert stdouts(result) == [(0, "found by name\n")]
