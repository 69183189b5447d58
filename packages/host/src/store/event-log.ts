/**
 * The append-only event log. Events are written inside the caller's transaction (so a state change
 * and the event describing it commit together) and published to live subscribers only after that
 * transaction commits, so a subscriber never sees an event the store could still lose.
 */
import { EventEmitter } from "node:events";
import {
  AppError,
  callOutcome,
  type RunEvent,
  RunEventBody,
  type RunEventOf,
  type RunEventType,
} from "@paddock/protocol";
import { type Kysely, type RawBuilder, sql } from "kysely";
import { z } from "zod";
import { checkFence, type Fence } from "./fence.ts";
import { HINT, type Hints, LocalHints } from "./hints.ts";
import type { Db, Dialect } from "./portable.ts";
import type { CallsTable, Database, EventsTable } from "./schema.ts";

export type { Db } from "./portable.ts";
/** An event to append: one of the protocol's event types with its data, and when it happened. */
export type NewEvent = RunEventBody & { ts?: number };

/** A stored row as the API serves it; rows were checked against their schema when appended. */
export function toRunEvent(row: EventsTable): RunEvent {
  return {
    seq: row.seq,
    run_id: row.run_id,
    attempt: row.attempt,
    type: row.type,
    time: new Date(row.ts).toISOString(),
    data: JSON.parse(row.data),
  } as RunEvent;
}

/**
 * Refuses an event whose type or data the protocol does not describe. Only host code makes
 * events (a sandbox's markers arrive already parsed, as `user` events), so a refusal is a bug here.
 */
function check(event: NewEvent): void {
  const problems = problemsOf(event);
  if (problems !== null) {
    throw new AppError("internal", `The host made a malformed '${String(event.type).slice(0, 64)}' event.`, {
      problems,
    });
  }
}

/** Why the protocol does not describe `event`, or null when it does. */
function problemsOf(event: NewEvent): string | null {
  const parsed = RunEventBody.safeParse({ type: event.type, data: event.data });
  return parsed.success ? null : z.prettifyError(parsed.error);
}

/** Rows of events already checked, numbered to end at `last`. */
function toRows(runId: string, attempt: number, last: number, events: NewEvent[]): EventsTable[] {
  const now = Date.now();
  let seq = last - events.length;
  return events.map((e) => ({
    run_id: runId,
    seq: ++seq,
    attempt,
    type: e.type,
    ts: e.ts ?? now,
    data: JSON.stringify(e.data),
  }));
}

/** The event types that have a `calls` row. */
const CALL_TYPES: ReadonlySet<string> = new Set<RunEventType>(["llm.call", "bridge.call"]);

/** The `calls` row of an llm.call or bridge.call event's row; null for any other event. */
function callRow(at: EventsTable, runOf: (runId: string) => AnnouncedRun): CallsTable | null {
  if (!CALL_TYPES.has(at.type)) return null;
  const event = { type: at.type, data: JSON.parse(at.data) } as NewEvent;
  const { tenant_id, agent_id } = runOf(at.run_id);
  const row = { run_id: at.run_id, seq: at.seq, tenant_id, agent_id, ts: at.ts };
  if (event.type === "llm.call") {
    const d = event.data;
    const ok = callOutcome(d) === "ok" ? 1 : 0;
    return { ...row, kind: "llm", target: d.provider ?? "", model: d.model ?? null, ok };
  }
  if (event.type === "bridge.call") {
    const d = event.data;
    return { ...row, kind: "bridge", target: d.connection, model: null, ok: callOutcome(d) === "ok" ? 1 : 0 };
  }
  return null;
}

/** An event the log refused, with why. */
export interface RefusedEvent {
  type: string;
  problems: string;
}

/** The run an appended batch belongs to, as an announcer sees it. */
export interface AnnouncedRun {
  id: string;
  tenant_id: string;
  agent_id: string;
}

/**
 * Writes, in the transaction that appends events, what announces some of them outside (the
 * notifications outbox): an event that commits is never left unannounced, nor announced without it.
 */
