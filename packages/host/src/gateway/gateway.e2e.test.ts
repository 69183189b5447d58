/**
 * The LLM gateway end to end: a real host, real sandboxes, and the official `openai` and
 * `@anthropic-ai/sdk` clients inside them with only their base URL and API key (the run token)
 * set, against a local stand-in for the providers. The host attaches the provider keys, meters
 * each call from the stand-in's own usage figures, and never lets a key or an overspend through.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { BuiltinAgentEvent, isEvent } from "@paddock/protocol";
import { artifactJson, bundleAgent } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName } from "../testing/harness.ts";
import { FLOOD_AGENT, floodResults, type LlmStandIn, startLlmStandIn } from "../testing/llm-stand-in.ts";
import { startMcpStandIn } from "../testing/mcp-stand-in.ts";

const OPENAI_KEY = `sk-${randomBytes(20).toString("hex")}`;
const ANTHROPIC_KEY = `sk-ant-${randomBytes(20).toString("hex")}`;
const NODE = "/opt/paddock/runner/node";
const PRICE = { gpt: { input: 3, output: 15 }, claude: { input: 2, output: 10 } };

/** Runs the steps of its input with the official SDKs; writes what each returned. */
const SDK_AGENT = `
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { readFileSync, writeFileSync } from "node:fs";
const token = readFileSync(process.env.PADDOCK_TOKEN_FILE, "utf8").trim();
const base = process.env.PADDOCK_BRIDGE_URL;
const { steps } = JSON.parse(readFileSync(process.env.PADDOCK_INPUT, "utf8"));
const openai = new OpenAI({ baseURL: base + "/v1", apiKey: token, maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: base, apiKey: token, maxRetries: 0 });
const user = (content) => [{ role: "user", content }];
const out = {};
async function step(s) {
  if (s.kind === "chat") {
    const r = await openai.chat.completions.create({ model: s.model, messages: user(s.say), max_tokens: s.max ?? 64, ...s.extra });
    return { text: r.choices[0].message.content, usage: r.usage };
  }
  if (s.kind === "chat_stream") {
    const controller = new AbortController();
    const stream = await openai.chat.completions.create(
      { model: s.model, messages: user(s.say), stream: true, max_tokens: s.max ?? 64 },
      { signal: controller.signal },
    );
    let text = "", chunks = 0, usage = null;
    try {
      for await (const c of stream) {
        text += c.choices[0]?.delta?.content ?? "";
        if (c.usage) usage = c.usage;
        if (c.choices.length > 0 && ++chunks === s.abortAfter) controller.abort();
      }
    } catch (e) {
      return { text, chunks, aborted: true };
    }
    return { text, chunks, usage, aborted: controller.signal.aborted };
  }
  if (s.kind === "messages") {
    const r = await anthropic.messages.create({ model: s.model, max_tokens: s.max ?? 64, messages: user(s.say) });
    return { text: r.content[0].text, usage: r.usage };
  }
  if (s.kind === "messages_stream") {
    const stream = anthropic.messages.stream({ model: s.model, max_tokens: s.max ?? 64, messages: user(s.say) });
    const m = await stream.finalMessage();
    return { text: m.content[0].text, usage: m.usage };
  }
  if (s.kind === "responses") {
    const r = await openai.responses.create({ model: s.model, input: s.say, max_output_tokens: 64 });
    return { text: r.output_text, usage: r.usage };
  }
  if (s.kind === "responses_stream") {
    const stream = await openai.responses.create({ model: s.model, input: s.say, max_output_tokens: 64, stream: true });
    let text = "", usage = null;
    for await (const e of stream) {
      if (e.type === "response.output_text.delta") text += e.delta;
      if (e.type === "response.completed") usage = e.response.usage;
    }
    return { text, usage };
  }
  if (s.kind === "models") return { ids: (await openai.models.list()).data.map((m) => m.id).sort() };
}
for (const s of steps) {
  try {
    out[s.name] = await step(s);
  } catch (e) {
    out[s.name] = { status: e.status ?? null, error: String(e.message).slice(0, 300) };
  }
}
writeFileSync("/outputs/result.json", JSON.stringify(out));
`;

describe("LLM gateway", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  let stand: LlmStandIn;
  let sdkBundle: string;

  before(async () => {
    stand = await startLlmStandIn();
    t = await startTestHost();
    const ok = async (method: string, path: string, body: unknown) => {
      const res = await t.api(method, path, body);
      assert.ok(res.status < 300, `${path}: ${res.status} ${JSON.stringify(res.body)}`);
      return res.body;
    };
    await ok("PUT", "/v1/secrets/openai-key", { value: OPENAI_KEY });
    await ok("PUT", "/v1/secrets/anthropic-key", { value: ANTHROPIC_KEY });
    await ok("PUT", "/v1/providers/local-openai", {
      kind: "openai_compatible",
      base_url: `${stand.url}/v1`,
      secret: "openai-key",
      models: { "gpt-test": { ...PRICE.gpt, max_output_tokens: 1000 }, "gpt-agent": PRICE.gpt },
    });
    await ok("PUT", "/v1/providers/local-anthropic", {
      kind: "anthropic",
      base_url: stand.url,
      secret: "anthropic-key",
      models: { "claude-test": PRICE.claude, "claude-agent": PRICE.claude },
    });
    await ok("POST", "/v1/credits/grants", { tenant: "default", credits: 1000 });
    sdkBundle = await bundleAgent(SDK_AGENT);
  });
  after(async () => {
    await t?.close();
    await stand?.close();
  });

  const tenantKey = async (name: string): Promise<string> => {
    assert.equal((await t.api("POST", "/v1/tenants", { name })).status, 201);
    const res = await t.api("POST", `/v1/tenants/${name}/keys`, {});
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return res.body.key as string;
  };

  test("refuses bad provider definitions and non-admin keys with clear codes", async () => {
    const bad = await t.api("PUT", "/v1/providers/x", {
      kind: "openai_compatible",
      models: { m: { input: 1, output: 1 } },
    });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.code, "validation_failed");
    const clash = await t.api("PUT", "/v1/providers/y", {
      kind: "openai",
      models: { "gpt-test": { input: 1, output: 1 } },
    });
    assert.equal(clash.status, 409);
    const noSecret = await t.api("PUT", "/v1/providers/z", {
      kind: "openai",
      secret: "missing",
      models: { other: { input: 1, output: 1 } },
    });
    assert.equal(noSecret.body.error.code, "unknown_secret");
    const key = await tenantKey("gw-tenant");
    assert.equal((await t.api("GET", "/v1/providers", undefined, key)).status, 403);
    assert.equal((await t.api("POST", "/v1/credits/grants", { tenant: "gw-tenant", credits: 5 }, key)).status, 403);
    const models = await t.api("GET", "/v1/models", undefined, key);
    assert.deepEqual(
      models.body.data.map((m: { model: string; api: string }) => [m.model, m.api]),
      [
        ["claude-agent", "anthropic"],
        ["claude-test", "anthropic"],
        ["gpt-agent", "openai"],
        ["gpt-test", "openai"],
      ],
    );
  });

  test("the official SDKs work unchanged; the host attaches keys and meters from the provider's usage", async () => {
    const before = (await t.api("GET", "/v1/credits")).body.tenant;
    const seenBefore = stand.seen.length;
    const usageBefore = stand.usage.length;
    const steps = [
      { name: "chat", kind: "chat", model: "gpt-test", say: "one two three" },
      { name: "chat_stream", kind: "chat_stream", model: "gpt-test", say: "stream four words please" },
      { name: "messages", kind: "messages", model: "claude-test", say: "hi there" },
      { name: "messages_stream", kind: "messages_stream", model: "claude-test", say: "a b c d e" },
      { name: "responses", kind: "responses", model: "gpt-test", say: "six words in the responses api" },
      { name: "responses_stream", kind: "responses_stream", model: "gpt-test", say: "streamed responses" },
      { name: "echo", kind: "chat", model: "gpt-test", say: "echo-key" },
      { name: "echo_anthropic", kind: "messages", model: "claude-test", say: "echo-key" },
      { name: "models", kind: "models" },
      { name: "e429", kind: "chat", model: "gpt-test", say: "status:429" },
      { name: "e500", kind: "messages", model: "claude-test", say: "status:500" },
      { name: "wrong_api", kind: "chat", model: "claude-test", say: "x" },
      { name: "unknown", kind: "chat", model: "nope", say: "x" },
      { name: "n2", kind: "chat", model: "gpt-test", say: "x", extra: { n: 2 } },
      {
        name: "server_tool",
        kind: "chat",
        model: "gpt-test",
        say: "x",
        extra: { tools: [{ type: "web_search_preview" }] },
      },
      {
        name: "two_limits",
        kind: "chat",
        model: "gpt-test",
        say: "x",
        extra: { max_completion_tokens: 3, n_predict: 900 },
      },
      { name: "abort", kind: "chat_stream", model: "gpt-test", say: "slow", abortAfter: 5 },
    ];
    const { run, events } = await runAgent(
      t,
      { name: uniqueName("sdk"), command: [NODE, "/app/agent.mjs"], files: { "agent.mjs": sdkBundle } },
      { steps },
    );
    assert.equal(run.status, "succeeded", JSON.stringify(events.slice(-5)));
    const out = await artifactJson(t, run.id, "result.json");

    assert.equal(out.chat.text, "Hello from gpt-test: you said 3 words");
    assert.equal(out.chat_stream.text, "Hello from gpt-test: you said 4 words");
    assert.equal(out.messages.text, "Hello from claude-test: you said 2 words");
    assert.equal(out.messages_stream.text, "Hello from claude-test: you said 5 words");
    assert.equal(out.responses.text, "Hello from gpt-test: you said 6 words");
    assert.equal(out.responses_stream.text, "Hello from gpt-test: you said 2 words");
    assert.equal(out.responses_stream.usage.output_tokens, 7);
    assert.deepEqual(out.models.ids, ["claude-agent", "claude-test", "gpt-agent", "gpt-test"]);
    // Provider errors pass through with their status; the gateway's own refusals have codes.
    assert.equal(out.e429.status, 429);
    assert.equal(out.e500.status, 500);
    assert.equal(out.wrong_api.status, 400);
    assert.match(out.wrong_api.error, /other wire format/);
    assert.equal(out.unknown.status, 404);
    // What cannot be metered or would reach past the sandbox's policy is refused before the provider.
    assert.equal(out.n2.status, 400);
    assert.match(out.n2.error, /n must be 1/);
    assert.equal(out.server_tool.status, 400);
    assert.match(out.server_tool.error, /server-side tools/);
    // Every spelling of an output limit is dropped but the one the provider reads, clamped.
    const twoLimits = stand.seen.find(
      (r) => (r.body.messages as { content: string }[])?.[0]?.content === "x" && r.body.max_tokens !== undefined,
    );
    assert.equal(twoLimits?.body.n_predict, undefined);
    assert.equal(twoLimits?.body.max_completion_tokens, undefined);
    assert.equal(twoLimits?.body.max_tokens, 900);
    assert.equal(out.abort.aborted, true);

    // The keys: attached upstream, never seen by the sandbox (echoed ones are redacted).
    const seen = stand.seen.slice(seenBefore);
    for (const r of seen) {
      if (r.path === "/v1/messages") assert.equal(r.headers["x-api-key"], ANTHROPIC_KEY);
      else assert.equal(r.headers.authorization, `Bearer ${OPENAI_KEY}`);
    }
    const resultText = JSON.stringify(out);
    assert.ok(!resultText.includes(OPENAI_KEY) && !resultText.includes(ANTHROPIC_KEY), resultText);
    assert.ok(!out.echo.text.includes(OPENAI_KEY));
    assert.ok(out.echo.text.startsWith("key "), out.echo.text);
    // Streams are asked for usage even when the client did not ask.
    const streamed = seen.find((r) => r.body.stream === true && r.path === "/v1/chat/completions");
    assert.deepEqual(streamed?.body.stream_options, { include_usage: true });

    // Every call is on the record; each settled one matches the stand-in's figures exactly.
    const calls = events.filter(isEvent("llm.call")).map((e) => e.data);
    const done = stand.usage.slice(usageBefore);
    const settled = calls.filter((c) => c.status === 200 && !c.aborted);
    assert.deepEqual(
      settled.map((c) => [c.model, c.input_tokens, c.output_tokens]),
      done.map((u) => [u.model, u.input, u.output]),
    );
    const codes: (string | null)[] = calls.map((c) => c.code ?? null);
    for (const code of ["provider_rate_limited", "provider_error", "model_wrong_api", "unknown_model"]) {
      assert.ok(codes.includes(code), `${code} in ${codes}`);
    }
    const aborted = calls.find((c) => c.aborted);
    assert.ok(aborted, "the aborted stream is on the record");
    const billed = aborted.output_tokens ?? 0;
    assert.ok(billed >= 5 && billed < 40, `billed ${billed} tokens`);
    assert.equal(aborted.usage, "counted");

    // The bill: settled calls cost exactly their tokens at the model's price; failures cost nothing.
    const bill = (await t.api("GET", `/v1/runs/${run.id}/credits`)).body;
    assert.equal(bill.reserved, 0, "no reservation is left open");
    let expected = 0;
    for (const c of bill.calls as {
      status: string;
      model: string;
      input_tokens: number;
      output_tokens: number;
      cost: number;
    }[]) {
      if (c.status !== "settled") {
        assert.equal(c.status, "released");
        continue;
      }
      const price = c.model === "gpt-test" ? PRICE.gpt : PRICE.claude;
      const micro = Math.ceil(c.input_tokens * price.input + c.output_tokens * price.output);
      assert.equal(c.cost, micro / 1e6, JSON.stringify(c));
      expected += micro;
    }
    assert.equal(bill.calls.filter((c: { status: string }) => c.status === "released").length, 2);
    const after = (await t.api("GET", "/v1/credits")).body.tenant;
    assert.equal(Math.round((before.available - after.available) * 1e6), expected);
    assert.equal(after.reserved, 0);
  });

  test("100 concurrent calls against a small run budget: the spend stays under it and the run stops", async () => {
    // About 35 calls' worth: the run spends it all, with calls held back and retried on the way.
    const budget = 0.005;
    const { run, events } = await runAgent(
      t,
      {
        name: uniqueName("flood"),
        command: [NODE, "/app/flood.mjs"],
        files: { "flood.mjs": FLOOD_AGENT },
        budget: { per_run: budget },
      },
      { count: 100 },
    );
    assert.equal(run.status, "failed");
    assert.equal(run.reason, "out_of_credits");
    const bill = (await t.api("GET", `/v1/runs/${run.id}/credits`)).body;
    assert.ok(bill.spent <= budget, `spent ${bill.spent} of ${budget}`);
    assert.ok(bill.spent > 0);
    assert.equal(bill.reserved, 0, "calls cut off by the stop were settled or released");
    const calls = events.filter(isEvent("llm.call"));
    assert.ok(calls.some((e) => e.data.code === "out_of_credits"));
    assert.ok(events.filter(isEvent("credits.exhausted")).some((e) => e.data.budget === "run"));
    // Output was clamped to what the budget allowed.
    const clamped = calls.filter((e) => e.data.clamped_max_tokens !== undefined);
    assert.ok(clamped.length >= 1, "some call had its max_tokens clamped");
  });

  test("an agent's request rate limit refuses calls past it with llm_rate_limited and Retry-After", async () => {
    const count = stand.seen.length;
    const { run, events } = await runAgent(
      t,
      {
        name: uniqueName("limited"),
        command: [NODE, "/app/flood.mjs"],
        files: { "flood.mjs": FLOOD_AGENT },
        budget: { requests_per_minute: 3 },
      },
      { count: 5 },
    );
    assert.equal(run.status, "succeeded");
    const results = floodResults(events)
      .map(([status, code]) => `${status} ${code}`)
      .sort();
    assert.deepEqual(results, ["200 null", "200 null", "200 null", "429 llm_rate_limited", "429 llm_rate_limited"]);
    assert.equal(stand.seen.length - count, 3, "refused calls never reached the provider");
  });

  test("without credits a call is refused with out_of_credits and nothing reaches the provider", async () => {
    const key = await tenantKey("gw-poor");
    const count = stand.seen.length;
    const { run, events } = await runAgent(
      t,
      { name: uniqueName("poor"), command: [NODE, "/app/flood.mjs"], files: { "flood.mjs": FLOOD_AGENT } },
      { count: 1 },
      key,
    );
    assert.equal(run.reason, "out_of_credits");
    assert.equal(stand.seen.length, count);
    const call = events.find(isEvent("llm.call"));
    assert.equal(call?.data.code, "out_of_credits");
    assert.equal(call?.data.status, 402);
  });

  for (const model of ["gpt-agent", "claude-agent"]) {
    test(`the built-in agent writes a script, runs it, reads its output and finishes (${model})`, async () => {
      stand.script(model, [
        { tools: [{ id: "c1", name: "write_file", arguments: { path: "/tmp/calc.py", content: "print(6 * 7)" } }] },
        {
          tools: [
            {
              id: "c2",
              name: "shell",
              arguments: { command: "python3 /tmp/calc.py > /outputs/answer.txt; cat /outputs/answer.txt" },
            },
          ],
        },
        { tools: [{ id: "c3", name: "read_file", arguments: { path: "/outputs/answer.txt" } }] },
        { tools: [{ id: "c4", name: "finish", arguments: { summary: "The script printed 42." } }] },
      ]);
      const usageBefore = stand.usage.length;
      const seenBefore = stand.seen.length;
      const { run, events } = await runAgent(
        t,
        {
          name: uniqueName("builtin"),
          instructions: "Compute six times seven with a Python script.",
          model,
          max_steps: 6,
        },
        { task: "6*7" },
      );
      assert.equal(run.status, "succeeded", JSON.stringify(events.slice(-6)));
      // Every marker the built-in agent wrote is one its schema describes.
      const steps = events.filter(isEvent("user")).map((e) => BuiltinAgentEvent.parse(e.data));
      const calls = steps.flatMap((u) => (u.type === "tool.call" ? [u.data.name] : []));
      assert.deepEqual(calls, ["write_file", "shell", "read_file", "finish"]);
      const results = steps.flatMap((u) => (u.type === "tool.result" ? [u.data.output] : []));
      assert.match(results[1] ?? "", /^exit 0\n42/);
      assert.equal(results[2], "42\n");
      const finished = steps.flatMap((u) => (u.type === "agent.finished" ? [u.data.summary] : []));
      assert.deepEqual(finished, ["The script printed 42."]);
      // The model saw each tool's result in its own format.
      const last = stand.seen.at(-1)?.body as { messages: { role: string; content: unknown }[]; system?: string };
      assert.ok(JSON.stringify(last.messages).includes("42"), "the last request carried the read_file result");
      if (model === "claude-agent") assert.equal(last.system, "Compute six times seven with a Python script.");
      assert.equal(stand.seen.length - seenBefore, 4);
      // Each model call is metered exactly as the stand-in reported it.
      const metered = events.filter(isEvent("llm.call")).map((e) => [e.data.input_tokens, e.data.output_tokens]);
      assert.deepEqual(
        metered,
        stand.usage.slice(usageBefore).map((u) => [u.input, u.output]),
      );
      const bill = (await t.api("GET", `/v1/runs/${run.id}/credits`)).body;
      assert.equal(bill.calls.filter((c: { status: string }) => c.status === "settled").length, 4);
    });
  }

  for (const model of ["gpt-agent", "claude-agent"]) {
    test(`the built-in agent calls a tool of its run's MCP server and finishes (${model})`, async () => {
      const server = await startMcpStandIn();
      try {
        const secret = `mcp-${randomBytes(16).toString("hex")}`;
        const name = uniqueName("mcp").replaceAll("-", "");
        assert.ok((await t.api("PUT", `/v1/secrets/${name}-key`, { value: secret })).status < 300);
        const put = await t.api("PUT", `/v1/mcp-servers/${name}`, {
          url: server.url,
          secret: `${name}-key`,
          auth: { type: "bearer" },
          internal: true,
        });
        assert.ok(put.status < 300, JSON.stringify(put.body));
        const tool = `${name}__echo`;
        stand.script(model, [
          { tools: [{ id: "m1", name: tool, arguments: { text: "hello from the model" } }] },
          { tools: [{ id: "m2", name: "finish", arguments: { summary: "The server echoed." } }] },
        ]);
        const seenBefore = stand.seen.length;
        const { run, events } = await runAgent(
          t,
          {
            name: uniqueName("builtin-mcp"),
            instructions: "Echo a greeting through the MCP server.",
            model,
            tools: ["finish"],
            max_steps: 4,
            policy: { mcp: [{ server: name, tools: ["echo", "search_*"] }] },
          },
          { task: "echo" },
        );
        assert.equal(run.status, "succeeded", JSON.stringify(events.slice(-6)));
        // The model was offered the allowed, pinned tools beside its own, and nothing else.
        const first = stand.seen[seenBefore]?.body as { tools: Record<string, unknown>[] };
        const offered = first.tools.map((t) => String(t.name ?? (t.function as { name: string }).name)).sort();
        assert.deepEqual(offered, ["finish", `${name}__echo`, `${name}__search_issues`, `${name}__search_users`]);
        const steps = events.filter(isEvent("user")).map((e) => BuiltinAgentEvent.parse(e.data));
        const results = steps.flatMap((u) => (u.type === "tool.result" ? [u.data] : []));
        assert.equal(results[0]?.name, tool);
        assert.equal(results[0]?.ok, true);
        assert.match(results[0]?.output ?? "", /hello from the model/);
        // The host attached the server's credential; the sandbox, its events and the model never saw it.
        assert.deepEqual(
          server.seen.map((c) => [c.tool, c.credential]),
          [["echo", `Bearer ${secret}`]],
        );
        assert.ok(!JSON.stringify(events).includes(secret));
        assert.ok(!JSON.stringify(stand.seen.slice(seenBefore)).includes(secret));
        const mcpCalls = events.filter(isEvent("mcp.call"));
        assert.equal(mcpCalls.length, 1);
        assert.equal(mcpCalls[0]?.data.tool, "echo");
        // The model saw the tool's result in its next request.
        assert.ok(JSON.stringify(stand.seen.at(-1)?.body).includes("hello from the model"));
      } finally {
        await server.close();
      }
    });
  }

  test("the built-in agent stops at its step limit", async () => {
    stand.script("gpt-agent", [
      { tools: [{ id: "s1", name: "shell", arguments: { command: "true" } }] },
      { tools: [{ id: "s2", name: "shell", arguments: { command: "true" } }] },
    ]);
    const { run, events } = await runAgent(t, {
      name: uniqueName("looping"),
      instructions: "Loop.",
      model: "gpt-agent",
      tools: ["shell", "finish"],
      max_steps: 2,
    });
    assert.equal(run.status, "failed");
    assert.equal(run.exit_code, 1);
    assert.ok(events.filter(isEvent("user")).some((e) => e.data.type === "agent.step_limit"));
  });

  test("built-in agent definitions are checked", async () => {
    for (const [body, field] of [
      [{ name: uniqueName("b"), instructions: "x" }, "model"],
      [{ name: uniqueName("b"), instructions: "x", model: "m", command: ["true"] }, "command"],
      [{ name: uniqueName("b"), command: ["true"], model: "m" }, "model"],
      [{ name: uniqueName("b"), instructions: "x", model: "m", tools: ["rm_rf"] }, "tools.0"],
    ] as const) {
      const res = await t.api("POST", "/v1/agents", body);
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.equal(res.body.error.code, "validation_failed");
      assert.ok(JSON.stringify(res.body.error.details).includes(field), JSON.stringify(res.body.error));
    }
  });

  test("a tenant's request rate limit, set for the host, holds across its agents", async () => {
    await t.restart({ llmTenantLimits: { requestsPerMinute: 2 } });
    const count = stand.seen.length;
    const { run, events } = await runAgent(
      t,
      { name: uniqueName("tenant-limited"), command: [NODE, "/app/flood.mjs"], files: { "flood.mjs": FLOOD_AGENT } },
      { count: 4 },
    );
    assert.equal(run.status, "succeeded");
    const statuses = floodResults(events)
      .map(([status]) => status)
      .sort();
    assert.deepEqual(statuses, [200, 200, 429, 429]);
    assert.equal(stand.seen.length - count, 2);
  });
});
