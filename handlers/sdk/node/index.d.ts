// Type declarations for runtimeuse-handler (handler protocol v1).

/** Handler protocol version this SDK speaks. */
export declare const PROTOCOL: 1;

/** Asks for structured output matching `schema` instead of text. */
export interface OutputFormat {
  type: "json_schema";
  schema: Record<string, unknown>;
}

/** One agent invocation, as the runtime sends it. */
export interface Invocation {
  /** Opaque invocation id (for your logs). */
  id: string;
  /** The client's `source_id`, for your logs; null when the client sent none. */
  sourceId: string | null;
  systemPrompt: string;
  userPrompt: string;
  /** Model identifier; may be empty. */
  model: string;
  /** null: answer with `text`; otherwise answer with `structuredOutput`. */
  outputFormat: OutputFormat | null;
  /**
   * The invocation's `agent_env`. Not in `process.env` (one process serves
   * many invocations): pass it to what you run, e.g.
   * `spawn(cmd, { env: { ...process.env, ...invocation.env } })`.
   */
  env: Record<string, string>;
  /** Values to keep out of your own logs; the runtime redacts what it forwards. */
  secrets: string[];
}

/** Lines for the runtime's log (redacted there); never sent to the client. */
export interface HandlerLog {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** What a handler can do while it runs. */
export interface HandlerContext {
  /**
   * Aborted when the runtime cancels this invocation (or closes stdin). The
   * SDK has already answered the cancel; whatever the handler returns after
   * that is dropped, so just stop working.
   */
  readonly signal: AbortSignal;
  /** Streams intermediate text to the client (`assistant_message`). */
  sendAssistant(text: string | string[]): void;
  readonly log: HandlerLog;
}

/** A text answer. */
export interface TextResult {
  text: string;
  structuredOutput?: undefined | null;
  metadata?: Record<string, unknown> | null;
}

/** A structured answer (when `invocation.outputFormat` is set). */
export interface StructuredResult {
  structuredOutput: Record<string, unknown>;
  text?: undefined | null;
  metadata?: Record<string, unknown> | null;
}

/** What a handler returns; a bare string is shorthand for `{ text }`. */
export type HandlerResult = TextResult | StructuredResult | string;

export type Handler = (
  invocation: Invocation,
  ctx: HandlerContext,
) => HandlerResult | Promise<HandlerResult>;

/** Only for tests: streams to serve instead of the process's stdio. */
export interface RunHandlerOptions {
  input?: NodeJS.ReadableStream;
  output?: NodeJS.WritableStream;
  /** Where the SDK's own diagnostics go (default: stderr). */
  log?: (text: string) => void;
}

/**
 * Serves `handler` over stdin/stdout, one invocation at a time, until stdin
 * closes (the runtime wants the process gone); the promise resolves then.
 * A thrown error or rejection becomes exactly one `error` for that
 * invocation, and the process stays warm for the next one. While it serves,
 * anything written to `process.stdout` (console.log) goes to stderr, the
 * handler's log, so it cannot corrupt the protocol.
 */
export declare function runHandler(handler: Handler, options?: RunHandlerOptions): Promise<void>;

/** Fails the invocation with this message and metadata (error_message). */
export declare class HandlerError extends Error {
  constructor(message: string, metadata?: Record<string, unknown>);
  readonly metadata: Record<string, unknown>;
}
