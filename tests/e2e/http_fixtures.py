"""A real HTTP server on 127.0.0.1 for the download and artifact tests.

`HttpFixture` serves configured GET routes (bytes, status codes, "fail N
times then succeed", redirects, large bodies generated chunk by chunk) and
accepts PUTs, keeping every PUT's body and headers per path. Every request
it finishes notifies a `threading.Condition`, so tests wait for uploads on
that (with a timeout), never on sleeps.

`ArtifactSink` is the client side of artifacts: an `on_artifact_upload_request`
callback answering each announced file with a PUT URL on the fixture, so a
test can look up what was uploaded for a given file path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import socket
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from runtimeuse_client import ArtifactUploadRequestMessageInterface, ArtifactUploadResult

MiB = 1024 * 1024


@dataclasses.dataclass
class Received:
    """One request the server finished handling."""

    method: str
    path: str  # percent-decoded, without the query
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int  # what the server answered


@dataclasses.dataclass
class _Route:
    """What a GET of a path answers. `failures` first answers get `fail_status`."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    failures: int = 0
    fail_status: int = 500
    # A generator of body chunks (large bodies, never held whole in memory).
    chunks: Callable[[], object] | None = None
    length: int | None = None


@dataclasses.dataclass
class _PutRoute:
    failures: int = 0
    fail_status: int = 500
    status: int = 200


class GeneratedBody:
    """A deterministic pseudo-random body of `size` bytes, produced 1 MiB at a
    time: every chunk is one random block with its index stamped in front, so
    no two chunks are equal and a misplaced chunk changes the digest."""

    def __init__(self, size: int, seed: int = 7, chunk: int = MiB):
        self.size = size
        self.chunk = chunk
        self._block = random.Random(seed).randbytes(chunk)

    def chunks(self):
        sent, index = 0, 0
        while sent < self.size:
            n = min(self.chunk, self.size - sent)
            piece = index.to_bytes(8, "big") + self._block[8:]
            yield piece[:n]
            sent += n
            index += 1

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for piece in self.chunks():
            digest.update(piece)
        return digest.hexdigest()


