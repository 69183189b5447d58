import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Run } from "@paddock/protocol";
import { niceTicks, scale, spendSeries, stack } from "./chart.ts";
import { ago, bytes, count, credits, cut, duration, span } from "./format.ts";
import { mergeRuns } from "./runs-live.ts";

describe("formatting", () => {
  it("writes durations, sizes, credits and counts", () => {
    assert.equal(duration(840), "840 ms");
    assert.equal(duration(1234), "1.23 s");
    assert.equal(duration(12_345), "12.3 s");
    assert.equal(duration(245_000), "4 min 05 s");
    assert.equal(duration(7_800_000), "2 h 10 min");
    assert.equal(duration(3 * 86_400_000 + 4 * 3600_000), "3 d 4 h");
    assert.equal(duration(null), "—");
    assert.equal(span("2025-01-01T00:00:00Z", "2025-01-01T00:00:02Z", 0), 2000);
    assert.equal(span("2025-01-01T00:00:00Z", null, Date.parse("2025-01-01T00:00:05Z")), 5000);
    assert.equal(ago("2025-01-01T00:00:00Z", Date.parse("2025-01-01T00:10:00Z")), "10 min ago");
    assert.equal(bytes(512), "512 B");
    assert.equal(bytes(1536), "1.5 KB");
    assert.equal(bytes(20 * 1024 * 1024), "20.0 MB");
    assert.equal(credits(12.5), "12.5");
    assert.equal(credits(0.0042), "0.0042");
    assert.equal(credits(0), "0");
    assert.equal(credits(1234.4), "1234");
    assert.equal(count(1234567), "1 234 567");
    assert.equal(cut("abcdef", 4), "abc…");
  });
});

describe("charts", () => {
  it("picks round ticks and maps values", () => {
    assert.deepEqual(niceTicks(0, 10, 5), [0, 2, 4, 6, 8, 10]);
    assert.deepEqual(niceTicks(0, 0.07, 3), [0, 0.05]);
    assert.deepEqual(niceTicks(0, 0.07, 7), [0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07]);
    assert.deepEqual(niceTicks(5, 5), [5]);
    assert.equal(scale(0, 10, 100, 0)(5), 50);
  });

  it("makes a series per agent from stats buckets, the largest first, and stacks them", () => {
    const buckets: { spent_by_agent: Record<string, number> }[] = [
      { spent_by_agent: { agt_a: 1, agt_b: 4 } },
      { spent_by_agent: { agt_a: 2, agt_c: 0.5 } },
      { spent_by_agent: {} },
    ];
    const series = spendSeries(buckets, (id) => id.slice(4), 2);
    assert.deepEqual(series, [
      { name: "b", values: [4, 0, 0] },
      { name: "a", values: [1, 2, 0] },
      { name: "other", values: [0, 0.5, 0] },
    ]);
    assert.deepEqual(stack(series, 3), [
      [4, 0, 0],
      [5, 2, 0],
      [5, 2.5, 0],
    ]);
  });
});

describe("the live runs list", () => {
  const run = (id: string, status: Run["status"]) => ({ id, status }) as Run;
  it("updates rows in place and adds newer runs on top of the first page only", () => {
    const current = [run("run_2", "running"), run("run_1", "queued")];
    const fresh = [run("run_3", "queued"), run("run_2", "succeeded"), run("run_1", "queued")];
    assert.deepEqual(
      mergeRuns(current, fresh, true).map((r) => `${r.id}:${r.status}`),
      ["run_3:queued", "run_2:succeeded", "run_1:queued"],
    );
    assert.deepEqual(
      mergeRuns(current, fresh, false).map((r) => `${r.id}:${r.status}`),
      ["run_2:succeeded", "run_1:queued"],
    );
    assert.deepEqual(mergeRuns([], fresh, true), fresh);
  });
});
