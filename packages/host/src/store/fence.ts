/**
 * The fencing token of an attempt: `(run_id, attempt)` and the node it runs on. Every write an
 * attempt makes checks, in the same transaction, that the run is still its own; once another node
 * has recovered the run (its attempt went up, or its worker changed), the check raises lease_lost
 * and the write commits nothing. On PostgreSQL the run row is locked (FOR NO KEY UPDATE), so a
 * recovery cannot commit between the check and the write; on SQLite the write transaction
 * serialises. Not FOR SHARE: nearly every fenced write then updates that same row (the event
 * counter, the run's state), and two transactions each holding a share lock and each upgrading it
 * deadlock; the update lock makes them wait their turn instead.
 */
import { ACTIVE_STATUSES, AppError } from "@paddock/protocol";
import type { Db, Dialect } from "./portable.ts";

export interface Fence {
  runId: string;
  attempt: number;
  /** The node running the attempt. */
  workerId: string;
}

/** Throws lease_lost unless `fence`'s attempt still holds its run (starting, running or waiting, on its node). */
export async function checkFence(trx: Db, fence: Fence, dialect: Dialect): Promise<void> {
  let q = trx
    .selectFrom("runs")
    .select("id")
    .where("id", "=", fence.runId)
    .where("attempt", "=", fence.attempt)
    .where("worker_id", "=", fence.workerId)
    .where("status", "in", ACTIVE_STATUSES);
  if (dialect === "postgres") q = q.forNoKeyUpdate();
  if (!(await q.executeTakeFirst())) throw leaseLost(fence);
}

export function leaseLost(fence: Fence): AppError {
  return new AppError(
    "lease_lost",
    `Attempt ${fence.attempt} of run ${fence.runId} is no longer held by node ${fence.workerId}.`,
  );
}

/** Whether `err` is a fence's refusal. */
export const isLeaseLost = (err: unknown): boolean => err instanceof AppError && err.code === "lease_lost";
