"""The handler protocol v1 loop (protocol/handler-protocol.md).

The main thread reads stdin and dispatches each line at once, so a
`cancel` is seen while a handler works. Plain-function handlers run on a
daemon thread each (a cancel sets `ctx.cancelled`); `async def` handlers
run as tasks on a background event loop (a cancel cancels the task).
Either way the cancel is answered at once with the `cancelled` error, and
whatever the handler does afterwards is dropped: exactly one terminal per
invocation.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Union

from ._loop import BackgroundLoop
from ._types import HandlerError, InvalidResult, Invocation, Result, error_message, result_message
from ._warm import warm_up
from ._wire import PROTOCOL, Writer, claim_stdout, read_lines

if TYPE_CHECKING:  # not imported at run time: see _loop.py
    from concurrent.futures import Future

LEVELS = ("debug", "info", "warn", "error")

#: At stdin EOF, how long a cancelled coroutine gets to unwind.
UNWIND_SECONDS = 1.0


def _diag(text: str) -> None:
    sys.stderr.write(f"[runtimeuse-handler] {text}\n")
    sys.stderr.flush()


class Log:
    """Lines for the runtime's log (redacted there); never sent to the client."""

    def __init__(self, send: Callable[[str, str], None]) -> None:
        self._send = send

    def debug(self, message: str) -> None:
        self._send("debug", message)

    def info(self, message: str) -> None:
        self._send("info", message)

    def warn(self, message: str) -> None:
        self._send("warn", message)

    #: The name `logging` users reach for.
    warning = warn

    def error(self, message: str) -> None:
        self._send("error", message)


