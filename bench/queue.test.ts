/**
 * The `paddock bench queue` scenario end to end at a small scale: real runs, a real schedule.
 * Asserts the figures exist and add up, never a time.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { queueBench } from "./queue.ts";

describe("bench queue", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("measures claims per second, claim latency and schedule delay", async () => {
    const result = await queueBench({ imagesDir: testImagesDir(), runs: 12, samples: 3 });
    assert.equal(result.runs, 12);
    assert.ok(result.claims_per_s > 0);
    assert.equal(result.claim_ms.n, 3);
    assert.equal(result.schedule_delay_ms.n, 3);
    assert.ok(result.schedule_delay_ms.min >= 0, "a run never comes before its slot");
    // Event order, not speed: each run is claimed after it was queued, so every percentile follows.
    assert.ok(result.schedule_claim_ms.p50 >= result.schedule_delay_ms.p50);
  });
});
