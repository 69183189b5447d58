/**
 * An edit session lives on the node that opened it; another node passes its requests there. Two
 * real hosts cannot share one SQLite store, so node B (a host process of its own, its own data
 * folder and sandbox range) opens the session, and node A's store is given what a shared store
 * would hold: B's row in `nodes` (its API's URL) and the tenant, key, agent (with its versions and
 * snapshots) and session rows B wrote. A then passes HTTP requests and the terminal WebSocket to
 * B, which answers for its own session; a request already passed once is answered where it
 * arrives; B down or not answering → node_unavailable.
 */
import assert from "node:assert/strict";
import { mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Kysely } from "kysely";
import WebSocket from "ws";
import { PROXIED_HEADER } from "../api/node-proxy.ts";
import { unsealRunners } from "../images/runner-registry.ts";
import type { Database } from "../store/schema.ts";
import { openSqlite } from "../store/sqlite.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, startTestHost, type TestHost, testImagesDir, uniqueName } from "../testing/harness.ts";
import { type HostChild, spawnHost } from "../testing/host-child.ts";
import { waitFor } from "../testing/wait.ts";

const skip = e2eSkip(hostSkipReason());
const B_ID = `proxy-b-${process.pid}`;

// biome-ignore lint/suspicious/noExplicitAny: JSON.
type Json = any;

