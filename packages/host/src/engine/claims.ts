/**
 * A node's hold on runs, in the store: which queued run it takes next, claiming it (compare-and-set,
 * so two nodes never take the same run, with the agent, tenant and serial limits counted over every
 * node inside the claim), moving it to running once its sandbox is up, and recording how its
 * attempt ended; each step commits with its events. The engine drives these around its sandboxes;
 * nothing here boots one. Writes after the claim are fenced by `(run, attempt)` on this node.
 */
import { ACTIVE_STATUSES, type RunStatus } from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import { cancelPendingApprovals } from "../store/approvals.ts";
import type { Db, EventLog, NewEvent } from "../store/event-log.ts";
import type { Fence } from "../store/fence.ts";
import { type Dialect, dbNow, lockNames } from "../store/portable.ts";
import type { Database, RunsTable } from "../store/schema.ts";
import { parseRunSpec } from "../store/stored.ts";
import type { AttemptOutcome } from "./attempt.ts";
import { retryDecision } from "./retry.ts";
import { type RunRepository, terminalEvent } from "./runs.ts";

/** The statuses of a run going: held by a node (booting, running or waiting for an approval). */
export const ACTIVE: readonly RunStatus[] = ACTIVE_STATUSES;

/**
 * A run back in the queue for its next attempt (not before `notBefore` when given): no node holds
 * it and nothing of it waits; its approvals still pending are its next attempt's.
 */
export function requeued(notBefore?: number) {
  return {
    status: "queued",
    worker_id: null,
    lease_until: null,
    expires_at: null,
    waiting_since: null,
    ...(notBefore !== undefined ? { not_before: notBefore } : {}),
  };
}

/** What the limits look at of a run going (on any node) or a queued candidate. */
type LimitedRun = Pick<RunsTable, "tenant_id" | "agent_id" | "serial_key" | "root_run_id">;
/** A queued run the next claim may take. */
export type Candidate = LimitedRun & Pick<RunsTable, "id" | "spec">;

export interface ClaimsConfig {
  /** This node's id: the worker of every run it claims. */
  workerId: string;
  /** Root runs at once on this node. */
  maxConcurrent: number;
  /** Root runs of one tenant at once, over every node (default: no limit beyond the nodes'). */
  maxPerTenant?: number;
  /** Which SQL the store speaks (default sqlite). */
  dialect?: Dialect;
  /** How long a claim holds without renewal (default 30 s). */
  leaseMs?: number;
}

export class Claims {
  readonly #db: Kysely<Database>;
  readonly #runs: RunRepository;
  readonly #events: EventLog;
  readonly #config: ClaimsConfig;
  /** The tenant served last, so that the next claim starts after it (round robin). */
  #lastTenant = "";

  constructor(deps: { db: Kysely<Database>; runs: RunRepository; events: EventLog }, config: ClaimsConfig) {
    this.#db = deps.db;
    this.#runs = deps.runs;
    this.#events = deps.events;
    this.#config = config;
  }

