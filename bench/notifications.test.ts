/**
 * The `paddock bench notifications` scenario end to end at a small scale: real runs, a real
 * endpoint on loopback. Asserts the figures exist and add up, never a time.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { notificationsBench } from "./notifications.ts";

describe("bench notifications", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("measures from a run's end to its notification's arrival", async () => {
    const result = await notificationsBench({ imagesDir: testImagesDir(), runs: 3 });
    assert.equal(result.delivery_ms.n, 3);
    assert.equal(result.burst_delivery_ms.n, 3);
    // A notification never arrives before the event it announces.
    assert.ok(result.delivery_ms.min >= 0 && result.burst_delivery_ms.min >= 0);
    assert.equal(result.duplicates, 0);
    assert.equal(result.target.delivery_ms_p50, 1000);
    assert.equal(result.within_target, result.delivery_ms.p50 < 1000);
  });
});
