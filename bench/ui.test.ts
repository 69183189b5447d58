/**
 * The `paddock bench ui` scenario end to end at a small scale: the figures exist and add up,
 * never a time.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../packages/host/src/testing/harness.ts";
import { browserSkipReason } from "../packages/ui/src/e2e/browser.ts";
import { uiBench } from "./ui.ts";

describe("bench ui", { skip: e2eSkip(hostSkipReason() || browserSkipReason()) }, () => {
  it("measures the first visit's bytes, the runs page and live events in the browser", async () => {
    const result = await uiBench({ imagesDir: testImagesDir(), loads: 2, storeRuns: 60 });
    // Counted in the page as served: the document and its three assets (the icon twice at most).
    assert.ok(result.initial_load.requests >= 4, JSON.stringify(result.initial_load));
    assert.ok(result.initial_load.gzip_bytes > 0);
    assert.ok(Math.abs(result.initial_load.gzip_bytes - result.initial_load.build_gzip_bytes) < 2048);
    assert.equal(result.runs_page.runs_in_store, 60);
    assert.equal(result.runs_page.interactive_ms.n, 2);
    assert.ok(result.runs_page.first_load_ms > 0);
    assert.ok(!("skipped" in result.live_event), JSON.stringify(result.live_event));
    if (!("skipped" in result.live_event)) {
      // Every tick the agent emitted was seen in the page and over SSE, none before it was written.
      assert.equal(result.live_event.timeline_ms.n, 60);
      assert.equal(result.live_event.floor_sse_node_ms.n, 60);
      assert.ok(result.live_event.timeline_ms.min >= 0);
    }
  });
});
