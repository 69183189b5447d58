/**
 * Claims against real stores (SQLite and PostgreSQL): a claim takes the runs a node has room for,
 * tenants taking turns, passing over runs a limit holds back; and nodes claiming at once on one
 * store (each with a pool of its own) keep every limit counted over all of them: an agent's
 * max_concurrent_runs, a serial key, the runs of one tenant; no run is claimed twice.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { AgentSpec, DEFAULT_LIMITS } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { NotificationOutbox } from "../notifications/outbox.ts";
import { type OpenDatabase, openDatabase } from "../store/database.ts";
import { EventLog } from "../store/event-log.ts";
import { HINT, LocalHints } from "../store/hints.ts";
import type { Database, EventsTable, RunsTable } from "../store/schema.ts";
import { forEachStore } from "../testing/stores.ts";
import { seedAgent, seedAgentOf } from "../testing/test-store.ts";
import { ACTIVE, Claims, type ClaimsConfig } from "./claims.ts";
import { RunRepository } from "./runs.ts";

const spec = (patch: Partial<AgentSpec> = {}): AgentSpec =>
  AgentSpec.parse({
    command: ["true"],
    env: {},
    limits: DEFAULT_LIMITS,
    cwd: "/",
    files: [],
    image: "t",
    layers: [],
    ...patch,
  });

/** A node's claims over a store: its own pool on PostgreSQL. */
interface Node {
  claims: Claims;
  runs: RunRepository;
}

