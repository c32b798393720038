// Warming a spare handler up before its first invocation.
//
// The runtime starts handlers ahead of need (spares), and a one-shot query
// is answered by a process's FIRST invocation. In a fresh Node process that
// one runs cold: V8 compiles every function on its first call, and the
// paths an invocation takes (stream reads and string decoding, line
// splitting, JSON, the stdout write) are all first calls. Measured on a
// 2-core machine: the first invocation of a trivial handler took ~1.1 ms,
// the second ~0.3 ms. So, while the spare waits, the same code runs once on
// a made-up invocation, through in-memory streams:
//
// - nothing is read from stdin, and nothing reaches stdout but one
//   zero-byte write (no data: the runtime's pipe read sees nothing);
// - the user's handler is never called: only the launcher's and the SDK's
//   own code, and Node's, run;
// - a socket pair stands in for the stdin and stdout pipes (the same
//   libuv stream code reads and writes both): a one-connection server on a
//   Linux abstract socket named after the pid, closed at once; elsewhere
//   it fails to listen and is skipped. Bounded by WARM_UP_LIMIT_MS.
//
// Measured (first invocation of bench/handlers/trivial.mjs through the
// launcher, a spare started 0.4 s before): 1.15-1.37 ms without warm-up,
// ~0.57 ms with the in-memory streams, ~0.47 ms with the socket pair too;
// later invocations take ~0.32 ms.

import { PassThrough, Writable } from "node:stream";
import { readLines } from "./lines.js";

/** The longest the warm-up may delay loading the handler. */
const WARM_UP_LIMIT_MS = 1000;

/** A made-up `invoke` line, shaped like the runtime's. */
export const WARM_UP_LINE = JSON.stringify({
  type: "invoke",
  protocol: 1,
  id: "warm-up",
  source_id: "warm-up",
  system_prompt: "warm-up",
  user_prompt: "warm-up",
  model: "warm-up",
  output_format: null,
  secrets: [],
  env: {},
});

/**
 * Feeds WARM_UP_LINE through `readLines` over an in-memory stream, calling
 * `onLine` with it; resolves once it has been read. What `onLine` writes
 * should go to `sink()`.
 */
export function feedWarmUpLine(onLine) {
  return new Promise((resolve) => {
    const input = new PassThrough();
    readLines(input, onLine, resolve);
    input.end(WARM_UP_LINE + "\n");
  });
}

/** A writable that discards what it is given. */
export function sink() {
  return new Writable({
    write(_chunk, _encoding, callback) {
      callback();
    },
  });
}

/**
 * The paths every handler's first invocation takes, whoever reads stdin:
 * a line read from a stream (the SDK's reader, and `node:readline`, which
 * a script handler typically uses), JSON both ways, a stream write, and
 * the real stdout's write path with zero bytes. Errors are swallowed: a
 * warm-up must never stop a handler from starting.
 */
export async function warmUpNode() {
  let timer;
  const limit = new Promise((resolve) => {
    timer = setTimeout(resolve, WARM_UP_LIMIT_MS);
  });
  try {
    await Promise.race([warmUpPaths(), limit]);
  } catch {
    // Only ever slower, never broken.
  } finally {
    clearTimeout(timer);
  }
}

async function warmUpPaths() {
  const out = sink();
  await feedWarmUpLine((line) => {
    const message = JSON.parse(line);
    out.write(JSON.stringify({ type: "result", id: message.id, text: message.user_prompt }) + "\n");
  });
  await warmUpReadline();
  await warmUpSocket().catch(() => {});
  process.stdout.write("");
}

/** `node:readline`'s line events, on a stream of one line. */
async function warmUpReadline() {
  const { createInterface } = await import("node:readline");
  const input = new PassThrough();
  const lines = createInterface({ input });
  const read = new Promise((resolve) => lines.once("line", resolve));
  input.end(WARM_UP_LINE + "\n");
  JSON.parse(await read);
  lines.close();
}

/**
 * One line each way over a socket pair, read with `node:readline`: the
 * stream code of a pipe's reads and writes. The server takes one
 * connection and is closed as soon as it has it; every handle is unref'd,
 * so one left behind by a warm-up cut short never keeps the process alive.
 */
async function warmUpSocket() {
  const net = await import("node:net");
  const { createInterface } = await import("node:readline");
  const path = `\0runtimeuse-handler-warm-up-${process.pid}`;
  await new Promise((resolve, reject) => {
    const server = net.createServer((conn) => {
      server.close();
      conn.unref();
      const lines = createInterface({ input: conn });
      lines.once("line", (line) => {
        conn.end(JSON.stringify(JSON.parse(line)) + "\n");
        lines.close();
      });
      conn.on("error", () => {});
    });
    server.on("error", reject);
    server.unref();
    server.listen(path, () => {
      const client = net.connect(path, () => client.write(WARM_UP_LINE + "\n"));
      client.unref();
      client.setEncoding("utf8");
      client.on("data", () => {});
      client.on("end", () => {
        client.destroy();
        resolve();
      });
      client.on("error", reject);
    });
  });
}
