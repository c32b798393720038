"""Proof that a process tree keeps to loopback.

Two witnesses, because programs reach the network in two ways:

- `RefusingProxy`: an HTTP proxy on 127.0.0.1 that records every request
  (`CONNECT host:443`, `GET http://...`) and refuses it. Pointed at by
  `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` (with `NO_PROXY` for loopback), it
  sees what proxy-aware clients (Claude Code, npm, curl) would have sent.
- `SyscallGuard`: `strace -f` attached to a process and everything it
  starts, recording the destination of every `connect`, `sendto` and
  `sendmsg`. It sees what proxy-unaware clients do too (Node's `fetch`
  ignores proxy variables), DNS look-ups included: a name look-up is itself
  a packet to the resolver.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import socketserver
import subprocess
import threading
import time


class RefusingProxy:
    """Records the first line of every request and answers 403."""

    def __init__(self):
        self.requests: list[str] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline().decode(errors="replace").strip()
                if line:
                    outer.requests.append(line)
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self) -> dict:
        """Proxy variables in both spellings; loopback goes direct."""
        env = {}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[name] = env[name.lower()] = self.url
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
        return env

    def close(self):
        self._server.shutdown()
        self._server.server_close()


_IPV4 = re.compile(r'sin_addr=inet_addr\("([0-9.]+)"\)')
_IPV6 = re.compile(r'inet_pton\(AF_INET6, "([0-9a-fA-F:.]+)"')


def outside_loopback(trace: str) -> list[str]:
    """The traced calls whose destination is an IP address off this machine."""
    found = []
    for line in trace.splitlines():
        for pattern in (_IPV4, _IPV6):
            for address in pattern.findall(line):
                ip = ipaddress.ip_address(address)
                mapped = getattr(ip, "ipv4_mapped", None)
                if not (ip.is_loopback or ip.is_unspecified or (mapped and mapped.is_loopback)):
                    found.append(line.strip())
    return found


class SyscallGuard:
    """`strace -f -p PID...` recording network destinations into `path`:
    the processes given, their threads, and everything they start."""

    def __init__(self, pids: list[int], path):
        self.path = path
        attach = [arg for pid in pids for arg in ("-p", str(pid))]
        self._strace = subprocess.Popen(
            ["strace", "-f", "-e", "trace=connect,sendto,sendmsg", "-e", "signal=none", "-o", str(path), *attach],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # strace says "Process N attached" per thread once it has them.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self._strace.stderr.readline()
            if "attached" in line:
                threading.Thread(target=self._strace.stderr.read, daemon=True).start()
                return
            if not line and self._strace.poll() is not None:
                break
        raise RuntimeError(f"strace did not attach to {pids} (exit {self._strace.poll()})")

    def stop(self) -> str:
        """Detaches; returns the trace."""
        if self._strace.poll() is None:
            self._strace.send_signal(signal.SIGINT)
            self._strace.wait(20)
        return self.path.read_text(errors="replace")