class Context:
    """What a handler can do while it runs, and whether it should stop."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        #: Set when the runtime cancels the invocation (or closes stdin). A
        #: plain-function handler checks it (`ctx.cancelled.wait(timeout)`
        #: is a cancellable sleep); an `async def` one is cancelled as a task.
        self.cancelled: threading.Event = run.cancelled
        self.log = Log(
            lambda level, message: run.send({"type": "log", "level": level, "message": str(message)})
        )

    @property
    def is_cancelled(self) -> bool:
        """Whether the invocation was cancelled."""
        return self.cancelled.is_set()

    def send_assistant(self, text: str | Sequence[str]) -> None:
        """Streams intermediate text to the client (`assistant_message`)."""
        self._run.send({"type": "assistant", "text_blocks": _text_blocks(text)})


def _text_blocks(text: str | Sequence[str]) -> list:
    if isinstance(text, str):
        return [text]
    blocks = list(text)
    if not all(isinstance(block, str) for block in blocks):
        raise TypeError("send_assistant(text): text must be a str or a sequence of str")
    return blocks


Handler = Callable[[Invocation, Context], Union[Result, Awaitable[Result]]]


class _Run:
    """One invocation, from `invoke` to its terminal."""

    def __init__(self, server: _Server, invocation: Invocation) -> None:
        self.server = server
        self.invocation = invocation
        self.id = invocation.id
        self.cancelled = threading.Event()
        self.done = False
        #: The task's future, for an `async def` handler.
        self.future: Future | None = None
        #: Set once an `async def` handler's task has run (or unwound).
        self.unwound = threading.Event()

    def send(self, message: dict[str, Any]) -> None:
        """Sends a non-terminal message, unless the terminal went already."""
        with self.server.lock:
            if not self.done:
                self.server.writer.send({**message, "id": self.id})

    def finish(self, message: dict[str, Any]) -> None:
        """Sends the terminal, once; anything later for this run is dropped."""
        with self.server.lock:
            if self.done:
                return
            self.done = True
            if self.server.current is self:
                self.server.current = None
            self.server.writer.send({**message, "id": self.id})

    def fail(self, exc: BaseException) -> None:
        if not isinstance(exc, (HandlerError, InvalidResult)) and not self.done:
            import traceback  # only on failure: it is slow to import

            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            _diag(f"invocation {self.id} failed:\n{trace.rstrip()}")
        self.finish(error_message(exc))

    def succeed(self, result: Any) -> None:
        try:
            message = result_message(result)
        except InvalidResult as exc:
            self.fail(exc)
            return
        self.finish(message)

    async def run_async(self, context: Context) -> None:
        """The task of an `async def` handler. The handler's coroutine is made
        here, so a task cancelled before it starts never runs it."""
        import asyncio

        try:
            result = await self.server.handler(self.invocation, context)
        except asyncio.CancelledError:
            pass  # the cancel (or EOF) already settled this invocation
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: it must not stop the loop
            self.fail(exc)
        else:
            self.succeed(result)
        finally:
            self.unwound.set()

    def run_sync(self, context: Context) -> None:
        try:
            result = self.server.handler(self.invocation, context)
            if hasattr(result, "__await__"):
                result = self.server.loop.submit(_awaited(result)).result()
        except BaseException as exc:  # noqa: BLE001 - a bug, or SystemExit: still one terminal
            self.fail(exc)
            return
        self.succeed(result)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _is_async(handler: Callable[..., Any]) -> bool:
    # An object whose __call__ is `async def` counts too.
    return _is_coroutine_function(handler) or _is_coroutine_function(type(handler).__call__)


#: The code flag of an `async def` function (inspect.CO_COROUTINE; `inspect`
#: itself is slow to import).
_CO_COROUTINE = 0x80


def _is_coroutine_function(function: Any) -> bool:
    while isinstance(function, functools.partial):
        function = function.func
    function = getattr(function, "__func__", function)  # a bound method
    code = getattr(function, "__code__", None)
    return code is not None and bool(code.co_flags & _CO_COROUTINE)


class _Server:
    def __init__(self, handler: Handler, writer: Writer) -> None:
        self.handler = handler
        self.is_async = _is_async(handler)
        self.writer = writer
        self.loop = BackgroundLoop()
        # The main, worker and loop threads all send; a line is never torn.
        self.lock = threading.RLock()
        self.current: _Run | None = None

    def on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "invoke":
            self.invoke(message)
        elif kind == "cancel":
            self.cancel(message)
        else:
            _diag(f"ignoring a message of unknown type {kind!r}")

    def invoke(self, message: dict[str, Any]) -> None:
        inv_id = message.get("id")
        if not isinstance(inv_id, str):
            _diag("ignoring an invoke without a string id")
            return
        with self.lock:
            refusal = self.refusal(message)
            if refusal:
                self.writer.send({"type": "error", "id": inv_id, "error": refusal, "metadata": {}})
                return
            run = _Run(self, Invocation.from_message(message))
            self.current = run
        self.start(run)

    def refusal(self, message: dict[str, Any]) -> str | None:
        if message.get("protocol") != PROTOCOL:
            version = _json_repr(message.get("protocol"))
            return f"unsupported handler protocol {version} (this handler speaks {PROTOCOL})"
        if self.current is not None:
            return f"another invocation ({self.current.id}) is still running"
        return None

    def start(self, run: _Run) -> None:
        context = Context(run)
        if self.is_async:
            run.future = self.loop.submit(run.run_async(context))
        else:
            threading.Thread(target=run.run_sync, args=(context,), daemon=True).start()

    def cancel(self, message: dict[str, Any]) -> None:
        with self.lock:
            run = self.current
            if run is None or message.get("id", run.id) != run.id:
                _diag("cancel for {!r}: no such invocation running".format(message.get("id")))
                return
            run.finish({"type": "error", "error": "cancelled", "metadata": {}})
        self.abort(run)

    def abort(self, run: _Run) -> None:
        run.cancelled.set()
        if run.future is not None:
            run.future.cancel()

    def stop(self) -> _Run | None:
        """stdin closed: stops what runs; its terminal no longer matters."""
        with self.lock:
            run, self.current = self.current, None
            if run is not None:
                run.done = True
        if run is not None:
            self.abort(run)
        return run


def _json_repr(value: Any) -> str:
    return "null" if value is None else repr(value)


def run_handler(
    handler: Handler,
    *,
    input: BinaryIO | None = None,
    output: BinaryIO | None = None,
) -> None:
    """Serves `handler` over stdin/stdout until stdin closes, then returns.

    `handler(invocation, ctx)` is a plain function or an `async def`; it
    returns `{"text": ...}` or `{"structured_output": {...}}` (optionally
    with `"metadata"`), or a str. Anything it raises becomes exactly one
    `error` for that invocation and the process stays warm. While serving
    the real stdout, fd 1 points at stderr: `print()` goes to the log.
    `input` / `output` (binary streams) replace stdin/stdout, e.g. in tests.
    """
    if not callable(handler):
        raise TypeError("run_handler(handler): handler must be callable")
    source = input if input is not None else sys.stdin.buffer
    sink = output if output is not None else claim_stdout()
    server = _Server(handler, Writer(sink))
    if input is None and output is None:
        warm_up(server)
    read_lines(source, server.on_message, _diag)
    run = server.stop()
    if run is not None and run.future is not None:
        # Let the cancelled coroutine unwind (its finally blocks run);
        # bounded, since the runtime wants us gone.
        run.unwound.wait(UNWIND_SECONDS)
