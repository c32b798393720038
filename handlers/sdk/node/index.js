// runtimeuse-handler: a runtimeuse agent handler is one async function.
//
//   import { runHandler } from "runtimeuse-handler";
//   runHandler(async (invocation, ctx) => ({ text: `you said ${invocation.userPrompt}` }));
//
// Framing, one-invocation-at-a-time bookkeeping, cancellation (ctx.signal)
// and turning errors into exactly one `error` are the SDK's job. The wire
// format is handler protocol v1 (protocol/handler-protocol.md). No
// dependencies; Node >= 18.

export { runHandler, PROTOCOL } from "./lib/serve.js";
export { HandlerError } from "./lib/result.js";
