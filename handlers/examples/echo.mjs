// The echo agent of `runtimeuse --agent echo`, on the Node SDK.
//
//   runtimeuse --handler handlers/examples/echo.mjs
//
// Answers by the user prompt: ECHO:<text>, STRUCTURED:<json object>,
// SLOW:<ms> (cancellable), STREAM:<n>, STREAM_TEXT:<text>, ERROR:<msg>,
// WRITE_FILE:<path> <content>, READ_FILE:<path>, ENV:<name>; anything else
// is echoed. The runtime resolves "runtimeuse-handler" for the handlers it
// starts; elsewhere `npm install handlers/sdk/node`.

import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { HandlerError, runHandler } from "runtimeuse-handler";

const metadata = { handler: "echo-node" };
const text = (value) => ({ text: value, metadata });
const fail = (message) => new HandlerError(message, metadata);

const verbs = {
  ECHO: (rest) => text(rest),
  STRUCTURED: (rest) => {
    let value;
    try {
      value = JSON.parse(rest);
    } catch (err) {
      throw fail(`STRUCTURED: invalid JSON: ${err.message}`);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw fail("STRUCTURED: expected a JSON object");
    }
    return { structuredOutput: value, metadata };
  },
  SLOW: async (rest, invocation, ctx) => {
    const ms = Number(rest.trim());
    if (!Number.isInteger(ms) || ms < 0 || rest.trim() === "") {
      throw fail(`SLOW: not a number of milliseconds: ${JSON.stringify(rest)}`);
    }
    await sleep(ms, undefined, { signal: ctx.signal }); // rejects on cancel
    return text("done");
  },
  STREAM: (rest, invocation, ctx) => {
    const n = Number(rest.trim());
    if (!Number.isInteger(n) || n < 0 || rest.trim() === "") {
      throw fail(`STREAM: not a count: ${JSON.stringify(rest)}`);
    }
    for (let i = 1; i <= n; i++) ctx.sendAssistant(`message ${i} of ${n}`);
    return text(`streamed ${n} messages`);
  },
  STREAM_TEXT: (rest, invocation, ctx) => {
    ctx.sendAssistant(rest);
    return text("done");
  },
  ERROR: (rest) => {
    throw fail(rest);
  },
  WRITE_FILE: async (rest) => {
    const space = rest.indexOf(" ");
    const [path, content] = space === -1 ? [rest, ""] : [rest.slice(0, space), rest.slice(space + 1)];
    try {
      await mkdir(dirname(path), { recursive: true });
      await writeFile(path, content);
    } catch (err) {
      throw fail(`WRITE_FILE: cannot write ${path}: ${err.message}`);
    }
    return text(`wrote ${path}`);
  },
  READ_FILE: async (path) => {
    try {
      return text(await readFile(path, "utf8"));
    } catch (err) {
      throw fail(`READ_FILE: cannot read ${path}: ${err.message}`);
    }
  },
  ENV: (name, invocation) => {
    if (!Object.hasOwn(invocation.env, name)) throw fail(`ENV: ${name} is not set`);
    return text(invocation.env[name]);
  },
};

runHandler((invocation, ctx) => {
  const prompt = invocation.userPrompt;
  const colon = prompt.indexOf(":");
  const verb = colon === -1 ? undefined : verbs[prompt.slice(0, colon)];
  return verb ? verb(prompt.slice(colon + 1), invocation, ctx) : text(prompt);
});
