/**
 * The run engine: claims queued runs (compare-and-set, so two workers never take the same run),
 * executes each attempt, records the outcome with its events in one transaction, and on start
 * reconciles runs that a dead host left in flight.
 */
import type { RunStatus } from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import type { Snapshots } from "../agents/snapshots.ts";
import type { Database, RunsTable } from "../store/schema.ts";
import { Attempt, type AttemptDeps, type AttemptOutcome, sandboxSpec } from "./attempt.ts";
import type { EventLog, NewEvent } from "./event-log.ts";
import type { CurrentRunner } from "./runner-registry.ts";
import { type AgentSpec, type RunRepository, terminalEvent } from "./runs.ts";
import { bootKey, WarmPool, type WarmPoolConfig } from "./warm-pool.ts";

export interface EngineConfig {
  workerId: string;
  maxConcurrent: number;
  /** How often the engine looks for queued runs it was not told about. */
  pollMs: number;
  warm: WarmPoolConfig;
}

const ACTIVE: RunStatus[] = ["starting", "running"];

export class Engine {
  readonly #db: Kysely<Database>;
  readonly #runs: RunRepository;
  readonly #events: EventLog;
  readonly #deps: AttemptDeps;
  readonly #config: EngineConfig;
  readonly #snapshots: Snapshots;
  readonly #active = new Map<string, { attempt: Attempt; done: Promise<void> }>();
  readonly #warm: WarmPool;
  #timer: NodeJS.Timeout | null = null;
  #pumping: Promise<void> | null = null;
  #again = false;
  #closed = false;

  constructor(
    db: Kysely<Database>,
    runs: RunRepository,
    events: EventLog,
    snapshots: Snapshots,
    deps: AttemptDeps,
    config: EngineConfig,
  ) {
    this.#snapshots = snapshots;
    this.#db = db;
    this.#runs = runs;
    this.#events = events;
    this.#deps = deps;
    this.#config = config;
    this.#warm = new WarmPool(deps.driver, config.warm, deps.log);
  }

  start(): void {
    this.#timer = setInterval(() => this.notify(), this.#config.pollMs);
    this.#timer.unref();
    this.notify();
  }

  get activeCount(): number {
    return this.#active.size;
  }

