"""Downloads and uploads through a proxy, as in sandboxes whose only way
out is one: `HTTPS_PROXY` (a CONNECT tunnel), `HTTP_PROXY` (absolute-form
requests) and `NO_PROXY`, read from the runtime's environment.

The proxy and the servers are real, on 127.0.0.1; the proxy records every
request line, so each test can tell whether the runtime went through it."""
from runtimeuse_client import CommandInterface
from test_downloads import dl, execute

from http_fixtures import ArtifactSink, HttpFixture


def no_proxy_env(**env) -> dict:
    """The runtime's environment: only the proxy variables a test sets."""
    cleared = {name: "" for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                     "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")}
    return {**cleared, **env}


def test_https_downloads_tunnel_through_https_proxy(start_runtime, forward_proxy, cert, tmp_path):
    cert_file, key_file = cert
    origin = HttpFixture(tls=(cert_file, key_file))
    try:
        url = origin.serve("/tool.txt", b"fetched over TLS, through the tunnel")
        rt = start_runtime("--agent", "echo", "--ca-cert", cert_file,
                           env=no_proxy_env(HTTPS_PROXY=forward_proxy.url))
        result = execute(rt.url, [CommandInterface(command="cat tool.txt", cwd=str(tmp_path))],
                         [dl(url, tmp_path)])
        assert result.results[0].stdout == "fetched over TLS, through the tunnel"
        assert forward_proxy.seen == [f"CONNECT localhost:{origin.port}"]
    finally:
        origin.close()


def test_http_downloads_and_uploads_go_through_http_proxy(start_runtime, forward_proxy, http_server, tmp_path):
    url = http_server.serve("/data.txt", b"via the proxy")
    rt = start_runtime("--agent", "echo", env=no_proxy_env(HTTP_PROXY=forward_proxy.url))
    sink = ArtifactSink(http_server)
    out = tmp_path / "out"
    result = execute(rt.url, [CommandInterface(command=f"cp data.txt {out}/copy.txt", cwd=str(tmp_path))],
                     [dl(url, tmp_path)], artifacts_dirs=[str(out)],
                     on_artifact_upload_request=sink.callback)
    assert result.results[0].exit_code == 0
    sink.assert_uploaded_now(out / "copy.txt", b"via the proxy")
    assert f"GET {url}" in forward_proxy.seen
    assert any(line.startswith(f"PUT http://127.0.0.1:{http_server.port}/") for line in forward_proxy.seen)


def test_no_proxy_hosts_are_reached_directly(start_runtime, forward_proxy, http_server, tmp_path):
    url = http_server.serve("/direct.txt", b"no detour")
    rt = start_runtime("--agent", "echo", env=no_proxy_env(
        HTTP_PROXY=forward_proxy.url, HTTPS_PROXY=forward_proxy.url, NO_PROXY="localhost,127.0.0.1"))
    result = execute(rt.url, [CommandInterface(command="cat direct.txt", cwd=str(tmp_path))],
                     [dl(url, tmp_path)])
    assert result.results[0].stdout == "no detour"
    assert forward_proxy.seen == []
    assert len(http_server.requests("GET", "/direct.txt")) == 1


def test_a_query_stays_byte_for_byte_through_the_proxy(start_runtime, forward_proxy, http_server, tmp_path):
    """A presigned URL's signature covers its exact query: `%2F` and `+`
    must arrive as sent."""
    http_server.serve("/signed.bin", b"signed")
    query = "X-Amz-Credential=AKIA%2F20260101%2Fus-east-1&x=a+b%2Bc&X-Amz-Signature=0f%3D"
    url = http_server.url(f"/signed.bin?{query}")
    rt = start_runtime("--agent", "echo", env=no_proxy_env(HTTP_PROXY=forward_proxy.url))
    execute(rt.url, [CommandInterface(command="true")], [dl(url, tmp_path)])
    assert forward_proxy.seen == [f"GET {url}"]
    assert http_server.requests("GET", "/signed.bin")[0].query == query
