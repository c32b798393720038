// runtimeuse's bundled `claude` agent: Claude Code through the Claude Agent
// SDK (`@anthropic-ai/claude-agent-sdk`, which ships Claude Code itself, so
// no global `claude` install is needed), one query per invocation.
//
// - Claude Code's tool preset and system prompt, the invocation's system
//   prompt appended; the invocation's model (Claude Code's default when
//   empty);
// - permissions bypassed: the sandbox is the boundary (as root too);
// - the invocation's env merged over the handler's environment;
// - the output schema passed through, the result as structured output;
// - each assistant message's text streamed to the client;
// - result metadata: duration, API duration, turns, cost, usage, session id;
// - an unsuccessful result is one error carrying the API's own message;
// - a cancel aborts the query (Claude Code and what it runs).
//
// Claude Code's non-essential traffic (telemetry, error reporting, update
// checks) is off unless the environment sets
// CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC itself.

import { query } from "@anthropic-ai/claude-agent-sdk";
import { HandlerError, runHandler } from "runtimeuse-handler";

/** Set unless the environment says otherwise. */
const QUIET_DEFAULTS = { CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1" };

/** Ways Claude Code can authenticate besides ANTHROPIC_API_KEY. */
const OTHER_CREDENTIALS = [
  "ANTHROPIC_AUTH_TOKEN",
  "CLAUDE_CODE_OAUTH_TOKEN",
  "CLAUDE_CODE_USE_BEDROCK",
  "CLAUDE_CODE_USE_VERTEX",
  "CLAUDE_CODE_USE_FOUNDRY",
];

function environment(invocation) {
  const env = { ...QUIET_DEFAULTS, ...process.env, ...invocation.env };
  // Claude Code refuses to bypass permissions as root unless IS_SANDBOX is
  // exactly "1"; this process runs inside a sandbox by definition (sandbox
  // images often say IS_SANDBOX=yes, which it does not take).
  if (process.getuid?.() === 0 && invocation.env.IS_SANDBOX === undefined) env.IS_SANDBOX = "1";
  return env;
}

function requireCredentials(env) {
  if (env.ANTHROPIC_API_KEY || OTHER_CREDENTIALS.some((name) => env[name])) return;
  throw new HandlerError(
    "ANTHROPIC_API_KEY is not set: pass it in the invocation's agent_env or the runtime's environment",
  );
}

function options(invocation, env, abortController, ctx) {
  return {
    abortController,
    env,
    cwd: process.cwd(),
    model: invocation.model || undefined,
    systemPrompt: { type: "preset", preset: "claude_code", append: invocation.systemPrompt || undefined },
    tools: { type: "preset", preset: "claude_code" },
    permissionMode: "bypassPermissions",
    allowDangerouslySkipPermissions: true,
    outputFormat: invocation.outputFormat
      ? { type: "json_schema", schema: invocation.outputFormat.schema }
      : undefined,
    stderr: (data) => ctx.log.debug(`claude code: ${String(data).trimEnd()}`),
  };
}

function texts(message) {
  // An API error comes as a made-up assistant message too: the error
  // terminal carries it, once.
  if (message.error) return [];
  return (message.message?.content ?? [])
    .filter((block) => block.type === "text" && block.text)
    .map((block) => block.text);
}

function metadataOf(result) {
  return {
    duration_ms: result.duration_ms,
    duration_api_ms: result.duration_api_ms,
    num_turns: result.num_turns,
    total_cost_usd: result.total_cost_usd,
    usage: result.usage,
    session_id: result.session_id,
  };
}

/** The one error for an unsuccessful result, in the API's own words
 * (Claude Code puts them in `result`, e.g. "API Error: 400 ..."). */
function failureOf(result) {
  const details = [...(result.errors ?? [])];
  if (typeof result.result === "string" && result.result) details.push(result.result);
  const why = details.length ? details.join("; ") : "no detail given";
  const kind = result.subtype === "success" ? "" : ` (${result.subtype})`;
  return new HandlerError(`Claude Code failed${kind}: ${why}`, metadataOf(result));
}

runHandler(async (invocation, ctx) => {
  const env = environment(invocation);
  requireCredentials(env);
  const abortController = new AbortController();
  const abort = () => abortController.abort();
  ctx.signal.addEventListener("abort", abort, { once: true });
  let result;
  try {
    for await (const message of query({
      prompt: invocation.userPrompt,
      options: options(invocation, env, abortController, ctx),
    })) {
      if (message.type === "assistant" && !message.parent_tool_use_id) {
        const blocks = texts(message);
        if (blocks.length) ctx.sendAssistant(blocks);
      } else if (message.type === "result") {
        result = message;
      }
    }
  } catch (error) {
    // After an error result Claude Code exits 1 and the SDK throws: the
    // result says more.
    if (!result || ctx.signal.aborted) throw error;
  } finally {
    ctx.signal.removeEventListener("abort", abort);
  }
  if (ctx.signal.aborted) throw new HandlerError("cancelled");
  if (!result) throw new HandlerError("Claude Code ended without a result");
  if (result.subtype !== "success" || result.is_error) throw failureOf(result);
  const metadata = metadataOf(result);
  if (invocation.outputFormat) return { structuredOutput: result.structured_output, metadata };
  return { text: result.result ?? "", metadata };
});
