/**
 * The event log against real stores (SQLite and PostgreSQL): it takes the protocol's events and
 * refuses the rest, numbers concurrent appends without gaps or repeats, and wakes subscribers in
 * other processes.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { AppError, DEFAULT_LIMITS, isEvent, type RunEvent } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { RunRepository } from "../engine/runs.ts";
import { forEachStore } from "../testing/stores.ts";
import { seedAgent } from "../testing/test-store.ts";
import { openDatabase } from "./database.ts";
import { EventLog, type NewEvent } from "./event-log.ts";
import type { Database } from "./schema.ts";

forEachStore((store) =>
  describe(`EventLog on ${store.name}`, { skip: store.skip }, () => {
    let db: Kysely<Database>;
    let close: () => Promise<void>;
    let url: string | undefined;
    let log: EventLog;
    let runId: string;
    let newRun: () => Promise<string>;

    before(async () => {
      const opened = await store.open();
      ({ db, close, url } = opened);
      const { tenant, agent } = await seedAgent(db);
      log = new EventLog(db, { hints: opened.hints });
      const spec = {
        command: ["true"],
        env: {},
        limits: DEFAULT_LIMITS,
        cwd: "/app",
        files: [],
        image: "",
        layers: [],
        runner: "",
        snapshot_version: 1,
        agent_version: 1,
      };
      const runs = new RunRepository(db, log);
      newRun = async () => (await runs.create(tenant, agent, spec, null)).run.id;
      runId = await newRun();
    });
    after(async () => {
      await close?.();
    });

    test("stores the protocol's events and gives them back typed, to readers and subscribers", async () => {
      const seen: RunEvent[] = [];
      const stop = log.subscribe(runId, (e) => seen.push(e));
      await log.write(runId, 1, [
        { type: "log", data: { stream: "stdout", line: "hello" } },
        // A marker's data is whatever the agent sent.
        { type: "user", data: { type: "progress", data: { pct: [1, { deep: null }] } } },
      ]);
      stop();
      const events = await log.list(runId, 0, 100);
      assert.deepEqual(
        events.map((e) => [e.seq, e.type]),
        [
          [1, "run.queued"],
          [2, "log"],
          [3, "user"],
        ],
      );
      assert.deepEqual(seen, events.slice(1));
      assert.deepEqual(
        events.filter(isEvent("log")).map((e) => e.data.line),
        ["hello"],
      );
      assert.equal(events.find(isEvent("run.queued"))?.data.trigger, "api");
    });

    test("refuses an unknown type, a missing field, a wrong type and an undeclared field, storing none of the batch", async () => {
      const before = (await log.list(runId, 0, 100)).length;
      const bad = [
        { type: "nope", data: {} },
        { type: "log", data: { stream: "stdout" } },
        { type: "log", data: { stream: "stdin", line: "x" } },
        { type: "log", data: { stream: "stdout", line: "x", color: "red" } },
        {
          type: "bridge.call",
          data: {
            connection: "c",
            method: "GET",
            path: "/",
            status: 403,
            code: "made_up",
            bytes_in: 0,
            bytes_out: 0,
            ms: 1,
          },
        },
        { type: "user", data: { type: "has space", data: null } },
      ] as unknown as NewEvent[];
      for (const event of bad) {
        await assert.rejects(
          log.write(runId, 1, [{ type: "log", data: { stream: "stdout", line: "kept?" } }, event]),
          (err: unknown) => err instanceof AppError && err.code === "internal" && /malformed/.test(err.message),
          JSON.stringify(event),
        );
      }
      assert.equal((await log.list(runId, 0, 100)).length, before, "nothing of a refused batch is stored");
    });

    test("writeWellFormed keeps every well-formed event of a batch and names the refused ones", async () => {
      const after = (await log.list(runId, 0, 1000)).at(-1)?.seq ?? 0;
      const line = (text: string): NewEvent => ({ type: "log", data: { stream: "stdout", line: text } });
      const batch = [
        line("one"),
        { type: "log", data: { stream: "stdout" } },
        line("two"),
        { type: "nope", data: {} },
        line("three"),
      ] as NewEvent[];
      const { written, refused } = await log.writeWellFormed(runId, 1, batch);
      assert.deepEqual(
        refused.map((r) => r.type),
        ["log", "nope"],
      );
      assert.ok(refused.every((r) => r.problems.length > 0));
      const stored = await log.list(runId, after, 100);
      assert.deepEqual(stored, written);
      assert.deepEqual(
        stored.filter(isEvent("log")).map((e) => e.data.line),
        ["one", "two", "three"],
      );

      const clean = await log.writeWellFormed(runId, 1, [line("four")]);
      assert.deepEqual(clean.refused, []);
      assert.equal(clean.written.length, 1);
    });

    test("concurrent appends to one run get unique, consecutive sequence numbers", async () => {
      const id = await newRun();
      const line = (n: number): NewEvent => ({ type: "log", data: { stream: "stdout", line: String(n) } });
      await Promise.all(Array.from({ length: 40 }, (_, i) => log.write(id, 1, [line(i), line(i)])));
      const seqs = (await log.list(id, 0, 1000)).map((e) => e.seq);
      assert.deepEqual(
        seqs,
        Array.from({ length: 81 }, (_, i) => i + 1),
      );
      const run = await db.selectFrom("runs").select("event_seq").where("id", "=", id).executeTakeFirstOrThrow();
      assert.equal(run.event_seq, 81);
    });

    test("a subscriber is told when another process writes the run's events", {
      skip: store.name === "sqlite" && "SQLite serves one process",
    }, async () => {
      const other = await openDatabase({ dataDir: "", database: url });
      try {
        const theirs = new EventLog(other.db, { hints: other.hints });
        const id = await newRun();
        const woken = new Promise<void>((resolve) => {
          const stop = theirs.subscribe(
            id,
            () => {},
            () => {
              stop();
              resolve();
            },
          );
        });
        await other.hints.ready();
        const started = Date.now();
        await log.write(id, 1, [{ type: "log", data: { stream: "stdout", line: "elsewhere" } }]);
        await woken;
        assert.ok(Date.now() - started < 1000, "woken by the hint before the poll");
        assert.deepEqual(
          (await theirs.list(id, 1, 10)).map((e) => e.type),
          ["log"],
        );
      } finally {
        await other.close();
      }
    });
  }),
);
