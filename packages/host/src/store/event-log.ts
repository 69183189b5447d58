/**
 * The append-only event log. Events are written inside the caller's transaction (so a state change
 * and the event describing it commit together) and published to live subscribers only after that
 * transaction commits, so a subscriber never sees an event the store could still lose.
 */
import { EventEmitter } from "node:events";
import { AppError, type RunEvent, RunEventBody, type RunEventOf, type RunEventType } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { z } from "zod";
import { checkFence, type Fence } from "./fence.ts";
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

/** An event the log refused, with why. */
export interface RefusedEvent {
  type: string;
  problems: string;
}

export class EventLog {
  readonly #db: Kysely<Database>;
  readonly #bus = new EventEmitter({ captureRejections: false });
  readonly dialect: Dialect;

  constructor(db: Kysely<Database>, options: { dialect?: Dialect } = {}) {
    this.#db = db;
    this.dialect = options.dialect ?? "sqlite";
    this.#bus.setMaxListeners(0);
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
   * With `fence`, only while that attempt still holds the run (see fence.ts).
   */
  async append(trx: Db, runId: string, attempt: number, events: NewEvent[], fence?: Fence): Promise<EventsTable[]> {
    if (events.length === 0) return [];
    for (const e of events) check(e);
    await this.fence(trx, fence);
    const last = await trx
      .selectFrom("events")
      .select((eb) => eb.fn.max("seq").as("max"))
      .where("run_id", "=", runId)
      .executeTakeFirst();
    let seq = Number(last?.max ?? 0);
    const now = Date.now();
    const rows: EventsTable[] = events.map((e) => ({
      run_id: runId,
      seq: ++seq,
      attempt,
      type: e.type,
      ts: e.ts ?? now,
      data: JSON.stringify(e.data),
    }));
    // SQLite caps bound parameters per statement; 6 columns × 100 rows stays well under it.
    for (let i = 0; i < rows.length; i += 100) {
      await trx
        .insertInto("events")
        .values(rows.slice(i, i + 100))
        .execute();
    }
    return rows;
  }

  publish(rows: EventsTable[]): void {
    for (const row of rows) this.#bus.emit(row.run_id, toRunEvent(row));
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

  subscribe(runId: string, listener: (event: RunEvent) => void): () => void {
    this.#bus.on(runId, listener);
    return () => this.#bus.off(runId, listener);
  }
}