describe("edit sessions across nodes", { skip }, () => {
  let a: TestHost;
  let b: HostChild;
  let bDir: string;
  let aDb: Kysely<Database>;
  let key: string;
  let agentId: string;
  let sessionId: string;

  const call = async (base: string, method: string, path: string, body?: unknown, headers = {}) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json", ...headers },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: res.status, body: (await res.json()) as Json };
  };
  /** B heartbeats, as far as A's store knows. */
  const beat = (at = Date.now()) => aDb.updateTable("nodes").set({ heartbeat_at: at }).where("id", "=", B_ID).execute();

  before(async () => {
    a = await startTestHost({ warmSandboxes: 0 });
    bDir = await realpath(await mkdtemp(join(tmpdir(), "paddock-test-b-")));
    b = await spawnHost({
      dataDir: bDir,
      port: 0,
      imagesDir: testImagesDir(),
      nodeId: B_ID,
      sandboxCidr: "10.231.0.0/16",
      warmSandboxes: 0,
    });
    // On B: a tenant, its key, an agent and the agent's open session.
    const admin = { authorization: `Bearer ${b.adminKey}` };
    key = b.adminKey;
    const tenant = await call(b.url, "POST", "/v1/tenants", { name: uniqueName("far") }, admin);
    assert.equal(tenant.status, 201, JSON.stringify(tenant.body));
    const made = await call(b.url, "POST", `/v1/tenants/${tenant.body.id}/keys`, {}, admin);
    assert.equal(made.status, 201, JSON.stringify(made.body));
    key = made.body.key;
    const agent = await call(b.url, "POST", "/v1/agents", { name: uniqueName("far"), command: ["true"] });
    assert.equal(agent.status, 201, JSON.stringify(agent.body));
    agentId = agent.body.id;
    const opened = await call(b.url, "POST", `/v1/agents/${agentId}/env/session`, {});
    assert.equal(opened.status, 201, JSON.stringify(opened.body));
    sessionId = opened.body.id;

    // Into A's store, what a shared store would hold: B's node row and the rows B wrote.
    aDb = openSqlite(join(a.dataDir, "paddock.db"));
    const bDb = openSqlite(join(bDir, "paddock.db"));
    try {
      const tenantId = tenant.body.id as string;
      await aDb
        .insertInto("tenants")
        .values(await bDb.selectFrom("tenants").selectAll().where("id", "=", tenantId).execute())
        .execute();
      await aDb
        .insertInto("api_keys")
        .values(await bDb.selectFrom("api_keys").selectAll().where("tenant_id", "=", tenantId).execute())
        .execute();
      await aDb
        .insertInto("agents")
        .values(await bDb.selectFrom("agents").selectAll().where("id", "=", agentId).execute())
        .execute();
      for (const table of ["agent_versions", "snapshots"] as const) {
        const rows = await bDb.selectFrom(table).selectAll().where("agent_id", "=", agentId).execute();
        await aDb.insertInto(table).values(rows).execute();
      }
      const session = await bDb.selectFrom("env_sessions").selectAll().where("id", "=", sessionId).execute();
      assert.equal(session[0]?.node_id, B_ID, "the session's row names its node");
      await aDb.insertInto("env_sessions").values(session).execute();
      await aDb
        .insertInto("nodes")
        .values({
          id: B_ID,
          version: "test",
          internal_url: b.url,
          sandbox_cidr: "10.231.0.0/16",
          process: "elsewhere:1",
          heartbeat_at: Date.now(),
          started_at: Date.now(),
          draining: 0,
          stopped_at: null,
        })
        .execute();
    } finally {
      await bDb.destroy();
    }
  });

  after(async () => {
    await aDb?.destroy();
    await a?.close();
    if (b && b.child.exitCode === null) {
      const exited = new Promise((r) => b.child.once("exit", r));
      b.child.kill("SIGTERM");
      await exited;
    }
    if (bDir) {
      await unsealRunners(bDir);
      await rm(bDir, { recursive: true, force: true });
    }
  });

  it("A passes the session's HTTP requests to B, which answers for its own session", async () => {
    await beat();
    const got = await call(a.host.url, "GET", `/v1/agents/${agentId}/env/session`);
    assert.equal(got.status, 200, JSON.stringify(got.body));
    assert.equal(got.body.id, sessionId);
    // A command through A runs in B's session: what it writes, B's own API sees next.
    const wrote = await call(a.host.url, "POST", `/v1/agents/${agentId}/env/session/exec`, {
      argv: ["sh", "-c", "echo through-a > /root/mark && cat /root/mark"],
    });
    assert.equal(wrote.status, 200, JSON.stringify(wrote.body));
    assert.equal(wrote.body.stdout, "through-a\n");
    const read = await call(b.url, "POST", `/v1/agents/${agentId}/env/session/exec`, { argv: ["cat", "/root/mark"] });
    assert.equal(read.body.stdout, "through-a\n");
    const egress = await call(a.host.url, "GET", `/v1/agents/${agentId}/env/session/egress?limit=5`);
    assert.deepEqual([egress.status, egress.body.data], [200, []]);
  });

  it("A passes the terminal WebSocket to B, frames both ways", async () => {
    await beat();
    const ws = new WebSocket(
      `${a.host.url.replace(/^http/, "ws")}/v1/agents/${agentId}/env/session/shell?rows=24&cols=80`,
      {
        headers: { authorization: `Bearer ${key}` },
      },
    );
    let output = "";
    let exit: Json = null;
    ws.on("message", (data, isBinary) => {
      if (isBinary) output += data.toString();
      else exit = JSON.parse(data.toString());
    });
    await new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    });
    ws.send(Buffer.from("cat /root/mark; echo sum-$((6*7))\n"), { binary: true });
    await waitFor(() => output.includes("sum-42") && output.includes("through-a"), {
      what: () => `the shell's output through A (so far ${JSON.stringify(output.slice(-200))})`,
    });
    const closed = new Promise((r) => ws.once("close", r));
    ws.send(Buffer.from("exit 3\n"), { binary: true });
    await closed;
    assert.deepEqual([exit?.type, exit?.code], ["exit", 3]);

    // B refuses an upgrade (a terminal too large): its answer comes back through A as it was.
    const refused = await new Promise<{ status: number; body: Json }>((resolve, reject) => {
      const bad = new WebSocket(
        `${a.host.url.replace(/^http/, "ws")}/v1/agents/${agentId}/env/session/shell?rows=5000`,
        {
          headers: { authorization: `Bearer ${key}` },
        },
      );
      bad.once("unexpected-response", (_req, res) => {
        let text = "";
        res.on("data", (chunk: Buffer) => {
          text += chunk.toString();
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      });
      bad.once("open", () => reject(new Error("the shell opened")));
      bad.once("error", () => {});
    });
    assert.equal(refused.status, 400);
    assert.equal(refused.body.error.code, "validation_failed");
  });

  it("a request already passed on once is answered where it arrives", async () => {
    await beat();
    const again = await call(a.host.url, "GET", `/v1/agents/${agentId}/env/session`, undefined, {
      [PROXIED_HEADER]: "some-node",
    });
    assert.equal(again.status, 409, `${JSON.stringify(again.body)} ${a.logs.slice(-2).join("\n")}`);
    assert.equal(again.body.error.code, "no_session", "A answered itself instead of passing it to B");
  });

  it("B live by its heartbeat but not answering: node_unavailable, without hanging", async () => {
    await beat();
    await aDb.updateTable("nodes").set({ internal_url: "http://127.0.0.1:9" }).where("id", "=", B_ID).execute();
    try {
      const got = await call(a.host.url, "GET", `/v1/agents/${agentId}/env/session`);
      assert.equal(got.status, 503, JSON.stringify(got.body));
      assert.equal(got.body.error.code, "node_unavailable");
      assert.doesNotMatch(got.body.error.message, /127\.0\.0\.1/, "the node's address is not told to the caller");
    } finally {
      await aDb.updateTable("nodes").set({ internal_url: b.url }).where("id", "=", B_ID).execute();
    }
  });

  it("B down: node_unavailable for its session (HTTP and WebSocket), and a discard ends it", async () => {
    await beat(0);
    const got = await call(a.host.url, "GET", `/v1/agents/${agentId}/env/session/egress`);
    assert.equal(got.status, 503, JSON.stringify(got.body));
    assert.equal(got.body.error.code, "node_unavailable");
    assert.match(got.body.error.message, new RegExp(B_ID));
    const refused = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`${a.host.url.replace(/^http/, "ws")}/v1/agents/${agentId}/env/session/shell`, {
        headers: { authorization: `Bearer ${key}` },
      });
      ws.once("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
      ws.once("open", () => reject(new Error("the shell opened")));
      ws.once("error", () => {});
    });
    assert.equal(refused, 503);
    const discarded = await call(a.host.url, "DELETE", `/v1/agents/${agentId}/env/session`);
    assert.equal(discarded.status, 200, JSON.stringify(discarded.body));
    assert.equal(discarded.body.status, "lost");
    assert.match(discarded.body.end_reason, /is down/);
  });
});
