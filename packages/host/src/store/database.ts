/**
 * Opens the host's store: embedded SQLite in the data folder by default, or PostgreSQL when the
 * configuration names one (`postgres://USER@HOST/DB`, or `postgres://USER@/DB?host=/socket/dir`).
 * Both speak the same Kysely schema; the few statements that differ branch on `dialect`.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { AppError } from "@paddock/protocol";
import {
  Kysely,
  type Kysely as KyselyType,
  PostgresAdapter,
  type PostgresCursor,
  PostgresDialect,
  type PostgresPoolClient,
  type PostgresQueryResult,
} from "kysely";
import pg from "pg";
import { type Hints, LocalHints, PostgresHints } from "./hints.ts";
import { type Dialect, PREPARED } from "./portable.ts";
import type { Database } from "./schema.ts";
import { openSqlite } from "./sqlite.ts";

export interface OpenDatabase {
  db: Kysely<Database>;
  dialect: Dialect;
  /** Wake-up hints between the processes sharing this store (within this one for SQLite). */
  hints: Hints;
  /**
   * One statement at a time on a connection of its own, kept open (PostgreSQL only): what a
   * session advisory lock, such as the leader's, needs to live as long as that session.
   */
  dedicated?: DedicatedQuery;
  close(): Promise<void>;
}

/** Runs one SQL statement with positional parameters on the store's dedicated connection. */
export type DedicatedQuery = (text: string, params: unknown[]) => Promise<{ rows: Record<string, unknown>[] }>;

/** A connection opened on first use and again after it broke (its session's locks went with it). */
function dedicatedConnection(url: string): { query: DedicatedQuery; close(): Promise<void> } {
  let client: pg.Client | null = null;
  let closed = false;
  return {
    async query(text, params) {
      if (closed) throw new Error("the store is closed");
      if (!client) {
        const fresh = new pg.Client({ connectionString: url, types });
        fresh.on("error", () => {
          if (client === fresh) client = null;
        });
        await fresh.connect();
        client = fresh;
      }
      return client.query(text, params);
    },
    async close() {
      closed = true;
      await client?.end().catch(() => {});
      client = null;
    },
  };
}

// biome-ignore lint/suspicious/noExplicitAny: any schema; only the dialect is read.
export function dialectOf(db: KyselyType<any>): Dialect {
  return db.getExecutor().adapter instanceof PostgresAdapter ? "postgres" : "sqlite";
}

const INT8 = 20;

/**
 * pg's type parsers with int8 (bigint) read as a JS number, for this pool only: every bigint the
 * schema holds (times in ms, sizes, credits in micro-units) is well below 2^53.
 */
const types: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: "text" | "binary") =>
    oid === INT8 && format !== "binary"
      ? Number
      : pg.types.getTypeParser(oid, format)) as pg.CustomTypesConfig["getTypeParser"],
};

/** Statement names by text, of the statements marked PREPARED (a few fixed forms). */
const statementNames = new Map<string, string>();

/**
 * `client` as Kysely uses it, running each statement marked PREPARED as a named prepared
 * statement: parsed and planned once per connection, where Kysely's own are parsed and planned
 * at every run.
 */
function preparing(client: pg.PoolClient): PostgresPoolClient {
  function query<R>(sql: string, parameters: ReadonlyArray<unknown>): Promise<PostgresQueryResult<R>>;
  function query<R>(cursor: PostgresCursor<R>): PostgresCursor<R>;
  function query(text: string | PostgresCursor<unknown>, values?: ReadonlyArray<unknown>): unknown {
    // A cursor (a streamed query) goes as it is.
    if (typeof text !== "string") return client.query(text as never);
    if (!text.startsWith(PREPARED)) return client.query(text, values as unknown[]);
    let name = statementNames.get(text);
    if (name === undefined) {
      name = `paddock_${createHash("sha256").update(text).digest("hex").slice(0, 32)}`;
      statementNames.set(text, name);
    }
    return client.query({ name, text, values: values as unknown[] });
  }
  return {
    query,
    release: (destroy?: boolean) => client.release(destroy),
    // Kysely reads the backend's pid from it, to cancel a statement.
    get processID() {
      return (client as { processID?: number }).processID;
    },
  };
}

/** Connections a process's PostgreSQL pool holds at most. */
export const POOL_SIZE = 20;

/** The URL without its password, for messages. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    // No host (a unix socket's folder given as ?host=): not a WHATWG URL, so by pattern.
    return url.replace(/^([a-z]+:\/\/[^:@/]*):[^@/]*@/i, "$1:***@");
  }
}

/**
 * Opens the store. A PostgreSQL that cannot be reached is `database_unavailable`, with nothing
 * left open.
 * @example const { db, close } = await openDatabase({ dataDir: "/var/lib/paddock" });
 */
export async function openDatabase(config: { dataDir: string; database?: string | undefined }): Promise<OpenDatabase> {
  if (!config.database) {
    const db = openSqlite(join(config.dataDir, "paddock.db"));
    const hints = new LocalHints();
    return { db, dialect: "sqlite", hints, close: () => db.destroy() };
  }
  const url = config.database;
  if (!/^postgres(ql)?:\/\//.test(url)) {
    throw new AppError("validation_failed", `--database must be a postgres:// URL, not ${redact(url)}.`);
  }
  const pool = new pg.Pool({ connectionString: url, types, max: POOL_SIZE, connectionTimeoutMillis: 10_000 });
  // A connection the server dropped (it stopped or restarted) must not crash the host: the pool
  // reports it for an idle client, the client itself for one checked out between two statements
  // of a transaction. The next statement on it fails and the pool discards it.
  pool.on("error", () => {});
  pool.on("connect", (client) => client.on("error", () => {}));
  // A connection that cannot be made is database_unavailable, at start and whenever the server is gone.
  const connect = () =>
    pool.connect().catch((err: unknown) => {
      throw new AppError(
        "database_unavailable",
        `Cannot connect to the database at ${redact(url)}: ${err instanceof Error ? err.message : String(err)}`,
      );
    });
  try {
    (await connect()).release();
  } catch (err) {
    await pool.end().catch(() => {});
    throw err;
  }
  // One wrapper per connection: Kysely keeps its state per client object.
  const wrapped = new WeakMap<pg.PoolClient, PostgresPoolClient>();
  const connectPreparing = async () => {
    const client = await connect();
    let wrapper = wrapped.get(client);
    if (!wrapper) {
      wrapper = preparing(client);
      wrapped.set(client, wrapper);
    }
    return wrapper;
  };
  const db = new Kysely<Database>({
    dialect: new PostgresDialect({
      pool: { Client: pg.Client, options: pool.options, connect: connectPreparing, end: () => pool.end() },
    }),
  });
  const hints = new PostgresHints({ connectionString: url, pool });
  const dedicated = dedicatedConnection(url);
  return {
    db,
    dialect: "postgres",
    hints,
    dedicated: dedicated.query,
    close: async () => {
      await dedicated.close();
      await hints.close();
      await db.destroy();
    },
  };
}
