// Who owns the process's stdout.
//
// In handler protocol v1 stdout carries protocol lines and nothing else: one
// stray `console.log` and the runtime ends the handler for a protocol error.
// So while a handler is served, everything written to `process.stdout` is
// diverted to stderr (the handler's log), and protocol lines go through the
// original write function, kept here.
//
// The original is kept on `process` under a registered symbol rather than in
// a module variable: the Node-runtime launcher and a second copy of this
// package (one installed by the user beside the embedded one) must agree on
// which function is the real stdout, whichever of them diverted it first.

const ORIGINAL_WRITE = Symbol.for("runtimeuse-handler.stdout.write");
const SERVING = Symbol.for("runtimeuse-handler.serving");

function originalWrite() {
  if (!process[ORIGINAL_WRITE]) process[ORIGINAL_WRITE] = process.stdout.write;
  return process[ORIGINAL_WRITE];
}

/** Writes one protocol line to the real stdout. */
export function writeProtocol(text) {
  return originalWrite().call(process.stdout, text);
}

/** Sends whatever is written to `process.stdout` to stderr instead. */
export function divertStdout() {
  originalWrite();
  process.stdout.write = function writeToStderr(chunk, encoding, callback) {
    return process.stderr.write(chunk, encoding, callback);
  };
}

/** Gives `process.stdout` its own write function back. */
export function restoreStdout() {
  process.stdout.write = originalWrite();
}

/** Marks the process as served by runHandler (read by the launcher). */
export function markServing() {
  process[SERVING] = true;
}

/** Whether runHandler serves this process's stdin/stdout. */
export function isServing() {
  return process[SERVING] === true;
}
