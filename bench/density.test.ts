/**
 * The `paddock bench density` scenario end to end at a small scale: real runs, real sandboxes.
 * Asserts counts and that the bench host left nothing on the machine, never a time.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { densityBench } from "./density.ts";

describe("bench density", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("holds every sandbox of each level live, then removes them all", async () => {
    const result = await densityBench({
      imagesDir: testImagesDir(),
      levels: [8, 20],
      throughputRuns: 6,
      concurrency: 3,
      apiSamples: 10,
      sandboxRange: "10.221.0.0/16",
      timeoutMs: 300_000,
    });
    assert.deepEqual(
      result.levels.map((l) => [l.sandboxes, l.live, l.ended_early, l.boot_ms.n, l.api_ms.all.n + l.api_errors]),
      [
        [8, 8, 0, 8, 20],
        // Cumulative: the second level added 12 runs to the 8 still live.
        [20, 20, 0, 12, 20],
      ],
    );
    // Every sleeping run was live until the bench canceled it.
    assert.deepEqual(result.ended, { canceled: 20 });
    for (const level of result.levels) {
      // bwrap, its init in the sandbox's pid namespace, the runner and `sleep`, in each sandbox.
      assert.ok(level.processes >= level.live * 3, `${level.processes} processes in ${level.live} sandboxes`);
      assert.ok(level.sandbox_pss_mib_per_sandbox > 0);
    }
    assert.deepEqual(result.throughput, { runs: 6, concurrency: 3, all_succeeded: true });
    assert.ok(result.runs_per_s > 0 && result.floor_runs_per_s > 0);
    assert.deepEqual(result.leftovers, []);
  });
});
