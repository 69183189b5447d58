/**
 * The `paddock bench gateway` scenario end to end at a small scale: a real sandbox calls a
 * stand-in provider directly, through Paddock's gateway and through Portkey's. Asserts that every
 * call of the scenario was made, measured, reached the provider and was metered; never a time.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdir } from "node:fs/promises";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { assertAdded, assertObservability } from "./bench-checks.ts";
import { gatewayBench } from "./gateway.ts";

describe("bench gateway", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("measures whole and streamed calls, direct and through both gateways, all metered, and leaves nothing behind", async () => {
    const instance = randomBytes(5).toString("hex");
    const result = await gatewayBench({ imagesDir: testImagesDir(), calls: 20, instance });
    for (const path of ["direct", "paddock", "portkey", "direct_portkey"] as const) {
      assert.equal(result.latency_ms[path].n, 20, path);
    }
    assert.equal(result.ttft_ms.direct.n, 20);
    assert.equal(result.ttft_ms.paddock.n, 20);
    assertAdded(result.added_ms.paddock, result.latency_ms.paddock, result.latency_ms.direct);
    assertAdded(result.added_ms.portkey, result.latency_ms.portkey, result.latency_ms.direct_portkey);
    assertAdded(result.ttft_added_ms, result.ttft_ms.paddock, result.ttft_ms.direct);
    // Every Paddock call was settled and recorded: 50 warm-ups, 20 whole and 20 streamed, and
    // through each of the three observability variants 50 warm-ups and 20 rounds.
    assert.equal(result.calls_settled, 90 + 3 * 70);
    assert.equal(result.events_recorded, 90 + 3 * 70);
    // The provider answered them all: Paddock 50 + 20 + 20, direct that and 20 beside Portkey's
    // pairs, Portkey 50 + 20, the variants 3 × 70.
    assert.equal(result.provider_calls, 270 + 3 * 70);
    assertObservability(result.observability, 20, 70);
    assert.match(result.peer_versions.portkey, /^\d+\.\d+\.\d+/);
    // Its own namespaces are gone (other hosts on the machine may come and go meanwhile).
    const left = (await readdir("/run/netns").catch(() => [] as string[])).filter((n) =>
      n.startsWith(`paddock-${instance}-`),
    );
    assert.deepEqual(left, []);
  });
});
