// Turning what a handler returns or throws into a terminal protocol message.

/**
 * A failure to report as the invocation's `error`, with optional metadata.
 * Any other thrown value is reported too; this one carries metadata.
 */
export class HandlerError extends Error {
  constructor(message, metadata) {
    super(message);
    this.name = "HandlerError";
    this.metadata = metadata ?? {};
  }
}

/** A handler's return value broke the result contract. */
class InvalidResult extends Error {}

export function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isSet(value) {
  return value !== undefined && value !== null;
}

function metadataOf(value, what) {
  if (!isSet(value)) return {};
  if (!isObject(value)) {
    throw new InvalidResult(`${what} metadata must be an object, got ${describe(value)}`);
  }
  return value;
}

function describe(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return `a ${typeof value}`;
}

/**
 * The `result` message for a handler's return value: `{ text }` or
 * `{ structuredOutput }` (exactly one), optional `metadata`; a bare string
 * is shorthand for `{ text }`. Throws InvalidResult otherwise.
 */
export function resultMessage(result) {
  if (typeof result === "string") return { type: "result", text: result, metadata: {} };
  if (!isObject(result)) {
    throw new InvalidResult(
      `the handler must return { text } or { structuredOutput }, got ${describe(result)}`,
    );
  }
  const hasText = isSet(result.text);
  const hasStructured = isSet(result.structuredOutput);
  if (hasText === hasStructured) {
    throw new InvalidResult(
      "the handler must return exactly one of text and structuredOutput",
    );
  }
  const metadata = metadataOf(result.metadata, "result");
  if (hasText) {
    if (typeof result.text !== "string") {
      throw new InvalidResult(`result text must be a string, got ${describe(result.text)}`);
    }
    return { type: "result", text: result.text, metadata };
  }
  if (!isObject(result.structuredOutput)) {
    throw new InvalidResult(
      `structuredOutput must be an object, got ${describe(result.structuredOutput)}`,
    );
  }
  return { type: "result", structured_output: result.structuredOutput, metadata };
}

/** The `error` message for anything a handler threw or rejected with. */
export function errorMessage(thrown) {
  if (thrown instanceof InvalidResult) {
    return { type: "error", error: thrown.message, metadata: {} };
  }
  const metadata = thrown instanceof HandlerError && isObject(thrown.metadata) ? thrown.metadata : {};
  return { type: "error", error: errorText(thrown), metadata };
}

function errorText(thrown) {
  if (thrown instanceof Error) return thrown.message || thrown.name || "Error";
  if (typeof thrown === "string") return thrown;
  try {
    return JSON.stringify(thrown) ?? String(thrown);
  } catch {
    return String(thrown);
  }
}

/** Whether a thrown value is worth a stack trace in the handler's log. */
export function isUnexpected(thrown) {
  return !(thrown instanceof HandlerError) && !(thrown instanceof InvalidResult);
}
