// runtimeuse's bundled `openai` agent: one agent on the OpenAI Agents SDK
// (`@openai/agents`, Responses API) per invocation.
//
// - instructions: the system prompt; model: the invocation's (the SDK's
//   default when empty);
// - tools: `shell` (runs a command in the sandbox, see lib/shell.mjs) and
//   web search;
// - each message the model writes is streamed to the client as an assistant
//   message; the final output is the result;
// - with an output schema, a strict JSON-schema output type
//   (lib/strict-schema.mjs) and the result as structured output;
// - token usage in the result metadata;
// - a cancel aborts the run and ends any command it started.
//
// OPENAI_API_KEY, OPENAI_BASE_URL (and the rest of the environment the
// commands see) come from the invocation's env over the handler's own.
// Tracing export is off unless OPENAI_AGENTS_DISABLE_TRACING is set to 0
// or false.

import { Agent, OpenAIProvider, Runner, tool, webSearchTool } from "@openai/agents";
import { HandlerError, runHandler } from "runtimeuse-handler";

import { DEFAULT_TIMEOUT_MS, describeResult, runCommand } from "./lib/shell.mjs";
import { strictSchema } from "./lib/strict-schema.mjs";

/** Model calls one run may make: room for real work on files. */
const MAX_TURNS = 100;

function shellTool(env, signal) {
  return tool({
    name: "shell",
    description:
      "Run a shell command (bash -c) in the sandbox and get its exit status and output " +
      `(stdout and stderr together; long output is clipped in the middle). ` +
      `Commands are killed after ${DEFAULT_TIMEOUT_MS / 60000} minutes.`,
    parameters: {
      type: "object",
      properties: { command: { type: "string", description: "The command line to run." } },
      required: ["command"],
      additionalProperties: false,
    },
    strict: true,
    execute: async ({ command }) => describeResult(await runCommand(command, { env, signal })),
  });
}

/** Tracing goes to OpenAI's servers: only when the user asks for it. */
function tracingWanted(env) {
  const flag = env.OPENAI_AGENTS_DISABLE_TRACING;
  return flag === "0" || flag === "false";
}

function outputTypeFor(outputFormat) {
  if (!outputFormat) return undefined;
  return { type: "json_schema", name: "output", strict: true, schema: strictSchema(outputFormat.schema) };
}

/** The text of a message output item. */
function messageText(item) {
  const content = item.rawItem?.content ?? [];
  return content
    .filter((part) => part.type === "output_text")
    .map((part) => part.text)
    .join("");
}

function usageMetadata(usage) {
  return {
    requests: usage.requests,
    input_tokens: usage.inputTokens,
    output_tokens: usage.outputTokens,
    total_tokens: usage.totalTokens,
  };
}

/** An API error says its status and the API's own message. */
function explain(error) {
  if (typeof error?.status === "number") {
    const message = error.error?.message ?? error.message;
    return new HandlerError(`OpenAI API error ${error.status}: ${message}`);
  }
  return error;
}

runHandler(async (invocation, ctx) => {
  const env = { ...process.env, ...invocation.env };
  if (!env.OPENAI_API_KEY) {
    throw new HandlerError(
      "OPENAI_API_KEY is not set: pass it in the invocation's agent_env or the runtime's environment",
    );
  }
  const runner = new Runner({
    modelProvider: new OpenAIProvider({
      apiKey: env.OPENAI_API_KEY,
      baseURL: env.OPENAI_BASE_URL || undefined,
      useResponses: true,
    }),
    tracingDisabled: !tracingWanted(env),
  });
  const agent = new Agent({
    name: "runtimeuse",
    instructions: invocation.systemPrompt || undefined,
    model: invocation.model || undefined,
    tools: [shellTool(env, ctx.signal), webSearchTool()],
    outputType: outputTypeFor(invocation.outputFormat),
  });
  let run;
  try {
    run = await runner.run(agent, invocation.userPrompt, {
      stream: true,
      signal: ctx.signal,
      maxTurns: MAX_TURNS,
    });
    for await (const event of run) {
      if (event.type === "run_item_stream_event" && event.name === "message_output_created") {
        const text = messageText(event.item);
        if (text) ctx.sendAssistant(text);
      }
    }
    await run.completed;
  } catch (error) {
    throw explain(error);
  }
  // An aborted run ends its stream quietly, without an error.
  if (ctx.signal.aborted) throw new HandlerError("cancelled");
  if (run.error) throw explain(run.error);
  const metadata = { model: invocation.model, usage: usageMetadata(run.state.usage) };
  if (invocation.outputFormat) return { structuredOutput: run.finalOutput, metadata };
  return { text: String(run.finalOutput ?? ""), metadata };
});
