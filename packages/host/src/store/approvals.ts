/**
 * Approvals in the store. A held call is asked for in the transaction that makes its run wait
 * (fenced: only the attempt that holds the run asks), decided (by a person, by its time running
 * out, or canceled when its run ends) in the one that lets the run go on once nothing else of it
 * waits, and claimed once, compare-and-set, before it is sent: an approved call is forwarded at
 * most once, whichever node, attempt or repeated request gets to it.
 *
 * Every change to a run's approvals and status happens with the run's row locked first (the
 * fence's lock, or an explicit one), so asking and deciding at once on two nodes cannot leave a
 * run waiting on nothing or running while something of it waits.
 */
import {
  AppError,
  type ApprovalKind,
  type ApprovalRequest,
  type ApprovalRule,
  type ApprovalStatus,
  type ApprovalVia,
} from "@paddock/protocol";
import type { Kysely } from "kysely";
import type { Db, EventLog, NewEvent } from "./event-log.ts";
import { checkFence } from "./fence.ts";
import { newId } from "./ids.ts";
import type { ApprovalsTable, Database } from "./schema.ts";

/** A call to hold: what identifies it, what the approvers see, and what would be sent. */
export interface HeldCall {
  kind: ApprovalKind;
  target: string;
  /** The policy rule that asks (max_pending counts per rule and run). */
  ruleKey: string;
  step: string | null;
  /** Binds the request: every byte that would be sent, hashed. */
  hash: string;
  request: ApprovalRequest;
  /** What is sent besides the body (method, path, headers…), as JSON the sender reads back. */
  held: unknown;
  body: Buffer;
  rule: ApprovalRule;
}

/** The attempt asking, and the fence of its writes. */
export interface Asker {
  runId: string;
  attempt: number;
  workerId?: string | undefined;
  tenantId: string;
  agentId: string;
}

/** A decision to record. */
export interface Decision {
  status: Exclude<ApprovalStatus, "pending">;
  via: ApprovalVia;
  keyId: string | null;
  note: string | null;
}

/** What an approved call's sending left to give an identical repeat of it. */
export interface KeptAnswer {
  status: number;
  headers: Record<string, string | string[]>;
  body: Buffer;
}

/** Statuses an identical request is answered from instead of asking again, until the approval's time runs out. */
const STANDING: readonly ApprovalStatus[] = ["pending", "approved", "denied"];

export class ApprovalStore {
  readonly #db: Kysely<Database>;
  readonly #events: EventLog;

  constructor(db: Kysely<Database>, events: EventLog) {
    this.#db = db;
    this.#events = events;
  }

  async get(id: string): Promise<ApprovalsTable | undefined> {
    return this.#db.selectFrom("approvals").selectAll().where("id", "=", id).executeTakeFirst();
  }

  /** The run's newest approval of this very request that still stands (pending, approved or denied, in time). */
  async standing(runId: string, hash: string, now = Date.now()): Promise<ApprovalsTable | undefined> {
    return this.#db
      .selectFrom("approvals")
      .selectAll()
      .where("run_id", "=", runId)
      .where("request_hash", "=", hash)
      .where("status", "in", STANDING)
      .where("expires_at", ">", now)
      .orderBy("id", "desc")
      .executeTakeFirst();
  }

