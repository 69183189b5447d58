/**
 * Model and bridge calls over all of a tenant's runs. Each call is an `llm.call` or `bridge.call`
 * event; the event log also writes it, in the same transaction, to `calls`, whose indexes lead
 * with the tenant and what a filter asks for and end in the order a page is read (time, run,
 * seq): a page is an index range read in order that stops at its limit, whatever the number of
 * runs. The calls of one run are read by the run's own key.
 */
import {
  AppError,
  type BridgeCallEvent,
  type CallOutcome,
  type LlmCallEvent,
  type RunEventOf,
} from "@paddock/protocol";
import type { Kysely } from "kysely";
import { toRunEvent } from "../store/event-log.ts";
import type { CallsTable, Database } from "../store/schema.ts";

/** Where a page of calls ends: the last call's time, run and seq. */
export interface CallCursor {
  ts: number;
  runId: string;
  seq: number;
}

/** What a list of calls is narrowed to; every filter given applies. Times are ms since the epoch. */
export interface CallFilter {
  agentId?: string;
  runId?: string;
  /** The provider (llm) or the connection (bridge). */
  target?: string;
  /** The model (llm). */
  model?: string;
  outcome?: CallOutcome;
  /** At or after. */
  createdAfter?: number;
  /** Before. */
  createdBefore?: number;
  cursor?: CallCursor;
  limit: number;
}

type CallKind = CallsTable["kind"];
type CallEventOf<K extends CallKind> = K extends "llm" ? LlmCallEvent : BridgeCallEvent;

/** The cursor after `call`: its time, seq and run, as `next_cursor` gives them. */
export function callCursor(call: { time: string; seq: number; run_id: string }): string {
  return `${Date.parse(call.time)}.${call.seq}.${call.run_id}`;
}

/** A `next_cursor` of a call list read back; validation_failed for anything else. */
export function parseCallCursor(text: string): CallCursor {
  const m = /^(\d{1,15})\.(\d{1,10})\.([a-z]{3}_[0-9a-z]{1,60})$/.exec(text);
  if (!m) {
    throw new AppError("validation_failed", "Invalid request: cursor: not a cursor this list gave.", [
      { path: "cursor", code: "invalid_cursor", message: "not a cursor this list gave" },
    ]);
  }
  return { ts: Number(m[1]), seq: Number(m[2]), runId: m[3] as string };
}

export class CallLog {
  readonly #db: Kysely<Database>;

  constructor(db: Kysely<Database>) {
    this.#db = db;
  }

  /** A page of the tenant's calls of `kind`, newest first, and the cursor of the next page. */
  async list<K extends CallKind>(
    tenantId: string,
    kind: K,
    filter: CallFilter,
  ): Promise<{ data: CallEventOf<K>[]; next_cursor: string | null }> {
    // A run of another tenant (or none) has no calls to show; a run's own calls need no tenant index.
    if (filter.runId !== undefined) {
      const run = await this.#db
        .selectFrom("runs")
        .select("id")
        .where("id", "=", filter.runId)
        .where("tenant_id", "=", tenantId)
        .executeTakeFirst();
      if (!run) return { data: [], next_cursor: null };
    }
    const rows = await this.listQuery(tenantId, kind, filter).execute();
    const data = rows.map((row) => {
      const event = toRunEvent(row) as RunEventOf<"llm.call" | "bridge.call">;
      const { run_id, seq, attempt, time } = event;
      return { ...event.data, run_id, agent_id: row.agent_id, seq, attempt, time } as CallEventOf<K>;
    });
    const last = data[data.length - 1];
    return { data, next_cursor: last && data.length === filter.limit ? callCursor(last) : null };
  }

  /**
   * The query of list(), for a look at its plan. With a run, it is read by the run's key alone
   * (list() checked the run is the tenant's); otherwise the tenant leads, so that the index a
   * filter names is the one that matches the most of the query.
   */
  listQuery(tenantId: string, kind: CallKind, filter: CallFilter) {
    let q = this.#db
      .selectFrom("calls as c")
      .innerJoin("events as e", (join) => join.onRef("e.run_id", "=", "c.run_id").onRef("e.seq", "=", "c.seq"))
      .select(["e.run_id", "e.seq", "e.attempt", "e.type", "e.ts", "e.data", "c.agent_id"])
      .where("c.kind", "=", kind);
    q = filter.runId !== undefined ? q.where("c.run_id", "=", filter.runId) : q.where("c.tenant_id", "=", tenantId);
    if (filter.agentId !== undefined) q = q.where("c.agent_id", "=", filter.agentId);
    if (filter.target !== undefined) q = q.where("c.target", "=", filter.target);
    if (filter.model !== undefined) q = q.where("c.model", "=", filter.model);
    if (filter.outcome !== undefined) q = q.where("c.ok", "=", filter.outcome === "ok" ? 1 : 0);
    if (filter.createdAfter !== undefined) q = q.where("c.ts", ">=", filter.createdAfter);
    if (filter.createdBefore !== undefined) q = q.where("c.ts", "<", filter.createdBefore);
    const cursor = filter.cursor;
    if (cursor) {
      q = q.where((eb) =>
        eb(eb.refTuple("c.ts", "c.run_id", "c.seq"), "<", eb.tuple(cursor.ts, cursor.runId, cursor.seq)),
      );
    }
    return q.orderBy("c.ts", "desc").orderBy("c.run_id", "desc").orderBy("c.seq", "desc").limit(filter.limit);
  }
}
