/**
 * Agent-to-agent calls: a running agent asks the host, through the bridge, to start a run of
 * another agent (a child run), and may wait for its result.
 *
 * Threat model: the caller is a sandbox with a run token. It may start only the agents its own
 * agent's policy names (the token's `agent:<name>` scopes, from the policy), only in its own
 * tenant, never deeper than MAX_DEPTH (so agents calling each other cannot loop forever), and may
 * read back only its own children. Each child records its parent, the root of the tree and its
 * depth; children's model calls are charged to the root run's bill and budget.
 */
import { AppError, type ChildRun, type RunEventBody, TERMINAL_STATUSES } from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import type { Agents } from "../agents/agents.ts";
import { runSpec } from "../agents/agents.ts";
import type { RunRepository } from "../engine/runs.ts";
import type { Database, RunsTable } from "../store/schema.ts";

/** The most levels of child runs below a root run. */
export const MAX_DEPTH = 5;
/** Children of one run queued or running at once. */
export const MAX_ACTIVE_CHILDREN = 16;
const MAX_WAIT_S = 60;
const POLL_MS = 200;

export interface CallerRun {
  tenantId: string;
  runId: string;
  record(event: RunEventBody): void;
}

/** A child run as it is the moment it is queued. */
const queuedView = (runId: string, agent: string): ChildRun => ({
  run_id: runId,
  agent,
  status: "queued",
  reason: null,
  exit_code: null,
  result: null,
  artifacts: [],
});

export class AgentCalls {
  readonly #db: Kysely<Database>;
  readonly #agents: Agents;
  readonly #runs: RunRepository;
  readonly #notify: () => void;

  constructor(deps: { db: Kysely<Database>; agents: Agents; runs: RunRepository; notify: () => void }) {
    this.#db = deps.db;
    this.#agents = deps.agents;
    this.#runs = deps.runs;
    this.#notify = deps.notify;
  }

  /** Starts a child run of `name` (already allowed by the caller's token) with `input`. */
  /**
   * Starts a child run of `name` (already allowed by the caller's token) with `input`. `journal`,
   * when given, records the answer in the same transaction as the child run, so that a crash
   * cannot leave a child its retried parent would start again.
   */
  async start(
    caller: CallerRun,
    name: string,
    input: unknown,
    journal?: (trx: Transaction<Database>, answer: ChildRun) => Promise<void>,
  ): Promise<ChildRun> {
    const parent = await this.#db.selectFrom("runs").selectAll().where("id", "=", caller.runId).executeTakeFirst();
    if (!parent || parent.tenant_id !== caller.tenantId) throw new AppError("run_not_running");
    if (parent.depth + 1 > MAX_DEPTH) {
      throw new AppError("agent_depth_exceeded", `Runs may start child runs ${MAX_DEPTH} levels deep at most.`);
    }
    const active = await this.#db
      .selectFrom("runs")
      .select((eb) => eb.fn.countAll().as("n"))
      .where("parent_run_id", "=", parent.id)
      .where("status", "in", ["queued", "starting", "running"])
      .executeTakeFirstOrThrow();
    if (Number(active.n) >= MAX_ACTIVE_CHILDREN) {
      throw new AppError("too_many_children", `A run may have ${MAX_ACTIVE_CHILDREN} child runs going at once.`);
    }
    // By name only (the token allowed that name); an archived agent refuses with agent_archived.
    const agent = await this.#agents.byName(caller.tenantId, name);
    const { run } = await this.#runs.create(caller.tenantId, agent.row.id, runSpec(agent), input, {
      trigger: "agent",
      lineage: {
        parentRunId: parent.id,
        rootRunId: parent.root_run_id ?? parent.id,
        rootAgentId: parent.root_agent_id ?? parent.agent_id,
        depth: parent.depth + 1,
      },
      events: [
        { type: "run.parent", data: { parent_run_id: parent.id, root_run_id: parent.root_run_id ?? parent.id } },
      ],
      ...(journal
        ? {
            dedupe: async (trx: Transaction<Database>, runId: string) => {
              await journal(trx, queuedView(runId, name));
              return null;
            },
          }
        : {}),
    });
    caller.record({ type: "agent.called", data: { agent: name, run_id: run.id, depth: run.depth } });
    this.#notify();
    return this.#view(run, name);
  }

  /** One of the caller's children, waiting up to `waitS` seconds for it to finish. */
  async get(caller: CallerRun, runId: string, waitS: number): Promise<ChildRun> {
    const deadline = Date.now() + Math.min(Math.max(0, waitS), MAX_WAIT_S) * 1000;
    for (;;) {
      const run = await this.#db
        .selectFrom("runs")
        .selectAll()
        .where("id", "=", runId)
        .where("parent_run_id", "=", caller.runId)
        .where("tenant_id", "=", caller.tenantId)
        .executeTakeFirst();
      if (!run) throw new AppError("not_found", `No child run '${runId.slice(0, 64)}' of this run.`);
      const done = TERMINAL_STATUSES.includes(run.status as (typeof TERMINAL_STATUSES)[number]);
      if (done || Date.now() >= deadline) {
        const agent = await this.#db
          .selectFrom("agents")
          .select("name")
          .where("id", "=", run.agent_id)
          .executeTakeFirst();
        return this.#view(run, agent?.name ?? "", done);
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  async #view(run: RunsTable, agent: string, done = false): Promise<ChildRun> {
    let result: unknown = null;
    let artifacts: { path: string; size: number }[] = [];
    if (done) {
      const events = await this.#db
        .selectFrom("events")
        .select(["data"])
        .where("run_id", "=", run.id)
        .where("type", "=", "user")
        .orderBy("seq", "desc")
        .execute();
      for (const e of events) {
        const data = JSON.parse(e.data) as { type?: string; data?: unknown };
        if (data.type === "result") {
          result = data.data ?? null;
          break;
        }
      }
      artifacts = (
        await this.#db
          .selectFrom("artifacts")
          .select(["path", "size"])
          .where("run_id", "=", run.id)
          .orderBy("path")
          .execute()
      ).map((a) => ({ path: a.path, size: Number(a.size) }));
    }
    return {
      run_id: run.id,
      agent,
      status: run.status,
      reason: run.reason,
      exit_code: run.exit_code,
      result,
      artifacts,
    };
  }
}
