/**
 * A node's hold on runs, in the store: claiming the queued runs it has room for, in batches (a
 * compare-and-set on each, so two nodes never take the same run, with the agent, tenant and serial
 * limits counted over every node inside the claim), moving a run to running once its sandbox is
 * up, and recording how its attempt ended; each step commits with its events. The engine drives
 * these around its sandboxes; nothing here boots one. Writes after the claim are fenced by
 * `(run, attempt)` on this node.
 */
import { ACTIVE_STATUSES, type RunStatus } from "@paddock/protocol";
import { type Kysely, sql, type Transaction } from "kysely";
import { cancelPendingApprovals } from "../store/approvals.ts";
import type { Db, EventLog, NewEvent } from "../store/event-log.ts";
import { type Fence, isLeaseLost } from "../store/fence.ts";
import { type Dialect, dbNow, lockNames, prepared } from "../store/portable.ts";
import type { AttemptsTable, Database, EventsTable, RunsTable } from "../store/schema.ts";
import { parseRunSpec } from "../store/stored.ts";
import type { AttemptOutcome } from "./attempt.ts";
import { retryDecision } from "./retry.ts";
import { type MovedRun, type RunRepository, terminalEvent } from "./runs.ts";

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
/** A queued run a claim may take, with its agent's limit of root runs at once as its spec says. */
type Candidate = LimitedRun & Pick<RunsTable, "id"> & { agentLimit: number | undefined };

/** Room on this node for runs to claim. */
export interface Room {
  /** Root runs it may still start. */
  roots: number;
  /** Runs, root or child, it may still start. */
  runs: number;
}

/** Queued runs of a tenant a claim passes over, held back by a limit, before that tenant waits for the next claim. */
const PASS_LIMIT = 64;

/** How far one claimNext has looked through each tenant's queue. */
interface Scan {
  /** The last run looked at: the tenant's next offer starts after it. */
  after: Map<string, string>;
  /** Runs passed over, held back by a limit. */
  passed: Map<string, number>;
}

/** The names locked while a limit is counted: claims under one name take turns on every node. */
const lockName = {
  tenant: (id: string) => `paddock:tenant:${id}`,
  agent: (id: string) => `paddock:agent:${id}`,
  serial: (key: string) => `paddock:serial:${key}`,
};

/**
 * The runs going (on any node) that a claim's limits count, plus those the claim takes: serial
 * keys held, and root runs per tenant and per agent.
 */
class Tally {
  readonly #serial = new Set<string>();
  readonly #tenantRoots = new Map<string, number>();
  readonly #agentRoots = new Map<string, number>();
  readonly #perTenant: number | undefined;

  constructor(perTenant: number | undefined) {
    this.#perTenant = perTenant;
  }

  add(run: LimitedRun): void {
    if (run.serial_key !== null) this.#serial.add(run.serial_key);
    if (run.root_run_id !== null) return;
    this.#tenantRoots.set(run.tenant_id, (this.#tenantRoots.get(run.tenant_id) ?? 0) + 1);
    this.#agentRoots.set(run.agent_id, (this.#agentRoots.get(run.agent_id) ?? 0) + 1);
  }

