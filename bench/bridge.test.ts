/**
 * The `paddock bench bridge` scenario end to end at a small scale: real sandboxes on their own
 * networks call the bridge and the upstream directly. Asserts the figures exist and add up, never
 * a time.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdir } from "node:fs/promises";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { assertAdded, assertObservability } from "./bench-checks.ts";
import { bridgeBench } from "./bridge.ts";

describe("bench bridge", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("measures bridged and direct calls, token checks and throughput, and leaves nothing behind", async () => {
    const instance = randomBytes(5).toString("hex");
    const result = await bridgeBench({
      imagesDir: testImagesDir(),
      calls: 40,
      sandboxes: 3,
      callsPerSandbox: 20,
      instance,
    });
    assert.equal(result.latency_ms.direct.n, 40);
    assert.equal(result.latency_ms.bridge.n, 40);
    assertAdded(result.added_ms, result.latency_ms.bridge, result.latency_ms.direct);
    for (const us of Object.values(result.verify_us))
      assert.ok(us > 0 && Number.isFinite(us), JSON.stringify(result.verify_us));
    assert.equal(result.throughput.errors, 0);
    assert.ok(result.throughput.bridge_calls_per_s > 0 && result.throughput.direct_calls_per_s > 0);
    // Every bridged call was recorded: warm-ups, the measured pairs, both throughput phases, and
    // the observability variants' warm-ups and rounds.
    assert.equal(result.events_recorded, 100 + 40 + 3 * (1 + 20) + 3 * (50 + 40));
    assertObservability(result.observability, 40, 50 + 40);
    // Its own namespaces are gone (other hosts on the machine may come and go meanwhile).
    const left = (await readdir("/run/netns").catch(() => [] as string[])).filter((n) =>
      n.startsWith(`paddock-${instance}-`),
    );
    assert.deepEqual(left, []);
  });
});
