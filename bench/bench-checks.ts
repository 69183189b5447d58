/** Checks the bench tests share: what a figure must satisfy, never how fast anything was. */
import assert from "node:assert/strict";
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
