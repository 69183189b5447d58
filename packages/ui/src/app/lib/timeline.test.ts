import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { RunEventRead } from "@paddock/protocol";
import { type Bar, pack, position, Timeline } from "./timeline.ts";

const T0 = Date.parse("2025-01-01T00:00:00.000Z");
let seq = 0;
const ev = (ms: number, type: string, data: unknown, attempt = 1): RunEventRead =>
  ({ seq: ++seq, run_id: "run_x", attempt, time: new Date(T0 + ms).toISOString(), type, data }) as RunEventRead;

describe("the run timeline", () => {
  it("draws the phases of each attempt, a retry's wait, calls by their latency and a child run", () => {
    seq = 0;
    const t = new Timeline();
    t.apply([
      ev(0, "run.queued", { status: "queued", trigger: "api" }),
      ev(100, "run.starting", { status: "starting", attempt: 1 }),
      ev(300, "run.running", { status: "running", attempt: 1, boot_ms: 200, warm: false }),
      ev(900, "llm.call", { model: "m1", provider: "p", latency_ms: 400, input_tokens: 5, output_tokens: 7 }),
      ev(950, "bridge.call", {
        connection: "gh",
        method: "GET",
        path: "/x",
        status: 403,
        code: "policy_denied",
        bytes_in: 0,
        bytes_out: 0,
        ms: 20,
      }),
      ev(1000, "agent.called", { agent: "child", run_id: "run_child", depth: 1 }),
      ev(1100, "attempt.finished", { attempt: 1, status: "failed", reason: "exit_code", exit_code: 1 }),
      ev(1100, "retry.scheduled", {
        reason: "exit_code",
        exit_code: 1,
        attempt: 1,
        max_attempts: 2,
        delay_ms: 500,
        at: new Date(T0 + 1600).toISOString(),
      }),
      ev(1600, "run.starting", { status: "starting", attempt: 2 }, 2),
      ev(1700, "run.running", { status: "running", attempt: 2, boot_ms: 100, warm: true }, 2),
    ]);
    const rows = t.rows(T0 + 2000);
    const groups = rows.map((r) => r.label).filter(Boolean);
    assert.deepEqual(groups, ["run", "retries", "model calls", "bridge calls", "child runs"]);
    const run = rows[0]?.bars ?? [];
    assert.deepEqual(
      run.map((b) => [b.kind, b.start - T0, b.end === null ? null : b.end - T0, b.failed]),
      [
        ["queued", 0, 100, false],
        ["starting", 100, 300, false],
        ["running", 300, 1100, true],
        ["starting", 1600, 1700, false],
        ["running", 1700, null, false],
      ],
    );
    const all = rows.flatMap((r) => r.bars);
    const llm = all.find((b) => b.kind === "llm") as Bar;
    assert.deepEqual([llm.start - T0, llm.end !== null && llm.end - T0, llm.failed], [500, 900, false]);
    const bridge = all.find((b) => b.kind === "bridge") as Bar;
    assert.equal(bridge.failed, true);
    const retry = all.find((b) => b.kind === "retry") as Bar;
    assert.deepEqual([retry.start - T0, retry.end !== null && retry.end - T0], [1100, 1600]);
    const child = all.find((b) => b.kind === "child") as Bar;
    assert.equal(child.href, "/ui/runs/run_child");
    assert.equal(child.end, null);
    t.setChild("run_child", "succeeded", new Date(T0 + 1500).toISOString());
    assert.equal(child.end, T0 + 1500);
    assert.deepEqual(t.children(), ["run_child"]);

    t.apply([ev(2100, "run.succeeded", { status: "succeeded", reason: "completed", exit_code: 0 }, 2)]);
    assert.equal(t.end, T0 + 2100);
    assert.equal(t.rows(T0 + 9999)[0]?.bars.at(-1)?.end, T0 + 2100);
  });

  it("pairs the built-in agent's tool calls with their results, and shows other user events as instants", () => {
    seq = 0;
    const t = new Timeline();
    t.apply([
      ev(0, "run.queued", { status: "queued", trigger: "api" }),
      ev(10, "user", { type: "tool.call", data: { step: 1, id: "c1", name: "shell", args: {} } }),
      ev(20, "user", { type: "progress", data: 1 }),
      ev(50, "user", { type: "tool.result", data: { step: 1, id: "c1", name: "shell", ok: false, output: "" } }),
    ]);
    const bars = t.rows(T0 + 100).flatMap((r) => r.bars);
    const tool = bars.find((b) => b.kind === "tool") as Bar;
    assert.deepEqual(
      [tool.label, tool.start - T0, tool.end !== null && tool.end - T0, tool.failed],
      ["shell", 10, 50, true],
    );
    const event = bars.find((b) => b.kind === "event") as Bar;
    assert.deepEqual([event.label, event.start, event.seq], ["progress", event.end, 3]);
  });

  it("draws an MCP call by its latency, failed unless ok, with its previews as its detail", () => {
    seq = 0;
    const t = new Timeline();
    const call = { server: "gh", method: "tools/call", tool: "search", bytes: 9, latency_ms: 30 };
    t.apply([
      ev(0, "run.queued", { status: "queued", trigger: "api" }),
      ev(500, "mcp.call", { ...call, status: "ok", args_preview: '{"q":"<b>"}', result_preview: "found" }),
      ev(600, "mcp.call", { ...call, status: "error", code: "mcp_tool_changed" }),
    ]);
    const rows = t.rows(T0 + 1000);
    assert.deepEqual(
      rows.map((r) => r.label),
      ["run", "mcp calls"],
    );
    const [ok, refused] = rows[1]?.bars ?? [];
    assert.deepEqual([ok?.start, ok?.end, ok?.failed, ok?.label], [T0 + 470, T0 + 500, false, "gh search"]);
    assert.equal(ok?.detail, 'tools/call ok, 30 ms\nargs: {"q":"<b>"}\nanswer: found');
    assert.equal(refused?.failed, true);
    assert.equal(refused?.detail, "tools/call error mcp_tool_changed, 30 ms");
  });

  it("ignores an event it has already seen", () => {
    seq = 0;
    const t = new Timeline();
    const first = ev(0, "run.queued", { status: "queued", trigger: "api" });
    const user = ev(5, "user", { type: "x", data: null });
    t.apply([first, user]);
    t.apply([user]);
    assert.equal(t.rows(T0).flatMap((r) => r.bars).length, 2);
  });

  it("packs sequential bars into one row and overlapping ones into more, within a bound", () => {
    const bar = (start: number, end: number, s: number): Bar => ({
      key: String(s),
      group: "g",
      kind: "llm",
      label: "",
      start,
      end,
      failed: false,
      seq: s,
    });
    const sequential = Array.from({ length: 1000 }, (_, i) => bar(i * 10, i * 10 + 9, i));
    assert.equal(pack(sequential, 0).length, 1);
    const overlapping = Array.from({ length: 50 }, (_, i) => bar(0, 100, i));
    const rows = pack(overlapping, 0);
    assert.equal(rows.length, 6);
    assert.equal(rows.flat().length, 50);
    assert.equal(position(50, 0, 100), 0.5);
    assert.equal(position(-5, 0, 100), 0);
    assert.equal(position(5, 10, 10), 0);
  });
});
