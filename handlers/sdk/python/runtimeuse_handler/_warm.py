"""Warming a spare handler up before its first invocation.

The runtime starts handlers ahead of need (spares), and a one-shot query
is answered by a process's first invocation, so what that invocation does
for the first time is paid by the client: an `async def` handler's event
loop (asyncio's import and the loop's thread: measured ~120 ms on a
2-core machine, against ~0.5 ms for the invocations after it), the JSON
decoding and encoding with the protocol's options. Here the same paths run
once on a made-up invocation while the process waits for its first line:

- the user's handler is never called: a no-op coroutine stands in for an
  async one;
- a plain-function handler's process does not get asyncio (it has no use
  for it), and its worker thread is still started per invocation (starting
  one ahead made no measurable difference);
- nothing is read from stdin or written to stdout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._types import Invocation, result_message
from ._wire import encode, parse

if TYPE_CHECKING:
    from ._serve import _Server

#: Shaped like the runtime's `invoke` line.
WARM_UP_MESSAGE = {
    "type": "invoke",
    "protocol": 1,
    "id": "warm-up",
    "source_id": "warm-up",
    "system_prompt": "warm-up",
    "user_prompt": "warm-up",
    "model": "warm-up",
    "output_format": None,
    "secrets": [],
    "env": {},
}


def warm_up(server: _Server) -> None:
    """Runs the first-invocation paths of `server` once; never raises."""
    try:
        message = parse(encode(WARM_UP_MESSAGE), lambda _text: None)
        if message is None:
            return
        invocation = Invocation.from_message(message)
        encode({**result_message(invocation.user_prompt), "id": invocation.id})
        if server.is_async:
            server.loop.submit(_nothing()).result()
    except Exception:  # noqa: BLE001 - only ever slower, never broken
        pass


async def _nothing() -> None:
    return None