  /** Tells the engine there may be queued work. Cheap; coalesces concurrent calls. */
  notify(): void {
    if (this.#closed) return;
    if (this.#pumping) {
      this.#again = true;
      return;
    }
    this.#pumping = this.#pump()
      .catch((err: unknown) => this.#deps.log(`engine: claiming runs failed: ${String(err)}`))
      .finally(() => {
        this.#pumping = null;
        if (this.#again) {
          this.#again = false;
          this.notify();
        }
      });
  }

  /** Kills a running run's sandbox; the attempt then records the run as canceled. */
  cancel(runId: string): boolean {
    const entry = this.#active.get(runId);
    if (!entry) return false;
    entry.attempt.stop("canceled");
    return true;
  }

  /** Spares waiting for runs (for diagnostics and tests). */
  get warmCount(): number {
    return this.#warm.size;
  }

  /** Stops claiming, interrupts running attempts (their runs go back to the queue), waits for them. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#pumping;
    for (const { attempt } of this.#active.values()) attempt.stop("shutdown");
    await Promise.all([...this.#active.values()].map((e) => e.done));
    await this.#warm.close();
  }

  async #pump(): Promise<void> {
    while (!this.#closed && this.#active.size < this.#config.maxConcurrent) {
      const candidates = await this.#db
        .selectFrom("runs")
        .select("id")
        .where("status", "=", "queued")
        .orderBy("id")
        .limit(this.#config.maxConcurrent - this.#active.size)
        .execute();
      if (candidates.length === 0) return;
      let claimed = 0;
      for (const { id } of candidates) {
        const run = await this.#claim(id);
        if (!run) continue;
        claimed++;
        this.#launch(run);
      }
      if (claimed === 0) return;
    }
  }

  /** queued → starting, creating attempt N, atomically; null if another worker won. */
  async #claim(runId: string): Promise<RunsTable | null> {
    const now = Date.now();
    const rows = await this.#db.transaction().execute(async (trx) => {
      const res = await trx
        .updateTable("runs")
        .set((eb) => ({
          status: "starting",
          attempt: eb("attempt", "+", 1),
          worker_id: this.#config.workerId,
          started_at: eb.fn.coalesce("started_at", eb.val(now)),
        }))
        .where("id", "=", runId)
        .where("status", "=", "queued")
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) !== 1) return null;
      const run = await trx.selectFrom("runs").selectAll().where("id", "=", runId).executeTakeFirstOrThrow();
      await trx
        .insertInto("attempts")
        .values({
          run_id: runId,
          n: run.attempt,
          status: "running",
          reason: null,
          exit_code: null,
          sandbox_id: null,
          worker_id: this.#config.workerId,
          started_at: now,
          finished_at: null,
        })
        .execute();
      const events = await this.#events.append(trx, runId, run.attempt, [
        { type: "run.starting", data: { status: "starting", attempt: run.attempt }, ts: now },
        { type: "attempt.started", data: { attempt: run.attempt, worker: this.#config.workerId }, ts: now },
      ]);
      return { run, events };
    });
    if (!rows) return null;
    this.#events.publish(rows.events);
    return rows.run;
  }

  #launch(run: RunsTable): void {
    const spec = JSON.parse(run.spec) as AgentSpec;
    const attempt = new Attempt(this.#deps, {
      runId: run.id,
      tenantId: run.tenant_id,
      agentId: run.agent_id,
      attempt: run.attempt,
      spec,
      input: run.input,
    });
    const done = this.#execute(run, attempt, spec)
      .catch((err: unknown) => this.#deps.log(`run ${run.id}: engine error: ${String(err)}`))
      .finally(() => {
        this.#active.delete(run.id);
        this.notify();
      });
    this.#active.set(run.id, { attempt, done });
  }

  async #execute(run: RunsTable, attempt: Attempt, spec: AgentSpec): Promise<void> {
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
        async (boot) => {
          const moved = await this.#runs.transition(run.id, ["starting"], "running", {}, [
            {
              type: "run.running",
              data: { status: "running", attempt: run.attempt, boot_ms: boot.ms, warm: boot.warm },
            },
          ]);
          // A cancel that landed while booting: the run is no longer `starting`.
          const current = await this.#runs.getById(run.id);
          return moved && current?.cancel_requested === 0;
        },
        warm,
        { current: runner, ms: runnerMs },
      );
    } catch (err) {
      // Whatever failed (the store, the kernel), the run is finished, never left running.
      this.#deps.log(
        `run ${run.id}: attempt failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`,
      );
      outcome = { status: "failed", reason: "sandbox_error", exitCode: null };
    }
    await this.#finish(run, outcome, spec.runner !== runner.digest ? { spec, runner } : undefined);
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

  async #finish(
    run: RunsTable,
    outcome: AttemptOutcome,
    swapped?: { spec: AgentSpec; runner: CurrentRunner },
  ): Promise<void> {
    const now = Date.now();
    const requeue = outcome.interrupted === true;
    const rows = await this.#db.transaction().execute(async (trx) => {
      const res = await trx
        .updateTable("runs")
        .set(
          requeue
            ? { status: "queued", worker_id: null }
            : {
                status: outcome.status,
                reason: outcome.reason,
                exit_code: outcome.exitCode,
                finished_at: now,
              },
        )
        .where("id", "=", run.id)
        .where("status", "in", ACTIVE)
        .executeTakeFirst();
      // Someone else finished the run: record nothing (the attempt row included).
      if (Number(res.numUpdatedRows) !== 1) return [];
      await trx
        .updateTable("attempts")
        .set({ status: outcome.status, reason: outcome.reason, exit_code: outcome.exitCode, finished_at: now })
        .where("run_id", "=", run.id)
        .where("n", "=", run.attempt)
        .execute();
      const snapshot =
        swapped && outcome.status === "succeeded" && !requeue
          ? await this.#resnapshot(trx, run, swapped.spec, swapped.runner)
          : null;
      return this.#events.append(trx, run.id, run.attempt, [
        {
          type: "attempt.finished",
          data: { attempt: run.attempt, status: outcome.status, reason: outcome.reason, exit_code: outcome.exitCode },
          ts: now,
        },
        ...(snapshot ? [{ ...snapshot, ts: now }] : []),
        requeue
          ? { type: "run.requeued", data: { status: "queued", why: "host_shutdown" }, ts: now }
          : { ...terminalEvent(outcome.status, outcome.reason, outcome.exitCode), ts: now },
      ]);
    });
    this.#events.publish(rows);
  }

  /**
   * Runs left `starting` or `running` by a host that died: their attempt is recorded as lost and
   * the run is requeued while attempts remain, else failed with reason `lost`.
   */
  async reconcile(): Promise<number> {
    const orphans = await this.#db.selectFrom("runs").selectAll().where("status", "in", ACTIVE).execute();
    const now = Date.now();
    for (const run of orphans) {
      const retry = run.attempt < run.max_attempts;
      const rows = await this.#db.transaction().execute(async (trx) => {
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
              ? { status: "queued", worker_id: null }
              : { status: "failed", reason: "lost", finished_at: now, worker_id: null },
          )
          .where("id", "=", run.id)
          .where("status", "=", run.status)
          .executeTakeFirst();
        if (Number(res.numUpdatedRows) !== 1) return [];
        return this.#events.append(trx, run.id, run.attempt, [
          {
            type: "attempt.lost",
            data: { attempt: run.attempt, worker: run.worker_id, why: "host stopped while the attempt ran" },
            ts: now,
          },
          retry
            ? { type: "run.requeued", data: { status: "queued", why: "attempt_lost" }, ts: now }
            : { ...terminalEvent("failed", "lost", null), ts: now },
        ]);
      });
      this.#events.publish(rows);
    }
    return orphans.length;
  }
}
