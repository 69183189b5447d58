/**
 * One leader among the nodes for the work only one of them may do at a time (scheduler ticks,
 * garbage collection). On SQLite there is one node, always the leader. On PostgreSQL the leader
 * holds a session advisory lock on a connection of its own: the lock lives exactly as long as
 * that session, so a node that dies or loses its connection gives up leadership with it.
 */
import type { DedicatedQuery } from "../store/database.ts";
import type { Dialect } from "../store/portable.ts";

export interface Leader {
  /** Whether this node leads now (taking the lead when nobody holds it). */
  isLeader(): Promise<boolean>;
  /** Gives the lead up. */
  release(): Promise<void>;
}

/** The advisory lock's key: a fixed number, the same on every node. */
export const LEADER_LOCK_KEY = 0x7061_6464_6f63n; // "paddoc"

/** The single node of an embedded store. */
export const soleLeader: Leader = { isLeader: async () => true, release: async () => {} };

/** Leadership under `pg_try_advisory_lock` on a dedicated connection. */
export class AdvisoryLeader implements Leader {
  readonly #query: DedicatedQuery;
  readonly #key: string;
  #held = false;

  constructor(query: DedicatedQuery, key: bigint = LEADER_LOCK_KEY) {
    this.#query = query;
    this.#key = key.toString();
  }

  async isLeader(): Promise<boolean> {
    try {
      if (this.#held) {
        // Still ours? The session may have been lost with its lock; asking again would stack it.
        const { rows } = await this.#query(
          "SELECT count(*) > 0 AS held FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = $1::bigint",
          [this.#key],
        );
        this.#held = rows[0]?.held === true;
      }
      if (!this.#held) {
        const { rows } = await this.#query("SELECT pg_try_advisory_lock($1::bigint) AS ok", [this.#key]);
        this.#held = rows[0]?.ok === true;
      }
    } catch {
      this.#held = false;
    }
    return this.#held;
  }

  async release(): Promise<void> {
    if (!this.#held) return;
    this.#held = false;
    await this.#query("SELECT pg_advisory_unlock($1::bigint)", [this.#key]).catch(() => {});
  }
}

/**
 * The leader abstraction for a store: the sole leader on SQLite; on PostgreSQL the advisory lock,
 * over the dedicated connection `query` (required there).
 */
export function leaderFor(dialect: Dialect, query?: DedicatedQuery): Leader {
  if (dialect === "sqlite") return soleLeader;
  if (!query) throw new Error("a PostgreSQL store needs a dedicated connection for its leader lock");
  return new AdvisoryLeader(query);
}
