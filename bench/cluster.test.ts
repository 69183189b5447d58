/**
 * The `paddock bench cluster` scenario at a small scale: three real nodes, one failover, a short
 * event stream, the budget flood; the claims part has its own test. Asserts the figures exist and
 * the invariants hold, never a time.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { postgresSkipReason } from "../packages/host/src/testing/postgres.ts";
import { clusterBench } from "./cluster.ts";

describe("bench cluster", { skip: e2eSkip(hostSkipReason() || postgresSkipReason()) }, () => {
  it("measures failover and cross-node events, with no duplicate, lost event or overspend", async () => {
    const result = await clusterBench({
      imagesDir: testImagesDir(),
      failovers: 1,
      events: 30,
      claimRuns: 0,
      leaseMs: 3000,
    });
    assert.equal(result.nodes, 3);
    assert.equal(result.failover_ms.n, 1);
    // The retry waits for the lease to lapse, two thirds of it at least after the kill.
    assert.ok(result.failover_ms.min >= 2000 - 100, JSON.stringify(result.failover_ms));
    assert.ok(result.cross_node_event_ms.n > 0, "some events arrived live");
    assert.ok(result.cross_node_event_ms.min >= 0);
    assert.deepEqual([result.duplicate_executions, result.lost_events, result.overspend_credits], [0, 0, 0]);
    assert.equal(result.claims, null);
  });
});
