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

/**
 * What else an answer says, read for traces when asked for: the model that answered, the
 * answer's id, why it stopped, and, when `output` is given (trace content), what it said.
 */
export interface AnswerFacts {
  model?: string;
  id?: string;
  finishReasons: string[];
  output?: AnswerOutput;
}

/** An answer's text and tool calls, whatever its wire format. */
export interface AnswerOutput {
  text: string;
  toolCalls: { id: string; name: string; arguments: string }[];
}

/** Reads usage from an answer's chunks as they pass; `end` once the answer is whole. */
export interface UsageReader {
  push(chunk: Buffer): void;
  end(): void;
}

/**
 * A reader for an answer in `format`: server-sent `events`, or one JSON document. It fills
 * `usage` in, and `facts` when given.
 */
export function usageReader(format: UsageFormat, events: boolean, usage: Usage, facts?: AnswerFacts): UsageReader {
  if (events) {
    const parse = sseUsage(format, usage, facts);
    return { push: parse, end: () => parse(null) };
  }
  const chunks: Buffer[] = [];
  return {
    push: (chunk) => {
      chunks.push(chunk);
    },
    end: () => jsonUsage(format, Buffer.concat(chunks), usage, facts),
  };
}

/** Usage of a whole JSON answer (and its facts). */
function jsonUsage(format: UsageFormat, text: Buffer, usage: Usage, facts: AnswerFacts | undefined): void {
  let answer: Record<string, unknown>;
  try {
    answer = JSON.parse(text.toString("utf8")) as Record<string, unknown>;
  } catch {
    return;
  }
  const u = answer?.usage;
  if (u && typeof u === "object") {
    takeUsage(format, u as Record<string, unknown>, usage);
    usage.found = true;
  }
  if (facts && answer && typeof answer === "object") wholeFacts(format, answer, facts);
}

/** Readers of a provider's JSON, which may hold anything: a string, a list of objects, an object. */
const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);
export type Rec = Record<string, unknown>;
export const list = (v: unknown): Rec[] =>
  Array.isArray(v) ? v.filter((x): x is Rec => typeof x === "object" && x !== null) : [];
export const rec = (v: unknown): Rec => (typeof v === "object" && v !== null ? (v as Rec) : {});

/** How much of an answer's text, and how many tool calls, traces keep. */
const MAX_TEXT = 64 * 1024;
const MAX_TOOL_CALLS = 128;

/** Adds text to what an answer said, up to MAX_TEXT. */
function addText(out: AnswerOutput, text: unknown): void {
  if (typeof text === "string" && out.text.length < MAX_TEXT) out.text += text.slice(0, MAX_TEXT - out.text.length);
}

/** A tool call as AnswerOutput keeps it. */
const toolCall = (id: unknown, name: unknown, args: string) => ({
  id: str(id) ?? "",
  name: str(name) ?? "",
  arguments: args,
});

/** The facts of a whole answer: a JSON document, or the response a Responses stream ends with. */
function wholeFacts(format: UsageFormat, answer: Rec, facts: AnswerFacts): void {
  facts.model = str(answer.model) ?? facts.model;
  facts.id = str(answer.id) ?? facts.id;
  const out = facts.output;
  if (format === "chat") {
    for (const choice of list(answer.choices)) {
      const reason = str(choice.finish_reason);
      if (reason) facts.finishReasons.push(reason);
      const message = rec(choice.message);
      if (!out) continue;
      addText(out, message.content);
      for (const call of list(message.tool_calls)) {
        const fn = rec(call.function);
        out.toolCalls.push(toolCall(call.id, fn.name, str(fn.arguments) ?? ""));
      }
    }
  } else if (format === "messages") {
    const reason = str(answer.stop_reason);
    if (reason) facts.finishReasons.push(reason);
    if (!out) return;
    for (const block of list(answer.content)) {
      if (block.type === "text") addText(out, block.text);
      if (block.type === "tool_use")
        out.toolCalls.push(toolCall(block.id, block.name, JSON.stringify(block.input ?? {})));
    }
  } else {
    const status = str(answer.status);
    if (status) facts.finishReasons.push(status);
    if (!out) return;
    for (const item of list(answer.output)) {
      if (item.type === "message") for (const part of list(item.content)) addText(out, part.text);
      if (item.type === "function_call")
        out.toolCalls.push(toolCall(item.call_id, item.name, str(item.arguments) ?? ""));
    }
  }
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
function sseUsage(format: UsageFormat, usage: Usage, facts: AnswerFacts | undefined): (chunk: Buffer | null) => void {
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
    if (facts) streamFacts(format, event, facts);
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

/** The facts one server-sent event of a stream adds. */
function streamFacts(format: UsageFormat, event: Rec, facts: AnswerFacts): void {
  const out = facts.output;
  if (format === "chat") {
    facts.model ??= str(event.model);
    facts.id ??= str(event.id);
    for (const choice of list(event.choices)) {
      const reason = str(choice.finish_reason);
      if (reason) facts.finishReasons.push(reason);
      const delta = rec(choice.delta);
      if (!out) continue;
      addText(out, delta.content);
      // Tool calls come in pieces by index: the first names the call, the rest add to its arguments.
      for (const piece of list(delta.tool_calls)) {
        const index =
          typeof piece.index === "number" && piece.index >= 0 && piece.index < MAX_TOOL_CALLS
            ? piece.index
            : out.toolCalls.length;
        const fn = rec(piece.function);
        const call = out.toolCalls[index] ?? { id: "", name: "", arguments: "" };
        out.toolCalls[index] = call;
        call.id ||= str(piece.id) ?? "";
        call.name ||= str(fn.name) ?? "";
        call.arguments += str(fn.arguments) ?? "";
      }
    }
  } else if (format === "messages") {
    if (event.type === "message_start") {
      const message = rec(event.message);
      facts.model = str(message.model) ?? facts.model;
      facts.id = str(message.id) ?? facts.id;
    } else if (event.type === "message_delta") {
      const reason = str(rec(event.delta).stop_reason);
      if (reason) facts.finishReasons.push(reason);
    } else if (out && event.type === "content_block_start") {
      const block = rec(event.content_block);
      if (block.type === "tool_use") out.toolCalls.push(toolCall(block.id, block.name, ""));
    } else if (out && event.type === "content_block_delta") {
      const delta = rec(event.delta);
      if (delta.type === "text_delta") addText(out, delta.text);
      const last = out.toolCalls.at(-1);
      if (delta.type === "input_json_delta" && last) last.arguments += str(delta.partial_json) ?? "";
    }
  } else if (
    event.type === "response.completed" ||
    event.type === "response.incomplete" ||
    event.type === "response.failed"
  ) {
    wholeFacts(format, rec(event.response), facts);
  }
}
