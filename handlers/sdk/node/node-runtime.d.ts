// Types of the original Node runtime's handler interface, run unchanged.

import type { RunHandlerOptions } from "./index.js";

export interface AgentInvocation {
  systemPrompt: string;
  userPrompt: string;
  model: string;
  outputFormat?: { type: "json_schema"; schema: Record<string, unknown> };
  env: Record<string, string>;
  secrets: string[];
  signal: AbortSignal;
  logger: Logger;
  sourceId?: string;
}

export interface Logger {
  log(...args: unknown[]): void;
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
  debug(...args: unknown[]): void;
  trace(...args: unknown[]): void;
}

export interface MessageSender {
  sendAssistantMessage(textBlocks: string[]): void;
  /** Ends the invocation with this error now; what `run` does afterwards is dropped. */
  sendErrorMessage(message: string, metadata?: Record<string, unknown>): void;
}

export type AgentResult =
  | { type: "text"; text: string; metadata?: Record<string, unknown> }
  | { type: "structured_output"; structuredOutput: Record<string, unknown>; metadata?: Record<string, unknown> };

export interface AgentHandler {
  run(invocation: AgentInvocation, sender: MessageSender): Promise<AgentResult>;
}

/** The handler a module exports (`handler`, or the default export), or null. */
export declare function findNodeRuntimeHandler(mod: unknown): AgentHandler | null;

/** Serves a Node-runtime handler until stdin closes. */
export declare function runNodeRuntimeHandler(handler: AgentHandler, options?: RunHandlerOptions): Promise<void>;

/**
 * Loads a module and serves it: a Node-runtime handler module, a module
 * calling runHandler itself, or a script speaking the protocol on its own.
 */
export declare function runNodeRuntimeModule(
  path: string,
  options?: { load?: (url: string) => Promise<unknown> },
): Promise<void>;