  /**
   * Holds `call` for approval: a pending approval, and the run waiting (it was running). Refused
   * with approval_limit when the run has max_pending approvals of the rule waiting already, and
   * with lease_lost when the asking attempt no longer holds the run.
   */
  async ask(asker: Asker, call: HeldCall, now = Date.now()): Promise<ApprovalsTable> {
    const row: ApprovalsTable = {
      id: newId("apr", now),
      tenant_id: asker.tenantId,
      run_id: asker.runId,
      agent_id: asker.agentId,
      attempt: asker.attempt,
      kind: call.kind,
      target: call.target,
      rule_key: call.ruleKey,
      step: call.step,
      request_hash: call.hash,
      request: JSON.stringify(call.request),
      held: JSON.stringify(call.held),
      body: call.body,
      rule: JSON.stringify(call.rule),
      admin_approves: call.rule.approvers.includes("admin") ? 1 : 0,
      status: "pending",
      created_at: now,
      expires_at: now + call.rule.timeout_s * 1000,
      deny_at: call.rule.auto_deny_after_s === undefined ? null : now + call.rule.auto_deny_after_s * 1000,
      decided_at: null,
      decided_via: null,
      decided_key: null,
      note: null,
      forward_state: null,
      forwarded_at: null,
      answer_status: null,
      answer_headers: null,
      answer_body: null,
    };
    const rows = await this.#db.transaction().execute(async (trx) => {
      await this.#lockRun(trx, asker);
      const pending = await trx
        .selectFrom("approvals")
        .select((eb) => eb.fn.countAll<number | string>().as("n"))
        .where("run_id", "=", asker.runId)
        .where("rule_key", "=", call.ruleKey)
        .where("status", "=", "pending")
        .executeTakeFirstOrThrow();
      if (Number(pending.n) >= call.rule.max_pending) {
        throw new AppError(
          "approval_limit",
          `This run has ${call.rule.max_pending} approvals of this rule waiting already; wait for a decision.`,
        );
      }
      await trx.insertInto("approvals").values(row).execute();
      const events: NewEvent[] = [
        {
          type: "approval.requested",
          data: {
            approval_id: row.id,
            request: call.request,
            approvers: call.rule.approvers,
            expires_at: new Date(row.expires_at).toISOString(),
          },
          ts: now,
        },
        ...(await this.#wait(trx, asker.runId, row.id, now)),
      ];
      return this.#events.append(trx, asker.runId, asker.attempt, events);
    });
    this.#events.publish(rows);
    return row;
  }

  /**
   * A later attempt of the run repeats a call an earlier one asked about: the approval is now
   * this attempt's (at `step`), and the run waits again while it is pending.
   */
  async adopt(asker: Asker, approval: ApprovalsTable, step: string | null, now = Date.now()): Promise<void> {
    const rows = await this.#db.transaction().execute(async (trx) => {
      await this.#lockRun(trx, asker);
      await trx.updateTable("approvals").set({ attempt: asker.attempt, step }).where("id", "=", approval.id).execute();
      const current = await trx
        .selectFrom("approvals")
        .select("status")
        .where("id", "=", approval.id)
        .executeTakeFirstOrThrow();
      if (current.status !== "pending") return [];
      return this.#events.append(trx, asker.runId, asker.attempt, await this.#wait(trx, asker.runId, approval.id, now));
    });
    this.#events.publish(rows);
  }

  /**
   * Records `decision` on a pending approval, and lets its run go on when nothing else of it
   * waits. `check` sees the approval first (who may decide it) and throws to refuse. A pending
   * approval past its time is recorded expired instead, whatever was asked. Returns the approval
   * as it is now, and whether this call decided it (false: it was decided already).
   */
  async decide(
    id: string,
    decision: Decision,
    check: (row: ApprovalsTable) => void = () => {},
    now = Date.now(),
  ): Promise<{ row: ApprovalsTable; changed: boolean }> {
    const result = await this.#db.transaction().execute(async (trx) => {
      const first = await trx.selectFrom("approvals").select("run_id").where("id", "=", id).executeTakeFirst();
      if (!first) throw new AppError("not_found", `No approval '${id.slice(0, 64)}'.`);
      let lock = trx.selectFrom("runs").select("id").where("id", "=", first.run_id);
      if (this.#events.dialect === "postgres") lock = lock.forNoKeyUpdate();
      await lock.executeTakeFirst();
      const row = await trx.selectFrom("approvals").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
      check(row);
      if (row.status !== "pending") return { row, changed: false, events: [] };
      const timedOut = now >= Number(row.expires_at) && decision.status !== "canceled";
      const final: Decision = timedOut ? { status: "expired", via: "auto", keyId: null, note: null } : decision;
      const decided = {
        status: final.status,
        decided_at: now,
        decided_via: final.via,
        decided_key: final.keyId,
        note: final.note,
      };
      await trx.updateTable("approvals").set(decided).where("id", "=", id).execute();
      const events = [decidedEvent({ ...row, ...decided }, now), ...(await this.#resume(trx, row.run_id, now))];
      const run = await trx.selectFrom("runs").select("attempt").where("id", "=", row.run_id).executeTakeFirstOrThrow();
      const appended = await this.#events.append(trx, row.run_id, run.attempt, events);
      return { row: { ...row, ...decided }, changed: true, events: appended };
    });
    this.#events.publish(result.events);
    return { row: result.row, changed: result.changed };
  }

  /** Pending approvals whose time ran out (or whose auto_deny_after_s passed): expired or denied. */
  async expireDue(now = Date.now()): Promise<number> {
    const due = await this.#db
      .selectFrom("approvals")
      .select(["id", "expires_at", "deny_at", "created_at"])
      .where("status", "=", "pending")
      .where((eb) => eb.or([eb("expires_at", "<=", now), eb("deny_at", "<=", now)]))
      .limit(500)
      .execute();
    for (const row of due) {
      const expired = Number(row.expires_at) <= now;
      const after = Math.round((now - Number(row.created_at)) / 1000);
      await this.decide(
        row.id,
        expired
          ? { status: "expired", via: "auto", keyId: null, note: null }
          : { status: "denied", via: "auto", keyId: null, note: `No one decided within ${after} s: denied.` },
        () => {},
        now,
      ).catch(() => {});
    }
    return due.length;
  }

  /**
   * Takes the one right to send an approved call (inside `trx` when given, so that what sending
   * writes commits with it); false when it is not approved or was taken.
   */
  async claimForward(id: string, now = Date.now(), trx?: Db): Promise<boolean> {
    const res = await (trx ?? this.#db)
      .updateTable("approvals")
      .set({ forward_state: "sending", forwarded_at: now })
      .where("id", "=", id)
      .where("status", "=", "approved")
      .where("forward_state", "is", null)
      .executeTakeFirst();
    return Number(res.numUpdatedRows) === 1;
  }

  /** Gives back a claim whose call never left the host (refused before it was sent). */
  async unclaimForward(id: string): Promise<void> {
    await this.#db
      .updateTable("approvals")
      .set({ forward_state: null, forwarded_at: null })
      .where("id", "=", id)
      .where("forward_state", "=", "sending")
      .execute();
  }

  /** The sent call's answer, kept for identical repeats (null: not kept, too large or broken off). */
  async recordAnswer(id: string, answer: KeptAnswer | null, trx?: Db): Promise<void> {
    await (trx ?? this.#db)
      .updateTable("approvals")
      .set({
        forward_state: "sent",
        answer_status: answer?.status ?? null,
        answer_headers: answer ? JSON.stringify(answer.headers) : null,
        answer_body: answer?.body ?? null,
      })
      .where("id", "=", id)
      .execute();
  }

  /** The fence's lock on the run when the asker names its node; the run's row lock otherwise. */
  async #lockRun(trx: Db, asker: Asker): Promise<void> {
    if (asker.workerId !== undefined) {
      await checkFence(
        trx,
        { runId: asker.runId, attempt: asker.attempt, workerId: asker.workerId },
        this.#events.dialect,
      );
      return;
    }
    let lock = trx.selectFrom("runs").select("id").where("id", "=", asker.runId);
    if (this.#events.dialect === "postgres") lock = lock.forNoKeyUpdate();
    await lock.executeTakeFirst();
  }

  /** A running run starts waiting (its `run.waiting` event); one waiting or elsewhere stays as it is. */
  async #wait(trx: Db, runId: string, approvalId: string, now: number): Promise<NewEvent[]> {
    const res = await trx
      .updateTable("runs")
      .set({ status: "waiting", reason: "approval", waiting_since: now })
      .where("id", "=", runId)
      .where("status", "=", "running")
      .executeTakeFirst();
    if (Number(res.numUpdatedRows) !== 1) return [];
    return [{ type: "run.waiting", data: { status: "waiting", reason: "approval", approval_id: approvalId }, ts: now }];
  }

  /** A waiting run with nothing pending any more runs on (its `run.resumed` event). */
  async #resume(trx: Db, runId: string, now: number): Promise<NewEvent[]> {
    const still = await trx
      .selectFrom("approvals")
      .select("id")
      .where("run_id", "=", runId)
      .where("status", "=", "pending")
      .executeTakeFirst();
    if (still) return [];
    const run = await trx
      .selectFrom("runs")
      .select(["status", "waiting_since"])
      .where("id", "=", runId)
      .executeTakeFirst();
    if (run?.status !== "waiting") return [];
    await trx
      .updateTable("runs")
      .set({ status: "running", reason: null, waiting_since: null })
      .where("id", "=", runId)
      .where("status", "=", "waiting")
      .execute();
    const waited = now - Number(run.waiting_since ?? now);
    return [{ type: "run.resumed", data: { status: "running", waited_ms: Math.max(0, waited) }, ts: now }];
  }
}

