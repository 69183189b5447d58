/**
 * The claims part of `paddock bench cluster` at a small scale, on a private PostgreSQL server:
 * every run succeeds once with all its events, and every figure is there. Never a time.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { e2eSkip } from "../packages/host/src/testing/e2e-skip.ts";
import { postgresSkipReason } from "../packages/host/src/testing/postgres.ts";
import { claimsBench } from "./cluster-claims.ts";

describe("bench cluster claims", { skip: e2eSkip(postgresSkipReason()) }, () => {
  it("runs 1 and 3 nodes and graphile-worker, each run once with its events", async () => {
    const lines: string[] = [];
    const result = await claimsBench({ runs: 200, progress: (l) => lines.push(l) });
    assert.equal(result.runs, 200);
    assert.ok(result.concurrency >= 1);
    assert.equal(result.succeeded, 2 * 200, "every run of both passes succeeded");
    assert.equal(result.duplicate_executions, 0);
    assert.equal(result.lost_events, 0);
    assert.equal(result.graphile_worker_duplicate_executions, 0);
    for (const rate of [
      result.claims_per_s.nodes_1,
      result.claims_per_s.nodes_3,
      result.graphile_worker_jobs_per_s.processes_1,
      result.graphile_worker_jobs_per_s.processes_3,
    ]) {
      assert.ok(rate > 0 && Number.isFinite(rate), `a rate: ${rate}`);
    }
    assert.match(result.graphile_worker_version, /^\d+\.\d+\.\d+/);
    assert.equal(lines.length, 4, "a progress line per pass");
    // JSON-ready: what goes out is what comes back.
    assert.deepEqual(JSON.parse(JSON.stringify(result)), result);
  });
});
