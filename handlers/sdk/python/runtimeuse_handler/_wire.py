"""Handler protocol v1 on the wire: lines in, lines out.

stdout carries protocol lines and nothing else, so while a handler is
served the process's fd 1 is pointed at stderr (the handler's log): a stray
`print()`, or a subprocess inheriting stdout, cannot corrupt the protocol.
Protocol lines go to a private duplicate of the original stdout.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any, BinaryIO, Callable

PROTOCOL = 1

#: One JSON object per line; a longer line is not read as a message.
MAX_LINE_BYTES = 32 * 1024 * 1024


class Writer:
    """Writes protocol messages, one line each, from any thread."""

    def __init__(self, output: BinaryIO) -> None:
        self._output = output
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = encode(message)
        with self._lock:
            self._output.write(line)
            self._output.flush()


def encode(message: dict[str, Any]) -> bytes:
    """The message as one line; a value JSON cannot carry fails the message
    into an `error` for the same id rather than breaking the stream."""
    try:
        text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        text = json.dumps(
            {
                "type": "error",
                "id": message.get("id"),
                "error": "the handler's {} cannot be sent as JSON: {}".format(message.get("type"), exc),
                "metadata": {},
            }
        )
    return (text + "\n").encode("utf-8")


def claim_stdout() -> BinaryIO:
    """Keeps the real stdout for protocol lines and points fd 1 at stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(protocol_fd, "wb", buffering=0)


def read_lines(
    source: BinaryIO, on_message: Callable[[dict[str, Any]], None], diag: Callable[[str], None]
) -> None:
    """Calls `on_message` for every JSON object line of `source` until EOF.

    Blank lines are skipped; other bad lines are reported through `diag`
    and skipped (the runtime never sends them).
    """
    while True:
        line = source.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            diag(f"skipping a line over {MAX_LINE_BYTES} bytes")
            _skip_rest_of_line(source)
            continue
        message = parse(line, diag)
        if message is not None:
            on_message(message)


def _skip_rest_of_line(source: BinaryIO) -> None:
    while True:
        chunk = source.readline(1024 * 1024)
        if not chunk or chunk.endswith(b"\n"):
            return


def parse(line: bytes, diag: Callable[[str], None]) -> dict[str, Any] | None:
    """The line's JSON object, or None (reported) for anything else."""
    line = line.strip()
    if not line:
        return None
    try:
        message = json.loads(line.decode("utf-8", "replace"))
    except ValueError:
        diag("ignoring a line that is not JSON")
        return None
    if not isinstance(message, dict):
        diag("ignoring a message that is not an object")
        return None
    return message
