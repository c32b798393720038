// A handler module written for the original Node runtime, as its users
// wrote them: `export const handler = { run(invocation, sender) }`. It uses
// every part of that interface (systemPrompt, userPrompt, model,
// outputFormat, env, secrets, signal, logger, sendAssistantMessage,
// sendErrorMessage, both result types with metadata) and answers the echo
// verbs, so the end-to-end suite runs it next to the SDK examples. The
// runtime must run it unchanged: nothing here knows about runtimeuse-handler.

import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname } from "node:path";

const metadata = { handler: "echo-node-runtime" };

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new Error("aborted"));
    });
  });
}

function text(value) {
  return { type: "text", text: value, metadata };
}

async function answer(invocation, sender) {
  const prompt = invocation.userPrompt;
  const colon = prompt.indexOf(":");
  const verb = colon === -1 ? prompt : prompt.slice(0, colon);
  const rest = prompt.slice(colon + 1);
  switch (verb) {
    case "ECHO":
      return text(rest);
    case "STRUCTURED": {
      const value = JSON.parse(rest);
      if (typeof value !== "object" || value === null || Array.isArray(value)) {
        throw new Error("STRUCTURED: expected a JSON object");
      }
      return { type: "structured_output", structuredOutput: value, metadata };
    }
    case "SLOW":
      await sleep(Number(rest), invocation.signal);
      return text("done");
    case "STREAM": {
      const n = Number(rest);
      for (let i = 1; i <= n; i++) sender.sendAssistantMessage([`message ${i} of ${n}`]);
      return text(`streamed ${n} messages`);
    }
    case "STREAM_TEXT":
      sender.sendAssistantMessage([rest]);
      return text("done");
    case "ERROR":
      // The Node runtime's users report errors like this and then throw;
      // the client must still get exactly one error.
      sender.sendErrorMessage(rest, metadata);
      throw new Error(`handler gave up: ${rest}`);
    case "WRITE_FILE": {
      const space = rest.indexOf(" ");
      const path = space === -1 ? rest : rest.slice(0, space);
      await mkdir(dirname(path), { recursive: true });
      await writeFile(path, space === -1 ? "" : rest.slice(space + 1));
      return text(`wrote ${path}`);
    }
    case "READ_FILE":
      return text(await readFile(rest, "utf8"));
    case "ENV":
      if (!(rest in (invocation.env ?? {}))) throw new Error(`ENV: ${rest} is not set`);
      return text(invocation.env[rest]);
    case "INTERFACE": {
      // Everything the interface hands over, for the test to compare.
      const { signal, logger, ...fields } = invocation;
      return {
        type: "structured_output",
        structuredOutput: {
          ...fields,
          signalIsAbortSignal: signal instanceof AbortSignal,
          loggerMethods: ["log", "error", "debug"].filter((m) => typeof logger[m] === "function"),
        },
        metadata,
      };
    }
    default:
      return text(prompt);
  }
}

export const handler = {
  async run(invocation, sender) {
    invocation.logger.log(`node-runtime echo handling ${invocation.userPrompt.slice(0, 40)}`);
    for (const secret of invocation.secrets) invocation.logger.debug(`secret to keep out of logs: ${secret}`);
    return answer(invocation, sender);
  },
};
