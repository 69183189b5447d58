/**
 * The `paddock bench snapshot` scenario end to end on tiny environments: it writes, freezes and
 * boots them on a real host and reports every figure. Asserts the shape, never a time.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { skipReason } from "../packages/host/src/envs/test-support.ts";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { snapshotBench } from "./snapshot.ts";

const skip = e2eSkip(hostSkipReason() || skipReason());

describe("bench snapshot", { skip }, () => {
  it("freezes each size, boots the smallest and the largest, and reports their ratio", async () => {
    const result = await snapshotBench({ imagesDir: testImagesDir(), runs: 2, sizesMb: [2, 1] });
    assert.deepEqual(
      result.environments.map((e) => e.size),
      ["1m", "2m"],
    );
    for (const env of result.environments) {
      assert.ok(env.files > 10 && env.dirs > 5, JSON.stringify(env));
      assert.equal(env.bytes, env.size === "1m" ? 1024 * 1024 : 2 * 1024 * 1024);
      assert.equal(
        Object.values(env.tiers).reduce((n, t) => n + t.files, 0),
        env.files,
      );
      assert.equal(env.layer_entries, env.files + env.dirs + 1, "the layer holds the tree and its root");
      assert.ok(env.freeze_s > 0);
      assert.match(env.layer_digest, /^sha256-[0-9a-f]{64}$/);
    }
    assert.notEqual(result.environments[0]?.layer_digest, result.environments[1]?.layer_digest);
    assert.deepEqual(Object.keys(result.freeze_s), ["1m", "2m"]);
    assert.deepEqual(Object.keys(result.boot_ms), ["1m", "2m"]);
    for (const d of Object.values(result.boot_ms)) assert.equal(d.n, 2);
    assert.ok(Number.isFinite(result.boot_ratio_2m_over_1m));
  });
});
