/**
 * The few pieces of SQL the engine's concurrency control writes differently on SQLite and
 * PostgreSQL: the database's own clock, and transaction-scoped locks on names. On SQLite one
 * write transaction at a time already serialises every claim, so the locks are no-ops there.
 */
import { type Kysely, type RawBuilder, sql, type Transaction } from "kysely";
import type { Database } from "./schema.ts";

/** The store, or a transaction on it. */
export type Db = Kysely<Database> | Transaction<Database>;

/** Which SQL the store speaks. */
export type Dialect = "sqlite" | "postgres";

/**
 * The database's clock in milliseconds since the epoch, as an SQL expression: leases and
 * heartbeats written by several nodes compare against one clock, not each node's own.
 * @example db.updateTable("nodes").set({ heartbeat_at: dbNow(dialect) })
 */
export function dbNow(dialect: Dialect): RawBuilder<number> {
  return dialect === "postgres"
    ? sql<number>`(extract(epoch from now()) * 1000)::bigint`
    : sql<number>`CAST(unixepoch('subsec') * 1000 AS INTEGER)`;
}

/**
 * The comment that starts a statement the store prepares once per connection on PostgreSQL: one
 * run often, in a fixed form, whose parsing and planning would otherwise be paid at every run.
 */
export const PREPARED = "/* prepared */";

/**
 * `query`, marked to be prepared once per connection (see PREPARED). Its text must be one of a
 * few fixed forms (values as parameters), and it must name every column it returns: a prepared
 * statement's result shape is fixed for its connection's life.
 */
export function prepared<T>(query: RawBuilder<T>): RawBuilder<T> {
  return sql<T>`${sql.raw(PREPARED)} ${query}`;
}

/** The database's clock now, read in its own statement. */
export async function readDbNow(db: Db, dialect: Dialect): Promise<number> {
  const { rows } = await sql<{ now: number | string }>`SELECT ${dbNow(dialect)} AS now`.execute(db);
  return Number(rows[0]?.now);
}

/**
 * Takes transaction-scoped locks on `names`, and shared ones on `shared` (a name in both is taken
 * exclusively): PostgreSQL advisory locks, in one statement, in the order of their keys so that
 * two transactions never wait on each other in a cycle; released when the transaction ends.
 */
export async function lockNames(trx: Db, dialect: Dialect, names: string[], shared: string[] = []): Promise<void> {
  if (dialect !== "postgres") return;
  const exclusive = new Set(names);
  const all = [...exclusive, ...new Set(shared.filter((n) => !exclusive.has(n)))];
  if (all.length === 0) return;
  await prepared(sql`
    SELECT CASE WHEN l.exclusive THEN pg_advisory_xact_lock(l.key) ELSE pg_advisory_xact_lock_shared(l.key) END
    FROM (
      SELECT hashtextextended(u.name, 0) AS key, u.exclusive
      FROM unnest(${all}::text[], ${all.map((n) => exclusive.has(n))}::bool[]) AS u(name, exclusive)
      ORDER BY key, u.exclusive DESC
    ) AS l`).execute(trx);
}

/**
 * Which bucket of `bucketMs` from `from` a time column falls in (0, 1, …), for rows at or after
 * `from`. The numbers are written into the SQL, so that the same expression in SELECT and GROUP
 * BY is the same text (PostgreSQL groups by text), and the division is an integer one on both.
 * @example db.selectFrom("runs").select(timeBucket("created_at", from, 3_600_000).as("bucket"))
 */
export function timeBucket(column: string, from: number, bucketMs: number): RawBuilder<number> {
  if (!Number.isSafeInteger(from) || !Number.isSafeInteger(bucketMs) || bucketMs <= 0) {
    throw new Error(`a time bucket needs whole milliseconds (from ${from}, bucket ${bucketMs})`);
  }
  return sql<number>`CAST((${sql.ref(column)} - ${sql.lit(from)}) / ${sql.lit(bucketMs)} AS INTEGER)`;
}
