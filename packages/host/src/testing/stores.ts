/**
 * Runs a suite once per store the host supports: embedded SQLite in a temp folder, and PostgreSQL
 * on a private server this test process starts once (each suite gets a database of its own).
 * PostgreSQL suites skip, through e2eSkip, where the machine cannot run the server.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type OpenDatabase, openDatabase } from "../store/database.ts";
import { migrate } from "../store/migrations.ts";
import type { Dialect } from "../store/portable.ts";
import { e2eSkip } from "./e2e-skip.ts";
import { postgresSkipReason, startPostgres, type TestPostgres } from "./postgres.ts";

export interface StoreKind {
  readonly name: Dialect;
  /** The suite's `skip` option. */
  readonly skip: string | false;
  /**
   * A new empty store and a data folder beside it, migrated (up to `to` when given, not at all for
   * `to: null`); close() removes both.
   */
  open(options?: {
    to?: string | null;
    /** A PostgreSQL database another open() made, to share instead of a new one. */
    url?: string | undefined;
  }): Promise<OpenDatabase & { dataDir: string; url: string | undefined }>;
  /** What a host started on a new, empty store of this kind is given: `database` for PostgreSQL. */
  hostConfig(): Promise<{ database?: string }>;
}

let server: TestPostgres | null = null;
let databases = 0;

/** This process's PostgreSQL server, started on first use. */
function postgres(): TestPostgres {
  server ??= startPostgres();
  return server;
}

/** A new empty database on this process's server. */
function newDatabase(): Promise<string> {
  return postgres().createDatabase(`t${process.pid}_${++databases}`);
}

function store(name: Dialect, skip: string | false): StoreKind {
  return {
    name,
    skip,
    async hostConfig() {
      return name === "postgres" ? { database: await newDatabase() } : {};
    },
    async open(options = {}) {
      const dataDir = await mkdtemp(join(tmpdir(), `paddock-${name}-`));
      const url = name === "postgres" ? (options.url ?? (await newDatabase())) : undefined;
      const opened = await openDatabase({ dataDir, database: url });
      if (options.to !== null) await migrate(opened.db, options.to);
      return {
        ...opened,
        dataDir,
        url,
        async close() {
          await opened.close();
          await rm(dataDir, { recursive: true, force: true });
        },
      };
    },
  };
}

/** SQLite in a temp folder, the store of a host given none. */
export function sqliteStore(): StoreKind {
  return store("sqlite", false);
}

/**
 * Declares the suites `body` makes once for SQLite and once for PostgreSQL.
 * @example forEachStore((store) => describe(`Ledger on ${store.name}`, { skip: store.skip }, () => { ... }));
 */
export function forEachStore(body: (store: StoreKind) => void): void {
  body(sqliteStore());
  body(store("postgres", e2eSkip(postgresSkipReason())));
}
