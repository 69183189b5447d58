/**
 * Bridge connections through the HTTP API of a real host: create and replace, validation errors
 * with their codes, secrets that must exist, tenant isolation, and agents' policies that must
 * name existing connections (which then cannot be deleted).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { newId } from "../store/ids.ts";
import { openSqlite } from "../store/sqlite.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { type ApiResult, hostSkipReason, startTestHost, type TestHost } from "../testing/harness.ts";

const skip = e2eSkip(hostSkipReason());

const github = {
  base_url: "https://API.github.com/",
  secret: "gh-token",
  auth: { type: "bearer" },
  policy: {
    allow: [
      { methods: ["GET"], path: "/repos/*/*/issues" },
      { methods: ["POST"], path: "/repos/*/*/issues/*/comments" },
    ],
    rate_limit: { requests: 60, per_s: 60 },
  },
};

function expectError(
  res: ApiResult,
  status: number,
  code: string,
): { code: string; message: string; details?: unknown } {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body.error.code, code, JSON.stringify(res.body));
  assert.ok(res.body.error.message.length > 5);
  return res.body.error;
}

const paths = (res: ApiResult) => (res.body.error.details as { path: string }[]).map((d) => d.path);

describe("connections API", { skip }, () => {
  let t: TestHost;
  let keyA: string;
  let keyB: string;

  /** Sets a secret: through the secrets API when the host has one, else straight into the store. */
  async function setSecret(key: string, tenantId: string, name: string): Promise<void> {
    const res = await t.api("PUT", `/v1/secrets/${name}`, { value: `value-of-${name}` }, key);
    if (res.status === 200 || res.status === 201) return;
    assert.equal(res.body?.error?.code, "route_not_found", JSON.stringify(res.body));
    const db = openSqlite(join(t.dataDir, "paddock.db"));
    try {
      const now = Date.now();
      await db
        .insertInto("secrets")
        .values({
          id: newId("sec"),
          tenant_id: tenantId,
          name,
          sealed: "{}",
          master_key_id: "mk-test",
          version: 1,
          created_at: now,
          updated_at: now,
        })
        .execute();
    } finally {
      await db.destroy();
    }
  }

  async function tenantKey(name: string): Promise<{ key: string; tenantId: string }> {
    const tenant = await t.api("POST", "/v1/tenants", { name });
    assert.equal(tenant.status, 201, JSON.stringify(tenant.body));
    const key = await t.api("POST", `/v1/tenants/${tenant.body.id}/keys`, {});
    assert.equal(key.status, 201, JSON.stringify(key.body));
    return { key: key.body.key, tenantId: tenant.body.id };
  }

  before(async () => {
    t = await startTestHost();
    const a = await tenantKey("conn-a");
    const b = await tenantKey("conn-b");
    keyA = a.key;
    keyB = b.key;
    await setSecret(keyA, a.tenantId, "gh-token");
    await setSecret(keyB, b.tenantId, "b-token");
  });
  after(async () => {
    await t?.close();
  });

  it("describes the routes and bodies in the OpenAPI document", async () => {
    const doc = (await t.api("GET", "/v1/openapi.json", undefined, null)).body;
    assert.ok(doc.paths["/v1/connections"].get);
    for (const m of ["put", "get", "delete"]) assert.ok(doc.paths["/v1/connections/{name}"][m], m);
    assert.deepEqual(doc.components.schemas.ConnectionPut.required.sort(), ["auth", "base_url", "policy"]);
    assert.ok(doc.components.schemas.AgentCreate.properties.policy);
  });

  it("creates a connection with PUT, then replaces it", async () => {
    const created = await t.api("PUT", "/v1/connections/github", github, keyA);
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.equal(created.body.name, "github");
    assert.equal(created.body.base_url, "https://api.github.com");
    assert.equal(created.body.secret, "gh-token");
    assert.equal(created.body.internal, false);
    assert.equal(created.body.timeout_ms, 30_000);
    assert.equal(created.body.max_response_bytes, 32 * 1024 * 1024);
    assert.ok(!JSON.stringify(created.body).includes("value-of-"));

    const replaced = await t.api("PUT", "/v1/connections/github", { ...github, timeout_ms: 5000 }, keyA);
    assert.equal(replaced.status, 200, JSON.stringify(replaced.body));
    assert.equal(replaced.body.timeout_ms, 5000);
    assert.equal(replaced.body.created_at, created.body.created_at);

    const got = await t.api("GET", "/v1/connections/github", undefined, keyA);
    assert.equal(got.status, 200);
    assert.deepEqual(got.body, replaced.body);
    const list = await t.api("GET", "/v1/connections", undefined, keyA);
    assert.deepEqual(
      list.body.data.map((c: { name: string }) => c.name),
      ["github"],
    );
    assert.equal(list.body.next_cursor, null);
  });

  it("refuses invalid definitions with validation_failed and the field at fault", async () => {
    const cases: [unknown, string][] = [
      [{ ...github, base_url: "ftp://example.com" }, "base_url"],
      [{ ...github, base_url: "https://user:pw@example.com" }, "base_url"],
      [{ ...github, base_url: "https://example.com/?token=1" }, "base_url"],
      [{ ...github, base_url: "http://169.254.169.254/" }, "base_url"],
      [{ ...github, base_url: "http://127.0.0.1:9/" }, "base_url"],
      [{ ...github, secret: undefined }, "secret"],
      [{ ...github, auth: { type: "header", name: "Host" } }, "auth.name"],
      [{ ...github, auth: { type: "magic" } }, "auth.type"],
      [{ ...github, policy: { allow: [{ methods: ["TRACE"], path: "/**" }] } }, "policy.allow.0.methods.0"],
      [{ ...github, policy: { allow: [{ methods: ["GET"], path: "/repos/../admin" }] } }, "policy.allow.0.path"],
      [{ ...github, policy: { allow: [{ methods: ["GET"], path: "/a/**/b" }] } }, "policy.allow.0.path"],
      [{ ...github, policy: { allow: [] } }, "policy.allow"],
      [
        { ...github, policy: { ...github.policy, rate_limit: { requests: 0, per_s: 1 } } },
        "policy.rate_limit.requests",
      ],
      [{ ...github, timeout_ms: 10_000_000 }, "timeout_ms"],
      [{ ...github, surprise: true }, ""],
    ];
    for (const [body, where] of cases) {
      const res = await t.api("PUT", "/v1/connections/bad", body, keyA);
      expectError(res, 400, "validation_failed");
      assert.ok(paths(res).includes(where), `${where}: ${JSON.stringify(res.body)}`);
    }
    expectError(await t.api("GET", "/v1/connections/bad", undefined, keyA), 404, "not_found");
  });

  it("accepts an internal upstream on a private address from the admin key only", async () => {
    const body = {
      base_url: "http://10.0.0.5:8080/api",
      auth: { type: "none" },
      internal: true,
      policy: { allow: [{ methods: ["GET"], path: "/**" }] },
    };
    const refused = await t.api("PUT", "/v1/connections/intranet", body, keyA);
    assert.equal(refused.status, 403, JSON.stringify(refused.body));
    assert.equal(refused.body.error.code, "forbidden");
    const res = await t.api("PUT", "/v1/connections/intranet", body);
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.secret, null);
    assert.equal((await t.api("DELETE", "/v1/connections/intranet")).status, 200);
  });

  it("refuses a secret that does not exist, or is another tenant's, with unknown_secret", async () => {
    const missing = expectError(
      await t.api("PUT", "/v1/connections/x", { ...github, secret: "nope" }, keyA),
      422,
      "unknown_secret",
    );
    assert.deepEqual(missing.details, { secret: "nope" });
    expectError(await t.api("PUT", "/v1/connections/x", { ...github, secret: "b-token" }, keyA), 422, "unknown_secret");
  });

  it("answers unknown and malformed names with not_found, and needs an API key", async () => {
    for (const name of ["nope", "Upper", "a%20b", "-x", "x".repeat(65)]) {
      expectError(await t.api("GET", `/v1/connections/${name}`, undefined, keyA), 404, "not_found");
      expectError(await t.api("DELETE", `/v1/connections/${name}`, undefined, keyA), 404, "not_found");
    }
    expectError(await t.api("PUT", "/v1/connections/Upper", github, keyA), 404, "not_found");
    expectError(await t.api("GET", "/v1/connections", undefined, null), 401, "unauthorized");
    expectError(await t.api("PUT", "/v1/connections/github", github, null), 401, "unauthorized");
  });

  it("keeps tenants apart", async () => {
    assert.deepEqual((await t.api("GET", "/v1/connections", undefined, keyB)).body.data, []);
    expectError(await t.api("GET", "/v1/connections/github", undefined, keyB), 404, "not_found");
    expectError(await t.api("DELETE", "/v1/connections/github", undefined, keyB), 404, "not_found");
    const own = await t.api("PUT", "/v1/connections/github", { ...github, secret: "b-token" }, keyB);
    assert.equal(own.status, 201, JSON.stringify(own.body));
    assert.equal((await t.api("GET", "/v1/connections/github", undefined, keyA)).body.secret, "gh-token");
  });

  describe("agents' policies", () => {
    const agent = (name: string, policy?: unknown) => ({
      name,
      command: ["sh", "-c", "true"],
      ...(policy === undefined ? {} : { policy }),
    });

    it("refuses connections the tenant does not have with unknown_connection", async () => {
      const err = expectError(
        await t.api("POST", "/v1/agents", agent("bridged", { connections: ["github", "slack", "jira"] }), keyA),
        422,
        "unknown_connection",
      );
      assert.deepEqual(err.details, { connections: ["slack", "jira"] });
      assert.match(err.message, /slack, jira/);
      const res = await t.api("GET", "/v1/agents?name=bridged", undefined, keyA);
      assert.deepEqual(res.body.data, []);
    });

    it("refuses malformed policies", async () => {
      for (const policy of [
        { connections: ["github", "github"] },
        { connections: ["Bad Name"] },
        { connections: "github" },
        { connections: [], extra: 1 },
        { connections: Array.from({ length: 65 }, (_, i) => `c${i}`) },
      ]) {
        expectError(await t.api("POST", "/v1/agents", agent("malformed", policy), keyA), 400, "validation_failed");
      }
    });

    it("stores the policy, shows it, and defaults it to no connections", async () => {
      const bridged = await t.api("POST", "/v1/agents", agent("bridged", { connections: ["github"] }), keyA);
      assert.equal(bridged.status, 201, JSON.stringify(bridged.body));
      assert.deepEqual(bridged.body.policy, { connections: ["github"], agents: [] });
      assert.deepEqual((await t.api("GET", `/v1/agents/${bridged.body.id}`, undefined, keyA)).body.policy, {
        connections: ["github"],
        agents: [],
      });
      const plain = await t.api("POST", "/v1/agents", agent("plain"), keyA);
      assert.equal(plain.status, 201, JSON.stringify(plain.body));
      assert.deepEqual(plain.body.policy, { connections: [], agents: [] });
    });

    it("reads agents stored before policies existed as having none", async () => {
      const plain = (await t.api("GET", "/v1/agents?name=plain", undefined, keyA)).body.data[0];
      const db = openSqlite(join(t.dataDir, "paddock.db"));
      try {
        const row = await db.selectFrom("agents").select("spec").where("id", "=", plain.id).executeTakeFirstOrThrow();
        const { policy: _, ...old } = JSON.parse(row.spec);
        await db
          .updateTable("agents")
          .set({ spec: JSON.stringify(old) })
          .where("id", "=", plain.id)
          .execute();
      } finally {
        await db.destroy();
      }
      const res = await t.api("GET", `/v1/agents/${plain.id}`, undefined, keyA);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.deepEqual(res.body.policy, { connections: [], agents: [] });
    });

    it("does not see another tenant's connection of the same name as missing or present wrongly", async () => {
      const res = await t.api("POST", "/v1/agents", agent("b-bot", { connections: ["github"] }), keyB);
      assert.equal(res.status, 201, JSON.stringify(res.body));
      expectError(
        await t.api("POST", "/v1/agents", agent("b-bot2", { connections: ["intranet"] }), keyB),
        422,
        "unknown_connection",
      );
    });

    it("refuses to delete a connection an agent names, with conflict", async () => {
      const err = expectError(await t.api("DELETE", "/v1/connections/github", undefined, keyA), 409, "conflict");
      assert.deepEqual(err.details, { agents: ["bridged"] });
      assert.equal((await t.api("GET", "/v1/connections/github", undefined, keyA)).status, 200);
    });

    it("deletes an unused connection and returns what it was", async () => {
      const put = await t.api("PUT", "/v1/connections/spare", { ...github }, keyA);
      assert.equal(put.status, 201, JSON.stringify(put.body));
      const del = await t.api("DELETE", "/v1/connections/spare", undefined, keyA);
      assert.equal(del.status, 200, JSON.stringify(del.body));
      assert.equal(del.body.name, "spare");
      expectError(await t.api("GET", "/v1/connections/spare", undefined, keyA), 404, "not_found");
    });
  });
});
