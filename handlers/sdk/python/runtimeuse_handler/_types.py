"""What a handler receives and returns."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, NamedTuple, Union

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # Python 3.9/3.10: total=False stands in for NotRequired.
    from typing import TypedDict

REDACTED = "[REDACTED]"


class Invocation(NamedTuple):
    """One agent invocation, as the runtime sends it (immutable;
    `invocation._asdict()` for a dict). A NamedTuple rather than a dataclass:
    `dataclasses` imports `inspect`, a noticeable share of start-up."""

    #: Opaque invocation id (for your logs).
    id: str
    #: The client's `source_id`, for your logs; None when it sent none.
    source_id: str | None
    system_prompt: str
    user_prompt: str
    #: Model identifier; may be empty.
    model: str
    #: None: answer with text; else `{"type": "json_schema", "schema": {...}}`:
    #: answer with `structured_output`.
    output_format: dict[str, Any] | None
    #: The invocation's `agent_env`. Not in `os.environ` (one process serves
    #: many invocations): pass it to what you run,
    #: `subprocess.run(..., env={**os.environ, **invocation.env})`.
    env: dict[str, str]
    #: Values to keep out of your own logs (see `redact`); the runtime
    #: redacts whatever it forwards anyway.
    secrets: list[str]

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Invocation:
        """The `invoke` line's fields, with defaults for anything missing."""
        output_format = message.get("output_format")
        env = message.get("env")
        secrets = message.get("secrets")
        source_id = message.get("source_id")
        return cls(
            id=str(message["id"]),
            source_id=source_id if isinstance(source_id, str) else None,
            system_prompt=str(message.get("system_prompt") or ""),
            user_prompt=str(message.get("user_prompt") or ""),
            model=str(message.get("model") or ""),
            output_format=output_format if isinstance(output_format, dict) else None,
            env={str(k): v for k, v in env.items() if isinstance(v, str)} if isinstance(env, dict) else {},
            secrets=[s for s in secrets if isinstance(s, str)] if isinstance(secrets, list) else [],
        )


if sys.version_info >= (3, 11):

    class TextResult(TypedDict):
        """A text answer."""

        text: str
        metadata: NotRequired[dict[str, Any]]

    class StructuredResult(TypedDict):
        """A structured answer (when `invocation.output_format` is set)."""

        structured_output: dict[str, Any]
        metadata: NotRequired[dict[str, Any]]

else:

    class TextResult(TypedDict, total=False):
        """A text answer."""

        text: str
        metadata: dict[str, Any]

    class StructuredResult(TypedDict, total=False):
        """A structured answer (when `invocation.output_format` is set)."""

        structured_output: dict[str, Any]
        metadata: dict[str, Any]


#: What a handler returns; a bare string is shorthand for `{"text": ...}`.
Result = Union[TextResult, StructuredResult, str]


class HandlerError(Exception):
    """Fails the invocation with this message and metadata (`error_message`).

    Any other exception fails it too; this one carries metadata and leaves
    no traceback in the log (it is an expected failure).
    """

    def __init__(self, message: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})


class InvalidResult(Exception):
    """The handler's return value broke the result contract."""


def redact(text: str, secrets: list[str]) -> str:
    """Replaces every non-empty secret in `text` with [REDACTED].

    Longest first, so a secret that contains another is not left half shown.
    """
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def result_message(result: Any) -> dict[str, Any]:
    """The `result` message for a handler's return value."""
    if isinstance(result, str):
        return {"type": "result", "text": result, "metadata": {}}
    if not isinstance(result, Mapping):
        raise InvalidResult(
            f"the handler must return {{'text': ...}} or {{'structured_output': ...}}, got {type(result).__name__}"
        )
    text = result.get("text")
    structured = result.get("structured_output")
    if (text is None) == (structured is None):
        raise InvalidResult("the handler must return exactly one of text and structured_output")
    metadata = result.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, Mapping):
        raise InvalidResult(f"result metadata must be a dict, got {type(metadata).__name__}")
    if text is not None:
        if not isinstance(text, str):
            raise InvalidResult(f"result text must be a str, got {type(text).__name__}")
        return {"type": "result", "text": text, "metadata": dict(metadata)}
    if not isinstance(structured, Mapping):
        raise InvalidResult(f"structured_output must be a dict, got {type(structured).__name__}")
    return {"type": "result", "structured_output": dict(structured), "metadata": dict(metadata)}


def error_message(exc: BaseException) -> dict[str, Any]:
    """The `error` message for an exception a handler raised."""
    if isinstance(exc, HandlerError):
        return {"type": "error", "error": exc.message, "metadata": exc.metadata}
    text = str(exc) or type(exc).__name__
    return {"type": "error", "error": text, "metadata": {}}
