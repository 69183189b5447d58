/**
 * What a model call used, read from the provider's own answer as it passes: the usage figures of a
 * whole JSON answer, or of a stream's server-sent events, per wire format (OpenAI's chat
 * completions and responses, Anthropic's messages). Until a stream's figures come, its output is
 * counted from the deltas, so a stream cut short is billed for what it carried. The sandbox's word
 * is never taken: only what the provider sent is read.
 */
import { StringDecoder } from "node:string_decoder";

/** The wire format of a call, which says where its usage figures are. */
export type UsageFormat = "chat" | "responses" | "messages";

/** Tokens a call used; `found` once the provider's own figures were read. */
export interface Usage {
  input: number;
  output: number;
  found: boolean;
}

/** Reads usage from an answer's chunks as they pass; `end` once the answer is whole. */
export interface UsageReader {
  push(chunk: Buffer): void;
  end(): void;
}

/** A reader for an answer in `format`: server-sent `events`, or one JSON document. It fills `usage` in. */
export function usageReader(format: UsageFormat, events: boolean, usage: Usage): UsageReader {
  if (events) {
    const parse = sseUsage(format, usage);
    return { push: parse, end: () => parse(null) };
  }
  const chunks: Buffer[] = [];
  return {
    push: (chunk) => {
      chunks.push(chunk);
    },
    end: () => jsonUsage(format, Buffer.concat(chunks), usage),
  };
}

/** Usage of a whole JSON answer. */
function jsonUsage(format: UsageFormat, text: Buffer, usage: Usage): void {
  try {
    const u = (JSON.parse(text.toString("utf8")) as { usage?: Record<string, unknown> }).usage;
    if (u) {
      takeUsage(format, u, usage);
      usage.found = true;
    }
  } catch {}
}

function takeUsage(format: UsageFormat, u: Record<string, unknown>, usage: Usage): void {
  const n = (v: unknown) => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? Math.floor(v) : 0);
  if (format === "chat") {
    usage.input = n(u.prompt_tokens);
    usage.output = n(u.completion_tokens);
    usage.found = true;
  } else if (format === "responses") {
    usage.input = n(u.input_tokens);
    usage.output = n(u.output_tokens);
    usage.found = true;
  } else {
    // Anthropic: input at message_start, output (cumulative) at message_start and each message_delta.
    const input = n(u.input_tokens) + n(u.cache_creation_input_tokens) + n(u.cache_read_input_tokens);
    if (input > 0) usage.input = input;
    if ("output_tokens" in u) usage.output = Math.max(usage.output, n(u.output_tokens));
  }
}

/**
 * Reads a stream's server-sent events as they pass, for the provider's usage figures; `null` ends
 * it. Until the figures come, output is counted from the deltas (about four characters a token,
 * at least one a delta): what a stream cut short is billed for.
 */
function sseUsage(format: UsageFormat, usage: Usage): (chunk: Buffer | null) => void {
  const decoder = new StringDecoder("utf8");
  const count = (text: unknown) => {
    if (!usage.found) usage.output += Math.max(1, Math.ceil((typeof text === "string" ? text.length : 0) / 4));
  };
  let buffer = "";
  const line = (raw: string) => {
    const text = raw.trim();
    if (!text.startsWith("data:")) return;
    const data = text.slice(5).trim();
    if (data === "[DONE]" || data === "") return;
    let event: Record<string, unknown>;
    try {
      event = JSON.parse(data) as Record<string, unknown>;
    } catch {
      return;
    }
    const type = event.type;
    if (format === "chat") {
      if (event.usage && typeof event.usage === "object") {
        takeUsage(format, event.usage as Record<string, unknown>, usage);
        return;
      }
      const delta = (
        event.choices as
          | { delta?: { content?: unknown; tool_calls?: { function?: { arguments?: unknown } }[] } }[]
          | undefined
      )?.[0]?.delta;
      if (delta)
        count(
          `${typeof delta.content === "string" ? delta.content : ""}${(delta.tool_calls ?? []).map((t) => String(t.function?.arguments ?? "")).join("")}`,
        );
    } else if (format === "responses") {
      if (type === "response.completed" || type === "response.incomplete" || type === "response.failed") {
        const u = (event.response as { usage?: Record<string, unknown> } | undefined)?.usage;
        if (u) takeUsage(format, u, usage);
      } else if (typeof type === "string" && type.endsWith(".delta")) count(event.delta);
    } else if (type === "message_start") {
      const u = (event.message as { usage?: Record<string, unknown> } | undefined)?.usage;
      if (u) takeUsage(format, u, usage);
    } else if (type === "message_delta") {
      // The final, cumulative output count replaces what was counted from the deltas.
      const u = event.usage as Record<string, unknown> | undefined;
      if (u && typeof u.output_tokens === "number") {
        usage.output = 0;
        takeUsage(format, u, usage);
        usage.found = true;
      }
    } else if (type === "content_block_delta") {
      const d = event.delta as { text?: unknown; partial_json?: unknown; thinking?: unknown } | undefined;
      count(d?.text ?? d?.partial_json ?? d?.thinking);
    }
  };
  return (chunk) => {
    buffer += chunk === null ? `${decoder.end()}\n` : decoder.write(chunk);
    let nl = buffer.indexOf("\n");
    while (nl >= 0) {
      line(buffer.slice(0, nl));
      buffer = buffer.slice(nl + 1);
      nl = buffer.indexOf("\n");
    }
  };
}
