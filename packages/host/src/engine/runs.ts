/**
 * Runs and their state machine. Every transition is a compare-and-set on the current status and
 * commits together with the events that describe it.
 */
import { createHash } from "node:crypto";
import {
  ACTIVE_STATUSES,
  type AgentSpec,
  AppError,
  GOING_STATUSES,
  type Run,
  type RunEventData,
  type RunReason,
  type RunStatus,
  type RunTrigger,
} from "@paddock/protocol";
import { type Kysely, type OperationNodeSource, type RawBuilder, sql, type Transaction } from "kysely";
import { archived } from "../agents/agents.ts";
import type { Db, EventLog, NewEvent } from "../store/event-log.ts";
import type { Fence } from "../store/fence.ts";
import { idAt, idRange, newId } from "../store/ids.ts";
import { prepared, timeBucket } from "../store/portable.ts";
import type { Database, EventsTable, RunsTable } from "../store/schema.ts";
import { isoTime, parseRunSpec } from "../store/stored.ts";

export function toRun(row: RunsTable): Run {
  return {
    id: row.id,
    agent_id: row.agent_id,
    status: row.status as RunStatus,
    reason: row.reason as RunReason | null,
    exit_code: row.exit_code,
    attempt: row.attempt,
    max_attempts: row.max_attempts,
    trigger: row.trigger as Run["trigger"],
    replay_of: row.replay_of,
    not_before: isoTime(row.not_before),
    parent_run_id: row.parent_run_id,
    root_run_id: row.root_run_id,
    agent_version: row.agent_version,
    input: row.input === null ? null : JSON.parse(row.input),
    end_user: row.end_user,
    created_at: new Date(row.created_at).toISOString(),
    started_at: isoTime(row.started_at),
    finished_at: isoTime(row.finished_at),
  };
}

/** What a list of runs is narrowed to; every filter given applies. Times are ms since the epoch. */
export interface RunFilter {
  agentId?: string;
  status?: RunStatus;
  trigger?: RunTrigger;
  parentRunId?: string;
  rootRunId?: string;
  /** Created at or after. */
  createdAfter?: number;
  /** Created before. */
  createdBefore?: number;
  /** The start of the id (`run_` and part of its body). */
  idPrefix?: string;
  /** The last id of the page before. */
  cursor?: string;
  limit: number;
}

/** A time range cut into buckets: [from, to) in ms, each bucket `bucketMs` long from `from`. */
export interface BucketRange {
  from: number;
  to: number;
  bucketMs: number;
  agentId?: string;
}

export class RunRepository {
  readonly #db: Kysely<Database>;
  readonly #events: EventLog;

  constructor(db: Kysely<Database>, events: EventLog) {
    this.#db = db;
    this.#events = events;
  }

