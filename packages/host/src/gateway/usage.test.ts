/**
 * What the gateway reads from a provider's answer as it passes, on the stand-in provider's real
 * answers in every wire format, whole and streamed: the usage it bills, and for traces the model
 * that answered, why it stopped, and what it said (text and tool calls). Needs no root.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type LlmStandIn, startLlmStandIn } from "../testing/llm-stand-in.ts";
import { type AnswerFacts, type Usage, type UsageFormat, usageReader } from "./usage.ts";

const PATHS: Record<UsageFormat, string> = {
  chat: "/v1/chat/completions",
  messages: "/v1/messages",
  responses: "/v1/responses",
};

describe("usage and answer facts", () => {
  let stand: LlmStandIn;
  before(async () => {
    stand = await startLlmStandIn();
  });
  after(() => stand.close());

  /** Asks the stand-in in `format` and reads its answer chunk by chunk, as the gateway does. */
  async function read(format: UsageFormat, stream: boolean, model: string) {
    const body =
      format === "responses"
        ? { model, input: "say three words", stream }
        : {
            model,
            max_tokens: 64,
            stream,
            stream_options: { include_usage: true },
            messages: [{ role: "user", content: "say three words" }],
          };
    const res = await fetch(`${stand.url}${PATHS[format]}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const usage: Usage = { input: 0, output: 0, found: false };
    const facts: AnswerFacts = { finishReasons: [], output: { text: "", toolCalls: [] } };
    const reader = usageReader(format, stream, usage, facts);
    for await (const chunk of res.body ?? []) reader.push(Buffer.from(chunk));
    reader.end();
    return { usage, facts, reported: stand.usage.at(-1) };
  }

  for (const format of ["chat", "messages", "responses"] as const) {
    for (const stream of [false, true]) {
      test(`${format}, ${stream ? "streamed" : "whole"}: usage, model, finish reason and text`, async () => {
        const { usage, facts, reported } = await read(format, stream, "m-text");
        assert.deepEqual(usage, { input: reported?.input, output: reported?.output, found: true });
        assert.equal(facts.model, "m-text");
        assert.match(facts.id ?? "", /^id-\d+$/);
        assert.deepEqual(facts.finishReasons, [{ chat: "stop", messages: "end_turn", responses: "completed" }[format]]);
        assert.equal(facts.output?.text, "Hello from m-text: you said 3 words");
        assert.deepEqual(facts.output?.toolCalls, []);
      });
    }
  }

  for (const format of ["chat", "messages"] as const) {
    for (const stream of [false, true]) {
      test(`${format}, ${stream ? "streamed" : "whole"}: tool calls`, async () => {
        stand.script("m-tools", [
          {
            tools: [
              { id: "t1", name: "shell", arguments: { command: "ls" } },
              { id: "t2", name: "finish", arguments: { summary: "done" } },
            ],
          },
        ]);
        const { facts } = await read(format, stream, "m-tools");
        assert.deepEqual(facts.finishReasons, [format === "chat" ? "tool_calls" : "tool_use"]);
        assert.deepEqual(facts.output?.toolCalls, [
          { id: "t1", name: "shell", arguments: JSON.stringify({ command: "ls" }) },
          { id: "t2", name: "finish", arguments: JSON.stringify({ summary: "done" }) },
        ]);
      });
    }
  }

  test("without facts asked for, only usage is read", async () => {
    const res = await fetch(`${stand.url}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] }),
    });
    const usage: Usage = { input: 0, output: 0, found: false };
    const reader = usageReader("chat", false, usage);
    reader.push(Buffer.from(await res.arrayBuffer()));
    reader.end();
    assert.equal(usage.found, true);
  });
});
