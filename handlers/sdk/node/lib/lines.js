// Splits a byte stream into newline-terminated lines.
//
// Only the new chunk is searched for "\n", so a line of many megabytes that
// arrives in thousands of chunks costs linear time, not quadratic.

/**
 * Calls `onLine(line)` for every line of `input` (without "\n" or a trailing
 * "\r"), then `onEnd()` once the stream ends. A last line without "\n" still
 * counts: EOF terminates it.
 */
export function readLines(input, onLine, onEnd) {
  let parts = [];
  input.setEncoding("utf8");
  input.on("data", (chunk) => {
    let start = 0;
    let newline;
    while ((newline = chunk.indexOf("\n", start)) !== -1) {
      parts.push(chunk.slice(start, newline));
      const line = parts.join("");
      parts = [];
      start = newline + 1;
      onLine(stripCarriageReturn(line));
    }
    if (start < chunk.length) parts.push(chunk.slice(start));
  });
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    if (parts.length) onLine(stripCarriageReturn(parts.join("")));
    parts = [];
    onEnd();
  };
  input.on("end", end);
  input.on("close", end);
  // A broken pipe reads as the end: the runtime is gone either way.
  input.on("error", end);
}

function stripCarriageReturn(line) {
  return line.endsWith("\r") ? line.slice(0, -1) : line;
}
