"""Handler protocol v1 plumbing shared by the bundled agent handlers.

The `openai` and `claude` handlers differ only in how they run an agent;
reading `invoke` / `cancel` lines, one-invocation-at-a-time bookkeeping,
cancellation, secret redaction and the stdout/stderr conventions are the
protocol's (see protocol/handler-protocol.md) and live here once, so a fix
to them cannot reach one handler and miss the other.

A handler subclasses `BaseHandler`, implements `run`, and calls `serve`.

Standard library only (Python 3.9+): the sandbox may not allow pip. The
runtime writes this file beside each handler script it materializes, and
each handler puts its own directory (then `../common`, for the repo layout)
first on sys.path before importing it.
"""

import json
import os
import sys
import threading

PROTOCOL = 1
REDACTED = "[REDACTED]"

# One lock for the whole process: worker threads and the main thread all
# write to stdout, and a protocol line must never be interleaved.
_stdout_lock = threading.Lock()


def require_protocol(version):
    """Exits unless this module speaks the protocol version a handler needs.

    Guards against an unrelated or stale `runtimeuse_protocol` found earlier
    on sys.path: better a clear exit than a handler talking past the runtime.
    """
    if version != PROTOCOL:
        sys.exit(
            "runtimeuse_protocol.py (%s) speaks handler protocol %d, not %r"
            % (__file__, PROTOCOL, version)
        )


def send(message):
    """Writes one protocol message to stdout and flushes it."""
    line = json.dumps(message, ensure_ascii=False) + "\n"
    with _stdout_lock:
        sys.stdout.buffer.write(line.encode("utf-8"))
        sys.stdout.buffer.flush()


def redact(text, secrets):
    """Replaces every non-empty secret in `text` with [REDACTED], longest first.

    Longest first so a secret that contains another is not left half shown.
    """
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def make_log(name):
    """A `log(text, secrets=())` writing to stderr, this handler's log.

    stderr lines are tagged `[<name>-handler]` so the runtime's log tells
    the handlers apart; stdout is reserved for protocol messages.
    """
    prefix = "[%s-handler] " % name

    def log(text, secrets=()):
        sys.stderr.write(prefix + redact(str(text), secrets) + "\n")
        sys.stderr.flush()

    return log


class Failure(Exception):
    """An invocation failed; `str(self)` is the error text for the runtime."""

    def __init__(self, message, metadata=None):
        super().__init__(message)
        self.metadata = metadata or {}


def strip_fences(text):
    """Removes a surrounding ```json ... ``` fence, if there is one.

    Models often fence JSON even when told not to; structured output must
    still parse.
    """
    text = text.strip()
    if text.startswith("```"):
        first_newline = text.find("\n")
        text = text[first_newline + 1 :] if first_newline != -1 else text[3:]
        if text.rstrip().endswith("```"):
            text = text.rstrip()[:-3]
    return text.strip()


def output_format_of(invocation):
    """The invocation's `output_format`, or None; raises Failure if unsupported.

    Protocol v1 defines only JSON schema structured output; anything else is
    refused up front rather than answered with unstructured text.
    """
    output_format = invocation.get("output_format")
    if output_format is not None and (
        not isinstance(output_format, dict) or output_format.get("type") != "json_schema"
    ):
        raise Failure(
            'unsupported output_format (expected {"type": "json_schema", "schema": {...}})'
        )
    return output_format


class Invocation:
    """One running invocation; identity (not `id`) tells runs apart.

    The runtime may reuse an id after a cancel, so a late outcome is matched
    against the object, not the id.
    """

    def __init__(self, inv_id, secrets):
        self.id = inv_id
        self.secrets = secrets
        self.cancelled = False


