/** Checks the bench tests share: what a figure must satisfy, never how fast anything was. */
import assert from "node:assert/strict";
import type { ObservabilityResult } from "./observability.ts";
import type { Dist } from "./stats.ts";

/**
 * Checks an "added" figure (through the product minus direct, per percentile) against the two
 * distributions it compares without computing it again: a finite number, and never more than the
 * whole time through the product, since a direct call takes some time.
 * @example assertAdded(result.added_ms, result.latency_ms.bridge, result.latency_ms.direct);
 */
export function assertAdded(added: { p50: number; p99: number }, via: Dist, direct: Dist): void {
  for (const q of ["p50", "p99"] as const) {
    const shown = `${q}: added ${added[q]}, through ${via[q]}, direct ${direct[q]}`;
    assert.ok(Number.isFinite(added[q]), shown);
    assert.ok(direct[q] > 0 && Number.isFinite(via[q]), shown);
    assert.ok(added[q] <= via[q], shown);
  }
}

/**
 * Checks the observability comparison: `rounds` samples of every variant, a finite rise of each
 * traced one over `off`, and one span exported for each of its `tracedCalls` calls, none dropped.
 */
export function assertObservability(result: ObservabilityResult, rounds: number, tracedCalls: number): void {
  assert.deepEqual(Object.keys(result.latency_ms), ["off", "tracing", "metrics+tracing"]);
  for (const d of Object.values(result.latency_ms)) assert.equal(d.n, rounds);
  for (const name of ["tracing", "metrics+tracing"]) {
    const rise = result.rise_ms[name];
    assert.ok(rise && Number.isFinite(rise.p50) && Number.isFinite(rise.p99), JSON.stringify(result.rise_ms));
  }
  // Both traced variants export a span per call.
  assert.deepEqual(result.spans, { exported: 2 * tracedCalls, dropped: 0 });
}
