/**
 * A model call's `chat` span as a collector stand-in receives it: the GenAI attributes, and with
 * trace content the prompt in the conventions' message shape whatever the wire format (system
 * instructions apart, tool calls and their results as parts); without it, no content. No root.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type OtlpReceiver, type ReceivedSpan, startOtlpReceiver } from "../testing/otlp-receiver.ts";
import { traceIdOfRun } from "../tracing/trace-context.ts";
import { epochMs, openTracing, type Tracing } from "../tracing/tracing.ts";
import { type ChatCall, genAiProviderName, recordChatSpan } from "./chat-span.ts";
import type { ModelRoute } from "./providers.ts";

const ROUTE: ModelRoute = {
  provider: "claude-direct",
  kind: "anthropic",
  api: "anthropic",
  baseUrl: "https://api.anthropic.example",
  ownerTenant: "ten_admin",
  secret: "k",
  timeoutMs: 1000,
  price: { input: 1, output: 2, max_output_tokens: 100 },
};

const ANTHROPIC_BODY = {
  model: "claude-x",
  system: "Be brief.",
  temperature: 0.2,
  messages: [
    { role: "user", content: "list files" },
    { role: "assistant", content: [{ type: "tool_use", id: "u1", name: "shell", input: { command: "ls" } }] },
    {
      role: "user",
      content: [
        { type: "tool_result", tool_use_id: "u1", content: "a.txt" },
        { type: "image", source: { data: "…" } },
      ],
    },
  ],
};

describe("chat spans", () => {
  let receiver: OtlpReceiver;
  before(async () => {
    receiver = await startOtlpReceiver();
  });
  after(() => receiver.close());

  async function span(content: boolean, call: Omit<ChatCall, "startMs" | "endMs" | "runId">): Promise<ReceivedSpan> {
    const tracing = (await openTracing({
      endpoint: receiver.url,
      content,
      version: "t",
      nodeId: "n",
      log: () => {},
    })) as Tracing;
    const parent = { traceId: traceIdOfRun(`run_${receiver.spans.length}`), spanId: "00f067aa0ba902b7" };
    recordChatSpan(tracing, parent, { ...call, runId: "run_c", startMs: epochMs() - 5, endMs: epochMs() });
    await tracing.close();
    const got = receiver.spans.find((s) => s.traceId === parent.traceId);
    assert.ok(got);
    return got;
  }

  test("the provider's name: its kind for OpenAI and Anthropic, its own name for a compatible server", () => {
    assert.equal(genAiProviderName(ROUTE), "anthropic");
    assert.equal(genAiProviderName({ kind: "openai", provider: "oa" }), "openai");
    assert.equal(genAiProviderName({ kind: "openai_compatible", provider: "local" }), "local");
  });

  test("an Anthropic call with trace content: attributes, system instructions, messages and parts", async () => {
    const s = await span(true, {
      record: {
        model: "claude-x",
        provider: "claude-direct",
        status: 200,
        input_tokens: 11,
        output_tokens: 7,
        cost: 0.5,
      },
      route: ROUTE,
      format: "messages",
      body: ANTHROPIC_BODY,
      maxTokens: 64,
      answer: {
        model: "claude-x-2025",
        id: "msg_1",
        finishReasons: ["end_turn"],
        output: { text: "a.txt", toolCalls: [] },
      },
    });
    assert.equal(s.name, "chat claude-x");
    assert.equal(s.kind, 3);
    assert.deepEqual(
      Object.fromEntries(
        Object.entries(s.attributes).filter(([k]) => !k.startsWith("gen_ai.") || !k.includes("messages")),
      ),
      {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-x",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.response.model": "claude-x-2025",
        "gen_ai.response.id": "msg_1",
        "gen_ai.response.finish_reasons": ["end_turn"],
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.system_instructions": JSON.stringify([{ type: "text", content: "Be brief." }]),
        "server.address": "api.anthropic.example",
        "server.port": 443,
        "http.response.status_code": 200,
        "paddock.run.id": "run_c",
        "paddock.provider": "claude-direct",
        "paddock.credits": 0.5,
      },
    );
    assert.deepEqual(JSON.parse(String(s.attributes["gen_ai.input.messages"])), [
      { role: "user", parts: [{ type: "text", content: "list files" }] },
      { role: "assistant", parts: [{ type: "tool_call", id: "u1", name: "shell", arguments: { command: "ls" } }] },
      {
        role: "user",
        parts: [{ type: "tool_call_response", id: "u1", response: "a.txt" }, { type: "image" }],
      },
    ]);
    assert.deepEqual(JSON.parse(String(s.attributes["gen_ai.output.messages"])), [
      { role: "assistant", parts: [{ type: "text", content: "a.txt" }], finish_reason: "end_turn" },
    ]);
    assert.equal(s.status.code, 0);
  });

  test("a Responses call's input items; an OpenAI chat call's tool results", async () => {
    const responses = await span(true, {
      record: { model: "gpt-r", status: 200 },
      format: "responses",
      body: {
        instructions: "Plan.",
        input: [
          { role: "user", content: [{ type: "input_text", text: "go" }] },
          { type: "function_call", call_id: "f1", name: "shell", arguments: "{}" },
          { type: "function_call_output", call_id: "f1", output: "ok" },
        ],
      },
    });
    assert.equal(
      responses.attributes["gen_ai.system_instructions"],
      JSON.stringify([{ type: "text", content: "Plan." }]),
    );
    assert.deepEqual(JSON.parse(String(responses.attributes["gen_ai.input.messages"])), [
      { role: "user", parts: [{ type: "text", content: "go" }] },
      { role: "assistant", parts: [{ type: "tool_call", id: "f1", name: "shell", arguments: "{}" }] },
      { role: "tool", parts: [{ type: "tool_call_response", id: "f1", response: "ok" }] },
    ]);
    const chat = await span(true, {
      record: { model: "gpt-c", status: 200 },
      format: "chat",
      body: {
        messages: [
          { role: "system", content: "Sys." },
          { role: "assistant", content: null, tool_calls: [{ id: "c1", function: { name: "ls", arguments: "{}" } }] },
          { role: "tool", tool_call_id: "c1", content: "x" },
        ],
      },
    });
    assert.deepEqual(JSON.parse(String(chat.attributes["gen_ai.input.messages"])), [
      { role: "system", parts: [{ type: "text", content: "Sys." }] },
      { role: "assistant", parts: [{ type: "tool_call", id: "c1", name: "ls", arguments: "{}" }] },
      { role: "tool", parts: [{ type: "tool_call_response", id: "c1", response: "x" }] },
    ]);
  });

  test("without trace content no prompt or answer goes out; a refused call is an error span", async () => {
    const s = await span(false, {
      record: { model: "claude-x", status: 402, code: "out_of_credits" },
      route: ROUTE,
      format: "messages",
      body: ANTHROPIC_BODY,
      answer: { finishReasons: [], output: { text: "secret answer", toolCalls: [] } },
    });
    for (const key of ["gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions"]) {
      assert.equal(s.attributes[key], undefined, key);
    }
    assert.equal(s.attributes["error.type"], "out_of_credits");
    assert.equal(s.status.code, 2);
  });
});
