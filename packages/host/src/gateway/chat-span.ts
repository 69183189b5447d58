/**
 * The `chat {model}` span of a model call through the gateway, after the OpenTelemetry GenAI
 * conventions: what was asked for and of whom, what answered, the tokens the provider reported
 * (the figures the call was billed at), why it stopped, how it failed, and the credits charged.
 * Prompt and completion content goes in only when the host traces content (`--trace-content`),
 * in the conventions' message shape whatever the wire format.
 */
import type { RunEventData } from "@paddock/protocol";
import type { SpanParent } from "../tracing/trace-context.ts";
import type { SpanAttributes, Tracing } from "../tracing/tracing.ts";
import type { ModelRoute } from "./providers.ts";
import { type AnswerFacts, list, type Rec, rec, type UsageFormat } from "./usage.ts";

/** What a finished model call tells its span. */
export interface ChatCall {
  /** The `llm.call` event's data, as recorded. */
  record: RunEventData<"llm.call">;
  /** The calling run. */
  runId: string;
  startMs: number;
  endMs: number;
  route?: ModelRoute;
  format?: UsageFormat;
  body?: Record<string, unknown>;
  /** The output limit sent to the provider. */
  maxTokens?: number;
  answer?: AnswerFacts;
}

/**
 * The provider as the GenAI conventions name it: `openai` and `anthropic` for theirs, the
 * configured name for an OpenAI-compatible server.
 */
export function genAiProviderName(route: Pick<ModelRoute, "kind" | "provider">): string {
  return route.kind === "openai_compatible" ? route.provider : route.kind;
}

/** Records the call's span under `parent`. */
export function recordChatSpan(tracing: Tracing, parent: SpanParent, call: ChatCall): void {
  const { record, route, body, answer } = call;
  const base = route ? new URL(route.baseUrl) : null;
  const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
  const status = record.status;
  const attributes: SpanAttributes = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": route ? genAiProviderName(route) : record.provider,
    "gen_ai.request.model": record.model,
    "gen_ai.request.max_tokens": call.maxTokens,
    "gen_ai.request.temperature": num(body?.temperature),
    "gen_ai.request.top_p": num(body?.top_p),
    "gen_ai.response.model": answer?.model,
    "gen_ai.response.id": answer?.id,
    "gen_ai.response.finish_reasons": answer?.finishReasons.length ? answer.finishReasons : undefined,
    "gen_ai.usage.input_tokens": record.input_tokens,
    "gen_ai.usage.output_tokens": record.output_tokens,
    "server.address": base?.hostname,
    "server.port": base ? Number(base.port || (base.protocol === "https:" ? 443 : 80)) : undefined,
    "http.response.status_code": status,
    "paddock.run.id": call.runId,
    "paddock.provider": record.provider,
    "paddock.llm.call_id": record.call_id,
    "paddock.llm.stream": record.stream,
    "paddock.llm.ttft_ms": record.ttft_ms,
    "paddock.llm.usage_source": record.usage,
    "paddock.llm.replayed": record.replayed,
    "paddock.llm.aborted": record.aborted,
    "paddock.credits": record.cost,
  };
  if (tracing.content && body && call.format) Object.assign(attributes, promptContent(call.format, body));
  if (tracing.content && answer?.output) {
    const { text, toolCalls } = answer.output;
    const parts: Part[] = [
      ...(text ? [{ type: "text", content: text }] : []),
      ...toolCalls.map((c) => ({ type: "tool_call", id: c.id, name: c.name, arguments: c.arguments })),
    ];
    attributes["gen_ai.output.messages"] = JSON.stringify([
      { role: "assistant", parts, finish_reason: answer.finishReasons[0] ?? "" },
    ]);
  }
  const error = record.code ?? (status !== undefined && status >= 400 ? String(status) : undefined);
  tracing.record(parent, {
    name: record.model ? `chat ${record.model}` : "chat",
    kind: "client",
    startMs: call.startMs,
    endMs: call.endMs,
    attributes,
    ...(error ? { error } : {}),
  });
}

/** A message part in the GenAI conventions' shape. */
type Part = Record<string, unknown> & { type: string };
type Message = { role: string; parts: Part[] };

/** A message's content (a string or a list of parts in the wire format) as conventions' parts. */
function partsOf(content: unknown): Part[] {
  if (typeof content === "string") return [{ type: "text", content }];
  return list(content).map((p): Part => {
    const text = typeof p.text === "string" ? p.text : undefined;
    switch (p.type) {
      case "text":
      case "input_text":
      case "output_text":
        return { type: "text", content: text ?? "" };
      case "tool_use":
        return { type: "tool_call", id: p.id, name: p.name, arguments: p.input };
      case "tool_result":
        return { type: "tool_call_response", id: p.tool_use_id, response: p.content };
      default:
        // Images, files, audio: their kind, not their bytes.
        return { type: String(p.type ?? "unknown") };
    }
  });
}

/** The request's system instructions and input messages, as the conventions' attributes. */
function promptContent(format: UsageFormat, body: Rec): SpanAttributes {
  const messages: Message[] = [];
  let system: Part[] | undefined;
  if (format === "messages") {
    if (body.system !== undefined) system = partsOf(body.system);
    for (const m of list(body.messages)) messages.push({ role: String(m.role), parts: partsOf(m.content) });
  } else if (format === "responses") {
    if (typeof body.instructions === "string") system = [{ type: "text", content: body.instructions }];
    const input = typeof body.input === "string" ? [{ role: "user", content: body.input }] : list(body.input);
    for (const item of input) {
      if (item.type === "function_call") {
        const part = { type: "tool_call", id: item.call_id, name: item.name, arguments: item.arguments };
        messages.push({ role: "assistant", parts: [part] });
      } else if (item.type === "function_call_output") {
        messages.push({
          role: "tool",
          parts: [{ type: "tool_call_response", id: item.call_id, response: item.output }],
        });
      } else messages.push({ role: String(item.role ?? "user"), parts: partsOf(item.content) });
    }
  } else {
    for (const m of list(body.messages)) {
      const parts = m.content === null || m.content === undefined ? [] : partsOf(m.content);
      for (const call of list(m.tool_calls)) {
        const fn = rec(call.function);
        parts.push({ type: "tool_call", id: call.id, name: fn.name, arguments: fn.arguments });
      }
      if (m.role === "tool") {
        messages.push({
          role: "tool",
          parts: [{ type: "tool_call_response", id: m.tool_call_id, response: m.content }],
        });
      } else messages.push({ role: String(m.role), parts });
    }
  }
  return {
    "gen_ai.system_instructions": system ? JSON.stringify(system) : undefined,
    "gen_ai.input.messages": JSON.stringify(messages),
  };
}