forEachStore((store) =>
  describe(`Claims on ${store.name}`, { skip: store.skip }, () => {
    let db: Kysely<Database>;
    let close: () => Promise<void>;
    let url: string | undefined;
    let dataDir: string;
    const opened: OpenDatabase[] = [];

    before(async () => {
      const main = await store.open();
      ({ db, close, url, dataDir } = main);
    });
    after(async () => {
      for (const o of opened) await o.close();
      await close?.();
    });

    /** A node with id `workerId`: on PostgreSQL with a store (a pool) of its own. */
    const node = async (workerId: string, config: Partial<ClaimsConfig> = {}): Promise<Node> => {
      let nodeDb = db;
      if (url) {
        const own = await openDatabase({ dataDir, database: url });
        opened.push(own);
        nodeDb = own.db;
      }
      const events = new EventLog(nodeDb, { dialect: store.name });
      const runs = new RunRepository(nodeDb, events);
      const claims = new Claims(
        { db: nodeDb, runs, events },
        { workerId, maxConcurrent: 100, dialect: store.name, ...config },
      );
      return { claims, runs };
    };

    const tenantWithAgent = () => seedAgent(db);
    const row = async (id: string) => db.selectFrom("runs").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
    const queue = async (n: number, tenant: string, agent: string, s: AgentSpec, serialKey?: string) => {
      const runs = new RunRepository(db, new EventLog(db, { dialect: store.name }));
      const ids: string[] = [];
      for (let i = 0; i < n; i++) {
        ids.push((await runs.create(tenant, agent, s, null, serialKey ? { serialKey } : {})).run.id);
      }
      return ids;
    };
    const going = async (ids: string[]) =>
      db.selectFrom("runs").selectAll().where("id", "in", ids).where("status", "in", ACTIVE).execute();
    const finish = async (n: Node, run: RunsTable) =>
      assert.ok(await n.claims.finish(run, { status: "succeeded", reason: "completed", exitCode: 0 }));

    test("takes what the room holds, each run once, with its claim's events numbered after its own", async () => {
      const { tenant, agent } = await tenantWithAgent();
      // Oldest first: by id (runs queued within one millisecond take their order from the id).
      const ids = (await queue(5, tenant, agent, spec())).sort();
      const n = await node("solo");
      const claimed = await n.claims.claimNext({ roots: 3, runs: 12 });
      assert.deepEqual(
        claimed.map((r) => r.id),
        ids.slice(0, 3),
        "the oldest three, oldest first",
      );
      for (const run of claimed) {
        assert.deepEqual([run.status, run.attempt, run.worker_id, run.event_seq], ["starting", 1, "solo", 3]);
        const events = await db
          .selectFrom("events")
          .select(["seq", "type", "attempt"])
          .where("run_id", "=", run.id)
          .orderBy("seq")
          .execute();
        assert.deepEqual(
          events.map((e) => [e.seq, e.type, e.attempt]),
          [
            [1, "run.queued", 0],
            [2, "run.starting", 1],
            [3, "attempt.started", 1],
          ],
        );
        const attempt = await db.selectFrom("attempts").selectAll().where("run_id", "=", run.id).executeTakeFirst();
        assert.deepEqual([attempt?.n, attempt?.worker_id, attempt?.status], [1, "solo", "running"]);
      }
      const rest = await n.claims.claimNext({ roots: 10, runs: 10 });
      assert.deepEqual(
        rest.map((r) => r.id),
        ids.slice(3),
      );
      for (const run of [...claimed, ...rest]) await finish(n, run);
    });

    test("a claim and a run's moves write what goes with their events, observed once committed", async () => {
      const { tenant, agent } = await tenantWithAgent();
      const now = Date.now();
      await db
        .insertInto("notification_subscriptions")
        .values({
          id: `nts_${tenant}`,
          tenant_id: tenant,
          url: "http://127.0.0.1:9/",
          events: JSON.stringify(["run.finished"]),
          description: null,
          credits_below: null,
          internal: 1,
          status: "active",
          disabled_reason: null,
          sealed_secrets: "{}",
          master_key_id: "k",
          previous_until: null,
          created_at: now,
          updated_at: now,
        })
        .execute();
      const hints = new LocalHints();
      let woken = 0;
      hints.listen(HINT.notifications, () => woken++);
      const observed: EventsTable[] = [];
      const events = new EventLog(db, {
        dialect: store.name,
        hints,
        announcer: new NotificationOutbox({ hints }, { dialect: store.name, retryForMs: 60_000 }),
        observe: (rows) => observed.push(...rows),
      });
      const runs = new RunRepository(db, events);
      const claims = new Claims(
        { db, runs, events },
        { workerId: "announcing", maxConcurrent: 1, dialect: store.name },
      );
      const [id] = await queue(1, tenant, agent, spec());
      const [run] = await claims.claimNext({ roots: 1, runs: 1 });
      assert.equal(run?.id, id);
      const seen = () => observed.filter((r) => r.run_id === id).map((r) => [r.seq, r.type]);
      assert.deepEqual(seen(), [
        [2, "run.starting"],
        [3, "attempt.started"],
      ]);
      assert.ok(
        await claims.start(
          run as RunsTable,
          { ms: 1, warm: false },
          { runId: id ?? "", attempt: 1, workerId: "announcing" },
        ),
      );
      // A move carrying a model call writes its calls row with it.
      const fence = { runId: id ?? "", attempt: 1, workerId: "announcing" };
      const llm = { type: "llm.call" as const, data: { provider: "p", model: "m", status: 200 } };
      assert.ok(await runs.transition(id ?? "", { from: ["running"], to: "running", events: [llm], fence }));
      const calls = await db
        .selectFrom("calls")
        .select(["seq", "kind", "tenant_id", "agent_id"])
        .where("run_id", "=", id ?? "")
        .execute();
      assert.deepEqual(
        calls.map((c) => ({ ...c })),
        [{ seq: 5, kind: "llm", tenant_id: tenant, agent_id: agent }],
      );
      assert.equal(woken, 0, "nothing announced yet");
      await finish({ claims, runs }, { ...(run as RunsTable), status: "running" });
      const deliveries = await db
        .selectFrom("notification_deliveries")
        .select(["type", "run_id", "status"])
        .where("tenant_id", "=", tenant)
        .execute();
      assert.deepEqual(
        deliveries.map((d) => ({ ...d })),
        [{ type: "run.succeeded", run_id: id, status: "pending" }],
      );
      assert.equal(woken, 1, "the dispatcher is woken once the end commits");
      assert.deepEqual(seen().slice(2), [
        [4, "run.running"],
        [5, "llm.call"],
        [6, "attempt.finished"],
        [7, "run.succeeded"],
      ]);
    });

    test("leaves a run queued until it is due (a retry's backoff)", async () => {
      const waiting = await tenantWithAgent();
      const [later] = await queue(1, waiting.tenant, waiting.agent, spec());
      const ready = await tenantWithAgent();
      const [now] = await queue(1, ready.tenant, ready.agent, spec());
      await db
        .updateTable("runs")
        .set({ not_before: Date.now() + 60_000 })
        .where("id", "=", later ?? "")
        .execute();
      const n = await node("due");
      const claimed = await n.claims.claimNext({ roots: 1, runs: 1 });
      assert.deepEqual(
        claimed.map((r) => r.id),
        [now],
      );
      assert.deepEqual(await n.claims.claimNext({ roots: 1, runs: 1 }), []);
      await db
        .updateTable("runs")
        .set({ not_before: Date.now() })
        .where("id", "=", later ?? "")
        .execute();
      const due = await n.claims.claimNext({ roots: 1, runs: 1 });
      assert.deepEqual(
        due.map((r) => r.id),
        [later],
      );
      for (const run of [...claimed, ...due]) await finish(n, run);
    });

    test("gives each tenant its turn, so that one tenant's flood does not hold another's run back", async () => {
      const flood = await tenantWithAgent();
      const quiet = await tenantWithAgent();
      const flooded = await queue(30, flood.tenant, flood.agent, spec());
      const [lone] = await queue(1, quiet.tenant, quiet.agent, spec());
      const n = await node("fair");
      const first = await n.claims.claimNext({ roots: 2, runs: 2 });
      assert.ok(
        first.some((r) => r.id === lone),
        `the other tenant's run goes among the first two: ${first.map((r) => r.tenant_id)}`,
      );
      const all = [...first];
      for (let got = first; got.length > 0; ) {
        got = await n.claims.claimNext({ roots: 7, runs: 7 });
        all.push(...got);
      }
      assert.equal(all.length, flooded.length + 1);
      for (const run of all) await finish(n, run);
    });

    test("passes over runs a limit holds back for the next ones, and takes them once the limit allows", async () => {
      const { tenant, agent } = await tenantWithAgent();
      const single = await queue(3, tenant, agent, spec({ max_concurrent_runs: 1 }));
      const serial = await queue(2, tenant, await seedAgentOf(db, tenant), spec(), "schedule:s1");
      const free = await queue(1, tenant, await seedAgentOf(db, tenant), spec());
      const n = await node("passes");
      const claimed = (await n.claims.claimNext({ roots: 10, runs: 10 })).map((r) => r.id);
      const among = (group: string[]) => claimed.filter((id) => group.includes(id)).length;
      assert.deepEqual(
        [among(single), among(serial), among(free), claimed.length],
        [1, 1, 1, 3],
        "one run of the agent whose limit is 1, one of the serial key, and the free run queued after them",
      );
      assert.deepEqual(await n.claims.claimNext({ roots: 10, runs: 10 }), [], "nothing more while they go");
      for (const id of claimed) await finish(n, await row(id));
      const next = (await n.claims.claimNext({ roots: 10, runs: 10 })).map((r) => r.id);
      const inNext = (group: string[]) => next.filter((id) => group.includes(id)).length;
      assert.deepEqual([inNext(single), inNext(serial), next.length], [1, 1, 2], "once they ended, the next of each");
      for (const id of next) await finish(n, await row(id));
    });

    test("nodes claiming at once keep every limit counted over all of them", async () => {
      const nodes = await Promise.all(["n1", "n2", "n3"].map((id) => node(id, { maxPerTenant: 4 })));
      const limited = await tenantWithAgent();
      const agentRuns = await queue(12, limited.tenant, limited.agent, spec({ max_concurrent_runs: 2 }));
      const serialRuns = await queue(8, limited.tenant, limited.agent, spec(), "schedule:race");
      const crowd = await tenantWithAgent();
      const crowdRuns = await queue(20, crowd.tenant, crowd.agent, spec());
      const all = [...agentRuns, ...serialRuns, ...crowdRuns];
      const held = new Map<string, { run: RunsTable; by: Node }>();
      const seen: string[] = [];
      const violations: string[] = [];
      const check = async () => {
        const now = await going(all);
        const count = (f: (r: RunsTable) => boolean) => now.filter(f).length;
        const agentGoing = count((r) => agentRuns.includes(r.id));
        const serialGoing = count((r) => r.serial_key === "schedule:race");
        const tenantGoing = (t: string) => count((r) => r.tenant_id === t && r.root_run_id === null);
        if (agentGoing > 2) violations.push(`agent: ${agentGoing} going`);
        if (serialGoing > 1) violations.push(`serial key: ${serialGoing} going`);
        for (const t of [limited.tenant, crowd.tenant]) {
          if (tenantGoing(t) > 4) violations.push(`tenant: ${tenantGoing(t)} going`);
        }
      };
      // Rounds: every node claims several times at once; then the limits are checked and some runs end.
      // Another test's run that comes due meanwhile may be claimed too: only these runs are counted.
      const ours = () => seen.filter((id) => all.includes(id));
      for (let round = 0; round < 100 && ours().length < all.length; round++) {
        const claims = await Promise.all(
          nodes.flatMap((n) =>
            [0, 1, 2].map(async () => (await n.claims.claimNext({ roots: 5, runs: 5 })).map((run) => ({ run, by: n }))),
          ),
        );
        for (const c of claims.flat()) {
          seen.push(c.run.id);
          held.set(c.run.id, c);
        }
        await check();
        // Half of what goes ends (at least one), so that claims keep racing for freed room.
        const ending = [...held.values()].slice(0, Math.max(1, Math.ceil(held.size / 2)));
        for (const { run, by } of ending) {
          await finish(by, run);
          held.delete(run.id);
        }
      }
      assert.deepEqual(violations, [], "no limit was exceeded");
      assert.equal(new Set(seen).size, seen.length, "no run was claimed twice");
      assert.equal(ours().length, all.length, "every run was claimed in the end");
      for (const { run, by } of held.values()) await finish(by, run);
    });
  }),
);
