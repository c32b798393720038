"""The asyncio event loop `async def` handlers run on, started on first use.

It runs on its own daemon thread while the main thread reads stdin, so a
`cancel` is read while a coroutine works. Started lazily, and asyncio
imported only then: the import is a good part of a Python handler's
start-up, which every new client connection pays, and plain-function
handlers do not need it.
"""

from __future__ import annotations

import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Future


class BackgroundLoop:
    """An event loop on a daemon thread; coroutines are submitted to it."""

    def __init__(self) -> None:
        self._loop: Any = None
        self._lock = threading.Lock()

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> Future:
        """Runs `coroutine` as a task; cancelling the future cancels the task."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._running())

    def _running(self) -> Any:
        with self._lock:
            if self._loop is None:
                import asyncio

                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="runtimeuse-asyncio", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop
