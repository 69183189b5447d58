/**
 * Traces end to end: a real host exports to an OTLP/HTTP receiver on loopback while a built-in
 * agent runs against the stand-in provider, calls a connection through the bridge and starts a
 * child run. The receiver gets one trace, under the traceparent the trigger gave: the attempt's
 * `invoke_agent` span with its sandbox start, `chat` spans whose token counts are the
 * stand-in's, the agent's tool calls, the bridge call, and the child run's attempt under the
 * attempt that started it. Content goes into spans only with trace content on, and a collector
 * that is down costs counted spans, never a run.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { isEvent } from "@paddock/protocol";
import { type StandIn, startStandIn } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runEvents, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { type LlmStandIn, startLlmStandIn } from "../testing/llm-stand-in.ts";
import { closedPort, type OtlpReceiver, type ReceivedSpan, startOtlpReceiver } from "../testing/otlp-receiver.ts";
import { waitFor } from "../testing/wait.ts";
import { traceIdOfRun } from "./trace-context.ts";
import type { Tracing } from "./tracing.ts";

const MODEL = "gpt-traced";
const CLIENT = 3;
const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN = "00f067aa0ba902b7";

describe("traces", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  let receiver: OtlpReceiver;
  let stand: LlmStandIn;
  let upstream: StandIn;
  let helper: string;

  /** Creates an agent (201 expected) and triggers it with `headers`; returns its run once finished. */
  async function run(agent: Record<string, unknown>, headers: Record<string, string> = {}, input?: unknown) {
    const created = await t.api("POST", "/v1/agents", agent);
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const body = input === undefined ? {} : { input };
    const started = await t.api("POST", `/v1/agents/${created.body.id}/runs`, body, undefined, headers);
    assert.equal(started.status, 201, JSON.stringify(started.body));
    return waitForRun(t, started.body.id);
  }

  /** The spans of a run's attempt (the first by default) and under it, once its `invoke_agent` span has arrived. */
  async function attemptSpans(runId: string, attempt = 1): Promise<{ agent: ReceivedSpan; children: ReceivedSpan[] }> {
    const tracing = t.host.tracing as Tracing;
    const agent = await waitFor(
      async () => {
        await tracing.flush();
        return receiver.spans.find(
          (s) =>
            s.name.startsWith("invoke_agent") &&
            s.attributes["paddock.run.id"] === runId &&
            s.attributes["paddock.run.attempt"] === attempt,
        );
      },
      { what: `the invoke_agent span of ${runId}'s attempt ${attempt}` },
    );
    const children = receiver.spans
      .filter((s) => s.parentSpanId === agent.spanId && s.traceId === agent.traceId)
      .sort((a, b) => a.startMs - b.startMs);
    return { agent, children };
  }

  before(async () => {
    receiver = await startOtlpReceiver();
    stand = await startLlmStandIn();
    upstream = await startStandIn();
    t = await startTestHost({ otlpEndpoint: receiver.url });
    const ok = async (method: string, path: string, body: unknown) => {
      const res = await t.api(method, path, body);
      assert.ok(res.status < 300, `${path}: ${res.status} ${JSON.stringify(res.body)}`);
    };
    await ok("PUT", "/v1/secrets/llm-key", { value: "sk-traced" });
    await ok("PUT", "/v1/providers/local-llm", {
      kind: "openai_compatible",
      base_url: `${stand.url}/v1`,
      secret: "llm-key",
      models: { [MODEL]: { input: 3, output: 15 } },
    });
    await ok("POST", "/v1/credits/grants", { tenant: "default", credits: 100 });
    await ok("PUT", "/v1/secrets/echo-token", { value: "echo-secret" });
    await ok("PUT", "/v1/connections/echo", {
      base_url: upstream.url,
      secret: "echo-token",
      auth: { type: "bearer" },
      internal: true,
      policy: { allow: [{ methods: ["GET"], path: "/echo/**" }] },
    });
    helper = uniqueName("helper");
    await ok("POST", "/v1/agents", { name: helper, command: ["sh", "-c", "echo helping"] });
  });

  after(async () => {
    await t?.close();
    await Promise.all([receiver?.close(), stand?.close(), upstream?.close()]);
  });

  test("a built-in agent's run is one trace: its attempt, sandbox, model calls, tools, bridge call and child run", async () => {
    stand.script(MODEL, [
      { tools: [{ id: "c1", name: "http", arguments: { connection: "echo", method: "GET", path: "/echo/ping" } }] },
      { tools: [{ id: "c2", name: "call_agent", arguments: { agent: helper, input: { n: 1 } } }] },
      { tools: [{ id: "c3", name: "finish", arguments: { summary: "pinged and delegated" } }] },
    ]);
    const usageBefore = stand.usage.length;
    const name = uniqueName("traced");
    const finished = await run(
      {
        name,
        instructions: "Ping the echo service, then ask the helper.",
        model: MODEL,
        max_steps: 5,
        policy: { connections: ["echo"], agents: [helper] },
      },
      { traceparent: `00-${TRACE_ID}-${CALLER_SPAN}-01` },
    );
    const events = await runEvents(t, finished.id);
    assert.equal(finished.status, "succeeded", JSON.stringify(events.slice(-5)));

    const { agent, children } = await attemptSpans(finished.id);
    // The caller's trace goes on: the attempt hangs under the span the traceparent named.
    assert.equal(agent.traceId, TRACE_ID);
    assert.equal(agent.parentSpanId, CALLER_SPAN);
    assert.equal(agent.name, `invoke_agent ${name}`);
    assert.equal(agent.status.code, 0);
    assert.equal(agent.resource["service.name"], "paddock");
    for (const [key, value] of Object.entries({
      "gen_ai.operation.name": "invoke_agent",
      "gen_ai.agent.name": name,
      "gen_ai.agent.id": finished.agent_id,
      "gen_ai.request.model": MODEL,
      "paddock.run.attempt": 1,
      "paddock.run.trigger": "api",
      "paddock.run.status": "succeeded",
      "paddock.run.reason": "completed",
    })) {
      assert.equal(agent.attributes[key], value, key);
    }

    const names = children.map((s) => s.name);
    assert.equal(names[0], "paddock.sandbox.start");
    assert.deepEqual(
      names.filter((n) => n.startsWith("execute_tool")),
      ["execute_tool http", "execute_tool call_agent", "execute_tool finish"],
    );
    const tools = children.filter((s) => s.name.startsWith("execute_tool"));
    assert.deepEqual(
      tools.map((s) => [s.attributes["gen_ai.tool.call.id"], s.attributes["gen_ai.operation.name"], s.status.code]),
      [
        ["c1", "execute_tool", 0],
        ["c2", "execute_tool", 0],
        ["c3", "execute_tool", 0],
      ],
    );

    // One chat span per model call, its figures the stand-in's own and its credits the call's.
    const chats = children.filter((s) => s.name === `chat ${MODEL}`);
    const usage = stand.usage.slice(usageBefore);
    const llmCalls = events.filter(isEvent("llm.call"));
    assert.equal(chats.length, 3);
    assert.deepEqual(
      chats.map((s) => [
        s.kind,
        s.attributes["gen_ai.operation.name"],
        s.attributes["gen_ai.provider.name"],
        s.attributes["gen_ai.request.model"],
        s.attributes["gen_ai.response.model"],
        s.attributes["gen_ai.usage.input_tokens"],
        s.attributes["gen_ai.usage.output_tokens"],
        s.attributes["gen_ai.response.finish_reasons"],
        s.attributes["paddock.credits"],
      ]),
      usage.map((u, i) => [
        CLIENT,
        "chat",
        "local-llm",
        MODEL,
        u.model,
        u.input,
        u.output,
        ["tool_calls"],
        llmCalls[i]?.data.cost,
      ]),
    );
    // Without trace content, no prompt or completion leaves the host.
    for (const s of [...chats, ...tools]) {
      for (const key of ["gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.call.arguments"]) {
        assert.equal(s.attributes[key], undefined, `${s.name} ${key}`);
      }
    }

    const bridged = children.filter((s) => s.attributes["paddock.bridge.connection"] === "echo");
    assert.equal(bridged.length, 1);
    assert.equal(bridged[0]?.name, "GET /echo/**");
    assert.equal(bridged[0]?.kind, CLIENT);
    assert.equal(bridged[0]?.attributes["http.request.method"], "GET");
    assert.equal(bridged[0]?.attributes["http.response.status_code"], 200);
    assert.equal(bridged[0]?.attributes["url.full"], `${upstream.url}/echo/ping`);
    assert.equal(bridged[0]?.attributes["paddock.bridge.denied"], false);

    // The child run: its attempt is in the same trace, under the attempt that started it.
    const childRun = events.filter(isEvent("agent.called"))[0]?.data.run_id as string;
    const child = await attemptSpans(childRun);
    assert.equal(child.agent.traceId, TRACE_ID);
    assert.equal(child.agent.parentSpanId, agent.spanId);
    assert.equal(child.agent.name, `invoke_agent ${helper}`);
    assert.equal(child.agent.attributes["paddock.run.parent_id"], finished.id);
    assert.equal(tracingOf(t).droppedSpans, 0);
  });

  test("a denied bridge call and a failed model call are error spans; a run without a traceparent gets its own trace", async () => {
    stand.script(MODEL, [
      { tools: [{ id: "d1", name: "http", arguments: { connection: "echo", method: "GET", path: "/secret" } }] },
      { tools: [{ id: "d2", name: "finish", arguments: { summary: "denied" } }] },
    ]);
    const finished = await run({
      name: uniqueName("denied"),
      instructions: "Try the forbidden path.",
      model: MODEL,
      max_steps: 3,
      policy: { connections: ["echo"] },
    });
    assert.equal(finished.status, "succeeded");
    const { agent, children } = await attemptSpans(finished.id);
    assert.notEqual(agent.traceId, TRACE_ID);
    assert.equal(agent.parentSpanId, undefined);
    const denied = children.find((s) => s.attributes["paddock.bridge.connection"] === "echo");
    assert.equal(denied?.name, "GET");
    assert.equal(denied?.attributes["paddock.bridge.denied"], true);
    assert.equal(denied?.attributes["paddock.bridge.denial"], "policy_denied");
    assert.equal(denied?.attributes["error.type"], "policy_denied");
    assert.equal(denied?.attributes["http.response.status_code"], 403);
    assert.equal(denied?.status.code, 2);
    const tool = children.find((s) => s.name === "execute_tool http");
    assert.equal(tool?.attributes["error.type"], "tool_error");

    // The stand-in answers 500 to a prompt asking for it: the agent gives up, the run fails.
    const failed = await run(
      { name: uniqueName("failing"), instructions: "Fail.", model: MODEL, max_steps: 2 },
      {},
      { say: "status:500" },
    );
    assert.equal(failed.status, "failed");
    const broken = await attemptSpans(failed.id);
    assert.equal(broken.agent.attributes["error.type"], "exit_code");
    assert.equal(broken.agent.status.code, 2);
    const chat = broken.children.find((s) => s.name === `chat ${MODEL}`);
    assert.equal(chat?.attributes["error.type"], "provider_error");
    assert.equal(chat?.attributes["http.response.status_code"], 500);
    assert.equal(chat?.attributes["gen_ai.usage.input_tokens"], undefined);
    assert.equal(chat?.status.code, 2);
  });

  test("a retried run's attempts are spans of one trace", async () => {
    const finished = await run({
      name: uniqueName("retried"),
      command: ["sh", "-c", '[ "$PADDOCK_ATTEMPT" = 2 ]'],
      retry: { max_attempts: 2, backoff_s: 0, jitter: 0, on: ["exit_code"] },
    });
    assert.equal(finished.status, "succeeded");
    assert.equal(finished.attempt, 2);
    const attempts = [(await attemptSpans(finished.id, 1)).agent, (await attemptSpans(finished.id, 2)).agent];
    assert.deepEqual(
      attempts.map((s) => [s.attributes["paddock.run.attempt"], s.attributes["paddock.run.reason"], s.status.code]),
      [
        [1, "exit_code", 2],
        [2, "completed", 0],
      ],
    );
    assert.equal(attempts[0]?.traceId, attempts[1]?.traceId);
    assert.equal(attempts[0]?.traceId, traceIdOfRun(finished.id));
  });

  test("with trace content, prompts, completions and tools' arguments go into spans", async () => {
    await t.restart({ otlpEndpoint: receiver.url, traceContent: true });
    stand.script(MODEL, [{ tools: [{ id: "k1", name: "finish", arguments: { summary: "all said" } }] }]);
    const finished = await run({
      name: uniqueName("content"),
      instructions: "Say it all.",
      model: MODEL,
      max_steps: 2,
    });
    assert.equal(finished.status, "succeeded");
    const { children } = await attemptSpans(finished.id);
    const chat = children.find((s) => s.name === `chat ${MODEL}`);
    const input = JSON.parse(String(chat?.attributes["gen_ai.input.messages"]));
    assert.deepEqual(input[0], { role: "system", parts: [{ type: "text", content: "Say it all." }] });
    assert.equal(input[1].role, "user");
    assert.match(input[1].parts[0].content, /The run's input/);
    const output = JSON.parse(String(chat?.attributes["gen_ai.output.messages"]));
    assert.deepEqual(output, [
      {
        role: "assistant",
        parts: [{ type: "tool_call", id: "k1", name: "finish", arguments: JSON.stringify({ summary: "all said" }) }],
        finish_reason: "tool_calls",
      },
    ]);
    const tool = children.find((s) => s.name === "execute_tool finish");
    assert.deepEqual(JSON.parse(String(tool?.attributes["gen_ai.tool.call.arguments"])), { summary: "all said" });
    assert.equal(tool?.attributes["gen_ai.tool.call.result"], "finished");
  });

  test("a collector that is down: the run succeeds and its spans are counted as dropped", async () => {
    await t.restart({ otlpEndpoint: `http://127.0.0.1:${await closedPort()}` });
    stand.script(MODEL, [{ tools: [{ id: "x1", name: "finish", arguments: { summary: "alone" } }] }]);
    const received = receiver.spans.length;
    const finished = await run({ name: uniqueName("unheard"), instructions: "Finish.", model: MODEL, max_steps: 2 });
    assert.equal(finished.status, "succeeded");
    const tracing = tracingOf(t);
    // The attempt's span ends just after the run is recorded; all of its spans are then dropped.
    await waitFor(
      async () => {
        await tracing.flush();
        return tracing.droppedSpans >= 4;
      },
      { what: () => `spans to be dropped (${tracing.droppedSpans} so far)`, timeoutMs: 60_000 },
    );
    assert.equal(receiver.spans.length, received);
    assert.ok(
      t.logs.some((line) => /tracing: spans for .* are dropped/.test(line)),
      t.logs.join("\n"),
    );
  });
});

const tracingOf = (t: TestHost): Tracing => {
  assert.ok(t.host.tracing, "the host traces");
  return t.host.tracing;
};
