/**
 * The run engine of one node: claims queued runs (compare-and-set, so two nodes never take the
 * same run, with the agent, tenant and serial limits counted over every node inside the claim),
 * executes each attempt, records the outcome with its events in one transaction, renews its runs'
 * leases with the node's heartbeat, and recovers runs whose lease lapsed (on start, those and the
 * ones an earlier start of this node left). `(run, attempt)` on this node is the fencing token of
 * every write an attempt makes: once another node has recovered a run, the old attempt's writes
 * are refused and its sandbox is killed. A node cut off from its database claims nothing, stops its
 * attempts before their leases lapse (it can no longer fence them), and resumes once a heartbeat
 * gets through again; the runs it stopped are then recovered as lost, by the first node to look.
 */
import { type AgentSpec, AppError, TERMINAL_STATUSES } from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import type { Snapshots } from "../agents/snapshots.ts";
import type { CurrentRunner } from "../images/runner-registry.ts";
import type { LogFields } from "../logs/log.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { Nodes } from "../nodes/nodes.ts";
import { cancelPendingApprovals } from "../store/approvals.ts";
import type { EventLog, NewEvent } from "../store/event-log.ts";
import { isLeaseLost } from "../store/fence.ts";
import { type Dialect, dbNow } from "../store/portable.ts";
import type { Database, RunsTable } from "../store/schema.ts";
import { parseRunSpec } from "../store/stored.ts";
import { isDatabaseUnavailable, StoreFailures } from "../store/unavailable.ts";
import type { Tracing } from "../tracing/tracing.ts";
import { Attempt, type AttemptDeps, type AttemptOutcome, sandboxSpec } from "./attempt.ts";
import { AttemptTrace } from "./attempt-trace.ts";
import { ACTIVE, Claims, requeued } from "./claims.ts";
import { retryDecision } from "./retry.ts";
import { type RunRepository, terminalEvent } from "./runs.ts";
import { bootKey, WarmPool, type WarmPoolConfig } from "./warm-pool.ts";

/** What the engine works with: the store and the runs in it, and everything an attempt needs. */
export interface EngineDeps extends AttemptDeps {
  db: Kysely<Database>;
  runs: RunRepository;
  snapshots: Snapshots;
  /** This node's row: its heartbeat carries the leases, and says whether it drains. */
  nodes: Nodes;
  /** Where queue waits and attempts' durations are reported. */
  metrics?: Pick<Metrics, "runClaimed" | "attemptEnded">;
  /** Where each attempt's spans go; null or absent: no spans. */
  tracing?: Tracing | null;
}

/** Agents' names kept for span names (a name never changes while its agent lives). */
const MAX_NAMES = 1000;

export interface EngineConfig {
  /** This node's id: the worker of every run it claims. */
  workerId: string;
  /** Root runs at once on this node. */
  maxConcurrent: number;
  /** Root runs of one tenant at once, over every node (default: no limit beyond the nodes'). */
  maxPerTenant?: number;
  /** Which SQL the store speaks (default sqlite). */
  dialect?: Dialect;
  /** How long a claim holds without renewal; renewed at a third of it (default 30 s). */
  leaseMs?: number;
  /** How often the engine looks for queued runs it was not told about. */
  pollMs: number;
  /**
   * How often, at most, a cancel asked for through another node is looked for among this node's
   * runs when the heartbeat is slower than that (default 500 ms).
   */
  cancelPollMs?: number;
  warm: WarmPoolConfig;
}

/** What a line about `run` concerns. */
const runFields = (run: RunsTable): LogFields => ({
  run_id: run.id,
  tenant_id: run.tenant_id,
  agent_id: run.agent_id,
  attempt: run.attempt,
});

