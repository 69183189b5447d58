/** Connections against a real SQLite store (no host): storage, secrets, deletion guard, bridge cache. */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { AppError, type ConnectionPut, DEFAULT_LIMITS } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { newId } from "../store/ids.ts";
import { migrate } from "../store/migrations.ts";
import type { Database } from "../store/schema.ts";
import { openSqlite } from "../store/sqlite.ts";
import { Connections, missingConnections, requireConnections, upstreamUrl } from "./connections.ts";
import { checkBridgePath, matchRule } from "./policy.ts";

const spec = (over: Partial<ConnectionPut> = {}): ConnectionPut => ({
  base_url: "https://API.Example.com/v3/",
  secret: "gh",
  auth: { type: "bearer" },
  policy: { allow: [{ methods: ["GET"], path: "/repos/**" }], rate_limit: { requests: 5, per_s: 60 } },
  internal: false,
  timeout_ms: 30_000,
  max_response_bytes: 1000,
  max_request_bytes: 1000,
  ...over,
});

async function rejects(p: Promise<unknown>, code: string): Promise<AppError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof AppError, String(err));
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${code}`);
}

describe("Connections", () => {
  let dir: string;
  let db: Kysely<Database>;
  let clockMs = 1_700_000_000_000;
  let connections: Connections;
  const tenant = newId("ten");
  const other = newId("ten");

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "paddock-connections-"));
    db = openSqlite(join(dir, "paddock.db"));
    await migrate(db);
    for (const [id, name] of [
      [tenant, "a"],
      [other, "b"],
    ] as const) {
      await db.insertInto("tenants").values({ id, name, created_at: 0 }).execute();
    }
    for (const [t, name] of [
      [tenant, "gh"],
      [other, "other-secret"],
    ] as const) {
      await db
        .insertInto("secrets")
        .values({
          id: newId("sec"),
          tenant_id: t,
          name,
          sealed: "{}",
          master_key_id: "mk-test",
          version: 1,
          created_at: 0,
          updated_at: 0,
        })
        .execute();
    }
    connections = new Connections(db, { now: () => clockMs, cacheTtlMs: 1000 });
  });
  after(async () => {
    await db?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  test("creates, then replaces, keeping the creation time and the normalized base URL", async () => {
    const first = await connections.put(tenant, "github", spec());
    assert.equal(first.created, true);
    assert.equal(first.connection.base_url, "https://api.example.com/v3");
    assert.equal(first.connection.secret, "gh");
    clockMs += 5000;
    const second = await connections.put(tenant, "github", spec({ timeout_ms: 1000 }));
    assert.equal(second.created, false);
    assert.equal(second.connection.timeout_ms, 1000);
    assert.equal(second.connection.created_at, first.connection.created_at);
    assert.notEqual(second.connection.updated_at, first.connection.updated_at);
    const row = await db.selectFrom("connections").selectAll().where("name", "=", "github").executeTakeFirstOrThrow();
    assert.equal(row.secret_name, "gh");
    assert.ok(!row.spec.includes("API.Example"));
  });

  test("refuses a secret the tenant does not have, including another tenant's", async () => {
    await rejects(connections.put(tenant, "x", spec({ secret: "nope" })), "unknown_secret");
    await rejects(connections.put(tenant, "x", spec({ secret: "other-secret" })), "unknown_secret");
    await rejects(connections.get(tenant, "x"), "not_found");
  });

  test("refuses non-public address literals unless internal, and link-local always", async () => {
    for (const url of [
      "http://127.0.0.1:8080",
      "http://10.1.2.3",
      "http://[::1]/",
      "http://0x7f.1/",
      "http://2130706433/",
      "http://localhost:3000",
      "http://api.localhost.",
      "http://192.168.0.1/api",
    ]) {
      const err = await rejects(connections.put(tenant, "x", spec({ base_url: url })), "validation_failed");
      assert.match(err.message, /internal/, url);
      await connections.put(tenant, "x", spec({ base_url: url, internal: true }));
    }
    for (const url of [
      "http://169.254.169.254/latest",
      "http://[fe80::1]/",
      "http://0.0.0.0/",
      "http://[fd00:ec2::254]/",
    ]) {
      await rejects(connections.put(tenant, "x", spec({ base_url: url, internal: true })), "validation_failed");
    }
    await connections.delete(tenant, "x");
  });

  test("lists by name and keeps tenants apart", async () => {
    await connections.put(tenant, "alpha", spec({ secret: undefined, auth: { type: "none" } }));
    assert.deepEqual(
      (await connections.list(tenant)).map((c) => c.name),
      ["alpha", "github"],
    );
    assert.deepEqual(await connections.list(other), []);
    await rejects(connections.get(other, "github"), "not_found");
    assert.equal(await connections.forBridge(other, "github"), null);
    await rejects(connections.delete(other, "github"), "not_found");
  });

  test("forBridge compiles the connection and caches it until put or delete", async () => {
    const c = await connections.forBridge(tenant, "github");
    assert.ok(c);
    assert.equal(c.baseUrl, "https://api.example.com/v3");
    assert.equal(c.secret, "gh");
    assert.deepEqual(c.rateLimit, { requests: 5, per_s: 60 });
    assert.equal(matchRule(c.policy, "GET", "/repos/a/b")?.path, "/repos/**");
    assert.equal(matchRule(c.policy, "POST", "/repos/a/b"), null);
    assert.equal(upstreamUrl(c, checkBridgePath("/repos/a?x=1")), "https://api.example.com/v3/repos/a?x=1");
    assert.equal(upstreamUrl(c, checkBridgePath("/repos/a")), "https://api.example.com/v3/repos/a");
    assert.equal(await connections.forBridge(tenant, "github"), c, "served from the cache");

    await connections.put(tenant, "github", spec({ policy: { allow: [{ methods: ["POST"], path: "/repos/**" }] } }));
    const replaced = await connections.forBridge(tenant, "github");
    assert.ok(replaced && replaced !== c);
    assert.equal(replaced.rateLimit, null);
    assert.ok(matchRule(replaced.policy, "POST", "/repos/a"));

    assert.equal(await connections.forBridge(tenant, "later"), null);
    await connections.put(tenant, "later", spec());
    assert.ok(await connections.forBridge(tenant, "later"), "a put clears a cached absence");
    await connections.delete(tenant, "later");
    assert.equal(await connections.forBridge(tenant, "later"), null, "a delete clears the cache");
  });

  test("a change made elsewhere shows once the cache entry expires", async () => {
    const before = await connections.forBridge(tenant, "alpha");
    assert.ok(before);
    await db.deleteFrom("connections").where("name", "=", "alpha").execute();
    assert.equal(await connections.forBridge(tenant, "alpha"), before);
    clockMs += 1001;
    assert.equal(await connections.forBridge(tenant, "alpha"), null);
  });

  test("an agent's policy keeps its connections from being deleted", async () => {
    await connections.put(tenant, "used", spec());
    await connections.put(tenant, "used_2", spec());
    const definition = (command: string[], policy?: unknown) =>
      JSON.stringify({ command, env: {}, limits: DEFAULT_LIMITS, cwd: "/", files: [], ...(policy ? { policy } : {}) });
    const agent = (name: string, policy?: unknown) => ({
      id: newId("agt"),
      tenant_id: tenant,
      name,
      spec: definition(["true"], policy),
      current_version: 1,
      version: 1,
      archived_at: null,
      created_at: 0,
    });
    await db
      .insertInto("agents")
      .values([agent("bot", { connections: ["used"] }), agent("old"), agent("mentions", { connections: [] })])
      .execute();
    // The LIKE prefilter also finds "used_2"-like names and the text "used" elsewhere; the parsed policy decides.
    await db
      .updateTable("agents")
      .set({ spec: definition(["echo", "used"], { connections: [] }) })
      .where("name", "=", "mentions")
      .execute();
    const err = await rejects(connections.delete(tenant, "used"), "conflict");
    assert.deepEqual(err.details, { agents: ["bot"] });
    await connections.get(tenant, "used");
    await connections.delete(tenant, "used_2");
    // An archived agent starts no runs: it no longer keeps the connection.
    await db.updateTable("agents").set({ archived_at: Date.now() }).where("name", "=", "bot").execute();
    await connections.delete(tenant, "used");
    await db.deleteFrom("agents").where("tenant_id", "=", tenant).execute();
  });

  test("missingConnections and requireConnections name what the tenant lacks", async () => {
    assert.deepEqual(await missingConnections(db, tenant, []), []);
    assert.deepEqual(await missingConnections(db, tenant, ["github", "nope", "zz"]), ["nope", "zz"]);
    assert.deepEqual(await missingConnections(db, other, ["github"]), ["github"]);
    const err = await rejects(requireConnections(db, tenant, ["github", "nope"]), "unknown_connection");
    assert.deepEqual(err.details, { connections: ["nope"] });
    await requireConnections(db, tenant, ["github"]);
  });
});
