/**
 * The `paddock bench gateway` scenario end to end at a small scale: a real sandbox calls a
 * stand-in provider directly and through the gateway. Asserts the figures exist and add up, never
 * a time.
 */
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { assertAdded } from "./bench-checks.ts";
import { gatewayBench } from "./gateway.ts";

describe("bench gateway", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("measures whole and streamed calls, direct and through the gateway, all metered, and leaves nothing behind", async () => {
    const before = await readdir("/run/netns").catch(() => [] as string[]);
    const result = await gatewayBench({ imagesDir: testImagesDir(), calls: 20 });
    assert.equal(result.latency_ms.direct.n, 20);
    assert.equal(result.latency_ms.gateway.n, 20);
    assert.equal(result.ttft_ms.gateway.n, 20);
    assertAdded(result.added_ms, result.latency_ms.gateway, result.latency_ms.direct);
    assertAdded(result.ttft_added_ms, result.ttft_ms.gateway, result.ttft_ms.direct);
    // Every gateway call was settled and recorded: 50 warm-ups, 20 whole and 20 streamed.
    assert.equal(result.calls_settled, 90);
    assert.equal(result.events_recorded, 90);
    assert.deepEqual(await readdir("/run/netns").catch(() => [] as string[]), before);
  });
});