export class Engine {
  readonly #db: Kysely<Database>;
  readonly #runs: RunRepository;
  readonly #events: EventLog;
  readonly #deps: EngineDeps;
  readonly #config: EngineConfig;
  readonly #snapshots: Snapshots;
  /** Which run comes next, claiming it, starting and finishing it: the store's side of each run. */
  readonly #claims: Claims;
  readonly #active = new Map<
    string,
    {
      attempt: Attempt;
      done: Promise<void>;
      /** A child run: not held back by the limits its root already passed. */
      child: boolean;
      /** Its sandbox is up and the run moved to running. */
      running: boolean;
    }
  >();
  #leaseTimer: NodeJS.Timeout | null = null;
  #cancelTimer: NodeJS.Timeout | null = null;
  #cancelPolling = false;
  /** When the last heartbeat that renewed this node's leases was sent (its own clock: only the time since matters). */
  #renewedAt = Date.now();
  /** The heartbeat in flight: one at a time, however long the store takes to answer. */
  #beating: Promise<boolean> | null = null;
  /** Whether the database can be reached; while it cannot, the node claims nothing. */
  readonly #store: StoreFailures;
  #draining = false;
  readonly #warm: WarmPool;
  #timer: NodeJS.Timeout | null = null;
  #pumping: Promise<void> | null = null;
  #again = false;
  #closed = false;
  /** Agents' names by id, for span names. */
  readonly #names = new Map<string, Promise<string | null>>();

