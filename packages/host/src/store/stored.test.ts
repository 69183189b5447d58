/**
 * Stored agent definitions and run specs through their schemas, and the migration that gives
 * agents versions: what earlier hosts stored still reads, what does not match is refused.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { DEFAULT_LIMITS } from "@paddock/protocol";
import { type Kysely, sql } from "kysely";
import { forEachStore } from "../testing/stores.ts";
import { runRow } from "../testing/test-store.ts";
import { migrate } from "./migrations.ts";
import type { Database } from "./schema.ts";
import { parseAgentDefinition, parseRunSpec } from "./stored.ts";

/** A definition as the first hosts stored it: environment inside, no policy, no files layer. */
const FIRST_DEFINITION = {
  command: ["python3", "main.py"],
  env: { A: "1" },
  limits: DEFAULT_LIMITS,
  cwd: "/app",
  image: "sha256-base",
  layers: ["sha256-files"],
  files: [{ path: "main.py", size: 12 }],
};

describe("stored definitions", () => {
  test("a definition stored before policies, budgets and versions still parses, without its stale keys", () => {
    const def = parseAgentDefinition(JSON.stringify(FIRST_DEFINITION));
    assert.deepEqual(def, {
      command: ["python3", "main.py"],
      env: { A: "1" },
      limits: DEFAULT_LIMITS,
      cwd: "/app",
      files: [{ path: "main.py", size: 12 }],
    });
  });

  test("a run spec stored before snapshots and agent versions gets version 1 and no runner", () => {
    const spec = parseRunSpec(JSON.stringify(FIRST_DEFINITION));
    assert.equal(spec.image, "sha256-base");
    assert.deepEqual(spec.layers, ["sha256-files"]);
    assert.equal(spec.runner, "");
    assert.equal(spec.snapshot_version, 1);
    assert.equal(spec.agent_version, 1);
  });

  test("a definition that does not match is refused with what is wrong, never cast", () => {
    const bad: [string, RegExp][] = [
      ["{", /not JSON/],
      [JSON.stringify({ ...FIRST_DEFINITION, command: [] }), /command/],
      [JSON.stringify({ ...FIRST_DEFINITION, limits: { ...DEFAULT_LIMITS, memory_mb: "lots" } }), /limits\.memory_mb/],
      [JSON.stringify({ ...FIRST_DEFINITION, policy: { connections: "github" } }), /policy\.connections/],
      [JSON.stringify({ command: ["x"] }), /env/],
    ];
    for (const [text, why] of bad) assert.throws(() => parseAgentDefinition(text), why, text);
    const { image: _image, ...noImage } = FIRST_DEFINITION;
    assert.throws(() => parseRunSpec(JSON.stringify(noImage)), /image/);
  });
});

forEachStore((store) =>
  describe(`migration to agent versions on ${store.name}`, { skip: store.skip }, () => {
    let db: Kysely<Database>;
    let close: () => Promise<void>;

    before(async () => {
      // A store as the host before agent versions left it: an agent with a snapshot, a run with
      // events, a schedule.
      ({ db, close } = await store.open({ to: "0006_triggers" }));
      const old = db as unknown as Kysely<Record<string, Record<string, unknown>>>;
      await old.insertInto("tenants").values({ id: "ten_1", name: "acme", created_at: 1 }).execute();
      await old
        .insertInto("agents")
        .values({
          id: "agt_1",
          tenant_id: "ten_1",
          name: "report",
          spec: JSON.stringify(FIRST_DEFINITION),
          created_at: 5,
        })
        .execute();
      await old
        .insertInto("runs")
        .values({
          id: "run_1",
          tenant_id: "ten_1",
          agent_id: "agt_1",
          status: "succeeded",
          spec: JSON.stringify(FIRST_DEFINITION),
          created_at: 6,
        })
        .execute();
      for (const seq of [1, 2]) {
        await old
          .insertInto("events")
          .values({ run_id: "run_1", seq, attempt: 1, type: "log", ts: 6, data: "{}" })
          .execute();
      }
      await old
        .insertInto("schedules")
        .values({
          id: "sch_1",
          tenant_id: "ten_1",
          agent_id: "agt_1",
          cron: "* * * * *",
          timezone: "UTC",
          overlap: "skip",
          catch_up_s: 0,
          created_at: 7,
        })
        .execute();
      await migrate(db);
    });

    after(async () => {
      await close?.();
    });

    test("keeps every agent, as version 1 of itself, and every reference to it", async () => {
      const agent = await db.selectFrom("agents").selectAll().executeTakeFirstOrThrow();
      assert.deepEqual(
        { ...agent, spec: JSON.parse(agent.spec) },
        {
          id: "agt_1",
          tenant_id: "ten_1",
          name: "report",
          spec: FIRST_DEFINITION,
          created_at: 5,
          current_version: 1,
          version: 1,
          archived_at: null,
        },
      );
      const versions = await db.selectFrom("agent_versions").selectAll().execute();
      assert.deepEqual(
        versions.map((v) => ({ ...v })),
        [{ agent_id: "agt_1", version: 1, tenant_id: "ten_1", spec: agent.spec, created_at: 5 }],
      );
      const run = await db.selectFrom("runs").select(["agent_id", "agent_version"]).executeTakeFirstOrThrow();
      assert.deepEqual({ ...run }, { agent_id: "agt_1", agent_version: 1 });
      const joined = await db
        .selectFrom("schedules")
        .innerJoin("agents", "agents.id", "schedules.agent_id")
        .select("agents.name")
        .executeTakeFirstOrThrow();
      assert.equal(joined.name, "report");
    });

    test("foreign keys hold again: no run of an agent that does not exist", async () => {
      if (store.name === "sqlite") {
        const { rows } = await sql<{ foreign_keys: number }>`PRAGMA foreign_keys`.execute(db);
        assert.equal(rows[0]?.foreign_keys, 1);
      }
      await assert.rejects(
        db
          .insertInto("runs")
          .values(
            runRow("ten_1", "agt_missing", {
              id: "run_2",
              status: "queued",
              attempt: 0,
              snapshot_version: 1,
              created_at: 8,
              started_at: null,
            }),
          )
          .execute(),
        /FOREIGN KEY|foreign key/,
      );
    });

    test("a run's event counter starts at its last event", async () => {
      const run = await db.selectFrom("runs").select("event_seq").where("id", "=", "run_1").executeTakeFirstOrThrow();
      assert.equal(run.event_seq, 2);
    });

    test("a name is unique among live agents only: archiving frees it", async () => {
      const agent = (id: string) => ({
        id,
        tenant_id: "ten_1",
        name: "report",
        spec: "{}",
        current_version: 1,
        version: 1,
        archived_at: null,
        created_at: 9,
      });
      await assert.rejects(db.insertInto("agents").values(agent("agt_2")).execute(), /UNIQUE|unique constraint/);
      await db.updateTable("agents").set({ archived_at: 10 }).where("id", "=", "agt_1").execute();
      await db.insertInto("agents").values(agent("agt_2")).execute();
      await assert.rejects(db.insertInto("agents").values(agent("agt_3")).execute(), /UNIQUE|unique constraint/);
    });
  }),
);
