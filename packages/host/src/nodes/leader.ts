/**
 * One leader among the nodes for the work only one of them may do at a time (scheduler ticks,
 * garbage collection). On SQLite there is one node, always the leader. On PostgreSQL the leader
 * holds a session advisory lock on a connection of its own: the lock lives exactly as long as
 * that session, so a node that dies or loses its connection gives up leadership with it.
 *
 * A node that is stuck rather than dead (paused, swapping, cut off while its connection lingers)
 * would keep the lock and stall the scheduler for every node. So each node names its connection
 * after itself, and a node that fails to take the lock ends the holder's session when the holder's
 * node has not heartbeaten for longer than a lease (pg_terminate_backend, allowed between sessions
 * of one role). What a leader does is safe to overlap for a moment (schedule slots and GC are
 * idempotent), so a stuck leader waking up late costs nothing.
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

/** What names a node's leader connection in pg_stat_activity. */
const APPLICATION_PREFIX = "paddock-node:";

/** Leadership under `pg_try_advisory_lock` on a dedicated connection. */
export class AdvisoryLeader implements Leader {
  readonly #query: DedicatedQuery;
  readonly #key: string;
  readonly #nodeId: string;
  readonly #staleMs: number;
  #held = false;

  /** `staleMs`: how long a holder's node may go without a heartbeat before its session is ended. */
  constructor(query: DedicatedQuery, node: { id: string; staleMs: number }, key: bigint = LEADER_LOCK_KEY) {
    this.#query = query;
    this.#key = key.toString();
    this.#nodeId = node.id;
    this.#staleMs = node.staleMs;
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
        await this.#query("SELECT set_config('application_name', $1, false)", [`${APPLICATION_PREFIX}${this.#nodeId}`]);
        this.#held = await this.#tryLock();
        if (!this.#held && (await this.#endStaleHolder())) this.#held = await this.#tryLock();
      }
    } catch {
      this.#held = false;
    }
    return this.#held;
  }

  async #tryLock(): Promise<boolean> {
    const { rows } = await this.#query("SELECT pg_try_advisory_lock($1::bigint) AS ok", [this.#key]);
    return rows[0]?.ok === true;
  }

  /** Ends the session holding the lock when its node stopped heartbeating; whether one was ended. */
  async #endStaleHolder(): Promise<boolean> {
    const { rows } = await this.#query(
      `SELECT pg_terminate_backend(l.pid) AS ended
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted
          AND ((l.classid::bigint << 32) | l.objid::bigint) = $1::bigint
          AND a.application_name LIKE '${APPLICATION_PREFIX}%'
          AND NOT EXISTS (
            SELECT 1 FROM nodes n
             WHERE n.id = substr(a.application_name, ${APPLICATION_PREFIX.length + 1})
               AND n.stopped_at IS NULL
               AND n.heartbeat_at >= (extract(epoch from now()) * 1000)::bigint - $2::bigint)`,
      [this.#key, this.#staleMs],
    );
    if (rows[0]?.ended !== true) return false;
    // The ended session lets go of its lock as its backend exits, a moment later.
    for (let i = 0; i < 50; i++) {
      const { rows: left } = await this.#query(
        "SELECT count(*) = 0 AS free FROM pg_locks WHERE locktype = 'advisory' AND granted AND ((classid::bigint << 32) | objid::bigint) = $1::bigint",
        [this.#key],
      );
      if (left[0]?.free === true) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    return true;
  }

  async release(): Promise<void> {
    if (!this.#held) return;
    this.#held = false;
    await this.#query("SELECT pg_advisory_unlock($1::bigint)", [this.#key]).catch(() => {});
  }
}

/**
 * The leader abstraction for a store: the sole leader on SQLite; on PostgreSQL the advisory lock,
 * over the dedicated connection `query` (required there), taken over from a node silent for `staleMs`.
 */
export function leaderFor(dialect: Dialect, node: { id: string; staleMs: number }, query?: DedicatedQuery): Leader {
  if (dialect === "sqlite") return soleLeader;
  if (!query) throw new Error("a PostgreSQL store needs a dedicated connection for its leader lock");
  return new AdvisoryLeader(query, node);
}
