/**
 * The `paddock bench oauth` scenario end to end at a small scale: a real run of an end user, a
 * real OpenID Connect server, an upstream on loopback. Asserts the figures exist and add up, never
 * a time.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { oauthBench } from "./oauth.ts";

describe("bench oauth", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("measures static-secret and fresh-token calls side by side, and calls that refresh", async () => {
    const result = await oauthBench({ imagesDir: testImagesDir(), pairs: 40, refreshes: 2 });
    assert.deepEqual([result.fresh_ms.static_secret.n, result.fresh_ms.oauth_fresh.n], [40, 40]);
    assert.equal(result.refresh_ms.call.n, 2);
    // Each spaced call refreshed once, and the run recorded each refresh.
    assert.equal(result.refreshes, 2);
    assert.equal(result.refresh_ms.refresh.n, 2);
  });
});