  /**
   * Queues a run of `spec`. `dedupe`, run inside the same transaction before the insert, may
   * answer with a run that already stands for this request (an idempotency key, a schedule slot, a
   * webhook delivery); it records its own row for the new run otherwise. A new run of an archived
   * agent is refused (`agent_archived`) in the same transaction, so none is queued after an
   * archive returned.
   */
  async create(
    tenantId: string,
    agentId: string,
    spec: AgentSpec,
    input: unknown,
    options: {
      trigger?: Run["trigger"];
      /** Runs with the same key never run at the same time. */
      serialKey?: string;
      /** A child run: its parent, root and depth. */
      lineage?: { parentRunId: string; rootRunId: string; rootAgentId: string; depth: number };
      /** A replay: the run it replays. */
      replayOf?: string;
      dedupe?: (trx: Transaction<Database>, runId: string) => Promise<string | null>;
      events?: NewEvent[];
      /** The W3C traceparent its spans hang under (see tracing/trace-context.ts). */
      traceParent?: string | null;
      /** The end user (of the tenant) the run acts for. */
      endUser?: string | null;
    } = {},
  ): Promise<{ run: RunsTable; created: boolean }> {
    const now = Date.now();
    const trigger = options.trigger ?? "api";
    const row: RunsTable = {
      id: newId("run", now),
      tenant_id: tenantId,
      agent_id: agentId,
      status: "queued",
      reason: null,
      exit_code: null,
      attempt: 0,
      max_attempts: spec.retry?.max_attempts ?? 1,
      input: input === undefined ? null : JSON.stringify(input),
      spec: JSON.stringify(spec),
      worker_id: null,
      cancel_requested: 0,
      snapshot_version: spec.snapshot_version,
      agent_version: spec.agent_version,
      created_at: now,
      started_at: null,
      finished_at: null,
      trigger,
      not_before: null,
      expires_at: spec.queue_ttl_s ? now + spec.queue_ttl_s * 1000 : null,
      lease_until: null,
      serial_key: options.serialKey ?? null,
      parent_run_id: options.lineage?.parentRunId ?? null,
      root_run_id: options.lineage?.rootRunId ?? null,
      root_agent_id: options.lineage?.rootAgentId ?? null,
      depth: options.lineage?.depth ?? 0,
      event_seq: 0,
      replay_of: options.replayOf ?? null,
      trace_parent: options.traceParent ?? null,
      end_user: options.endUser ?? null,
    };
    const result = await this.#db.transaction().execute(async (trx) => {
      const existing = options.dedupe ? await options.dedupe(trx, row.id) : null;
      if (existing) {
        const run = await trx.selectFrom("runs").selectAll().where("id", "=", existing).executeTakeFirstOrThrow();
        return { run, created: false, events: [] };
      }
      const agent = await trx
        .selectFrom("agents")
        .select(["id", "name", "archived_at"])
        .where("id", "=", agentId)
        .executeTakeFirst();
      if (agent && agent.archived_at !== null) throw archived(agent);
      await trx.insertInto("runs").values(row).execute();
      const events = await this.#events.append(trx, row.id, 0, [
        {
          type: "run.queued",
          data: { status: "queued", trigger, ...(options.replayOf ? { replay_of: options.replayOf } : {}) },
          ts: now,
        },
        ...(options.events ?? []),
      ]);
      return { run: { ...row, event_seq: events.length }, created: true, events };
    });
    this.#events.publish(result.events);
    return { run: result.run, created: result.created };
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

  /**
   * Queues a new run of the same agent version and environment as `runId` (its frozen spec), with
   * its input, or with `input` when given. The replay records the run it replays and is a run of
   * its own (no parent), started like an API trigger: `key` is its Idempotency-Key.
   */
  async replay(
    tenantId: string,
    runId: string,
    body: { input?: unknown },
    key?: string,
  ): Promise<{ run: RunsTable; created: boolean }> {
    const original = await this.get(tenantId, runId);
    if (!original) throw new AppError("not_found", `No run '${runId}'.`);
    const input = "input" in body ? body.input : original.input === null ? undefined : JSON.parse(original.input);
    const dedupe =
      key === undefined
        ? undefined
        : idempotencyKey(tenantId, key, `replay\n${original.id}\n${JSON.stringify(input ?? null)}`);
    return this.create(tenantId, original.agent_id, parseRunSpec(original.spec), input, {
      trigger: "replay",
      replayOf: original.id,
      endUser: original.end_user,
      ...(dedupe ? { dedupe } : {}),
    });
  }

  async list(tenantId: string, filter: RunFilter): Promise<RunsTable[]> {
    return this.listQuery(tenantId, filter).execute();
  }

  /**
   * The query of list(), for a look at its plan (store/query-plans.test.ts). Each filter has an
   * index of the tenant and that column ending in the id, so a page is read in order and stops at
   * `limit`; a time range and an id prefix are id ranges too (ids are time-ordered; see idAt).
   */
  listQuery(tenantId: string, filter: RunFilter) {
    let q = this.#db.selectFrom("runs").selectAll().where("tenant_id", "=", tenantId);
    if (filter.agentId) q = q.where("agent_id", "=", filter.agentId);
    if (filter.status) q = q.where("status", "=", filter.status);
    if (filter.trigger) q = q.where("trigger", "=", filter.trigger);
    if (filter.parentRunId) q = q.where("parent_run_id", "=", filter.parentRunId);
    if (filter.rootRunId) q = q.where("root_run_id", "=", filter.rootRunId);
    if (filter.createdAfter !== undefined) {
      q = q.where("id", ">=", idAt("run", filter.createdAfter)).where("created_at", ">=", filter.createdAfter);
    }
    if (filter.createdBefore !== undefined) {
      q = q.where("id", "<", idAt("run", filter.createdBefore)).where("created_at", "<", filter.createdBefore);
    }
    if (filter.idPrefix) {
      const start = filter.idPrefix.startsWith("run_") ? filter.idPrefix : `run_${filter.idPrefix}`;
      const { min, max } = idRange(start);
      q = q
        .where("id", ">=", min)
        .where("id", "<=", max)
        .where(sql`substr(id, 1, ${sql.lit(start.length)})`, "=", start);
    }
    if (filter.cursor) q = q.where("id", "<", filter.cursor);
    return q.orderBy("id", "desc").limit(filter.limit);
  }

  /** How many of the tenant's runs (of one agent, when given) were created in each bucket, by status now. */
  async countsByBucket(tenantId: string, range: BucketRange): Promise<{ bucket: number; status: string; n: number }[]> {
    const rows = await this.countsQuery(tenantId, range).execute();
    return rows.map((r) => ({ bucket: Number(r.bucket), status: r.status, n: Number(r.n) }));
  }

  /** The query of countsByBucket(): a range of one index that holds every column it reads. */
  countsQuery(tenantId: string, range: BucketRange) {
    const bucket = timeBucket("created_at", range.from, range.bucketMs);
    return this.#db
      .selectFrom("runs")
      .select((eb) => [bucket.as("bucket"), "status", eb.fn.countAll<number>().as("n")])
      .where("tenant_id", "=", tenantId)
      .$if(range.agentId !== undefined, (q) => q.where("agent_id", "=", range.agentId ?? ""))
      .where("id", ">=", idAt("run", range.from))
      .where("id", "<", idAt("run", range.to))
      .where("created_at", ">=", range.from)
      .where("created_at", "<", range.to)
      .groupBy([bucket, "status"]);
  }

  /** How many runs are queued in the whole store (one count over the status index). */
  async countQueued(): Promise<number> {
    const row = await this.#db
      .selectFrom("runs")
      .select((eb) => eb.fn.countAll<number | string | bigint>().as("n"))
      .where("status", "=", "queued")
      .executeTakeFirstOrThrow();
    return Number(row.n);
  }

  /** The ids of a run's child runs that have not ended (queued, starting, running or waiting). */
  async childrenGoing(runId: string): Promise<string[]> {
    const rows = await this.#db
      .selectFrom("runs")
      .select("id")
      .where("parent_run_id", "=", runId)
      .where("status", "in", GOING_STATUSES)
      .execute();
    return rows.map((r) => r.id);
  }

  /**
   * Marks a starting, running or waiting run for cancellation, with its event, leaving its status alone
   * (the engine records `canceled` once the sandbox is gone). False when the run is not active.
   */
  async requestCancel(runId: string): Promise<boolean> {
    const written = await this.#db.transaction().execute(async (trx) => {
      const res = await trx
        .updateTable("runs")
        .set({ cancel_requested: 1 })
        .where("id", "=", runId)
        .where("status", "in", ACTIVE_STATUSES)
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
   * Of `runIds`, those `workerId` holds whose cancel was asked for (through any node): one
   * primary-key lookup, cheap enough to ask every fraction of a second.
   */
  async cancelRequested(workerId: string, runIds: string[]): Promise<string[]> {
    if (runIds.length === 0) return [];
    const rows = await this.#db
      .selectFrom("runs")
      .select("id")
      .where("id", "in", runIds)
      .where("worker_id", "=", workerId)
      .where("cancel_requested", "=", 1)
      .where("status", "in", ACTIVE_STATUSES)
      .execute();
    return rows.map((r) => r.id);
  }

  /**
   * Moves a run from one of `move.from` to `move.to` with its patch applied, the writes that go
   * with it and its events appended, all or nothing. Returns the run's attempt and cancel flag as
   * the move left them, or null, changing nothing, when the run's status was not in `from`. With
   * a fence, an attempt's own move: lease_lost, changing nothing, once that attempt no longer
   * holds the run. On PostgreSQL a move without `extra` whose events write nothing beside their
   * rows (no call, nothing announced; see EventLog.writesBeside) is one statement.
   */
  async transition(runId: string, move: Move): Promise<Moved | null> {
    const inOne = this.#events.dialect === "postgres" && !move.extra && !this.#events.writesBeside(move.events);
    const moved = inOne
      ? await this.#moveInOne(runId, move)
      : await this.#db.transaction().execute((trx) => this.#moveIn(trx, runId, move));
    if (!moved) {
      await this.#events.fence(this.#db, move.fence);
      return null;
    }
    this.#events.publish(moved.events);
    return { attempt: moved.attempt, cancel_requested: moved.cancel_requested };
  }

  /** The move's update of the run, taking its events' sequence numbers; returns the run as it left it. */
  #update(db: Db, runId: string, move: Move, events: number) {
    return db
      .updateTable("runs")
      .set((eb) => ({ ...move.patch, status: move.to, event_seq: eb("event_seq", "+", events) }))
      .where("id", "=", runId)
      .where("status", "in", move.from)
      .$if(move.fence !== undefined, (q) =>
        q.where("attempt", "=", move.fence?.attempt ?? 0).where("worker_id", "=", move.fence?.workerId ?? ""),
      )
      .returning(["id", "tenant_id", "agent_id", "attempt", "cancel_requested", "event_seq"]);
  }

  /** The move as statements in `trx`, `extra` after the writes that go with it. */
  async #moveIn(trx: Transaction<Database>, runId: string, move: Move): Promise<MoveWritten | null> {
    const moved = await this.#update(trx, runId, move, move.events.length).executeTakeFirst();
    if (!moved) return null;
    for (const write of move.also ?? []) await write(trx, [runId]).execute();
    const more = move.extra ? await move.extra(trx) : [];
    // `extra`'s events go before the move's last, each one more number.
    const last = more.length > 0 ? (await this.#events.reserve(trx, runId, more.length)).last : moved.event_seq;
    const events = more.length > 0 ? [...move.events.slice(0, -1), ...more, ...move.events.slice(-1)] : move.events;
    const rows = this.#events.numbered(runId, moved.attempt, last, events);
    await this.#events.insert(trx, rows, [moved]);
    return { ...moved, events: rows };
  }

  /** The move as one statement (PostgreSQL): the update, the writes that go with it and the events' insert as CTEs. */
  async #moveInOne(runId: string, move: Move): Promise<MoveWritten | null> {
    const rows = this.#events.numbered(runId, 0, move.events.length, move.events);
    const ran = sql<string>`(SELECT id FROM moved)`;
    const steps = [
      sql`moved AS (${this.#update(this.#db, runId, move, rows.length)})`,
      ...(move.also ?? []).map((write, i) => sql`${sql.id(`also${i}`)} AS (${write(this.#db, ran)})`),
      ...(rows.length > 0 ? [sql`written AS (${this.#events.insertAfter("moved", rows)})`] : []),
    ];
    const { rows: out } = await prepared(
      sql<
        Moved & { event_seq: number }
      >`WITH ${sql.join(steps)} SELECT attempt, cancel_requested, event_seq FROM moved`,
    ).execute(this.#db);
    const moved = out[0];
    if (!moved) return null;
    const first = moved.event_seq - rows.length;
    return { ...moved, events: rows.map((r) => ({ ...r, attempt: moved.attempt, seq: first + r.seq })) };
  }
}

