/**
 * Telling an unreachable database from a failed statement, on real errors (a refused connection,
 * SQLite's and PostgreSQL's own), and an outage logged once per task, with its end.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AppError } from "@paddock/protocol";
import { sql } from "kysely";
import { forEachStore } from "../testing/stores.ts";
import { openDatabase } from "./database.ts";
import { isDatabaseUnavailable, StoreFailures } from "./unavailable.ts";

const refused = () =>
  openDatabase({ dataDir: "/nonexistent", database: "postgres://nobody@127.0.0.1:1/none" }).then(
    () => assert.fail("connected"),
    (err: unknown) => err,
  );

describe("isDatabaseUnavailable", () => {
  it("is true for a connection that cannot be made, false for other errors", async () => {
    assert.equal(isDatabaseUnavailable(await refused()), true);
    assert.equal(isDatabaseUnavailable(new AppError("not_found")), false);
    assert.equal(isDatabaseUnavailable(new Error("connect ECONNREFUSED 10.0.0.1:443")), false);
    assert.equal(isDatabaseUnavailable("database_unavailable"), false);
  });

  it("is true for a connection reset under a statement (the server's goodbye can arrive as one)", () => {
    const reset = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", syscall: "read" });
    assert.equal(isDatabaseUnavailable(reset), true);
  });
});

forEachStore((store) =>
  describe(`a statement that fails on ${store.name}`, { skip: store.skip }, () => {
    it("is not the database being unavailable", async () => {
      const { db, close } = await store.open();
      try {
        const err = await sql`select * from no_such_table`.execute(db).then(
          () => assert.fail("ran"),
          (e: unknown) => e,
        );
        assert.equal(isDatabaseUnavailable(err), false, String(err));
      } finally {
        await close();
      }
    });
  }),
);

describe("StoreFailures", () => {
  it("logs an outage once, and its end; other failures every time", async () => {
    const lines: string[] = [];
    const failures = new StoreFailures((l) => lines.push(l), "task", "; waiting");
    const down = await refused();
    assert.equal(failures.succeeded(), false);
    failures.failed("ticking", down);
    failures.failed("ticking", down);
    failures.failed("claiming", new Error("boom"));
    assert.equal(failures.unreachable, true);
    assert.equal(failures.succeeded(), true);
    assert.equal(failures.unreachable, false);
    failures.failed("ticking", down);
    assert.deepEqual(
      lines.map((l) => l.replace(/\(ticking: .*\)/, "(ticking: …)").replace(/\d+ ms/, "N ms")),
      [
        "task: the database cannot be reached (ticking: …); waiting",
        "task: claiming failed: Error: boom",
        "task: the database is reachable again (after N ms)",
        "task: the database cannot be reached (ticking: …); waiting",
      ],
    );
  });
});
