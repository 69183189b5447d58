/**
 * Opening the store: an unreachable PostgreSQL is refused with its code; several hosts migrating
 * one PostgreSQL at once take turns; bigint columns read back as numbers; hints survive the
 * listening connection being cut; a connection cut inside a transaction fails that transaction
 * (the database being unavailable) without taking the process down.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { AppError } from "@paddock/protocol";
import { sql } from "kysely";
import { forEachStore } from "../testing/stores.ts";
import { waitFor } from "../testing/wait.ts";
import { openDatabase } from "./database.ts";
import { HINT } from "./hints.ts";
import { migrate } from "./migrations.ts";
import { isDatabaseUnavailable } from "./unavailable.ts";

test("a PostgreSQL that cannot be reached is database_unavailable", async () => {
  await assert.rejects(
    openDatabase({ dataDir: "/nonexistent", database: "postgres://nobody:pw@127.0.0.1:1/none" }),
    (err: unknown) =>
      err instanceof AppError &&
      err.code === "database_unavailable" &&
      err.message.includes("127.0.0.1:1") &&
      !err.message.includes("pw"),
  );
});

forEachStore((store) =>
  describe(`opening the ${store.name} store`, { skip: store.skip }, () => {
    test("bigint columns read back as numbers", async () => {
      const { db, close } = await store.open();
      try {
        const at = 2 ** 50;
        await db.insertInto("tenants").values({ id: "ten_big", name: "big", created_at: at }).execute();
        const row = await db.selectFrom("tenants").select("created_at").where("id", "=", "ten_big").executeTakeFirst();
        assert.equal(row?.created_at, at);
        const count = await db
          .selectFrom("tenants")
          .select((eb) => eb.fn.countAll().as("n"))
          .executeTakeFirstOrThrow();
        assert.equal(Number(count.n), 1);
      } finally {
        await close();
      }
    });

    test("several hosts migrating one database at once all end migrated", {
      skip: store.name === "sqlite" && "SQLite serves one process",
    }, async () => {
      const first = await store.open({ to: null });
      const others = await Promise.all(
        Array.from({ length: 4 }, () => openDatabase({ dataDir: first.dataDir, database: first.url })),
      );
      try {
        await Promise.all([first, ...others].map((o) => migrate(o.db)));
        const { rows } = await sql<{ n: number }>`select count(*) as n from kysely_migration`.execute(first.db);
        assert.ok(Number(rows[0]?.n) >= 8, JSON.stringify(rows));
        await migrate(others[0]?.db as typeof first.db);
      } finally {
        for (const o of others) await o.close();
        await first.close();
      }
    });

    test("a connection cut between two statements of a transaction fails it, and the store serves on", {
      skip: store.name === "sqlite" && "SQLite has no connection to lose",
    }, async () => {
      const { db, close } = await store.open();
      try {
        await assert.rejects(
          db.transaction().execute(async (trx) => {
            const { rows } = await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(trx);
            const pid = rows[0]?.pid;
            // Cut from another connection; the server's goodbye reaches the idle, checked-out client.
            await sql`select pg_terminate_backend(${pid})`.execute(db);
            await waitFor(
              async () => (await sql`select 1 from pg_stat_activity where pid = ${pid}`.execute(db)).rows.length === 0,
              { what: "the session to end" },
            );
            await sql`select 1`.execute(trx);
          }),
          (err: unknown) => isDatabaseUnavailable(err),
        );
        const { rows } = await sql<{ one: number }>`select 1 as one`.execute(db);
        assert.equal(rows[0]?.one, 1);
      } finally {
        await close();
      }
    });

    test("hints from another process arrive again after the listening connection is cut", {
      skip: store.name === "sqlite" && "SQLite serves one process",
    }, async () => {
      const a = await store.open({ to: null });
      const b = await openDatabase({ dataDir: a.dataDir, database: a.url });
      try {
        const heard: string[] = [];
        b.hints.listen(HINT.runQueued, (p) => heard.push(p));
        await b.hints.ready();
        a.hints.notify(HINT.runQueued, "run_1");
        await waitFor(() => heard.includes("run_1"), { what: "the first hint" });
        await sql`select pg_terminate_backend(pid) from pg_stat_activity where query like 'LISTEN%'`.execute(a.db);
        await waitFor(
          async () => {
            a.hints.notify(HINT.runQueued, "run_2");
            return heard.includes("run_2");
          },
          { what: "a hint after reconnecting", timeoutMs: 10_000, intervalMs: 200 },
        );
      } finally {
        await b.close();
        await a.close();
      }
    });
  }),
);