/** A run's move from one status to another, with what goes with it. */
export interface Move {
  from: readonly RunStatus[];
  to: RunStatus;
  patch?: Partial<Omit<RunsTable, "id" | "status" | "event_seq">>;
  events: NewEvent[];
  /** The attempt whose own move this is. */
  fence?: Fence;
  /** Writes that go with the move, of rows of the run. */
  also?: MoveWrite[];
  /** More to write once the run moved, in the same transaction; its events go before the move's last. */
  extra?: (trx: Transaction<Database>) => Promise<NewEvent[]>;
}

/** The moved run's id, as a list to match `run_id in`: the id itself, or the move's own row in one statement. */
export type MovedRun = readonly string[] | RawBuilder<string>;
/** A write that goes with a move (a builder: it runs on its own, or as part of the move's statement). */
export type MoveWrite = (db: Db, moved: MovedRun) => OperationNodeSource & { execute(): Promise<unknown> };

/** What a move left of the run. */
export type Moved = Pick<RunsTable, "attempt" | "cancel_requested">;
type MoveWritten = Moved & { events: EventsTable[] };

/** The event a run writes when it reaches a terminal status. */
export function terminalEvent(
  status: RunEventData<"run.succeeded">["status"],
  reason: RunReason,
  exitCode: number | null,
): NewEvent {
  return { type: `run.${status}`, data: { status, reason, exit_code: exitCode } };
}

