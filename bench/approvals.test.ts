/**
 * The `paddock bench approvals` scenario end to end at a small scale: real runs, an upstream on
 * loopback. Asserts the figures exist and add up, never a time.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { approvalsBench } from "./approvals.ts";

describe("bench approvals", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("measures from a decision to the upstream, and calls no rule holds side by side", async () => {
    const result = await approvalsBench({ imagesDir: testImagesDir(), calls: 3, pairs: 40 });
    assert.equal(result.decision_to_upstream_ms.n, 3);
    // The approved call never arrives before its approval was sent, and each arrives once.
    assert.ok(result.decision_to_upstream_ms.min > 0);
    assert.equal(result.forwarded, 3);
    assert.deepEqual([result.no_rule_ms.plain.n, result.no_rule_ms.with_rules.n], [40, 40]);
    assert.equal(result.target.decision_to_upstream_ms_p50, 10);
    assert.equal(result.within_target, result.decision_to_upstream_ms.p50 <= 10);
  });
});
