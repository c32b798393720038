// The agent's shell: runs one command in the sandbox and reports what
// happened in a form a model can read.
//
// - The command runs under `bash -c` (`sh -c` where there is no bash), with
//   the invocation's env merged over the handler's environment.
// - It leads its own process group, so a timeout or a cancel ends its whole
//   tree (background jobs included), SIGTERM first, SIGKILL after a grace.
//   Groups still running when the handler is told to stop (SIGTERM, stdin
//   closed) are ended too: being in their own group, they would otherwise
//   outlive it.
// - Output is clipped to a head and a tail before it goes back to the model,
//   so one noisy command cannot fill the context window.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";

/** Default longest run of one command. */
export const DEFAULT_TIMEOUT_MS = 10 * 60 * 1000;
/** Characters of output kept from each end. */
export const KEEP_CHARS = 10_000;
/** Between SIGTERM and SIGKILL. */
const KILL_GRACE_MS = 2_000;
/** After the shell exits, how long to wait for the last output of its pipes
 * (a background job holding them open would otherwise hold the result). */
const DRAIN_MS = 200;

const SHELL = existsSync("/bin/bash") ? "/bin/bash" : "/bin/sh";

/** Process groups of commands started here that may still have members
 * (a command's background jobs stay in its group), ended if the handler
 * stops. */
const liveGroups = new Set();

function killGroup(pid, signal) {
  try {
    process.kill(-pid, signal);
    return true;
  } catch {
    return false; // Already gone.
  }
}

/** Forgets groups with no member left (signal 0 only checks). */
function prune() {
  for (const pid of liveGroups) if (!killGroup(pid, 0)) liveGroups.delete(pid);
}

function endAllGroups() {
  prune();
  for (const pid of liveGroups) killGroup(pid, "SIGKILL");
  liveGroups.clear();
}

process.once("exit", endAllGroups);
process.once("SIGTERM", () => {
  endAllGroups();
  process.exit(143);
});

/**
 * Output kept as it streams: whole if short, else its first and last `keep`
 * characters around a marker saying how much was left out. Memory stays
 * bounded whatever a command prints.
 */
export class ClippedOutput {
  constructor(keep = KEEP_CHARS) {
    this.keep = keep;
    this.head = "";
    this.tail = "";
    this.omitted = 0;
  }

  push(text) {
    const room = this.keep - this.head.length;
    if (room > 0) {
      this.head += text.slice(0, room);
      text = text.slice(room);
    }
    const tail = this.tail + text;
    const excess = tail.length - this.keep;
    if (excess > 0) {
      this.omitted += excess;
      this.tail = tail.slice(excess);
    } else {
      this.tail = tail;
    }
  }

  toString() {
    if (this.omitted === 0) return this.head + this.tail;
    return `${this.head}\n[... ${this.omitted} characters omitted ...]\n${this.tail}`;
  }
}

/**
 * Runs `command`; resolves `{ exitCode, signal, output, timedOut }` (output:
 * stdout and stderr interleaved as they came, clipped). Rejects only if the
 * shell cannot be started. An abort of `signal` ends the command's group
 * and resolves with what it had printed.
 */
export function runCommand(command, { env, cwd, timeoutMs = DEFAULT_TIMEOUT_MS, signal } = {}) {
  prune();
  return new Promise((resolve, reject) => {
    const child = spawn(SHELL, ["-c", command], {
      env,
      cwd,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const output = new ClippedOutput();
    let timedOut = false;
    const collect = (chunk) => output.push(chunk);
    child.stdout.setEncoding("utf8").on("data", collect);
    child.stderr.setEncoding("utf8").on("data", collect);

    const stop = () => {
      killGroup(child.pid, "SIGTERM");
      setTimeout(() => killGroup(child.pid, "SIGKILL"), KILL_GRACE_MS).unref();
    };
    const timer = setTimeout(() => {
      timedOut = true;
      stop();
    }, timeoutMs);
    const onAbort = () => stop();
    signal?.addEventListener("abort", onAbort, { once: true });

    child.once("error", (err) => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      reject(err);
    });
    child.once("spawn", () => {
      liveGroups.add(child.pid);
      if (signal?.aborted) stop();
    });
    child.once("exit", (exitCode, exitSignal) => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      let drain;
      let finished = false;
      const finish = () => {
        if (finished) return;
        finished = true;
        clearTimeout(drain);
        child.stdout.destroy();
        child.stderr.destroy();
        resolve({ exitCode, signal: exitSignal, output: output.toString(), timedOut });
      };
      drain = setTimeout(finish, DRAIN_MS);
      child.once("close", finish);
    });
  });
}

/** What the model reads back from one command. */
export function describeResult({ exitCode, signal, output, timedOut }, timeoutMs = DEFAULT_TIMEOUT_MS) {
  let status;
  if (timedOut) status = `timed out after ${Math.round(timeoutMs / 1000)} s and was killed`;
  else if (signal) status = `killed by ${signal}`;
  else status = `exit code ${exitCode}`;
  return `${status}\n${output}`;
}