  constructor(deps: EngineDeps, config: EngineConfig) {
    this.#snapshots = deps.snapshots;
    this.#db = deps.db;
    this.#runs = deps.runs;
    this.#events = deps.events;
    this.#deps = deps;
    this.#config = config;
    this.#warm = new WarmPool(deps.driver, config.warm, deps.log);
    this.#store = new StoreFailures(
      deps.log,
      "engine",
      "; claiming no runs until it can, and stopping this node's attempts before their leases lapse",
    );
    this.#claims = new Claims(deps, {
      workerId: config.workerId,
      maxConcurrent: config.maxConcurrent,
      ...(config.maxPerTenant !== undefined ? { maxPerTenant: config.maxPerTenant } : {}),
      dialect: this.#dialect,
      leaseMs: this.#leaseMs,
    });
  }

  start(): void {
    this.#timer = setInterval(() => this.notify(), this.#config.pollMs);
    this.#timer.unref();
    this.#leaseTimer = setInterval(() => {
      // A heartbeat still waiting on the store counts as one that failed.
      if (this.#beating) this.#stopUnrenewable();
      else void this.#heartbeat();
    }, this.#leaseMs / 3);
    this.#leaseTimer.unref();
    // The heartbeat reports cancels too; between slow heartbeats a light poll keeps that within a second.
    const cancelPollMs = this.#config.cancelPollMs ?? 500;
    if (this.#leaseMs / 3 > cancelPollMs) {
      this.#cancelTimer = setInterval(() => this.#pollCancels(), cancelPollMs);
      this.#cancelTimer.unref();
    }
    this.notify();
  }

  /** Stops, as canceled, this node's attempts whose cancel was asked for through another node. */
  #pollCancels(): void {
    if (this.#cancelPolling || this.#active.size === 0 || this.#store.unreachable) return;
    this.#cancelPolling = true;
    this.#runs
      .cancelRequested(this.#config.workerId, [...this.#active.keys()])
      .then((ids) => this.#stopCanceled(ids))
      .catch((err: unknown) => this.#store.failed("looking for cancels", err))
      .finally(() => {
        this.#cancelPolling = false;
      });
  }

  #stopCanceled(runIds: Iterable<string>): void {
    for (const id of runIds) this.#active.get(id)?.attempt.stop("canceled");
  }

  get #leaseMs(): number {
    return this.#config.leaseMs ?? 30_000;
  }

  get #dialect(): Dialect {
    return this.#config.dialect ?? "sqlite";
  }

  /** One heartbeat (or the one in flight); false when it failed. */
  #heartbeat(): Promise<boolean> {
    this.#beating ??= this.#renewLeases()
      .then(
        () => true,
        (err: unknown) => {
          this.#stopUnrenewable();
          this.#store.failed("renewing leases", err);
          return false;
        },
      )
      .finally(() => {
        this.#beating = null;
      });
    return this.#beating;
  }

  /**
   * This node's heartbeat, which renews every lease it holds in one statement: a node that stops
   * renewing loses its runs to recovery. An attempt whose lease was not renewed (another node
   * recovered its run) is stopped. The first heartbeat to get through after the database could
   * not be reached says so, and claiming starts again.
   */
  async #renewLeases(): Promise<void> {
    const held = [...this.#active].map(([runId, a]) => ({ runId, attempt: a.attempt.fence.attempt }));
    const sentAt = Date.now();
    const beat = await this.#deps.nodes.heartbeat(this.#config.workerId, held, this.#leaseMs);
    this.#renewedAt = sentAt;
    for (const { runId } of held) {
      if (!beat.renewed.has(runId)) this.#active.get(runId)?.attempt.leaseLost();
    }
    this.#stopCanceled(beat.canceled);
    if (this.#store.succeeded()) this.notify();
  }

  /**
   * After a heartbeat failed: when the leases would lapse before the next one could renew them
   * (half a lease has gone by unrenewed; heartbeats come every third), every attempt is stopped.
   * None of them can be fenced any more, and another node may recover their runs once the
   * leases lapse: an attempt must not outlive its lease.
   */
  #stopUnrenewable(): void {
    if (Date.now() - this.#renewedAt < this.#leaseMs / 2) return;
    for (const { attempt } of this.#active.values()) attempt.leaseLost();
  }

  /** Whether this node's database could be reached when it last tried. */
  get databaseReachable(): boolean {
    return !this.#store.unreachable;
  }

  /** Whether this node drains, as its last look for work found (without asking the store). */
  get draining(): boolean {
    return this.#draining;
  }

  get activeCount(): number {
    return this.#active.size;
  }

  /** This node's runs going, by state. */
  get activeStates(): { starting: number; running: number; waiting: number } {
    let running = 0;
    let waiting = 0;
    for (const a of this.#active.values()) {
      if (a.running && a.attempt.waiting) waiting++;
      else if (a.running) running++;
    }
    return { starting: this.#active.size - running - waiting, running, waiting };
  }

  /** Tells the engine there may be queued work. Cheap; coalesces concurrent calls. */
  notify(): void {
    if (this.#closed) return;
    if (this.#pumping) {
      this.#again = true;
      return;
    }
    this.#pumping = this.#pump()
      .catch((err: unknown) => this.#store.failed("claiming runs", err))
      .finally(() => {
        this.#pumping = null;
        if (this.#again) {
          this.#again = false;
          this.notify();
        }
      });
  }

  /** Resolves once no claim pass is in progress (one asked for by notify() included). */
  async settled(): Promise<void> {
    while (this.#pumping) await this.#pumping;
  }

  /**
   * Cancels a run of the tenant and, below it, every child run still going. A queued run ends
   * canceled at once; a starting or running one is marked, and its sandbox killed if it runs
   * here (the attempt then records it canceled); a node running it elsewhere sees the mark within
   * a second (its heartbeat or cancel poll) and does the same. Returns the run as it is now and whether it was
   * still queued; not_found for another tenant's run, run_not_cancelable for one that ended.
   */
  async cancel(tenantId: string, runId: string): Promise<{ run: RunsTable; wasQueued: boolean }> {
    const run = await this.#runs.get(tenantId, runId);
    if (!run) throw new AppError("not_found", `No run '${runId}'.`);
    if ((TERMINAL_STATUSES as readonly string[]).includes(run.status)) {
      throw new AppError("run_not_cancelable", `The run already ended (${run.status}).`);
    }
    const wasQueued = await this.#cancelTree(run.id);
    return { run: (await this.#runs.getById(run.id)) ?? run, wasQueued };
  }

  /** Cancels a run and its children still going, deepest first; true when the run was still queued. */
  async #cancelTree(runId: string): Promise<boolean> {
    for (const child of await this.#runs.childrenGoing(runId)) await this.#cancelTree(child);
    // A queued run may be between attempts with approvals pending: they end with it.
    const now = Date.now();
    const canceled = await this.#runs.transition(runId, {
      from: ["queued"],
      to: "canceled",
      patch: { reason: "canceled", finished_at: now, waiting_since: null },
      events: [terminalEvent("canceled", "canceled", null)],
      extra: (trx) => cancelPendingApprovals(trx, runId, now),
    });
    if (canceled) return true;
    await this.#runs.requestCancel(runId);
    this.#active.get(runId)?.attempt.stop("canceled");
    return false;
  }

  /** Spares waiting for runs (for diagnostics and tests). */
  get warmCount(): number {
    return this.#warm.size;
  }

  /** Stops claiming, interrupts running attempts (their runs go back to the queue), waits for them. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    if (this.#leaseTimer) clearInterval(this.#leaseTimer);
    if (this.#cancelTimer) clearInterval(this.#cancelTimer);
    await this.#pumping;
    for (const { attempt } of this.#active.values()) attempt.stop("shutdown");
    await Promise.all([...this.#active.values()].map((e) => e.done));
    await this.#warm.close();
  }

  async #pump(): Promise<void> {
    // Out of reach of the database, the node claims nothing until a heartbeat gets through.
    if (this.#store.unreachable && !(await this.#heartbeat())) return;
    await this.#expire();
    await this.#recoverExpiredLeases();
    // A draining node claims nothing; its runs going finish.
    this.#draining = await this.#deps.nodes.draining(this.#config.workerId);
    if (this.#draining) return;
    // Child runs may go past the host's limit (their parents wait on them: holding them back could
    // deadlock a tree), up to a hard ceiling.
    const roots = [...this.#active.values()].filter((a) => !a.child).length;
    const claimed = await this.#claims.claimNext({
      roots: this.#config.maxConcurrent - roots,
      runs: this.#config.maxConcurrent * 4 - this.#active.size,
    });
    for (const run of claimed) this.#launch(run);
  }

  /** Queued runs past their queue time-to-live end as failed, reason `expired`. */
  async #expire(): Promise<void> {
    const now = Date.now();
    const stale = await this.#claims.queued().select(["id", "created_at"]).where("expires_at", "<=", now).execute();
    for (const run of stale) {
      await this.#runs.transition(run.id, {
        from: ["queued"],
        to: "failed",
        patch: { reason: "expired", finished_at: now },
        events: [
          { type: "run.expired", data: { waited_ms: now - Number(run.created_at) } },
          terminalEvent("failed", "expired", null),
        ],
      });
    }
  }

  /**
   * Runs whose node stopped renewing their lease (by the database's clock) are recovered as lost
   * (retried per policy); a live node's runs are never touched. Each recovery is a compare-and-set
   * on the run's status and attempt, so two nodes recovering at once recover it once.
   */
  async #recoverExpiredLeases(): Promise<void> {
    const lapsed = await this.#db
      .selectFrom("runs")
      .selectAll()
      .where("status", "in", ACTIVE)
      .where("lease_until", "<", dbNow(this.#dialect))
      .execute();
    const others = lapsed.filter((r) => !this.#active.has(r.id));
    if (others.length > 0) await this.#recover(others, "lease expired");
  }

  #launch(run: RunsTable): void {
    const spec = parseRunSpec(run.spec);
    const trace = this.#trace(run, spec);
    const attempt = new Attempt(this.#deps, {
      runId: run.id,
      tenantId: run.tenant_id,
      agentId: run.agent_id,
      rootRunId: run.root_run_id,
      rootAgentId: run.root_agent_id,
      endUser: run.end_user,
      attempt: run.attempt,
      workerId: this.#config.workerId,
      spec,
      input: run.input,
      trace,
    });
    const done = this.#execute(run, attempt, spec)
      .then(
        (outcome) => trace?.end(outcome),
        (err: unknown) => {
          trace?.end(null, String(err));
          this.#deps.log(
            isDatabaseUnavailable(err)
              ? `run ${run.id}: attempt ${run.attempt} ended, but the database cannot be reached to record it; the run is recovered once its lease lapses`
              : `run ${run.id}: engine error: ${String(err)}`,
            runFields(run),
          );
        },
      )
      .finally(() => {
        this.#active.delete(run.id);
        this.notify();
      });
    this.#active.set(run.id, {
      attempt,
      done,
      child: run.root_run_id !== null,
      running: false,
    });
    if (run.attempt === 1) this.#deps.metrics?.runClaimed(Date.now() - Number(run.created_at));
  }

  /** The attempt's spans when the host traces, named after its agent once the name is read. */
  #trace(run: RunsTable, spec: AgentSpec): AttemptTrace | null {
    const tracing = this.#deps.tracing;
    if (!tracing) return null;
    const trace = new AttemptTrace(tracing, run, spec);
    let name = this.#names.get(run.agent_id);
    if (!name) {
      if (this.#names.size >= MAX_NAMES) this.#names.clear();
      name = this.#db
        .selectFrom("agents")
        .select("name")
        .where("id", "=", run.agent_id)
        .executeTakeFirst()
        .then((row) => row?.name ?? null)
        .catch(() => null);
      this.#names.set(run.agent_id, name);
    }
    void name.then((n) => {
      if (n) trace.named(n);
      else this.#names.delete(run.agent_id);
    });
    return trace;
  }

  async #execute(run: RunsTable, attempt: Attempt, spec: AgentSpec): Promise<AttemptOutcome> {
    const t0 = performance.now();
    const runner = await this.#deps.currentRunner();
    const runnerMs = performance.now() - t0;
    // Take a spare for this run, and boot the next one while it runs.
    const key = bootKey(spec, runner.digest);
    const warm = this.#warm.take(key);
    this.#warm.replenish(key, () => sandboxSpec(this.#deps, spec, runner));
    let outcome: AttemptOutcome;
    try {
      outcome = await attempt.run(
        (boot) =>
          this.#claims.start(run, boot, attempt.fence).then(
            (running) => {
              const entry = this.#active.get(run.id);
              if (entry) entry.running = running;
              return running;
            },
            (err: unknown) => {
              if (!isLeaseLost(err)) throw err;
              attempt.leaseLost();
              return false;
            },
          ),
        warm,
        { current: runner, ms: runnerMs },
      );
    } catch (err) {
      // Whatever failed (the store, the kernel), the run is finished, never left running.
      this.#deps.log(
        `run ${run.id}: attempt failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`,
        runFields(run),
      );
      outcome = { status: "failed", reason: "sandbox_error", exitCode: null };
    }
    this.#deps.metrics?.attemptEnded(outcome.status, performance.now() - t0);
    await this.#finish(run, outcome, spec.runner !== runner.digest ? { spec, runner } : undefined);
    return outcome;
  }

  /**
   * After a successful run with a swapped runner, inside the transaction that finishes it: a new
   * snapshot version naming the current runner and the very same environment digests, so later
   * boots need no swap. Skipped when the agent's environment moved on meanwhile (its current
   * version is no longer the run's). Returns the event describing it.
   */
  async #resnapshot(
    trx: Transaction<Database>,
    run: RunsTable,
    spec: AgentSpec,
    runner: CurrentRunner,
  ): Promise<NewEvent | null> {
    const agent = await trx
      .selectFrom("agents")
      .select(["current_version", "tenant_id"])
      .where("id", "=", run.agent_id)
      .executeTakeFirst();
    if (!agent || agent.current_version !== spec.snapshot_version) return null;
    const parent = await this.#snapshots.get(trx, run.agent_id, spec.snapshot_version);
    const snap = await this.#snapshots.append(trx, {
      tenantId: agent.tenant_id,
      agentId: run.agent_id,
      base: spec.image,
      layers: spec.layers,
      runner: runner.digest,
      reason: "runner",
      parentVersion: spec.snapshot_version,
      envBytes: Number(parent?.env_bytes ?? 0),
    });
    if (!(await this.#snapshots.moveCurrent(trx, run.agent_id, spec.snapshot_version, snap.version))) {
      // The environment moved on between the check and the move: no re-snapshot, the run still finishes.
      await trx.deleteFrom("snapshots").where("id", "=", snap.id).execute();
      return null;
    }
    return {
      type: "snapshot.created",
      data: { version: snap.version, reason: "runner", runner: runner.digest, base: spec.image, layers: spec.layers },
    };
  }

  /** Records the attempt's outcome; after a swapped runner's success, with the snapshot naming it. */
  async #finish(
    run: RunsTable,
    outcome: AttemptOutcome,
    swapped?: { spec: AgentSpec; runner: CurrentRunner },
  ): Promise<void> {
    const resnapshot =
      swapped && outcome.status === "succeeded" && outcome.interrupted !== true
        ? (trx: Transaction<Database>) => this.#resnapshot(trx, run, swapped.spec, swapped.runner)
        : undefined;
    if (!(await this.#claims.finish(run, outcome, resnapshot))) {
      // Someone else finished or recovered the run: nothing was recorded (the attempt row included).
      this.#deps.log(
        `run ${run.id}: attempt ${run.attempt} ended; the run is no longer its own, nothing recorded`,
        runFields(run),
      );
    }
  }

  /**
   * At start: runs left `starting` or `running` by an earlier start of this node, or by any node
   * whose lease on them lapsed: their attempt is recorded as lost and the run is retried per its
   * agent's policy (reason `lost`), else failed with reason `lost`. Runs a live node holds under
   * its lease are left alone.
   */
  async reconcile(): Promise<number> {
    const orphans = await this.#db
      .selectFrom("runs")
      .selectAll()
      .where("status", "in", ACTIVE)
      .where((eb) =>
        eb.or([
          eb("worker_id", "=", this.#config.workerId),
          eb("worker_id", "is", null),
          eb("lease_until", "is", null),
          eb("lease_until", "<", dbNow(this.#dialect)),
        ]),
      )
      .execute();
    await this.#recover(orphans, "host stopped while the attempt ran");
    return orphans.length;
  }

  async #recover(runs: RunsTable[], why: string): Promise<void> {
    const now = Date.now();
    for (const run of runs) {
      const spec = parseRunSpec(run.spec);
      const lost: AttemptOutcome = { status: "failed", reason: "lost", exitCode: null };
      const retry = retryDecision(spec.retry, lost, run.attempt, run.max_attempts, now);
      const rows = await this.#db.transaction().execute(async (trx) => {
        // On PostgreSQL a run another node is recovering (or finishing) right now is passed over.
        if (this.#dialect === "postgres") {
          const free = await trx
            .selectFrom("runs")
            .select("id")
            .where("id", "=", run.id)
            .where("attempt", "=", run.attempt)
            .forUpdate()
            .skipLocked()
            .executeTakeFirst();
          if (!free) return [];
        }
        await trx
          .updateTable("attempts")
          .set({ status: "failed", reason: "lost", finished_at: now })
          .where("run_id", "=", run.id)
          .where("n", "=", run.attempt)
          .where("finished_at", "is", null)
          .execute();
        const res = await trx
          .updateTable("runs")
          .set(
            retry
              ? requeued(retry.at)
              : {
                  status: "failed",
                  reason: "lost",
                  finished_at: now,
                  worker_id: null,
                  lease_until: null,
                  waiting_since: null,
                },
          )
          .where("id", "=", run.id)
          .where("status", "=", run.status)
          .where("attempt", "=", run.attempt)
          .executeTakeFirst();
        if (Number(res.numUpdatedRows) !== 1) return [];
        // Pending approvals outlive the attempt when the run is retried (its next attempt asks
        // the same calls again), and end with the run otherwise.
        const canceled = retry ? [] : await cancelPendingApprovals(trx, run.id, now);
        return this.#events.append(trx, run.id, run.attempt, [
          { type: "attempt.lost", data: { attempt: run.attempt, worker: run.worker_id, why }, ts: now },
          ...canceled,
          retry
            ? { type: "retry.scheduled", data: retry.event, ts: now }
            : { ...terminalEvent("failed", "lost", null), ts: now },
        ]);
      });
      this.#events.publish(rows);
    }
  }
}
