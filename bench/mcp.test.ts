/**
 * The `paddock bench mcp` scenario end to end at a small scale: a real host, a real sandbox, the
 * stand-in MCP server. Asserts the figures exist and add up, never a time.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { mcpBench } from "./mcp.ts";

describe("bench mcp", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("measures tools/call through the host beside the same call made directly", async () => {
    const result = await mcpBench({ imagesDir: testImagesDir(), pairs: 40 });
    assert.deepEqual([result.latency_ms.direct.n, result.latency_ms.host.n], [40, 40]);
    // Every call through the host (the warm-up's 100 and the 40 measured) is recorded once.
    assert.equal(result.calls_recorded, 140);
    assert.equal(
      result.added_ms.p50,
      Math.round((result.latency_ms.host.p50 - result.latency_ms.direct.p50) * 1000) / 1000,
    );
  });
});
