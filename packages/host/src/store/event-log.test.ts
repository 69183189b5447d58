/** The event log against a real SQLite store: it takes the protocol's events and refuses the rest. */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { AppError, DEFAULT_LIMITS, isEvent, type RunEvent } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { RunRepository } from "../engine/runs.ts";
import { openTestStore, type TestStore } from "../testing/test-store.ts";
import { EventLog, type NewEvent } from "./event-log.ts";
import type { Database } from "./schema.ts";

describe("EventLog", () => {
  let store: TestStore;
  let db: Kysely<Database>;
  let tenant: string;
  let agent: string;
  let log: EventLog;
  let runId: string;

  before(async () => {
    store = await openTestStore("event-log");
    ({ db, tenant, agent } = store);
    log = new EventLog(db);
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
    runId = (await new RunRepository(db, log).create(tenant, agent, spec, null)).run.id;
  });
  after(async () => {
    await store?.close();
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
});
