/**
 * What the bridge, the gateway and agent calls share at the sandbox channel's edge: the routes the
 * bridge's listener serves besides /bridge/, a refusal with its registered code (and headers such
 * as Retry-After), request bodies read under a running byte cap, JSON answers, journal positions
 * and answers replayed from the journal.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { APPROVAL_HEADER, AppError, ERROR_CODES, type ErrorCode } from "@paddock/protocol";
import { type JournalEntry, STEP_HEADER, stepKey } from "../store/journal.ts";
import { type LiveSandbox, LiveSandboxes } from "./live.ts";

/** One call on the sandbox channel, as the bridge's listener hands it to a route. */
export interface ChannelCall {
  req: IncomingMessage;
  res: ServerResponse;
  /** The request target (path and query) as received. */
  target: string;
  /** The live sandbox at the call's source address; undefined when none is listed there. */
  sandbox: LiveSandbox | undefined;
  /**
   * The sandbox, once its bearer run token verifies, names this very sandbox and attempt, and
   * grants `scope`; otherwise a Refusal (`refusal` is the message when only the scope is missing).
   */
  authorize(scope: string, refusal: string): Promise<LiveSandbox>;
}

/** A route served on the bridge's listener next to /bridge/: the LLM gateway, agent calls. */
export interface ChannelRoute {
  /** Whether `target` is this route's. */
  serves(target: string): boolean;
  handle(call: ChannelCall): Promise<void>;
}

/** A refusal on the way: its code, an optional message, and headers to answer with. */
export class Refusal extends Error {
  readonly code: ErrorCode;
  readonly headers: Record<string, string>;
  constructor(code: ErrorCode, message?: string, headers: Record<string, string> = {}) {
    super(message ?? ERROR_CODES[code].message);
    this.code = code;
    this.headers = headers;
  }

  get status(): number {
    return ERROR_CODES[this.code].status;
  }

  /** Any error as a refusal: registered codes kept, anything else `internal`. */
  static from(err: unknown): Refusal {
    if (err instanceof Refusal) return err;
    if (err instanceof AppError) return new Refusal(err.code, err.message);
    return new Refusal("internal");
  }
}

/** The request's body, refused (`body_too_large`) past `max` bytes, whether it declares a length or not. */
export async function readCapped(req: IncomingMessage, max: number): Promise<Buffer> {
  if (Number(req.headers["content-length"] ?? 0) > max) throw new Refusal("body_too_large");
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > max) throw new Refusal("body_too_large");
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** A body that must be JSON (`invalid_json` otherwise); an empty one is `empty`. */
export function parseJson(bytes: Buffer, empty?: unknown): unknown {
  if (bytes.length === 0 && empty !== undefined) return empty;
  try {
    return JSON.parse(bytes.toString("utf8"));
  } catch {
    throw new Refusal("invalid_json");
  }
}

export function sendJson(
  res: ServerResponse,
  status: number,
  value: unknown,
  headers: Record<string, string> = {},
): void {
  const body = JSON.stringify(value);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

/**
 * The journal position a sandbox's call of `kind` takes: the caller's own step name (the
 * paddock-step header) or the next one in order; null for a step name that is not accepted.
 */
export function takeStep(sandbox: LiveSandbox, req: IncomingMessage, kind: string): string | null {
  return stepKey(req.headers[STEP_HEADER], kind, LiveSandboxes.nextStep(sandbox, kind));
}

/** The approval a request asking again says it waits on (its paddock-approval header), if any. */
export function approvalAsked(req: IncomingMessage): string | undefined {
  const value = req.headers[APPROVAL_HEADER];
  return typeof value === "string" && /^apr_[0-9a-z]{26}$/.test(value) ? value : undefined;
}

/** A refusal as the bridge answers it: its status, headers, code and message. */
export function sendRefusal(res: ServerResponse, refusal: Refusal): void {
  sendJson(res, refusal.status, { error: { code: refusal.code, message: refusal.message } }, refusal.headers);
}

/** An answer from the journal, marked as such. */
export function sendReplay(res: ServerResponse, entry: JournalEntry): void {
  res.writeHead(entry.status, { ...entry.headers, "paddock-replayed": "true" });
  res.end(entry.body);
}