  get #dialect(): Dialect {
    return this.#config.dialect ?? "sqlite";
  }

  /** Queued runs (a builder to narrow). */
  queued() {
    return this.#db.selectFrom("runs").where("status", "=", "queued");
  }

  /**
   * The next run to start: tenants take turns (round robin from the one after the tenant served
   * last), each offering its oldest run that is due and whose agent and tenant are under their
   * limits, so one tenant's flood never starves another's schedule. The limits count runs going
   * on every node; the claim counts them again, under lock, before it takes the run. With
   * `rootsFull` (this node runs its limit of root runs) only child runs are offered.
   */
  async next(rootsFull: boolean): Promise<Candidate | null> {
    const now = Date.now();
    const tenants = (
      await this.queued()
        .select("tenant_id")
        .distinct()
        .where((eb) => eb.or([eb("not_before", "is", null), eb("not_before", "<=", now)]))
        .orderBy("tenant_id")
        .execute()
    ).map((r) => r.tenant_id);
    if (tenants.length === 0) return null;
    const start = tenants.findIndex((t) => t > this.#lastTenant);
    const order = start < 0 ? tenants : [...tenants.slice(start), ...tenants.slice(0, start)];
    const going = await this.#going(this.#db);
    for (const tenant of order) {
      const candidates = await this.queued()
        .select(["id", "tenant_id", "agent_id", "spec", "serial_key", "root_run_id"])
        .where("tenant_id", "=", tenant)
        .where((eb) => eb.or([eb("not_before", "is", null), eb("not_before", "<=", now)]))
        .orderBy("id")
        .limit(64)
        .execute();
      for (const c of candidates) {
        if (c.root_run_id === null && rootsFull) continue;
        if (this.#blocked(c, going)) continue;
        this.#lastTenant = tenant;
        return c;
      }
    }
    return null;
  }

  /** Runs going on any node (those of `c`'s tenant, agent or serial key when given). */
  async #going(db: Db, c?: Candidate): Promise<LimitedRun[]> {
    return db
      .selectFrom("runs")
      .select(["tenant_id", "agent_id", "serial_key", "root_run_id"])
      .where("status", "in", ACTIVE)
      .$if(c !== undefined, (q) =>
        q.where((eb) =>
          eb.or([
            eb("tenant_id", "=", c?.tenant_id ?? ""),
            eb("agent_id", "=", c?.agent_id ?? ""),
            ...(c?.serial_key ? [eb("serial_key", "=", c.serial_key)] : []),
          ]),
        ),
      )
      .execute();
  }

  /**
   * Whether a limit holds `c` back, given the runs going: its serial key is taken, or (for a root
   * run; a child run is not held back by the limits its root already passed) its tenant or agent
   * is at its limit.
   */
  #blocked(c: Candidate, going: LimitedRun[]): boolean {
    if (c.serial_key !== null && going.some((g) => g.serial_key === c.serial_key)) return true;
    if (c.root_run_id !== null) return false;
    const roots = going.filter((g) => g.root_run_id === null);
    const perTenant = this.#config.maxPerTenant;
    if (perTenant !== undefined && roots.filter((g) => g.tenant_id === c.tenant_id).length >= perTenant) return true;
    const limit = parseRunSpec(c.spec).max_concurrent_runs;
    return limit !== undefined && roots.filter((g) => g.agent_id === c.agent_id).length >= limit;
  }

  /**
   * queued → starting on this node, creating attempt N, atomically; null if another node won or
   * the limits, counted again in the claim's transaction under locks on the candidate's tenant,
   * agent and serial key, hold it back now. On PostgreSQL the row is taken FOR UPDATE SKIP
   * LOCKED, so nodes claiming at once pass over each other's candidates instead of queueing.
   */
  async claim(c: Candidate): Promise<RunsTable | null> {
    const now = Date.now();
    const node = this.#config.workerId;
    const rows = await this.#db.transaction().execute(async (trx) => {
      let pick = trx.selectFrom("runs").select("id").where("id", "=", c.id).where("status", "=", "queued");
      if (this.#dialect === "postgres") pick = pick.forUpdate().skipLocked();
      if (!(await pick.executeTakeFirst())) return null;
      await lockNames(trx, this.#dialect, [
        `paddock:tenant:${c.tenant_id}`,
        `paddock:agent:${c.agent_id}`,
        ...(c.serial_key ? [`paddock:serial:${c.serial_key}`] : []),
      ]);
      if (this.#blocked(c, await this.#going(trx, c))) return null;
      const res = await trx
        .updateTable("runs")
        .set((eb) => ({
          status: "starting",
          attempt: eb("attempt", "+", 1),
          worker_id: node,
          lease_until: eb(dbNow(this.#dialect), "+", this.#config.leaseMs ?? 30_000),
          not_before: null,
          started_at: eb.fn.coalesce("started_at", eb.val(now)),
        }))
        .where("id", "=", c.id)
        .where("status", "=", "queued")
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) !== 1) return null;
      const run = await trx.selectFrom("runs").selectAll().where("id", "=", c.id).executeTakeFirstOrThrow();
      await trx
        .insertInto("attempts")
        .values({
          run_id: c.id,
          n: run.attempt,
          status: "running",
          reason: null,
          exit_code: null,
          sandbox_id: null,
          worker_id: node,
          started_at: now,
          finished_at: null,
        })
        .execute();
      const events = await this.#events.append(trx, c.id, run.attempt, [
        { type: "run.starting", data: { status: "starting", attempt: run.attempt }, ts: now },
        { type: "attempt.started", data: { attempt: run.attempt, worker: node }, ts: now },
      ]);
      return { run, events };
    });
    if (!rows) return null;
    this.#events.publish(rows.events);
    return rows.run;
  }

  /**
   * starting → running for the attempt `fence` names, once its sandbox is up (`boot`: how long
   * that took, and whether a spare served). False when the run moved on meanwhile or a cancel
   * landed while it booted; lease_lost when the attempt no longer holds the run.
   */
  async start(run: RunsTable, boot: { ms: number; warm: boolean }, fence: Fence): Promise<boolean> {
    const moved = await this.#runs.transition(
      run.id,
      ["starting"],
      "running",
      {},
      [{ type: "run.running", data: { status: "running", attempt: run.attempt, boot_ms: boot.ms, warm: boot.warm } }],
      fence,
    );
    // A cancel that landed while booting: the run is no longer `starting`.
    const current = await this.#runs.getById(run.id);
    return moved && current?.cancel_requested === 0;
  }

  /**
   * Records how `run`'s attempt ended, with its events, in one transaction: the run ends, is
   * retried per its agent's policy, or (an attempt the host interrupted) goes back to the queue.
   * `extra` writes more in the same transaction, its event following attempt.finished. Fenced:
   * false, recording nothing, when the run is no longer this attempt's on this node.
   */
  async finish(
    run: RunsTable,
    outcome: AttemptOutcome,
    extra?: (trx: Transaction<Database>) => Promise<NewEvent | null>,
  ): Promise<boolean> {
    const now = Date.now();
    const requeue = outcome.interrupted === true;
    const spec = parseRunSpec(run.spec);
    const retry = requeue ? null : retryDecision(spec.retry, outcome, run.attempt, run.max_attempts, now);
    const rows = await this.#db.transaction().execute(async (trx) => {
      const res = await trx
        .updateTable("runs")
        .set(
          requeue
            ? requeued()
            : retry
              ? requeued(retry.at)
              : {
                  status: outcome.status,
                  reason: outcome.reason,
                  exit_code: outcome.exitCode,
                  finished_at: now,
                  lease_until: null,
                  waiting_since: null,
                },
        )
        .where("id", "=", run.id)
        .where("status", "in", ACTIVE)
        // Fenced: once another node recovered the run, this attempt records nothing.
        .where("attempt", "=", run.attempt)
        .where("worker_id", "=", this.#config.workerId)
        .executeTakeFirst();
      // Someone else finished or recovered the run: record nothing (the attempt row included).
      if (Number(res.numUpdatedRows) !== 1) return null;
      // A run that ended needs its journal no more, and what of it waits for approval is canceled;
      // a run that goes back to the queue keeps both for its next attempt.
      const ended = !requeue && !retry;
      if (ended) await trx.deleteFrom("journal").where("run_id", "=", run.id).execute();
      const canceled = ended ? await cancelPendingApprovals(trx, run.id, now) : [];
      await trx
        .updateTable("attempts")
        .set({ status: outcome.status, reason: outcome.reason, exit_code: outcome.exitCode, finished_at: now })
        .where("run_id", "=", run.id)
        .where("n", "=", run.attempt)
        .execute();
      const more = extra ? await extra(trx) : null;
      return this.#events.append(trx, run.id, run.attempt, [
        {
          type: "attempt.finished",
          data: { attempt: run.attempt, status: outcome.status, reason: outcome.reason, exit_code: outcome.exitCode },
          ts: now,
        },
        ...(more ? [{ ...more, ts: now }] : []),
        ...canceled,
        requeue
          ? { type: "run.requeued", data: { status: "queued", why: "host_shutdown" }, ts: now }
          : retry
            ? { type: "retry.scheduled", data: retry.event, ts: now }
            : { ...terminalEvent(outcome.status, outcome.reason, outcome.exitCode), ts: now },
      ]);
    });
    if (rows === null) return false;
    this.#events.publish(rows);
    return true;
  }
}