class BaseHandler:
    """Protocol bookkeeping for a handler serving one invocation at a time.

    Each invocation runs `self.run(invocation, message, env)` in a daemon
    worker thread, so the main thread keeps reading stdin and can answer a
    `cancel` at once; the worker's outcome is dropped if the invocation was
    cancelled meanwhile. Subclasses set `name` and implement `run`; the
    other methods below are hooks with neutral defaults.
    """

    name = "?"
    invocation_class = Invocation

    def __init__(self):
        # Re-entrant: a signal handler may run while the main thread holds it.
        self.lock = threading.RLock()
        self.current = None  # the running Invocation, if any
        self.log = make_log(self.name)

    def run(self, invocation, message, env):
        """Runs one invocation; returns its terminal message (without `id`).

        Raises Failure for anything that should become an `error` message.
        """
        raise NotImplementedError

    def secrets_for(self, invocation, env):
        """Values to redact from error texts: the invocation's secrets."""
        return invocation.secrets

    def log_failure(self, invocation, text):
        """Logs a failed invocation's (redacted) error text."""
        self.log("invocation %s failed: %s" % (invocation.id, text))

    def starting(self, invocation, message):
        """Called once an invocation is accepted, before its worker starts."""

    def cancelled(self, invocation):
        """Called after an invocation was cancelled and `cancelled` was sent."""

    def shutdown(self):
        """Stops whatever the running invocation started, before exiting."""

    def finish(self, invocation, message):
        """Sends a terminal message unless the invocation was cancelled."""
        with self.lock:
            if self.current is not invocation:
                self.log("dropping the late outcome of cancelled invocation %s" % invocation.id)
                return
            self.current = None
            message["id"] = invocation.id
            send(message)

    def worker(self, invocation, message, env):
        """Runs the invocation and always ends it with a terminal message."""
        try:
            outcome = self.run(invocation, message, env)
        except Failure as failure:
            text = redact(str(failure), self.secrets_for(invocation, env))
            self.log_failure(invocation, text)
            outcome = {"type": "error", "error": text, "metadata": failure.metadata}
        except Exception as exc:  # a bug here must still end the invocation
            text = redact(
                "%s handler crashed: %r" % (self.name, exc), self.secrets_for(invocation, env)
            )
            self.log(text)
            outcome = {"type": "error", "error": text, "metadata": {}}
        self.finish(invocation, outcome)

    def invoke(self, message):
        """Handles an `invoke`: checks it, then starts its worker thread."""
        inv_id = message.get("id")
        if not isinstance(inv_id, str):
            self.log("ignoring an invoke without a string id")
            return
        if message.get("protocol") != PROTOCOL:
            send(
                {
                    "type": "error",
                    "error": "unsupported handler protocol %r (this handler speaks %d)"
                    % (message.get("protocol"), PROTOCOL),
                    "metadata": {},
                    "id": inv_id,
                }
            )
            return
        secrets = [s for s in (message.get("secrets") or []) if isinstance(s, str)]
        invocation = self.invocation_class(inv_id, secrets)
        with self.lock:
            if self.current is not None:
                send(
                    {
                        "type": "error",
                        "error": "another invocation (%s) is still running" % self.current.id,
                        "metadata": {},
                        "id": inv_id,
                    }
                )
                return
            self.current = invocation
        # The invocation's env overrides ours; neither is modified.
        env = dict(os.environ)
        extra = message.get("env") or {}
        if isinstance(extra, dict):
            env.update({str(k): str(v) for k, v in extra.items() if v is not None})
        self.starting(invocation, message)
        thread = threading.Thread(target=self.worker, args=(invocation, message, env), daemon=True)
        thread.start()

    def cancel(self, message):
        """Handles a `cancel`: answers it at once, then calls `cancelled`.

        `invocation.cancelled` is set under the lock, so a worker that checks
        it under the same lock never starts work for a cancelled invocation.
        """
        inv_id = message.get("id")
        with self.lock:
            invocation = self.current
            if invocation is None or (inv_id is not None and inv_id != invocation.id):
                self.log("cancel for %r: no such invocation running" % (inv_id,))
                return
            self.current = None
            invocation.cancelled = True
            send({"type": "error", "error": "cancelled", "metadata": {}, "id": invocation.id})
        self.cancelled(invocation)


def exit_now(handler):
    """Shuts the handler down and exits 0 without waiting for worker threads.

    Abandoned work lives in daemon threads; the runtime is done with us.
    """
    handler.shutdown()
    sys.stderr.flush()
    os._exit(0)


def serve(handler):
    """Reads protocol messages from stdin until EOF, then exits 0."""
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        try:
            message = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            handler.log("ignoring a line that is not JSON")
            continue
        if not isinstance(message, dict):
            handler.log("ignoring a message that is not an object")
            continue
        kind = message.get("type")
        if kind == "invoke":
            handler.invoke(message)
        elif kind == "cancel":
            handler.cancel(message)
        else:
            handler.log("ignoring a message of unknown type %r" % (kind,))
    exit_now(handler)
