/**
 * Runs and their state machine. Every transition is a compare-and-set on the current status and
 * commits together with the events that describe it.
 */
import type { AgentBudget, AgentPolicy, Limits, Run, RunReason, RunStatus } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { newId } from "../store/ids.ts";
import type { Database, RunsTable } from "../store/schema.ts";
import type { EventLog, NewEvent } from "./event-log.ts";

/** What an agent runs: its definition, stored on the agent. */
export interface AgentDefinition {
  command: string[];
  env: Record<string, string>;
  limits: Limits;
  cwd: string;
  files: { path: string; size: number }[];
  /**
   * The bridge connections the agent's runs may call; a run's token carries `bridge:<name>` for
   * each. Absent in definitions stored before agents had policies, which means none.
   */
  policy?: AgentPolicy;
  /** Credits budgets and LLM rate limits; absent means only the tenant's balance bounds spending. */
  budget?: AgentBudget;
  /** The built-in agent's loop (the command then starts it from the runner layer). */
  builtin?: { instructions: string; model: string; tools: string[]; max_steps: number };
}

/** An agent's definition with its environment snapshot, frozen into each run at trigger time. */
export interface AgentSpec extends AgentDefinition {
  /** Digest of the base image. */
  image: string;
  /** Digests of environment layers, top-most first. */
  layers: string[];
  /** The runner digest the snapshot names ("" when unknown); the current runner is swapped in. */
  runner: string;
  snapshot_version: number;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export function toRun(row: RunsTable): Run {
  return {
    id: row.id,
    agent_id: row.agent_id,
    status: row.status as RunStatus,
    reason: row.reason as RunReason | null,
    exit_code: row.exit_code,
    attempt: row.attempt,
    input: row.input === null ? null : JSON.parse(row.input),
    created_at: new Date(row.created_at).toISOString(),
    started_at: iso(row.started_at),
    finished_at: iso(row.finished_at),
  };
}

export interface RunFilter {
  agentId?: string;
  status?: RunStatus;
  cursor?: string;
  limit: number;
}

export class RunRepository {
  readonly #db: Kysely<Database>;
  readonly #events: EventLog;

  constructor(db: Kysely<Database>, events: EventLog) {
    this.#db = db;
    this.#events = events;
  }

  async create(tenantId: string, agentId: string, spec: AgentSpec, input: unknown): Promise<RunsTable> {
    const now = Date.now();
    const row: RunsTable = {
      id: newId("run", now),
      tenant_id: tenantId,
      agent_id: agentId,
      status: "queued",
      reason: null,
      exit_code: null,
      attempt: 0,
      max_attempts: 1,
      input: input === undefined ? null : JSON.stringify(input),
      spec: JSON.stringify(spec),
      worker_id: null,
      cancel_requested: 0,
      snapshot_version: spec.snapshot_version,
      created_at: now,
      started_at: null,
      finished_at: null,
    };
    const events = await this.#db.transaction().execute(async (trx) => {
      await trx.insertInto("runs").values(row).execute();
      return this.#events.append(trx, row.id, 0, [{ type: "run.queued", data: { status: "queued" }, ts: now }]);
    });
    this.#events.publish(events);
    return row;
  }

  async get(tenantId: string, id: string): Promise<RunsTable | undefined> {
    return this.#db
      .selectFrom("runs")
      .selectAll()
      .where("id", "=", id)
      .where("tenant_id", "=", tenantId)
      .executeTakeFirst();
  }

  async getById(id: string): Promise<RunsTable | undefined> {
    return this.#db.selectFrom("runs").selectAll().where("id", "=", id).executeTakeFirst();
  }

  async list(tenantId: string, filter: RunFilter): Promise<RunsTable[]> {
    let q = this.#db.selectFrom("runs").selectAll().where("tenant_id", "=", tenantId);
    if (filter.agentId) q = q.where("agent_id", "=", filter.agentId);
    if (filter.status) q = q.where("status", "=", filter.status);
    if (filter.cursor) q = q.where("id", "<", filter.cursor);
    return q.orderBy("id", "desc").limit(filter.limit).execute();
  }

  /**
   * Marks a starting or running run for cancellation, with its event, leaving its status alone
   * (the engine records `canceled` once the sandbox is gone). False when the run is not active.
   */
  async requestCancel(runId: string): Promise<boolean> {
    const written = await this.#db.transaction().execute(async (trx) => {
      const res = await trx
        .updateTable("runs")
        .set({ cancel_requested: 1 })
        .where("id", "=", runId)
        .where("status", "in", ["starting", "running"])
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) !== 1) return null;
      const row = await trx.selectFrom("runs").select("attempt").where("id", "=", runId).executeTakeFirstOrThrow();
      return this.#events.append(trx, runId, row.attempt, [{ type: "run.cancel_requested", data: {} }]);
    });
    if (written === null) return false;
    this.#events.publish(written);
    return true;
  }

  /**
   * Moves a run from one of `from` to `to` with `patch` applied and `events` appended, atomically.
   * Returns false, changing nothing, when the run's status was not in `from`.
   */
  async transition(
    runId: string,
    from: readonly RunStatus[],
    to: RunStatus,
    patch: Partial<Omit<RunsTable, "id" | "status">>,
    events: NewEvent[],
  ): Promise<boolean> {
    const written = await this.#db.transaction().execute(async (trx) => {
      const res = await trx
        .updateTable("runs")
        .set({ ...patch, status: to })
        .where("id", "=", runId)
        .where("status", "in", from)
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) !== 1) return null;
      const row = await trx.selectFrom("runs").select("attempt").where("id", "=", runId).executeTakeFirstOrThrow();
      return this.#events.append(trx, runId, row.attempt, events);
    });
    if (written === null) return false;
    this.#events.publish(written);
    return true;
  }
}

/** The event a run writes when it reaches a terminal status. */
export function terminalEvent(status: RunStatus, reason: RunReason, exitCode: number | null): NewEvent {
  return { type: `run.${status}`, data: { status, reason, exit_code: exitCode } };
}
