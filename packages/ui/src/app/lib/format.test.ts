import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Run } from "@paddock/protocol";
import { bucketize, niceTicks, scale, stack } from "./chart.ts";
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

  it("sums spend per group into time buckets and stacks the series", () => {
    const points = [
      { time: 0, group: "a", amount: 1 },
      { time: 5, group: "a", amount: 2 },
      { time: 15, group: "b", amount: 4 },
      { time: 25, group: "c", amount: 0.5 },
      { time: 99, group: "a", amount: 100 },
    ];
    const series = bucketize(points, 0, 30, 3, 2);
    assert.deepEqual(series, [
      { name: "b", values: [0, 4, 0] },
      { name: "a", values: [3, 0, 0] },
      { name: "other", values: [0, 0, 0.5] },
    ]);
    assert.deepEqual(stack(series, 3), [
      [0, 4, 0],
      [3, 4, 0],
      [3, 4, 0.5],
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
