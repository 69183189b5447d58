/**
 * Agent-to-agent calls: a running agent asks the host, through the bridge, to start a run of
 * another agent (a child run), and may wait for its result. Served on the bridge's listener:
 * `POST /agents/<name>/runs` `{input}` starts a child run of an agent the caller's policy names
 * (scope `agent:<name>`); `GET /agents/runs/<id>?wait=S` reads one of the caller's children,
 * waiting up to S seconds for it to finish.
 *
 * Threat model: the caller is a sandbox with a run token. It may start only the agents its own
 * agent's policy names (the token's `agent:<name>` scopes, from the policy), only in its own
 * tenant, never deeper than MAX_DEPTH (so agents calling each other cannot loop forever), and may
 * read back only its own children. Each child records its parent, the root of the tree and its
 * depth; children's model calls are charged to the root run's bill and budget.
 */

import {
  APPROVAL_HEADER,
  AppError,
  type ApprovalRule,
  agentCallName,
  type ChildRun,
  GOING_STATUSES,
  MAX_INPUT_BYTES,
  RunCreate,
  type RunEventBody,
  type RunEventData,
  TERMINAL_STATUSES,
} from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import type { Agents } from "../agents/agents.ts";
import { runSpec } from "../agents/agents.ts";
import type { Artifacts } from "../artifacts/artifacts.ts";
import type { Approvals } from "../bridge/approvals.ts";
import {
  approvalAsked,
  type ChannelCall,
  type ChannelRoute,
  parseJson,
  Refusal,
  readCapped,
  sendJson,
  sendRefusal,
  sendReplay,
  takeStep,
} from "../bridge/channel.ts";
import type { LiveSandbox } from "../bridge/live.ts";
import type { RunRepository } from "../engine/runs.ts";
import type { EventLog } from "../store/event-log.ts";
import { type Journal, requestHash } from "../store/journal.ts";
import type { Database, RunsTable } from "../store/schema.ts";
import { parseRunSpec } from "../store/stored.ts";
import { formatTraceparent } from "../tracing/trace-context.ts";

/** The most levels of child runs below a root run. */
export const MAX_DEPTH = 5;
/** Children of one run queued or running at once. */
export const MAX_ACTIVE_CHILDREN = 16;
const MAX_WAIT_S = 60;
const POLL_MS = 200;
/** A child run's body: its input, at most what an API trigger may send, plus the JSON around it. */
const MAX_CHILD_BODY_BYTES = MAX_INPUT_BYTES + 1024;
const START_PATH = /^\/agents\/([a-z0-9][a-z0-9_-]{0,63})\/runs$/;
const READ_PATH = /^\/agents\/runs\/(run_[0-9a-z]{1,60})$/;

export interface CallerRun {
  tenantId: string;
  runId: string;
  record(event: RunEventBody): void;
  /** The caller attempt's span as a traceparent: its child runs' spans go under it. */
  traceParent?: string | undefined;
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

export interface AgentCallsDeps {
  db: Kysely<Database>;
  agents: Agents;
  runs: RunRepository;
  events: EventLog;
  artifacts: Artifacts;
  notify: () => void;
  /** Where a child run started by a journaled attempt is recorded, for its retries to get that child. */
  journal?: Journal;
  /** Holds starts that the caller's policy says a person must approve. */
  approvals?: Approvals;
}

export class AgentCalls implements ChannelRoute {
  readonly #db: Kysely<Database>;
  readonly #agents: Agents;
  readonly #runs: RunRepository;
  readonly #events: EventLog;
  readonly #artifacts: Artifacts;
  readonly #notify: () => void;
  readonly #journal: Journal | undefined;
  readonly #approvals: Approvals | undefined;

  constructor(deps: AgentCallsDeps) {
    this.#db = deps.db;
    this.#agents = deps.agents;
    this.#runs = deps.runs;
    this.#events = deps.events;
    this.#artifacts = deps.artifacts;
    this.#notify = deps.notify;
    this.#journal = deps.journal;
    this.#approvals = deps.approvals;
  }