/** How long an Idempotency-Key keeps answering with its run. */
export const IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000;

/**
 * The dedupe step of an API trigger with an `Idempotency-Key`: the run the key already started
 * (within a day), a refusal when the key came with another request, or, recording the key for the
 * new run, null. It runs in the run's own transaction, so identical requests at once make one run.
 */
export function idempotencyKey(
  tenantId: string,
  key: string,
  request: string,
  now = Date.now(),
): (trx: Transaction<Database>, runId: string) => Promise<string | null> {
  if (!/^[\x21-\x7e]{1,255}$/.test(key)) {
    throw new AppError("validation_failed", "Idempotency-Key: 1 to 255 printable ASCII characters, no spaces.");
  }
  const hash = createHash("sha256").update(request).digest("hex");
  return async (trx, runId) => {
    // Insert first: of requests racing on any host exactly one inserts, and the others, having
    // waited for its commit, read its row. A key past its lifetime is dropped and tried again.
    for (let tries = 0; tries < 3; tries++) {
      const inserted = await trx
        .insertInto("idempotency_keys")
        .values({ tenant_id: tenantId, key, request_hash: hash, run_id: runId, created_at: now })
        .onConflict((oc) => oc.columns(["tenant_id", "key"]).doNothing())
        .returning("run_id")
        .executeTakeFirst();
      if (inserted) return null;
      const found = await trx
        .selectFrom("idempotency_keys")
        .selectAll()
        .where("tenant_id", "=", tenantId)
        .where("key", "=", key)
        .executeTakeFirst();
      if (!found) continue;
      if (Number(found.created_at) > now - IDEMPOTENCY_TTL_MS) {
        if (found.request_hash !== hash) {
          throw new AppError(
            "idempotency_key_reused",
            "This Idempotency-Key started a run for another agent or input; use a new key for a new request.",
          );
        }
        return found.run_id;
      }
      await trx
        .deleteFrom("idempotency_keys")
        .where("tenant_id", "=", tenantId)
        .where("key", "=", key)
        .where("created_at", "=", found.created_at)
        .execute();
    }
    throw new AppError("conflict", "This Idempotency-Key is being replaced by another request; retry.");
  };
}