  /**
   * Whether a limit holds `c` back: its serial key is taken, or (for a root run; a child run is
   * not held back by the limits its root already passed) its tenant or agent is at its limit.
   */
  blocks(c: Candidate): boolean {
    if (c.serial_key !== null && this.#serial.has(c.serial_key)) return true;
    if (c.root_run_id !== null) return false;
    if (this.#perTenant !== undefined && (this.#tenantRoots.get(c.tenant_id) ?? 0) >= this.#perTenant) return true;
    return c.agentLimit !== undefined && (this.#agentRoots.get(c.agent_id) ?? 0) >= c.agentLimit;
  }
}

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
   * Claims as many queued, due runs as `room` holds: each goes to `starting` on this node with its
   * next attempt. Tenants take turns (round robin from the one after the tenant served last), each
   * giving its oldest run no limit holds back, so one tenant's flood never starves another's
   * schedule. Claims go in rounds of one transaction each (see #round); a round passes over runs a
   * limit holds back, and the next looks further down those tenants' queues. With no room for
   * root runs only child runs are claimed.
   */
  async claimNext(room: Room): Promise<RunsTable[]> {
    const claimed: RunsTable[] = [];
    const scan: Scan = { after: new Map(), passed: new Map() };
    let left = { roots: Math.max(0, room.roots), runs: room.runs };
    // Root and child runs while there is room for root runs; then child runs, if any are queued.
    for (const childrenOnly of [false, true]) {
      if (left.runs <= 0 || left.roots > 0 === childrenOnly) continue;
      let open = await this.#tenantsQueued(childrenOnly);
      while (left.runs > 0 && open.length > 0 && (left.roots > 0 || childrenOnly)) {
        const round = await this.#round(this.#turns(open), left, scan);
        claimed.push(...round.claimed);
        const roots = round.claimed.filter((r) => r.root_run_id === null).length;
        left = { roots: left.roots - roots, runs: left.runs - round.claimed.length };
        open = open.filter((t) => !round.done.has(t));
      }
    }
    return claimed;
  }

  /**
   * The tenants with queued runs that are due (child runs only, with `children`), in order: one
   * index lookup per tenant (each finds the next tenant after the last), not a scan of every
   * queued run.
   */
  async #tenantsQueued(children: boolean): Promise<string[]> {
    const due = sql`(not_before IS NULL OR not_before <= ${Date.now()})`;
    const which = children
      ? sql`status = 'queued' AND root_run_id IS NOT NULL AND ${due}`
      : sql`status = 'queued' AND ${due}`;
    const { rows } = await prepared(sql<{ tenant_id: string }>`
      WITH RECURSIVE queued(tenant_id) AS (
        SELECT min(tenant_id) FROM runs WHERE ${which}
        UNION ALL
        SELECT (SELECT min(tenant_id) FROM runs WHERE ${which} AND tenant_id > queued.tenant_id)
        FROM queued WHERE queued.tenant_id IS NOT NULL
      )
      SELECT tenant_id FROM queued WHERE tenant_id IS NOT NULL`).execute(this.#db);
    return rows.map((r) => r.tenant_id);
  }

  /** `tenants` (in order) from the one after the tenant served last, wrapping around. */
  #turns(tenants: string[]): string[] {
    const start = tenants.findIndex((t) => t > this.#lastTenant);
    return start <= 0 ? tenants : [...tenants.slice(start), ...tenants.slice(0, start)];
  }

  /**
   * One round of claims, in one transaction. The tenants whose turn it is offer their next queued,
   * due runs, a share of the room each and as many more as they had passed over (on PostgreSQL
   * FOR UPDATE SKIP LOCKED: nodes claiming at once pass over each other's runs instead of queueing
   * behind them); the limits that could hold one back are counted (see #tally); then the tenants
   * take turns, each giving its next run no limit holds back, until the room is full. Returns the
   * runs claimed and the tenants with nothing more to offer this claim (their queue ran out, or
   * they passed over too many runs).
   */
  async #round(turns: string[], room: Room, scan: Scan): Promise<{ claimed: RunsTable[]; done: Set<string> }> {
    const want = room.roots > 0 ? Math.min(room.roots, room.runs) : room.runs;
    const tenants = turns.slice(0, want);
    const share = Math.ceil(want / tenants.length);
    const done = new Set<string>();
    const result = await this.#db.transaction().execute(async (trx) => {
      const offers: Candidate[][] = [];
      for (const tenant of tenants) {
        const ask = share + (scan.passed.get(tenant) ?? 0);
        const offer = await this.#offer(trx, tenant, scan.after.get(tenant), ask, room.roots === 0);
        if (offer.length < ask) done.add(tenant);
        const last = offer.at(-1);
        if (last) scan.after.set(tenant, last.id);
        offers.push(offer);
      }
      const taken = this.#choose(offers, await this.#tally(trx, offers.flat()), room, scan, done);
      return taken.length === 0 ? { runs: [], events: [] } : this.#take(trx, taken);
    });
    this.#events.publish(result.events);
    return { claimed: result.runs, done };
  }