class HttpFixture:
    """A threaded HTTP/1.1 server on 127.0.0.1:<ephemeral>; HTTPS (at
    `https://localhost:<port>`) when given `tls=(cert_file, key_file)`."""

    def __init__(self, tls: tuple[str, str] | None = None):
        self._cond = threading.Condition()
        self._routes: dict[str, _Route] = {}
        self._put_routes: dict[str, _PutRoute] = {}
        self._attempts: dict[tuple[str, str], int] = {}
        self.received: list[Received] = []
        fixture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _split(self):
                parts = urllib.parse.urlsplit(self.path)
                return urllib.parse.unquote(parts.path), parts.query

            def _headers(self) -> dict[str, str]:
                return {k.lower(): v for k, v in self.headers.items()}

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                out = bytearray()
                while len(out) < length:
                    piece = self.rfile.read(length - len(out))
                    if not piece:
                        break
                    out += piece
                return bytes(out)

            def _reply(self, status: int, body: bytes = b"", headers=None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                if body and self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                path, query = self._split()
                route, attempt = fixture._route_for("GET", path)
                if route is None:
                    status = 404
                elif attempt < route.failures:
                    status = route.fail_status
                else:
                    status = route.status
                # Recorded before answering: once the client has its answer,
                # the request is visible to the test.
                fixture._record(Received("GET", path, query, self._headers(), b"", status))
                try:
                    if route is None:
                        self._reply(404, b"not found\n")
                    elif attempt < route.failures:
                        self._reply(status, b"try again\n")
                    elif route.chunks is not None:
                        self.send_response(status)
                        self.send_header("Content-Length", str(route.length))
                        self.send_header("Content-Type", "application/octet-stream")
                        self.send_header("Connection", "close")
                        self.end_headers()
                        self.close_connection = True
                        for piece in route.chunks():
                            self.wfile.write(piece)
                    else:
                        self._reply(status, route.body, route.headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_PUT(self):
                path, query = self._split()
                headers = self._headers()
                body = self._read_body()
                route, attempt = fixture._route_for("PUT", path)
                route = route or _PutRoute()
                status = route.fail_status if attempt < route.failures else route.status
                # Recorded (and waiters woken) before the uploader gets its
                # answer, so "uploaded" on the runtime's side implies
                # "received" here.
                fixture._record(Received("PUT", path, query, headers, body, status))
                try:
                    self._reply(status)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                path, query = self._split()
                body = self._read_body()
                fixture._record(Received("POST", path, query, self._headers(), body, 405))
                self._reply(405)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.scheme, self.host = "http", "127.0.0.1"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme, self.host = "https", "localhost"
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-fixture", daemon=True)
        self._thread.start()

    # -- configuration ------------------------------------------------------
    def url(self, path: str) -> str:
        if not path.startswith("/"):
            path = "/" + path
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def serve(self, path: str, body: bytes, status: int = 200, headers: dict | None = None) -> str:
        """GET `path` answers `status` with `body`. Returns the URL."""
        with self._cond:
            self._routes[path] = _Route(status=status, body=body, headers=dict(headers or {}))
        return self.url(path)

    def fail(self, path: str, status: int) -> str:
        """GET `path` always answers `status`."""
        return self.serve(path, f"status {status}\n".encode(), status=status)

    def flaky(self, path: str, body: bytes, failures: int, status: int = 500) -> str:
        """GET `path` answers `status` `failures` times, then 200 with `body`."""
        with self._cond:
            self._routes[path] = _Route(body=body, failures=failures, fail_status=status)
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        return self.serve(path, b"", status=status, headers={"Location": location})

    def generated(self, path: str, body: GeneratedBody) -> str:
        """GET `path` streams `body` chunk by chunk with a Content-Length."""
        with self._cond:
            self._routes[path] = _Route(chunks=body.chunks, length=body.size)
        return self.url(path)

    def flaky_put(self, path: str, failures: int, status: int = 500):
        """PUT to `path` answers `status` `failures` times, then 200."""
        with self._cond:
            self._put_routes[path] = _PutRoute(failures=failures, fail_status=status)

    # -- inspection ---------------------------------------------------------
    def _route_for(self, method: str, path: str):
        with self._cond:
            key = (method, path)
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            table = self._routes if method == "GET" else self._put_routes
            return table.get(path), attempt

    def _record(self, item: Received):
        with self._cond:
            self.received.append(item)
            self._cond.notify_all()

    def requests(self, method: str | None = None, path: str | None = None) -> list[Received]:
        with self._cond:
            return [
                r
                for r in self.received
                if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def puts(self, path: str, ok_only: bool = True) -> list[Received]:
        return [r for r in self.requests("PUT", path) if not ok_only or 200 <= r.status < 300]

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Waits (on the server's condition, woken by every finished request)
        until `predicate()` holds; returns whether it does."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_put(self, path: str, timeout: float = 10.0, count: int = 1) -> list[Received]:
        """The first `count` successful PUTs to `path`; raises if they do not
        arrive within `timeout`."""
        if not self.wait_for(lambda: len(self.puts(path)) >= count, timeout):
            seen = [(r.method, r.path, r.status) for r in self.requests()]
            raise AssertionError(f"no {count} successful PUT(s) to {path} within {timeout}s; saw {seen}")
        return self.puts(path)[:count]

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class ForwardProxy:
    """An HTTP proxy on 127.0.0.1: `CONNECT host:port` opens a tunnel (what a
    client does for `https://` through `HTTPS_PROXY`), and an absolute-form
    request (`GET http://host:port/path`, for `http://` through `HTTP_PROXY`)
    is forwarded in origin form. Every request line is kept in `seen`; only
    loopback destinations are served."""

    def __init__(self):
        self._cond = threading.Condition()
        self.seen: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, name="forward-proxy", daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket):
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                piece = client.recv(65536)
                if not piece:
                    return
                head += piece
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.decode("latin-1").split(" ", 2)
            with self._cond:
                self.seen.append(f"{method} {target}")
                self._cond.notify_all()
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                upstream = self._connect(host, int(port))
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                extra = rest.partition(b"\r\n\r\n")[2]
            else:
                parts = urllib.parse.urlsplit(target)
                upstream = self._connect(parts.hostname, parts.port or 80)
                origin_form = parts.path + (f"?{parts.query}" if parts.query else "")
                extra = f"{method} {origin_form} {version}\r\n".encode() + rest
            with upstream:
                upstream.sendall(extra)
                self._pipe(client, upstream)

    @staticmethod
    def _connect(host: str, port: int) -> socket.socket:
        assert host in ("127.0.0.1", "localhost"), f"the test proxy only reaches loopback, not {host}"
        return socket.create_connection(("127.0.0.1", port))

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket):
        def copy(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        back = threading.Thread(target=copy, args=(b, a), daemon=True)
        back.start()
        copy(a, b)
        back.join(30)

    def close(self):
        self._listener.close()


class ArtifactSink:
    """`on_artifact_upload_request` that answers every announced file with a
    PUT URL on `http` whose path is `/artifacts<filepath>` (plus a presigned-
    style query string)."""

    PREFIX = "/artifacts"

    def __init__(self, http: HttpFixture, content_type: str = "text/plain"):
        self.http = http
        self.content_type = content_type
        self.requests: list[ArtifactUploadRequestMessageInterface] = []
        self._lock = threading.Lock()

    def key(self, filepath) -> str:
        return self.PREFIX + str(filepath)

    def url_for(self, filepath) -> str:
        return self.http.url(urllib.parse.quote(self.key(filepath))) + "?X-Amz-Signature=e2e-sig&X-Amz-Expires=60"

    async def callback(self, req: ArtifactUploadRequestMessageInterface) -> ArtifactUploadResult:
        with self._lock:
            self.requests.append(req)
        return ArtifactUploadResult(presigned_url=self.url_for(req.filepath), content_type=self.content_type)

    def announced(self) -> list[str]:
        with self._lock:
            return [r.filepath for r in self.requests]

    def uploaded(self, filepath) -> list[bytes]:
        """Bodies of the successful PUTs received so far for `filepath`."""
        return [r.body for r in self.http.puts(self.key(filepath))]

    def uploaded_paths(self) -> set[str]:
        return {
            r.path[len(self.PREFIX):]
            for r in self.http.requests("PUT")
            if r.path.startswith(self.PREFIX) and 200 <= r.status < 300
        }

    def assert_uploaded_now(self, filepath, content: bytes):
        """Checks, without waiting, that `filepath` was uploaded exactly once
        with `content`. If it was not, waits a little to tell "late" from
        "never" in the failure message."""
        bodies = self.uploaded(filepath)
        if not bodies:
            started = time.monotonic()
            late = self.http.wait_for(lambda: bool(self.uploaded(filepath)), 5.0)
            when = f"it arrived {time.monotonic() - started:.2f}s later" if late else "not even 5 s later"
            raise AssertionError(
                f"{filepath} was not uploaded when the call returned ({when}); "
                f"announced={self.announced()} uploaded={sorted(self.uploaded_paths())}"
            )
        assert bodies == [content], f"{filepath}: uploaded {bodies!r}, expected [{content!r}]"

    def wait_uploaded(self, filepath, timeout: float = 10.0) -> bytes:
        return self.http.wait_put(self.key(filepath), timeout)[0].body


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (/proc, else `ps -o rss=`)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import subprocess

    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True).stdout
    return int(out.strip() or 0)


class RssSampler:
    """Samples a process's RSS on a thread until stopped (context manager)."""

    def __init__(self, pid: int, every: float = 0.01):
        self.pid = pid
        self.every = every
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            self.samples.append(rss_kib(self.pid))
            if self._stop.wait(self.every):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    @property
    def peak_kib(self) -> int:
        return max(self.samples, default=0)
