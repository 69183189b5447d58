/**
 * The boundary-call journal: every answered bridge and gateway call of a run is kept under its
 * step key (the `Paddock-Step` header, or the call's position among the attempt's calls of its
 * kind) with a hash of its request. When a later attempt of the same run (a retry after a crash)
 * makes the same request at the same step, the host answers it from the journal: it is not sent
 * upstream again and not charged again. A different request at a step already journaled is a
 * divergence: recorded as an event, then sent live, and its answer replaces the old one.
 *
 * Only successful answers (below 400: an error such as a 429 should be retried live) are
 * journaled, up to MAX_JOURNAL_BYTES each, and only for runs that may be retried; a run's entries
 * go when it ends.
 */
import { createHash } from "node:crypto";
import type { Kysely, Transaction } from "kysely";
import { checkFence } from "./fence.ts";
import type { Dialect } from "./portable.ts";
import type { Database } from "./schema.ts";

export const MAX_JOURNAL_BYTES = 1024 * 1024;
/** Header naming a call's step explicitly (letters, digits and . _ : -, at most 128). */
export const STEP_HEADER = "paddock-step";

export interface JournalEntry {
  status: number;
  headers: Record<string, string | string[]>;
  body: Buffer;
  attempt: number;
}

export const requestHash = (parts: (string | Buffer)[]): string => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p).update("\0");
  return h.digest("hex");
};

/** The step key of a call: the caller's own, else its kind and position in this attempt. */
export function stepKey(header: string | string[] | undefined, kind: string, position: number): string | null {
  if (typeof header === "string") return /^[A-Za-z0-9._:-]{1,128}$/.test(header) ? `${kind}:${header}` : null;
  return `${kind}#${position}`;
}

/** The attempt a journal entry is written for; with its node, the write is fenced (see fence.ts). */
export interface JournalOwner {
  runId: string;
  attempt: number;
  workerId?: string;
}

export class Journal {
  readonly #db: Kysely<Database>;
  readonly #dialect: Dialect;

  constructor(db: Kysely<Database>, options: { dialect?: Dialect } = {}) {
    this.#db = db;
    this.#dialect = options.dialect ?? "sqlite";
  }

  /**
   * What to do with a call at `step` of an attempt: the journaled answer of an earlier attempt
   * (same request), a divergence (another request was journaled there), or nothing known.
   */
  async lookup(
    runId: string,
    attempt: number,
    step: string,
    hash: string,
  ): Promise<{ replay: JournalEntry } | { diverged: true } | null> {
    const row = await this.#db
      .selectFrom("journal")
      .selectAll()
      .where("run_id", "=", runId)
      .where("step", "=", step)
      .executeTakeFirst();
    if (!row || row.attempt >= attempt) return null;
    if (row.request_hash !== hash) return { diverged: true };
    return {
      replay: {
        status: row.status,
        headers: JSON.parse(row.headers) as Record<string, string | string[]>,
        body: Buffer.from(row.body),
        attempt: row.attempt,
      },
    };
  }

  /**
   * Keeps an answer at `step` of `owner`'s attempt (inside `trx` when given), only while that
   * attempt still holds its run when the owner names its node.
   */
  async record(
    owner: JournalOwner,
    step: string,
    hash: string,
    entry: Omit<JournalEntry, "attempt">,
    trx?: Transaction<Database>,
  ): Promise<void> {
    if (entry.status >= 400 || entry.body.length > MAX_JOURNAL_BYTES) return;
    if (!trx) return this.#db.transaction().execute((t) => this.record(owner, step, hash, entry, t));
    const { runId, attempt, workerId } = owner;
    if (workerId !== undefined) await checkFence(trx, { runId, attempt, workerId }, this.#dialect);
    const values = {
      run_id: runId,
      step,
      request_hash: hash,
      attempt,
      status: entry.status,
      headers: JSON.stringify(entry.headers),
      body: entry.body,
      created_at: Date.now(),
    };
    await trx
      .insertInto("journal")
      .values(values)
      .onConflict((oc) =>
        oc.columns(["run_id", "step"]).doUpdateSet({
          request_hash: hash,
          attempt,
          status: entry.status,
          headers: values.headers,
          body: entry.body,
          created_at: values.created_at,
        }),
      )
      .execute();
  }
}