/** The `approval.decided` event of an approval as just decided. */
function decidedEvent(row: ApprovalsTable, now: number): NewEvent {
  return {
    type: "approval.decided",
    data: {
      approval_id: row.id,
      status: row.status as Decision["status"],
      via: (row.decided_via ?? "host") as ApprovalVia,
      key_id: row.decided_key,
      ...(row.note ? { note: row.note } : {}),
      waited_ms: Math.max(0, now - Number(row.created_at)),
    },
    ts: now,
  };
}

/**
 * Inside the transaction that ends a run: its pending approvals are canceled (nothing of them will
 * be sent); returns their `approval.decided` events, to append with the run's end.
 */
export async function cancelPendingApprovals(trx: Db, runId: string, now = Date.now()): Promise<NewEvent[]> {
  const pending = await trx
    .selectFrom("approvals")
    .selectAll()
    .where("run_id", "=", runId)
    .where("status", "=", "pending")
    .execute();
  if (pending.length === 0) return [];
  const decided = { status: "canceled", decided_at: now, decided_via: "host", decided_key: null, note: null };
  await trx.updateTable("approvals").set(decided).where("run_id", "=", runId).where("status", "=", "pending").execute();
  return pending.map((row) => decidedEvent({ ...row, ...decided }, now));
}
