// Runs a handler script as the runtime does (a child process, protocol on
// its stdin/stdout) and lets a test talk to it message by message.

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

export const SDK_URL = new URL("../index.js", import.meta.url).href;

/** Writes `source` to a temporary file; `SDK` in it is the SDK's URL. */
export function scriptFile(source, name = "handler.mjs") {
  const dir = mkdtempSync(join(tmpdir(), "rtu-node-sdk-test-"));
  const path = join(dir, name);
  writeFileSync(path, source.replaceAll("SDK", SDK_URL));
  return path;
}

const running = new Set();

/** Kills every child a test left running (a failed assertion skips close). */
export function killAll() {
  for (const child of running) child.proc.kill("SIGKILL");
  running.clear();
}

/** A running handler process. */
export class Child {
  constructor(args, { env } = {}) {
    this.proc = spawn(process.execPath, args, {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, ...env },
    });
    this.stdout = "";
    this.stderr = "";
    this.messages = [];
    this.waiters = [];
    this.proc.stdout.setEncoding("utf8");
    this.proc.stdout.on("data", (chunk) => this.onStdout(chunk));
    this.proc.stderr.setEncoding("utf8");
    this.proc.stderr.on("data", (chunk) => {
      this.stderr += chunk;
      this.wake();
    });
    running.add(this);
    this.exited = new Promise((resolve) =>
      this.proc.on("exit", (code, signal) => {
        running.delete(this);
        resolve({ code, signal });
      }),
    );
  }

  static script(source, options) {
    return new Child([scriptFile(source)], options);
  }

  onStdout(chunk) {
    this.stdout += chunk;
    let newline;
    while ((newline = this.stdout.indexOf("\n")) !== -1) {
      const line = this.stdout.slice(0, newline);
      this.stdout = this.stdout.slice(newline + 1);
      // Anything on stdout must be a protocol line: JSON.parse throws if not.
      this.messages.push(JSON.parse(line));
    }
    this.wake();
  }

  wake() {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  send(message) {
    this.proc.stdin.write((typeof message === "string" ? message : JSON.stringify(message)) + "\n");
  }

  invoke(id, userPrompt, fields = {}) {
    this.send({
      type: "invoke", protocol: 1, id, source_id: null, system_prompt: "sys",
      user_prompt: userPrompt, model: "m", output_format: null, env: {}, secrets: [],
      ...fields,
    });
  }

  /** Waits (event-driven, generous deadline) until `predicate()` is true. */
  async until(predicate, what, timeoutMs = 15000) {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`timed out waiting for ${what}; messages: ${JSON.stringify(this.messages)}; stderr: ${this.stderr}`);
      }
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** The next protocol message. */
  async next() {
    await this.until(() => this.messages.length > 0, "a message");
    return this.messages.shift();
  }

  /** Every message up to and including the next terminal. */
  async untilTerminal() {
    const seen = [];
    for (;;) {
      const message = await this.next();
      seen.push(message);
      if (message.type === "result" || message.type === "error") return seen;
    }
  }

  async terminal() {
    return (await this.untilTerminal()).at(-1);
  }

  async close() {
    this.proc.stdin.end();
    return this.exited;
  }
}

export { pathToFileURL };