  serves(target: string): boolean {
    return target.startsWith("/agents/");
  }

  /** A call from a sandbox, behind the bridge's checks; every refusal is recorded as an `agent.call` event. */
  async handle(call: ChannelCall): Promise<void> {
    const { req, res, sandbox } = call;
    const [path, query = ""] = call.target.split("?", 2) as [string, string?];
    const start = START_PATH.exec(path);
    const read = READ_PATH.exec(path);
    const record: RunEventData<"agent.call"> = { path: path.slice(0, 128) };
    try {
      if (!sandbox) throw new Refusal("bridge_unknown_source");
      if (start?.[1] && req.method === "POST") {
        const name = start[1];
        record.agent = name;
        await call.authorize(`agent:${name}`, `The agent's policy does not allow starting '${name}'.`);
        // The child's input, checked like an API trigger's.
        const parsed = RunCreate.safeParse(parseJson(await readCapped(req, MAX_CHILD_BODY_BYTES), {}));
        if (!parsed.success) throw new Refusal("validation_failed", "The body is {input?}: the child run's input.");
        const body = parsed.data;
        const rule = await this.#approvalRule(sandbox.runId, name);
        if (rule) {
          await this.#startApproved(call, sandbox, name, body.input, rule, record);
          return;
        }
        // A retried attempt asking again for a child an earlier attempt started gets that child.
        const journal = sandbox.journaled ? this.#journal : undefined;
        const step = takeStep(sandbox, req, `agent:${name}`);
        const hash = requestHash([name, JSON.stringify(body.input ?? null)]);
        if (journal && step) {
          const found = await journal.lookup(sandbox.runId, sandbox.attempt, step, hash);
          if (found && "replay" in found) {
            sendReplay(res, found.replay);
            sandbox.record({
              type: "agent.call",
              data: { ...record, status: found.replay.status, replayed: true, step },
            });
            return;
          }
          if (found) sandbox.record({ type: "journal.diverged", data: { step, kind: "agent" } });
        }
        const child = await this.start(
          {
            tenantId: sandbox.tenantId,
            runId: sandbox.runId,
            record: (e) => sandbox.record(e),
            traceParent: sandbox.trace ? formatTraceparent(sandbox.trace) : undefined,
          },
          name,
          body.input,
          journal && step
            ? (trx, answer) =>
                journal.record(
                  sandbox,
                  step,
                  hash,
                  {
                    status: 201,
                    headers: { "content-type": "application/json" },
                    body: Buffer.from(JSON.stringify(answer)),
                  },
                  trx,
                )
            : undefined,
        );
        sendJson(res, 201, child);
        return;
      }
      if (read?.[1] && req.method === "GET") {
        await call.authorize("llm", "");
        const wait = Number(new URLSearchParams(query).get("wait") ?? 0);
        const child = await this.get(
          { tenantId: sandbox.tenantId, runId: sandbox.runId, record: (e) => sandbox.record(e) },
          read[1],
          Number.isFinite(wait) ? wait : 0,
        );
        sendJson(res, 200, child);
        return;
      }
      throw new Refusal("route_not_found", "The bridge serves POST /agents/<name>/runs and GET /agents/runs/<id>.");
    } catch (err) {
      const denial = Refusal.from(err);
      if (!res.headersSent) sendRefusal(res, denial);
      req.resume();
      record.status = denial.status;
      record.code = denial.code;
      record.approval ??= denial.headers[APPROVAL_HEADER];
      // Told to ask again for its approval: no call to record yet.
      if (denial.code !== "approval_pending") sandbox?.record({ type: "agent.call", data: record });
    }
  }

  /** The approval the caller's own policy asks before it starts `name`, if any (its run's frozen spec). */
  async #approvalRule(runId: string, name: string): Promise<ApprovalRule | null> {
    const row = await this.#db.selectFrom("runs").select("spec").where("id", "=", runId).executeTakeFirst();
    const entry = (row ? (parseRunSpec(row.spec).policy?.agents ?? []) : []).find((e) => agentCallName(e) === name);
    return entry && typeof entry !== "string" ? entry.approval : null;
  }

