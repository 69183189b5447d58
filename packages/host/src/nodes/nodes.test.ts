/**
 * Nodes over one real SQLite store: registration and heartbeats, the refusals of a duplicate id
 * and an overlapping sandbox range, leases renewed in one statement, drain, start-up recovery of
 * lapsed leases only, and the fence that refuses an attempt's writes once another node holds its run.
 */
import assert from "node:assert/strict";
import { hostname } from "node:os";
import { after, before, describe, it } from "node:test";
import { AppError } from "@paddock/protocol";
import { type Kysely, type KyselyPlugin, sql } from "kysely";
import { runSpec } from "../agents/agents.ts";
import { Ledger } from "../gateway/ledger.ts";
import { EventLog } from "../store/event-log.ts";
import { newId } from "../store/ids.ts";
import { Journal } from "../store/journal.ts";
import type { Database, RunsTable } from "../store/schema.ts";
import { type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { openTestStore, runRow, type TestStore } from "../testing/test-store.ts";
import { waitFor } from "../testing/wait.ts";
import { Scheduler } from "../triggers/scheduler.ts";
import { cidrsOverlap, defaultNodeId, Nodes } from "./nodes.ts";

const node = (id: string, sandboxCidr: string, process?: string) => ({
  id,
  version: "test",
  internalUrl: `http://${id}.internal:7420`,
  sandboxCidr,
  ...(process ? { process } : {}),
});

const isCode = (code: string) => (err: unknown) => err instanceof AppError && err.code === code;

describe("nodes over one store", () => {
  let store: TestStore;
  let db: Kysely<Database>;
  let nodes: Nodes;
  let tenant: string;
  let agent: string;

  before(async () => {
    store = await openTestStore("nodes");
    ({ db, tenant, agent } = store);
    nodes = new Nodes(db, { staleMs: 30_000 });
  });
  after(async () => {
    await store?.close();
  });

  it("registers a node and heartbeats on the database's clock", async () => {
    const before = Date.now();
    await nodes.register(node("alpha", "10.1.0.0/16"));
    const [listed] = await nodes.list();
    assert.equal(listed?.id, "alpha");
    assert.equal(listed?.live, true);
    assert.equal(listed?.draining, false);
    assert.equal(listed?.internal_url, "http://alpha.internal:7420");
    const first = await db
      .selectFrom("nodes")
      .select("heartbeat_at")
      .where("id", "=", "alpha")
      .executeTakeFirstOrThrow();
    assert.ok(Number(first.heartbeat_at) >= before - 1000 && Number(first.heartbeat_at) <= Date.now() + 1000);
    await db.updateTable("nodes").set({ heartbeat_at: 5 }).where("id", "=", "alpha").execute();
    assert.equal((await nodes.list())[0]?.live, false, "a node silent for longer than staleMs is not live");
    await nodes.heartbeat("alpha", [], 30_000);
    const beat = await db
      .selectFrom("nodes")
      .select("heartbeat_at")
      .where("id", "=", "alpha")
      .executeTakeFirstOrThrow();
    assert.ok(Number(beat.heartbeat_at) >= before - 1000, "the heartbeat wrote the database's now");
    assert.equal((await nodes.list())[0]?.live, true);
  });

  it("refuses a second live node with the same id, changing nothing", async () => {
    const row = await db.selectFrom("nodes").selectAll().where("id", "=", "alpha").executeTakeFirstOrThrow();
    await assert.rejects(nodes.register(node("alpha", "10.99.0.0/16")), (err: unknown) => {
      assert.ok(isCode("node_refused")(err));
      assert.match((err as Error).message, /Node 'alpha' is already running/);
      return true;
    });
    assert.deepEqual(await db.selectFrom("nodes").selectAll().where("id", "=", "alpha").executeTakeFirstOrThrow(), row);
  });

  it("refuses a sandbox range that overlaps a live node's, saying whose", async () => {
    await assert.rejects(nodes.register(node("beta", "10.1.128.0/17")), (err: unknown) => {
      assert.ok(isCode("node_refused")(err));
      assert.match((err as Error).message, /10\.1\.128\.0\/17 overlaps 10\.1\.0\.0\/16 of live node 'alpha'/);
      return true;
    });
    assert.equal(await db.selectFrom("nodes").select("id").where("id", "=", "beta").executeTakeFirst(), undefined);
    await nodes.register(node("beta", "10.2.0.0/16"));
    assert.deepEqual((await nodes.list()).map((n) => n.id).sort(), ["alpha", "beta"]);
    assert.ok(cidrsOverlap("10.0.0.0/8", "10.2.3.0/24"));
    assert.ok(!cidrsOverlap("10.2.0.0/16", "10.3.0.0/16"));
  });

  it("takes over the id of a node that stopped, went silent, or whose process here is gone", async () => {
    await nodes.stop("beta");
    await nodes.register(node("beta", "10.2.0.0/16"));
    await db.updateTable("nodes").set({ heartbeat_at: 5 }).where("id", "=", "beta").execute();
    await nodes.register(node("beta", "10.2.0.0/16"));
    // A crashed earlier start on this machine: its pid is no process now.
    await db
      .updateTable("nodes")
      .set({ process: `${hostname()}:2147483646` })
      .where("id", "=", "beta")
      .execute();
    await nodes.register(node("beta", "10.2.0.0/16"));
    // The same id live on another machine is refused.
    await db.updateTable("nodes").set({ process: "elsewhere:1" }).where("id", "=", "beta").execute();
    await assert.rejects(nodes.register(node("beta", "10.2.0.0/16")), isCode("node_refused"));
    // A stopped node's range is free again.
    await db.updateTable("nodes").set({ stopped_at: 1 }).where("id", "=", "beta").execute();
    await nodes.register(node("gamma", "10.2.0.0/24"));
    assert.match(defaultNodeId("/var/lib/paddock"), /^[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{6}$/);
    assert.equal(defaultNodeId("/var/lib/paddock"), defaultNodeId("/var/lib/paddock"));
  });

  it("renews every lease a node holds in one statement, and tells it which runs are no longer its own", async () => {
    const mine = [1, 2, 3].map((n) =>
      runRow(tenant, agent, { worker_id: "alpha", lease_until: 0, cancel_requested: n === 2 ? 1 : 0 }),
    );
    const taken = runRow(tenant, agent, { worker_id: "beta", lease_until: 0 });
    const other = runRow(tenant, agent, { worker_id: "beta", lease_until: 0 });
    await db
      .insertInto("runs")
      .values([...mine, taken, other])
      .execute();
    const updates: string[] = [];
    const counting: KyselyPlugin = {
      transformQuery(args) {
        if (args.node.kind === "UpdateQueryNode") {
          const table = JSON.stringify(args.node.table);
          updates.push(table.includes('"runs"') ? "runs" : "other");
        }
        return args.node;
      },
      transformResult: async (args) => args.result,
    };
    const counted = new Nodes(db.withPlugin(counting));
    const held = [...mine, taken].map((r) => ({ runId: r.id, attempt: 1 }));
    const before = Date.now();
    const beat = await counted.heartbeat("alpha", held, 60_000);
    assert.deepEqual(updates.filter((u) => u === "runs").length, 1, "one statement renews the node's leases");
    assert.deepEqual([...beat.renewed].sort(), mine.map((r) => r.id).sort());
    assert.deepEqual([...beat.canceled], [mine[1]?.id], "the same statement names the run whose cancel was asked for");
    const rows = await db.selectFrom("runs").select(["id", "lease_until"]).execute();
    for (const r of rows) {
      const ours = mine.some((m) => m.id === r.id);
      assert.equal(Number(r.lease_until) >= before + 59_000, ours, `lease of ${r.id}`);
    }
    await db.deleteFrom("runs").execute();
  });

  it("drains a node: the flag its heartbeat reads; not_found for an unknown node", async () => {
    const drained = await nodes.drain("alpha");
    assert.equal(drained.draining, true);
    assert.equal((await nodes.heartbeat("alpha", [], 1000)).draining, true);
    assert.equal(await nodes.draining("alpha"), true);
    await assert.rejects(nodes.drain("nobody"), isCode("not_found"));
  });
});

describe("a node's engine, fence and recovery", () => {
  let h: NoRootHost;
  let agentId: string;
  const api = async (method: string, path: string, payload?: unknown) => {
    const res = await h.services.app.request(path, {
      method,
      headers: { authorization: `Bearer ${h.adminKey}`, "content-type": "application/json" },
      ...(payload === undefined ? {} : { body: JSON.stringify(payload) }),
    });
    // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers.
    const body: any = await res.json();
    return { status: res.status, body };
  };
  const status = async (id: string) =>
    (await h.db.selectFrom("runs").selectAll().where("id", "=", id).executeTakeFirstOrThrow()) as RunsTable;

  before(async () => {
    h = await startNoRootHost();
    agentId = (await api("POST", "/v1/agents", { name: "drained", instructions: "Say hi.", model: "m" })).body.id;
  });
  after(async () => {
    await h?.close();
  });

  it("a draining node leaves queued runs queued; health and the node list say it drains", async () => {
    const id = h.services.nodeId;
    assert.equal((await api("GET", "/v1/health")).body.draining, false);
    const drained = await api("POST", `/v1/nodes/${id}/drain`);
    assert.equal(drained.status, 200);
    assert.equal(drained.body.draining, true);
    const run = (await api("POST", `/v1/agents/${agentId}/runs`, {})).body;
    h.services.engine.notify();
    await h.services.engine.settled();
    assert.equal((await status(run.id)).status, "queued");
    assert.equal(h.driver.refused, 0, "no sandbox was asked for");
    assert.deepEqual(await api("GET", "/v1/health"), {
      status: 200,
      body: { ok: true, version: "0.1.0", node: id, draining: true, database: "ok" },
    });
    const listed = (await api("GET", "/v1/nodes")).body.data;
    assert.deepEqual(
      listed.map((n: { id: string; draining: boolean }) => [n.id, n.draining]),
      [[id, true]],
    );
  });

  it("at start recovers runs whose lease lapsed, and leaves a live node's runs alone", async () => {
    const queued = () => api("POST", `/v1/agents/${agentId}/runs`, {}).then((r) => r.body.id as string);
    const [live, lapsed, ownEarlier] = [await queued(), await queued(), await queued()];
    const hold = (id: string, worker: string, lease: number) =>
      h.db
        .updateTable("runs")
        .set({ status: "running", attempt: 1, worker_id: worker, lease_until: lease })
        .where("id", "=", id)
        .execute();
    await hold(live, "other-node", Date.now() + 600_000);
    await hold(lapsed, "other-node", Date.now() - 1000);
    await hold(ownEarlier, h.services.nodeId, Date.now() + 600_000);
    assert.equal(await h.services.engine.reconcile(), 2);
    assert.equal((await status(live)).status, "running");
    assert.equal((await status(live)).worker_id, "other-node");
    for (const id of [lapsed, ownEarlier]) {
      const row = await status(id);
      assert.deepEqual([row.status, row.reason], ["failed", "lost"], id);
    }
    // A live node's open reservation stays open; a lapsed one's is billed.
    const ledger = new Ledger(h.db);
    const tenantId = (await status(live)).tenant_id;
    await ledger.grant(tenantId, 1_000_000);
    const reserve = (runId: string) =>
      ledger.reserve({ tenantId, agentId, runId, inputMicro: 10, outputMicroPerToken: 1, maxOutputTokens: 10 });
    await reserve(live);
    await reserve(lapsed);
    assert.equal(await new Ledger(h.db).settleAbandoned(h.services.nodeId), 1);
    const calls = await ledger.runCalls(tenantId, live);
    assert.deepEqual(
      calls.calls.map((c) => c.status),
      ["reserved"],
    );
    assert.deepEqual(
      (await ledger.runCalls(tenantId, lapsed)).calls.map((c) => c.status),
      ["settled"],
    );
  });

  it("refuses every write of an attempt once another node took its run over, recording nothing", async () => {
    const runId = (await api("POST", `/v1/agents/${agentId}/runs`, {})).body.id as string;
    const me = h.services.nodeId;
    await h.db
      .updateTable("runs")
      .set({ status: "running", attempt: 1, worker_id: me, lease_until: Date.now() + 60_000 })
      .where("id", "=", runId)
      .execute();
    const fence = { runId, attempt: 1, workerId: me };
    const events = h.services.runs;
    const log = { type: "log" as const, data: { stream: "stdout" as const, line: "mine" } };
    const writer = new EventLog(h.db);
    await writer.write(runId, 1, [log], fence);
    const count = async () =>
      Number(
        (await sql<{ n: number }>`SELECT count(*) AS n FROM events WHERE run_id = ${runId}`.execute(h.db)).rows[0]?.n,
      );
    const before = await count();

    // Another node recovers the run and claims it: attempt 2 on node-b.
    await h.db.updateTable("runs").set({ attempt: 2, worker_id: "node-b" }).where("id", "=", runId).execute();
    const lost = isCode("lease_lost");
    await assert.rejects(writer.write(runId, 1, [log], fence), lost);
    await assert.rejects(
      h.services.artifacts.record(
        { runId, tenantId: (await status(runId)).tenant_id, attempt: 1 },
        [{ id: newId("art"), path: "x", size: 1, sha256: "0".repeat(64), content_type: "text/plain" }],
        [],
        fence,
      ),
      lost,
    );
    await assert.rejects(
      events.transition(runId, {
        from: ["running"],
        to: "succeeded",
        patch: { reason: "completed" },
        events: [],
        fence,
      }),
      lost,
    );
    await assert.rejects(
      new Journal(h.db).record(fence, "llm#1", "hash", { status: 200, headers: {}, body: Buffer.from("{}") }),
      lost,
    );
    const ledger = new Ledger(h.db);
    const tenantId = (await status(runId)).tenant_id;
    await assert.rejects(
      ledger.reserve({ tenantId, agentId, runId, inputMicro: 1, outputMicroPerToken: 1, maxOutputTokens: 1, fence }),
      lost,
    );
    assert.equal(await count(), before, "no event of the old attempt was recorded");
    assert.equal((await h.db.selectFrom("artifacts").select("id").where("run_id", "=", runId).execute()).length, 0);
    assert.equal((await h.db.selectFrom("journal").select("step").where("run_id", "=", runId).execute()).length, 0);
    assert.equal((await ledger.runCalls(tenantId, runId)).calls.length, 0);
    const row = await status(runId);
    assert.deepEqual([row.status, row.attempt, row.worker_id], ["running", 2, "node-b"]);
    // The new owner's writes go through.
    await writer.write(runId, 2, [log], { runId, attempt: 2, workerId: "node-b" });
    assert.equal(await count(), before + 1);
  });

  it("counts an agent's limit over every node, inside the claim", async () => {
    const limited = (
      await api("POST", "/v1/agents", { name: "limited", instructions: "Say hi.", model: "m", max_concurrent_runs: 1 })
    ).body.id as string;
    // Still draining: both runs stay queued until the other node holds the first.
    const first = (await api("POST", `/v1/agents/${limited}/runs`, {})).body.id as string;
    const second = (await api("POST", `/v1/agents/${limited}/runs`, {})).body.id as string;
    await h.db
      .updateTable("runs")
      .set({ status: "running", attempt: 1, worker_id: "other-node", lease_until: Date.now() + 600_000 })
      .where("id", "=", first)
      .execute();
    await h.db.updateTable("nodes").set({ draining: 0 }).where("id", "=", h.services.nodeId).execute();
    h.services.engine.notify();
    await h.services.engine.settled();
    assert.equal((await status(second)).status, "queued", "the agent's one run goes on another node");
    await h.db.updateTable("runs").set({ status: "succeeded", lease_until: null }).where("id", "=", first).execute();
    h.services.engine.notify();
    await h.services.engine.settled();
    const claimed = await status(second);
    assert.deepEqual([claimed.worker_id, claimed.attempt], [h.services.nodeId, 1], "claimed here once the other ended");
  });

  it("ticks schedules only on the leader", async () => {
    const schedule = (await api("POST", "/v1/schedules", { agent: agentId, cron: "* * * * *" })).body.id as string;
    await h.db
      .updateTable("schedules")
      .set({ next_at: Date.now() - 1000 })
      .where("id", "=", schedule)
      .execute();
    const fired = async () =>
      (await h.db.selectFrom("runs").select("id").where("trigger", "=", "schedule").execute()).length;
    const scheduler = (leads: boolean, asked: { n: number }) =>
      new Scheduler({
        db: h.db,
        runs: h.services.runs,
        specOf: (tenantId, agent) => h.services.agents.get(tenantId, agent).then(runSpec),
        notify: () => {},
        log: () => {},
        leader: {
          isLeader: async () => {
            asked.n++;
            return leads;
          },
          release: async () => {},
        },
      });
    const followerAsked = { n: 0 };
    const follower = scheduler(false, followerAsked);
    follower.start(5);
    await waitFor(() => followerAsked.n >= 3, { what: "the follower to ask three times" });
    await follower.stop();
    assert.equal(await fired(), 0, "a node that does not lead fires no slot");
    const leader = scheduler(true, { n: 0 });
    leader.start(5);
    await waitFor(async () => (await fired()) === 1, { what: "the leader to fire the slot" });
    await leader.stop();
  });
});
