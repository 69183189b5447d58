/** Keeping a runs list current from the polled first page, without a reload or a jump. */
import type { Run } from "@paddock/protocol";

/**
 * The list after a fresh read of its page: runs in it replace their old rows (status changes),
 * and on the first page, runs newer than the newest shown are added on top. Rows of the current
 * list stay where they are.
 */
export function mergeRuns(current: readonly Run[], fresh: readonly Run[], firstPage: boolean): Run[] {
  const byId = new Map(fresh.map((r) => [r.id, r]));
  const merged = current.map((r) => byId.get(r.id) ?? r);
  if (!firstPage || current.length === 0) return current.length === 0 ? [...fresh] : merged;
  const newest = current[0]?.id ?? "";
  const added = fresh.filter((r) => r.id > newest);
  return [...added, ...merged];
}

/** Runs that can still be canceled. */
export function cancelable(run: Run): boolean {
  return run.status === "queued" || run.status === "starting" || run.status === "running" || run.status === "waiting";
}
