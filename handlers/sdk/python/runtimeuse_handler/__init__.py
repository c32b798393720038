"""runtimeuse-handler: a runtimeuse agent handler is one function.

    from runtimeuse_handler import run_handler

    def handle(invocation, ctx):
        ctx.send_assistant("Thinking...")
        return {"text": invocation.user_prompt.upper()}

    run_handler(handle)

Framing, one-invocation-at-a-time bookkeeping, cancellation and turning
exceptions into exactly one `error` are the SDK's job; the wire format is
handler protocol v1 (protocol/handler-protocol.md). Standard library only,
Python >= 3.9.
"""

from ._serve import Context, Handler, Log, run_handler
from ._types import (
    REDACTED,
    HandlerError,
    Invocation,
    Result,
    StructuredResult,
    TextResult,
    redact,
)
from ._wire import PROTOCOL

__all__ = [
    "PROTOCOL",
    "REDACTED",
    "Context",
    "Handler",
    "HandlerError",
    "Invocation",
    "Log",
    "Result",
    "StructuredResult",
    "TextResult",
    "redact",
    "run_handler",
]
__version__ = "0.1.0"