  /**
   * Of the tenants' offers, the runs to take: the tenants take turns, each giving its next run that
   * no limit holds back (and, once the room for root runs is full, only child runs), until the room
   * is full or the offers run out. Runs held back count as passed over, and a tenant that passed
   * over too many is `done`.
   */
  #choose(offers: Candidate[][], tally: Tally, room: Room, scan: Scan, done: Set<string>): Candidate[] {
    const taken: Candidate[] = [];
    let roots = room.roots;
    const giveFrom = (offer: Iterator<Candidate>): Candidate | undefined => {
      for (let next = offer.next(); !next.done; next = offer.next()) {
        const c = next.value;
        if (c.root_run_id === null && roots === 0) continue;
        if (!tally.blocks(c)) return c;
        const passed = (scan.passed.get(c.tenant_id) ?? 0) + 1;
        scan.passed.set(c.tenant_id, passed);
        if (passed >= PASS_LIMIT) done.add(c.tenant_id);
      }
      return undefined;
    };
    const turns = offers.map((offer) => offer.values());
    for (let gave = true; gave && taken.length < room.runs; ) {
      gave = false;
      for (const offer of turns) {
        const c = taken.length < room.runs ? giveFrom(offer) : undefined;
        if (!c) continue;
        tally.add(c);
        taken.push(c);
        if (c.root_run_id === null) roots--;
        this.#lastTenant = c.tenant_id;
        gave = true;
      }
    }
    return taken;
  }

  /** A tenant's next `limit` queued, due runs after `after`, oldest first (only child runs with `childrenOnly`). */
  async #offer(
    trx: Db,
    tenant: string,
    after: string | undefined,
    limit: number,
    childrenOnly: boolean,
  ): Promise<Candidate[]> {
    const rows = await this.offerQuery(trx, tenant, after, limit, childrenOnly).execute();
    return rows.map(({ spec, ...c }) => ({ ...c, agentLimit: parseRunSpec(spec).max_concurrent_runs }));
  }

  /**
   * The query of #offer(), for a look at its plan (store/query-plans.test.ts): a range of
   * runs_status (or, for child runs only, of runs_queue_children) read in its order.
   */
  offerQuery(db: Db, tenant: string, after: string | undefined, limit: number, childrenOnly: boolean) {
    const now = Date.now();
    let q = db
      .selectFrom("runs")
      .select(["id", "tenant_id", "agent_id", "spec", "serial_key", "root_run_id"])
      // Written as a literal, so that the planner can use the partial index runs_queue_children (the
      // queue as a whole is read through runs_status).
      .where("status", "=", sql.lit("queued"))
      // On PostgreSQL the tenant as a range, with the index's order: given `tenant_id = $1` it orders
      // by id alone, and with statistics that say most runs are queued (a backlog just queued) it
      // walks the primary key through every run that ended. SQLite's planner finds the index by
      // the equality.
      .$if(this.#dialect === "postgres", (q) => q.where("tenant_id", ">=", tenant).where("tenant_id", "<=", tenant))
      .$if(this.#dialect !== "postgres", (q) => q.where("tenant_id", "=", tenant))
      .where((eb) => eb.or([eb("not_before", "is", null), eb("not_before", "<=", now)]))
      .$if(after !== undefined, (q) => q.where("id", ">", after ?? ""))
      .$if(childrenOnly, (q) => q.where("root_run_id", "is not", null))
      .orderBy("tenant_id")
      .orderBy("id")
      .limit(limit);
    if (this.#dialect === "postgres") q = q.forUpdate().skipLocked();
    return q;
  }

  /**
   * The runs going on every node that the limits of `candidates` count. Where a limit could bind (a
   * serial key; for a root run, the tenant limit or its agent's), its name is locked first, so
   * that claims under that name take turns over every node and each counts what the one before
   * committed. A root run whose agent has no limit in its spec takes its agent's name shared: no
   * wait beside other such claims, but none beside a claim counting that agent (whose spec may
   * carry a limit this run's predates). Nothing is counted where no limit binds.
   */
  async #tally(trx: Db, candidates: Candidate[]): Promise<Tally> {
    const counted = { tenants: new Set<string>(), agents: new Set<string>(), serials: new Set<string>() };
    const shared: string[] = [];
    for (const c of candidates) {
      if (c.serial_key !== null) counted.serials.add(c.serial_key);
      if (c.root_run_id !== null) continue;
      if (this.#config.maxPerTenant !== undefined) counted.tenants.add(c.tenant_id);
      if (c.agentLimit !== undefined) counted.agents.add(c.agent_id);
      else shared.push(lockName.agent(c.agent_id));
    }
    const names = [
      ...[...counted.tenants].map(lockName.tenant),
      ...[...counted.agents].map(lockName.agent),
      ...[...counted.serials].map(lockName.serial),
    ];
    await lockNames(trx, this.#dialect, names, shared);
    const tally = new Tally(this.#config.maxPerTenant);
    if (names.length === 0) return tally;
    const going = await trx
      .selectFrom("runs")
      .select(["tenant_id", "agent_id", "serial_key", "root_run_id"])
      .where("status", "in", ACTIVE)
      .where((eb) =>
        eb.or([
          ...(counted.tenants.size > 0 ? [eb("tenant_id", "in", [...counted.tenants])] : []),
          ...(counted.agents.size > 0 ? [eb("agent_id", "in", [...counted.agents])] : []),
          ...(counted.serials.size > 0 ? [eb("serial_key", "in", [...counted.serials])] : []),
        ]),
      )
      .execute();
    for (const run of going) tally.add(run);
    return tally;
  }

  /**
   * queued → starting on this node for `taken`, each with attempt N+1, its attempt row and its
   * run.starting and attempt.started events: one statement for each, whatever the number of runs.
   */
  async #take(trx: Transaction<Database>, taken: Candidate[]): Promise<{ runs: RunsTable[]; events: EventsTable[] }> {
    const now = Date.now();
    const node = this.#config.workerId;
    const order = new Map(taken.map((c, i) => [c.id, i]));
    const runs = (
      await trx
        .updateTable("runs")
        .set((eb) => ({
          status: "starting",
          attempt: eb("attempt", "+", 1),
          worker_id: node,
          lease_until: eb(dbNow(this.#dialect), "+", this.#config.leaseMs ?? 30_000),
          not_before: null,
          started_at: eb.fn.coalesce("started_at", eb.val(now)),
          // The sequence numbers of the claim's two events.
          event_seq: eb("event_seq", "+", 2),
        }))
        .where("id", "in", [...order.keys()])
        .where("status", "=", "queued")
        .returningAll()
        .execute()
    ).sort((a, b) => (order.get(a.id) ?? 0) - (order.get(b.id) ?? 0));
    if (runs.length === 0) return { runs, events: [] };
    const attempts: AttemptsTable[] = runs.map((run) => ({
      run_id: run.id,
      n: run.attempt,
      status: "running",
      reason: null,
      exit_code: null,
      sandbox_id: null,
      worker_id: node,
      started_at: now,
      finished_at: null,
    }));
    // SQLite caps bound parameters per statement; 9 columns × 100 rows stays well under it.
    for (let i = 0; i < attempts.length; i += 100) {
      await trx
        .insertInto("attempts")
        .values(attempts.slice(i, i + 100))
        .execute();
    }
    const events = runs.flatMap((run) =>
      this.#events.numbered(run.id, run.attempt, run.event_seq, [
        { type: "run.starting", data: { status: "starting", attempt: run.attempt }, ts: now },
        { type: "attempt.started", data: { attempt: run.attempt, worker: node }, ts: now },
      ]),
    );
    await this.#events.insert(trx, events, runs);
    return { runs, events };
  }

  /**
   * starting → running for the attempt `fence` names, once its sandbox is up (`boot`: how long
   * that took, and whether a spare served). False when the run moved on meanwhile or a cancel
   * landed while it booted; lease_lost when the attempt no longer holds the run.
   */
  async start(run: RunsTable, boot: { ms: number; warm: boolean }, fence: Fence): Promise<boolean> {
    const moved = await this.#runs.transition(run.id, {
      from: ["starting"],
      to: "running",
      events: [
        { type: "run.running", data: { status: "running", attempt: run.attempt, boot_ms: boot.ms, warm: boot.warm } },
      ],
      fence,
    });
    // A cancel that landed while booting marked the run; the move read the mark under the row's lock.
    return moved?.cancel_requested === 0;
  }

  /**
   * Records how `run`'s attempt ended, with its events, atomically: the run ends, is retried per
   * its agent's policy, or (an attempt the host interrupted) goes back to the queue. `extra`
   * writes more in the same transaction, its event following attempt.finished; a run that ended
   * cancels its approvals still pending there too. Fenced: false,
   * recording nothing (the attempt row included), when the run is no longer this attempt's on this
   * node.
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
    const ended = !requeue && !retry;
    const closeAttempt = (db: Db, moved: MovedRun) =>
      db
        .updateTable("attempts")
        .set({ status: outcome.status, reason: outcome.reason, exit_code: outcome.exitCode, finished_at: now })
        .where("run_id", "in", moved)
        .where("n", "=", run.attempt);
    // A run that ended needs its journal no more.
    const dropJournal = (db: Db, moved: MovedRun) => db.deleteFrom("journal").where("run_id", "in", moved);
    try {
      const moved = await this.#runs.transition(run.id, {
        from: ACTIVE,
        to: ended ? outcome.status : "queued",
        patch: requeue
          ? requeued()
          : retry
            ? requeued(retry.at)
            : {
                reason: outcome.reason,
                exit_code: outcome.exitCode,
                finished_at: now,
                lease_until: null,
                waiting_since: null,
              },
        also: ended ? [dropJournal, closeAttempt] : [closeAttempt],
        events: [
          {
            type: "attempt.finished",
            data: { attempt: run.attempt, status: outcome.status, reason: outcome.reason, exit_code: outcome.exitCode },
            ts: now,
          },
          requeue
            ? { type: "run.requeued", data: { status: "queued", why: "host_shutdown" }, ts: now }
            : retry
              ? { type: "retry.scheduled", data: retry.event, ts: now }
              : { ...terminalEvent(outcome.status, outcome.reason, outcome.exitCode), ts: now },
        ],
        // Fenced: once another node recovered the run, this attempt records nothing.
        fence: { runId: run.id, attempt: run.attempt, workerId: this.#config.workerId },
        // What of the run waits for approval is canceled when it ended; a run that goes back to the
        // queue keeps its approvals for its next attempt.
        ...(extra || ended
          ? {
              extra: async (trx) => {
                const more = extra ? await extra(trx) : null;
                const canceled = ended ? await cancelPendingApprovals(trx, run.id, now) : [];
                return [...(more ? [{ ...more, ts: now }] : []), ...canceled];
              },
            }
          : {}),
      });
      return moved !== null;
    } catch (err) {
      // Someone else finished or recovered the run.
      if (isLeaseLost(err)) return false;
      throw err;
    }
  }
}