export interface EventAnnouncer {
  /** Whether events of `type` may be announced: a cheap check before anything is read. */
  announces(type: string): boolean;
  /** Writes in `trx` the announcements of `rows` (of one run); true when it wrote any. */
  announce(trx: Db, run: AnnouncedRun, rows: EventsTable[]): Promise<boolean>;
  /** Told once what announce() wrote has committed. */
  committed(): void;
}

/** How often a subscriber re-reads the store when hints may come from other processes. */
const POLL_MS = 1000;

export class EventLog {
  readonly #db: Kysely<Database>;
  readonly #hints: Hints;
  readonly #bus = new EventEmitter({ captureRejections: false });
  readonly dialect: Dialect;
  /** Subscribers' re-read callbacks by run, told of events other processes wrote. */
  readonly #stale = new Map<string, Set<(seq: number) => void>>();
  /** The last seq of each run written since hints were last sent. */
  readonly #unhinted = new Map<string, number>();
  readonly #announcer: EventAnnouncer | undefined;
  /** Appended rows whose announcements were written with them. */
  readonly #announced = new WeakSet<EventsTable>();
  /** Sees every batch this process commits (the host's metrics). */
  readonly #observe: ((rows: readonly EventsTable[]) => void) | undefined;

  constructor(
    db: Kysely<Database>,
    options: {
      dialect?: Dialect;
      hints?: Hints;
      announcer?: EventAnnouncer | undefined;
      observe?: (rows: readonly EventsTable[]) => void;
    } = {},
  ) {
    const hints = options.hints ?? new LocalHints();
    this.#db = db;
    this.#announcer = options.announcer;
    this.#observe = options.observe;
    this.dialect = options.dialect ?? "sqlite";
    this.#hints = hints;
    this.#bus.setMaxListeners(0);
    // Listening from the start, so that a first subscriber does not wait for the connection.
    if (hints.shared) {
      hints.listen(HINT.events, (payload) => {
        const colon = payload.lastIndexOf(":");
        for (const f of this.#stale.get(payload.slice(0, colon)) ?? []) f(Number(payload.slice(colon + 1)));
      });
    }
  }

  /**
   * Checks in `trx` that `fence`'s attempt still holds its run (lease_lost otherwise, so the
   * transaction writes nothing); no check without a fence.
   */
  async fence(trx: Db, fence: Fence | undefined): Promise<void> {
    if (fence) await checkFence(trx, fence, this.dialect);
  }

  /**
   * Appends events with consecutive sequence numbers; call inside a transaction, then publish().
   * The numbers come from the run's counter, whose row lock orders appends to one run. With
   * `fence`, only while that attempt still holds the run (see fence.ts). The announcer writes
   * what announces them in the same transaction.
   */
  async append(trx: Db, runId: string, attempt: number, events: NewEvent[], fence?: Fence): Promise<EventsTable[]> {
    if (events.length === 0) return [];
    for (const e of events) check(e);
    await this.fence(trx, fence);
    const reserved = await this.reserve(trx, runId, events.length);
    const rows = toRows(runId, attempt, reserved.last, events);
    await this.insert(trx, rows, [reserved.run]);
    return rows;
  }

  /**
   * Takes the run's next `n` sequence numbers in `trx` (its row stays locked until commit); returns
   * the last, and the run's tenant and agent.
   */
  async reserve(trx: Db, runId: string, n: number): Promise<{ last: number; run: AnnouncedRun }> {
    const counted = await trx
      .updateTable("runs")
      .set((eb) => ({ event_seq: eb("event_seq", "+", n) }))
      .where("id", "=", runId)
      .returning(["id", "event_seq", "tenant_id", "agent_id"])
      .executeTakeFirst();
    if (!counted) throw new AppError("internal", `Events for a run that does not exist (${runId}).`);
    const { event_seq, ...run } = counted;
    return { last: event_seq, run };
  }

  /**
   * Whether events of these types write more than their rows (a `calls` row, an announcement), so
   * that they must go through insert(), not insertAfter().
   */
  writesBeside(events: readonly NewEvent[]): boolean {
    const announcer = this.#announcer;
    return events.some((e) => CALL_TYPES.has(e.type) || announcer?.announces(e.type) === true);
  }

  /**
   * The rows of `events`, numbered to end at `last`: for a writer that took their sequence numbers
   * itself, adding `events.length` to the run's event_seq in its own update of the run (which
   * returned `last`), so a state change and its events need no second update. insert() them next.
   */
  numbered(runId: string, attempt: number, last: number, events: NewEvent[]): EventsTable[] {
    for (const e of events) check(e);
    return toRows(runId, attempt, last, events);
  }

  /**
   * The insert of `rows` (one run's, from numbered()) within the statement whose CTE `counter`
   * took their sequence numbers, returning the run's id, attempt and event_seq as it left them: a
   * state change and its events in one statement (PostgreSQL). The rows' seq and attempt are
   * taken from the counter.
   */
  insertAfter(counter: string, rows: EventsTable[]): RawBuilder<unknown> {
    return sql`INSERT INTO events (run_id, seq, attempt, type, ts, data)
      SELECT c.id, c.event_seq - ${rows.length} + e.n, c.attempt, e.type, e.ts, e.data
      FROM ${sql.table(counter)} AS c, unnest(${rows.map((r) => r.type)}::text[], ${rows.map((r) => r.ts)}::bigint[],
        ${rows.map((r) => r.data)}::text[]) WITH ORDINALITY AS e(type, ts, data, n)`;
  }

  /**
   * Inserts numbered rows, of one run or of many (`runs`: each run's tenant and agent), in the
   * caller's transaction, with what goes with them: the `calls` rows of call events and the
   * announcer's writes. publish() them after it commits.
   */
  async insert(trx: Db, rows: EventsTable[], runs: readonly AnnouncedRun[]): Promise<void> {
    // SQLite caps bound parameters per statement; 6 columns × 100 rows stays well under it.
    for (let i = 0; i < rows.length; i += 100) {
      await trx
        .insertInto("events")
        .values(rows.slice(i, i + 100))
        .execute();
    }
    const byId = new Map(runs.map((r) => [r.id, r]));
    const runOf = (runId: string): AnnouncedRun => {
      const run = byId.get(runId);
      if (!run) throw new AppError("internal", `Events inserted without their run (${runId}).`);
      return run;
    };
    const calls = rows.flatMap((row) => callRow(row, runOf) ?? []);
    for (let i = 0; i < calls.length; i += 100) {
      await trx
        .insertInto("calls")
        .values(calls.slice(i, i + 100))
        .execute();
    }
    const announcer = this.#announcer;
    if (!announcer) return;
    // The announcer is handed one run's rows at a time.
    const announced = new Map<string, EventsTable[]>();
    for (const row of rows) {
      if (announcer.announces(row.type) && !announced.has(row.run_id)) announced.set(row.run_id, []);
    }
    for (const row of rows) announced.get(row.run_id)?.push(row);
    for (const [runId, own] of announced) {
      if (await announcer.announce(trx, runOf(runId), own)) for (const row of own) this.#announced.add(row);
    }
  }

  /**
   * Hands committed events to this process's subscribers, and tells other processes as hints: new
   * events up to the last seq, and a queued run or a requested cancel among them.
   */
  publish(rows: EventsTable[]): void {
    for (const row of rows) {
      if (this.#bus.listenerCount(row.run_id) > 0) this.#bus.emit(row.run_id, toRunEvent(row));
    }
    if (rows.some((r) => this.#announced.has(r))) this.#announcer?.committed();
    this.#observe?.(rows);
    const last = rows[rows.length - 1];
    if (!last || !this.#hints.shared) return;
    // Appends in the same turn of the event loop share one hint per run.
    if (this.#unhinted.size === 0) {
      setImmediate(() => {
        for (const [runId, seq] of this.#unhinted) this.#hints.notify(HINT.events, `${runId}:${seq}`);
        this.#unhinted.clear();
      });
    }
    this.#unhinted.set(last.run_id, Math.max(last.seq, this.#unhinted.get(last.run_id) ?? 0));
    for (const row of rows) {
      if (row.type === "run.queued") this.#hints.notify(HINT.runQueued, row.run_id);
      else if (row.type === "run.cancel_requested") this.#hints.notify(HINT.cancel, row.run_id);
    }
  }

  /** Appends in a transaction of its own and publishes. */
  async write(runId: string, attempt: number, events: NewEvent[], fence?: Fence): Promise<RunEvent[]> {
    const rows = await this.#db.transaction().execute((trx) => this.append(trx, runId, attempt, events, fence));
    this.publish(rows);
    return rows.map(toRunEvent);
  }

  /**
   * Like write(), but a malformed event (a host bug) does not cost the others: should the batch be
   * refused, its well-formed events are written on their own and the refused ones returned. The
   * batch is checked once, as write() checks it; events are checked one by one only after a refusal.
   */
  async writeWellFormed(
    runId: string,
    attempt: number,
    events: NewEvent[],
    fence?: Fence,
  ): Promise<{ written: RunEvent[]; refused: RefusedEvent[] }> {
    try {
      return { written: await this.write(runId, attempt, events, fence), refused: [] };
    } catch (err) {
      const refused: RefusedEvent[] = [];
      const kept = events.filter((event) => {
        const problems = problemsOf(event);
        if (problems !== null) refused.push({ type: String(event.type).slice(0, 64), problems });
        return problems === null;
      });
      if (refused.length === 0) throw err;
      return { written: await this.write(runId, attempt, kept, fence), refused };
    }
  }

  /** The run's events after `afterSeq`, in order; only those of `types` when given. */
  async list(runId: string, afterSeq: number, limit: number, types?: readonly RunEventType[]): Promise<RunEvent[]> {
    const rows = await this.#db
      .selectFrom("events")
      .selectAll()
      .where("run_id", "=", runId)
      .where("seq", ">", afterSeq)
      .$if(types !== undefined, (q) => q.where("type", "in", types ?? []))
      .orderBy("seq")
      .limit(limit)
      .execute();
    return rows.map(toRunEvent);
  }

  /** The run's events of one type, newest first. */
  async listOfType<T extends RunEventType>(runId: string, type: T): Promise<RunEventOf<T>[]> {
    const rows = await this.#db
      .selectFrom("events")
      .selectAll()
      .where("run_id", "=", runId)
      .where("type", "=", type)
      .orderBy("seq", "desc")
      .execute();
    return rows.map(toRunEvent) as RunEventOf<T>[];
  }

  /**
   * Calls `listener` with each event this process publishes for the run. When other processes
   * write the store too, `stale` is called whenever the store may hold events the listener did
   * not get (a hint named a later seq, or a second passed): the subscriber then re-reads the store.
   */
  subscribe(runId: string, listener: (event: RunEvent) => void, stale?: () => void): () => void {
    let seen = 0;
    const onEvent = (e: RunEvent) => {
      seen = Math.max(seen, e.seq);
      listener(e);
    };
    this.#bus.on(runId, onEvent);
    if (!stale || !this.#hints.shared) return () => this.#bus.off(runId, onEvent);
    const onHint = (seq: number) => {
      if (seq > seen) stale();
    };
    this.#watch(runId, onHint);
    const poll = setInterval(stale, POLL_MS);
    poll.unref();
    return () => {
      clearInterval(poll);
      this.#bus.off(runId, onEvent);
      this.#unwatch(runId, onHint);
    };
  }

  #watch(runId: string, fn: (seq: number) => void): void {
    const set = this.#stale.get(runId) ?? new Set();
    this.#stale.set(runId, set);
    set.add(fn);
  }

  #unwatch(runId: string, fn: (seq: number) => void): void {
    const set = this.#stale.get(runId);
    set?.delete(fn);
    if (set?.size === 0) this.#stale.delete(runId);
  }
}
