/**
 * Which node answers for an edit session, over a real store without root: a session another node
 * holds whose node is down answers node_unavailable and can be discarded here; a request another
 * node already passed on is answered here, never passed again; a node starting up ends only its
 * own sessions (and those from before nodes had ids), never a live node's.
 * Passing requests to a live node is tested end to end (nodes/session-proxy.e2e.test.ts).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { PROXIED_HEADER } from "../api/node-proxy.ts";
import { newId } from "../store/ids.ts";
import type { EnvSessionsTable } from "../store/schema.ts";
import { type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";

describe("edit sessions and their nodes", () => {
  let h: NoRootHost;
  let tenantId: string;
  const api = async (method: string, path: string, headers: Record<string, string> = {}) => {
    const res = await h.services.app.request(path, {
      method,
      headers: { authorization: `Bearer ${h.adminKey}`, ...headers },
    });
    // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers.
    return { status: res.status, body: (await res.json()) as any };
  };
  const agent = async () => {
    const res = await h.services.app.request("/v1/agents", {
      method: "POST",
      headers: { authorization: `Bearer ${h.adminKey}`, "content-type": "application/json" },
      body: JSON.stringify({ name: newId("tst"), instructions: "Say hi.", model: "m" }),
    });
    const body = (await res.json()) as { id: string };
    assert.equal(res.status, 201, JSON.stringify(body));
    return body.id;
  };
  /** An open session row of `agentId`, held by `nodeId`. */
  const session = async (agentId: string, nodeId: string | null) => {
    const now = Date.now();
    const row: EnvSessionsTable = {
      id: newId("ses"),
      tenant_id: tenantId,
      agent_id: agentId,
      status: "active",
      base_version: 1,
      allow: "[]",
      disk_mb: 64,
      memory_mb: 64,
      idle_timeout_s: 3600,
      id_base: 1_000_000_000,
      commands: 0,
      egress_allowed: 0,
      egress_refused: 0,
      created_at: now,
      last_used_at: now,
      ended_at: null,
      end_reason: null,
      frozen_version: null,
      node_id: nodeId,
    };
    await h.db.insertInto("env_sessions").values(row).execute();
    return row.id;
  };
  const statusOf = async (id: string) =>
    (await h.db.selectFrom("env_sessions").select("status").where("id", "=", id).executeTakeFirstOrThrow()).status;
  const node = (id: string, heartbeatAt: number) =>
    h.db
      .insertInto("nodes")
      .values({
        id,
        version: "test",
        internal_url: "http://192.0.2.1:7420",
        sandbox_cidr: "10.232.0.0/16",
        process: "elsewhere:1",
        heartbeat_at: heartbeatAt,
        started_at: heartbeatAt,
        draining: 0,
        stopped_at: null,
      })
      .execute();

  before(async () => {
    h = await startNoRootHost();
    tenantId = (await h.services.identity.authenticate(h.adminKey))?.tenantId ?? "";
    await node("far-down", 0);
    await node("far-live", Date.now() + 600_000);
  });
  after(async () => {
    await h?.close();
  });

  it("a session on a node that is down: node_unavailable, except a discard, which ends it here", async () => {
    const agentId = await agent();
    const id = await session(agentId, "far-down");
    for (const [method, path] of [
      ["GET", `/v1/agents/${agentId}/env/session`],
      ["POST", `/v1/agents/${agentId}/env/session/exec`],
      ["GET", `/v1/agents/${agentId}/env/session/egress`],
      ["POST", `/v1/agents/${agentId}/env/freeze`],
      ["POST", `/v1/agents/${agentId}/env/session`],
    ] as const) {
      const res = await api(method, path);
      assert.equal(res.status, 503, `${method} ${path}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.code, "node_unavailable");
      assert.match(res.body.error.message, /far-down/);
      assert.doesNotMatch(res.body.error.message, /192\.0\.2\.1/);
    }
    assert.equal((await api("GET", `/v1/agents/${agentId}/env/session`, { authorization: "Bearer nope" })).status, 401);
    const discarded = await api("DELETE", `/v1/agents/${agentId}/env/session`);
    assert.equal(discarded.status, 200, JSON.stringify(discarded.body));
    assert.deepEqual([discarded.body.id, discarded.body.status], [id, "lost"]);
    assert.equal(await statusOf(id), "lost");
  });

  it("a request another node passed on is answered here, not passed again", async () => {
    const agentId = await agent();
    await session(agentId, "far-live");
    const res = await api("GET", `/v1/agents/${agentId}/env/session`, { [PROXIED_HEADER]: "far-live" });
    assert.equal(res.status, 409, JSON.stringify(res.body));
    assert.equal(res.body.error.code, "no_session");
  });

  it("a node starting ends its own sessions and those without a node, never another node's", async () => {
    const own = await session(await agent(), h.services.nodeId);
    const old = await session(await agent(), null);
    const other = await session(await agent(), "far-live");
    assert.equal(await h.services.sessions.start(), 2);
    await h.services.sessions.stop();
    assert.deepEqual([await statusOf(own), await statusOf(old), await statusOf(other)], ["lost", "lost", "active"]);
  });
});
