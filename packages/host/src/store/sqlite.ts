/**
 * Kysely over Node's built-in SQLite (node:sqlite): the embedded default store, with no native
 * addon to compile. WAL journaling; NORMAL sync keeps every committed transaction across a
 * process crash (the failure the engine must survive) at a fraction of FULL's cost.
 */
import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import { Kysely, type SqliteDatabase, SqliteDialect } from "kysely";
import type { Database } from "./schema.ts";

function adapt(db: DatabaseSync): SqliteDatabase {
  const cache = new Map<string, StatementSync>();
  const prepare = (sql: string): StatementSync => {
    let stmt = cache.get(sql);
    if (!stmt) {
      stmt = db.prepare(sql);
      if (cache.size > 500) cache.clear();
      cache.set(sql, stmt);
    }
    return stmt;
  };
  return {
    close: () => db.close(),
    prepare(sql) {
      const stmt = prepare(sql);
      const args = (p: ReadonlyArray<unknown>) => p as SQLInputValue[];
      return {
        reader: stmt.columns().length > 0,
        all: (p) => stmt.all(...args(p)),
        run: (p) => stmt.run(...args(p)),
        iterate: (p) => stmt.iterate(...args(p)),
      };
    },
  };
}

export function openSqlite(file: string): Kysely<Database> {
  const db = new DatabaseSync(file);
  db.exec("PRAGMA journal_mode = WAL");
  db.exec("PRAGMA synchronous = NORMAL");
  db.exec("PRAGMA foreign_keys = ON");
  db.exec("PRAGMA busy_timeout = 5000");
  return new Kysely<Database>({ dialect: new SqliteDialect({ database: adapt(db) }) });
}
