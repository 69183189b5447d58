/**
 * The append-only event log. Events are written inside the caller's transaction (so a state change
 * and the event describing it commit together) and published to live subscribers only after that
 * transaction commits, so a subscriber never sees an event the store could still lose.
 */
import { EventEmitter } from "node:events";
import { AppError, type RunEvent, RunEventBody, type RunEventOf, type RunEventType } from "@paddock/protocol";
import { type Kysely, type RawBuilder, sql } from "kysely";
import { z } from "zod";
import { checkFence, type Fence } from "./fence.ts";
import { HINT, type Hints, LocalHints } from "./hints.ts";
import type { Db, Dialect } from "./portable.ts";
import type { Database, EventsTable } from "./schema.ts";

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

/** An event the log refused, with why. */
export interface RefusedEvent {
  type: string;
  problems: string;
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

  constructor(db: Kysely<Database>, options: { dialect?: Dialect; hints?: Hints } = {}) {
    const hints = options.hints ?? new LocalHints();
    this.#db = db;
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
   * `fence`, only while that attempt still holds the run (see fence.ts).
   */
  async append(trx: Db, runId: string, attempt: number, events: NewEvent[], fence?: Fence): Promise<EventsTable[]> {
    if (events.length === 0) return [];
    for (const e of events) check(e);
    await this.fence(trx, fence);
    const rows = toRows(runId, attempt, await this.reserve(trx, runId, events.length), events);
    await this.insert(trx, rows);
    return rows;
  }

  /** Takes the run's next `n` sequence numbers in `trx` (its row stays locked until commit); returns the last. */
  async reserve(trx: Db, runId: string, n: number): Promise<number> {
    const counted = await trx
      .updateTable("runs")
      .set((eb) => ({ event_seq: eb("event_seq", "+", n) }))
      .where("id", "=", runId)
      .returning("event_seq")
      .executeTakeFirst();
    if (!counted) throw new AppError("internal", `Events for a run that does not exist (${runId}).`);
    return counted.event_seq;
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

  /** Inserts numbered rows, of one run or of many, in the caller's transaction; publish() them after it commits. */
  async insert(trx: Db, rows: EventsTable[]): Promise<void> {
    // SQLite caps bound parameters per statement; 6 columns × 100 rows stays well under it.
    for (let i = 0; i < rows.length; i += 100) {
      await trx
        .insertInto("events")
        .values(rows.slice(i, i + 100))
        .execute();
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

  async list(runId: string, afterSeq: number, limit: number): Promise<RunEvent[]> {
    const rows = await this.#db
      .selectFrom("events")
      .selectAll()
      .where("run_id", "=", runId)
      .where("seq", ">", afterSeq)
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