  /**
   * A start the caller's policy says a person must approve: held with its input; once approved,
   * the child run is made, its answer kept and the right to start it taken, all in one
   * transaction, so that it is started once whatever repeats the request or crashes meanwhile.
   */
  async #startApproved(
    call: ChannelCall,
    sandbox: LiveSandbox,
    name: string,
    input: unknown,
    rule: ApprovalRule,
    record: RunEventData<"agent.call">,
  ): Promise<void> {
    const { req, res } = call;
    const approvals = this.#approvals;
    if (!approvals) throw new Refusal("policy_denied", "This host cannot hold calls for approval.");
    const body = Buffer.from(JSON.stringify({ input: input ?? null }));
    const outcome = await approvals.hold({
      sandbox,
      kind: "agent",
      target: name,
      ruleKey: `agent:${name}`,
      rule,
      hash: requestHash(["agent", name, body]),
      request: {
        kind: "agent",
        target: name,
        method: "POST",
        path: `/agents/${name}/runs`,
        query: "",
        url: null,
        headers: { "content-type": "application/json" },
      },
      held: {},
      body,
      takeStep: () => takeStep(sandbox, req, `agent:${name}`),
      res,
      asked: approvalAsked(req),
      claims: false,
    });
    record.approval = "replay" in outcome ? outcome.approval.id : outcome.send.id;
    if ("replay" in outcome) {
      sendReplay(res, { ...outcome.replay, attempt: outcome.approval.attempt });
      sandbox.record({ type: "agent.call", data: { ...record, status: outcome.replay.status, replayed: true } });
      return;
    }
    const approved = outcome.send;
    const child = await this.start(
      { tenantId: sandbox.tenantId, runId: sandbox.runId, record: (e) => sandbox.record(e) },
      name,
      input,
      (trx, answer) =>
        approvals.sendWithin(trx, approved.id, {
          status: 201,
          headers: { "content-type": "application/json" },
          body: Buffer.from(JSON.stringify(answer)),
        }),
    );
    sendJson(res, 201, child);
    sandbox.record({ type: "agent.call", data: { ...record, status: 201 } });
  }

  /**
   * Starts a child run of `name` (already allowed by the caller's token) with `input`. `journal`,
   * when given, records the answer in the same transaction as the child run (in the journal, or
   * on the approval it was started under), so that a crash cannot leave a child its retried
   * parent would start again.
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
      .where("status", "in", GOING_STATUSES)
      .executeTakeFirstOrThrow();
    if (Number(active.n) >= MAX_ACTIVE_CHILDREN) {
      throw new AppError("too_many_children", `A run may have ${MAX_ACTIVE_CHILDREN} child runs going at once.`);
    }
    // By name only (the token allowed that name); an archived agent refuses with agent_archived.
    const agent = await this.#agents.byName(caller.tenantId, name);
    const { run } = await this.#runs.create(caller.tenantId, agent.row.id, runSpec(agent), input, {
      trigger: "agent",
      // A child run acts for the same end user as its parent, whatever the agent asks.
      endUser: parent.end_user,
      lineage: {
        parentRunId: parent.id,
        rootRunId: parent.root_run_id ?? parent.id,
        rootAgentId: parent.root_agent_id ?? parent.agent_id,
        depth: parent.depth + 1,
      },
      events: [
        { type: "run.parent", data: { parent_run_id: parent.id, root_run_id: parent.root_run_id ?? parent.id } },
      ],
      // Its spans go under the attempt that started it, else into the trace its parent is in.
      traceParent: caller.traceParent ?? parent.trace_parent,
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
      // The last result the child reported, and its artifacts (by path).
      const reported = (await this.#events.listOfType(run.id, "user")).find((e) => e.data.type === "result");
      result = reported?.data.data ?? null;
      artifacts = (await this.#artifacts.list(run.id))
        .map((a) => ({ path: a.path, size: a.size }))
        .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
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
