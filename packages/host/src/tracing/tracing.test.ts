/**
 * Tracing against a collector stand-in on loopback: spans arrive with the parents, trace ids,
 * times and attributes they were given; a root span takes its run's trace id; a collector that
 * is down costs dropped spans, counted, and nothing else. Needs no root.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { closedPort, type OtlpReceiver, startOtlpReceiver } from "../testing/otlp-receiver.ts";
import { formatTraceparent, parseTraceparent, runTraceParent, traceIdOfRun } from "./trace-context.ts";
import { epochMs, openTracing, type Tracing } from "./tracing.ts";

const options = { content: false, version: "test", nodeId: "n1", log: () => {} };

describe("trace context", () => {
  test("a W3C traceparent is read, written, and refused when malformed or zero", () => {
    const header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const parsed = parseTraceparent(header);
    assert.deepEqual(parsed, {
      traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
      spanId: "00f067aa0ba902b7",
      sampled: true,
    });
    assert.equal(formatTraceparent(parsed as NonNullable<typeof parsed>), header);
    assert.equal(parseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")?.sampled, false);
    for (const bad of [
      "",
      "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      `00-${"0".repeat(32)}-00f067aa0ba902b7-01`,
      `00-4bf92f3577b34da6a3ce929d0e0e4736-${"0".repeat(16)}-01`,
      "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ]) {
      assert.equal(parseTraceparent(bad), null, bad);
    }
  });

  test("a run's spans belong to its tree's trace: its stored traceparent, else its root's derived id", () => {
    const root = { id: "run_a", root_run_id: null, trace_parent: null };
    const child = { id: "run_b", root_run_id: "run_a", trace_parent: null };
    assert.deepEqual(runTraceParent(root), { traceId: traceIdOfRun("run_a"), spanId: null });
    assert.deepEqual(runTraceParent(child), runTraceParent(root));
    assert.match(traceIdOfRun("run_a"), /^[0-9a-f]{32}$/);
    const given = { ...root, trace_parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" };
    assert.equal(runTraceParent(given).spanId, "00f067aa0ba902b7");
  });
});

describe("tracing over OTLP/HTTP", () => {
  let receiver: OtlpReceiver;
  let tracing: Tracing;

  before(async () => {
    receiver = await startOtlpReceiver();
    tracing = (await openTracing({ ...options, endpoint: receiver.url })) as Tracing;
  });
  after(async () => {
    await tracing.close();
    await receiver.close();
  });

  test("no endpoint, no tracing", async () => {
    assert.equal(await openTracing({ ...options, endpoint: undefined }), null);
  });

  test("spans arrive with their parents, times, attributes and errors", async () => {
    const traceId = traceIdOfRun("run_x");
    const t0 = epochMs() - 50;
    const root = tracing.start(
      { traceId, spanId: null },
      { name: "invoke_agent", attributes: { "a.s": "x", "a.n": 3, "a.none": undefined } },
    );
    root.rename("invoke_agent demo");
    tracing.record(root.ref, {
      name: "chat m",
      kind: "client",
      startMs: t0,
      endMs: t0 + 20,
      attributes: { "gen_ai.response.finish_reasons": ["stop"] },
      error: "provider_error",
      message: "upstream said no",
    });
    root.set({ "a.late": true, "a.long": "x".repeat(200_000) });
    root.fail("exit_code");
    root.end();
    await tracing.flush();
    const byName = new Map(receiver.spans.map((s) => [s.name, s]));
    const agent = byName.get("invoke_agent demo");
    const chat = byName.get("chat m");
    assert.ok(agent && chat, JSON.stringify(receiver.spans.map((s) => s.name)));
    assert.equal(agent.traceId, traceId);
    assert.equal(agent.parentSpanId, undefined);
    assert.equal(agent.attributes["a.long"], "x".repeat(128 * 1024), "long values are cut");
    delete agent.attributes["a.long"];
    assert.deepEqual(agent.attributes, { "a.s": "x", "a.n": 3, "a.late": true, "error.type": "exit_code" });
    assert.equal(agent.status.code, 2);
    assert.equal(agent.kind, 1);
    assert.equal(chat.traceId, traceId);
    assert.equal(chat.parentSpanId, agent.spanId);
    assert.equal(chat.kind, 3);
    assert.deepEqual(chat.status, { code: 2, message: "upstream said no" });
    assert.deepEqual(chat.attributes["gen_ai.response.finish_reasons"], ["stop"]);
    assert.equal(chat.attributes["error.type"], "provider_error");
    assert.ok(Math.abs(chat.startMs - t0) < 0.01 && Math.abs(chat.endMs - chat.startMs - 20) < 0.01);
    assert.equal(agent.resource["service.name"], "paddock");
    assert.equal(agent.resource["service.instance.id"], "n1");
    assert.equal(tracing.droppedSpans, 0);
  });

  test("a span under a caller's unsampled parent is not exported", async () => {
    const before = receiver.spans.length;
    tracing.record({ traceId: traceIdOfRun("run_y"), spanId: "00f067aa0ba902b7", sampled: false }, { name: "quiet" });
    tracing.record({ traceId: traceIdOfRun("run_y"), spanId: "00f067aa0ba902b7" }, { name: "loud" });
    await tracing.flush();
    assert.deepEqual(
      receiver.spans.slice(before).map((s) => s.name),
      ["loud"],
    );
  });
});

test("a collector that is down: spans are dropped and counted, the caller never waits", async () => {
  const logs: string[] = [];
  const down = (await openTracing({
    ...options,
    endpoint: `http://127.0.0.1:${await closedPort()}`,
    exportTimeoutMs: 500,
    log: (line) => logs.push(line),
  })) as Tracing;
  try {
    const started = performance.now();
    for (let i = 0; i < 5; i++) down.record({ traceId: traceIdOfRun(`run_${i}`), spanId: null }, { name: `s${i}` });
    assert.ok(performance.now() - started < 50, "recording spans does not wait on the collector");
    await down.flush();
    assert.equal(down.droppedSpans, 5);
    assert.equal(logs.length, 1, logs.join("\n"));
    assert.match(logs[0] ?? "", /spans for http:\/\/127\.0\.0\.1:\d+\/v1\/traces are dropped/);
  } finally {
    await down.close();
  }
});
