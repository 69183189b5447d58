/**
 * The bridge's checks one at a time, on loopback: a real Bridge, real run tokens, connections and
 * secrets over a real SQLite store and vault, and a local upstream that records what reaches it.
 * The listed "sandbox" is 127.0.0.1, so each test can change exactly one thing (the run the token
 * names, whether the run is still live, the audience) where the end-to-end tests, which need
 * separate sandboxes, change several at once.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { Kysely } from "kysely";
import { Secrets } from "../secrets/secrets.ts";
import { parseMasterKey, Vault } from "../secrets/vault.ts";
import type { NewEvent } from "../store/event-log.ts";
import { newId } from "../store/ids.ts";
import { migrate } from "../store/migrations.ts";
import type { Database } from "../store/schema.ts";
import { openSqlite } from "../store/sqlite.ts";
import { Bridge } from "./bridge.ts";
import { Connections } from "./connections.ts";
import { LiveSandboxes } from "./live.ts";
import { TokenBucket } from "./rate-limit.ts";
import { type RunTokenClaims, RunTokens } from "./tokens.ts";

const SECRET = `tok-${randomBytes(16).toString("hex")}`;

describe("bridge checks", () => {
  let dir: string;
  let db: Kysely<Database>;
  let tokens: RunTokens;
  let vault: Vault;
  let bridge: Bridge;
  let base: string;
  let upstream: http.Server;
  const seen: { method: string; url: string; headers: http.IncomingHttpHeaders }[] = [];
  const live = new LiveSandboxes();
  const events: NewEvent[] = [];
  const tenant = newId("ten");
  const grant: RunTokenClaims = {
    run: newId("run"),
    attempt: 1,
    tenant,
    agent: newId("agt"),
    addr: "127.0.0.1",
    sandbox: "sbx-a",
    scopes: ["bridge:api"],
  };
  const listSandbox = () =>
    live.add({
      address: "127.0.0.1",
      sandboxId: grant.sandbox,
      runId: grant.run,
      attempt: grant.attempt,
      tenantId: tenant,
      agentId: grant.agent,
      record: (e) => events.push(e),
    });
  const call = async (path: string, token: string, init: RequestInit = {}) => {
    const res = await fetch(`${base}${path}`, {
      ...init,
      headers: { ...(init.headers as Record<string, string>), authorization: `Bearer ${token}` },
    });
    const text = await res.text();
    let code: string | undefined;
    try {
      code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
    } catch {}
    return { status: res.status, code, text };
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "paddock-bridge-checks-"));
    db = openSqlite(join(dir, "paddock.db"));
    await migrate(db);
    await db.insertInto("tenants").values({ id: tenant, name: "t", created_at: 0 }).execute();
    vault = new Vault(parseMasterKey(randomBytes(32).toString("base64"), "test"));
    const secrets = new Secrets(db, vault);
    await secrets.set(tenant, "api-key", SECRET);
    upstream = http.createServer((req, res) => {
      seen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers });
      req.resume();
      res.end("ok");
    });
    await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", () => r()));
    const connections = new Connections(db);
    await connections.put(tenant, "api", {
      base_url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
      secret: "api-key",
      auth: { type: "bearer" },
      policy: { allow: [{ methods: ["POST"], path: "/items/**" }] },
      internal: true,
      timeout_ms: 5000,
      max_response_bytes: 65536,
      max_request_bytes: 65536,
    });
    tokens = new RunTokens({ db, sealer: vault, issuer: "paddock:test" });
    await tokens.start();
    bridge = new Bridge({ live, tokens, connections, secrets, rateLimits: new TokenBucket(), log: () => {} });
    base = `http://127.0.0.1:${await bridge.listen("127.0.0.1")}`;
    listSandbox();
  });
  after(async () => {
    await bridge?.close();
    upstream?.close();
    await db?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  test("the sandbox's own token passes and the upstream gets the secret, not the token", async () => {
    const { token } = await tokens.mint(grant);
    const res = await call("/bridge/api/items/1", token, { method: "POST", body: "x" });
    assert.equal(res.status, 200, res.text);
    assert.equal(seen.at(-1)?.headers.authorization, `Bearer ${SECRET}`);
  });

  test("a token of another run, attempt or sandbox is refused from the listed address", async () => {
    for (const other of [
      { ...grant, run: newId("run") },
      { ...grant, attempt: 2 },
      { ...grant, sandbox: "sbx-b" },
      { ...grant, tenant: newId("ten") },
    ]) {
      const { token } = await tokens.mint(other);
      const res = await call("/bridge/api/items/1", token, { method: "POST" });
      assert.equal(res.status, 403, JSON.stringify(other));
      assert.equal(res.code, "token_mismatch");
    }
  });

  test("a token for another audience, signed with this host's own key, is refused", async () => {
    // Another verifier's tokens over the same store and vault: the same signing key, another `aud`.
    const elsewhere = new RunTokens({ db, sealer: vault, issuer: "paddock:test", audience: "paddock-elsewhere" });
    await elsewhere.start();
    const { token } = await elsewhere.mint(grant);
    const kid = (t: string) => JSON.parse(Buffer.from(t.split(".")[0] ?? "", "base64url").toString()).kid;
    assert.equal(kid(token), kid((await tokens.mint(grant)).token), "signed by this host's key");
    const res = await call("/bridge/api/items/1", token, { method: "POST" });
    assert.equal(res.status, 401);
    assert.match(res.code ?? "", /^token_/);
    assert.notEqual(res.code, "token_mismatch", "refused by the verifier, not by the address check");
  });

  test("a token of a run that has ended is dead though unexpired, from the very same address", async () => {
    const { token } = await tokens.mint(grant);
    assert.equal((await call("/bridge/api/items/2", token, { method: "POST" })).status, 200);
    live.remove("127.0.0.1", grant.sandbox);
    try {
      const res = await call("/bridge/api/items/3", token, { method: "POST" });
      assert.equal(res.status, 403);
      assert.equal(res.code, "bridge_unknown_source");
    } finally {
      listSandbox();
    }
  });

  test("method overrides never reach the upstream", async () => {
    const { token } = await tokens.mint(grant);
    const before = seen.length;
    const res = await call("/bridge/api/items/4", token, {
      method: "POST",
      headers: {
        "x-http-method-override": "DELETE",
        "x-http-method": "DELETE",
        "x-method-override": "DELETE",
      },
    });
    assert.equal(res.status, 200, res.text);
    const got = seen.at(-1)?.headers ?? {};
    for (const h of ["x-http-method-override", "x-http-method", "x-method-override"]) assert.equal(got[h], undefined);
    for (const query of ["_method=DELETE", "_METHOD=put", "x-http-method-override=DELETE", "a=1&method=DELETE"]) {
      const refused = await call(`/bridge/api/items/5?${query}`, token, { method: "POST" });
      assert.equal(refused.status, 403, query);
      assert.equal(refused.code, "policy_denied");
    }
    assert.equal(seen.length, before + 1, "no refused call reached the upstream");
    const denial = events.filter((e) => e.type === "bridge.call").at(-1) as { data: { code?: string } };
    assert.equal(denial.data.code, "policy_denied", "denials are recorded on the run");
  });

  test("headers the caller names in Connection are dropped, and a bare connection URL keeps its query", async () => {
    const { token } = await tokens.mint(grant);
    // fetch will not send a Connection header of the caller's: a plain request does.
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${base}/bridge/api/items/6`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${token}`,
          connection: "keep-alive, x-smuggled",
          "x-smuggled": "1",
          "private-token": "mine",
          "x-kept": "yes",
        },
      });
      req.on("response", (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on("error", reject);
      req.end();
    });
    assert.equal(status, 200);
    const got = seen.at(-1)?.headers ?? {};
    assert.equal(got["x-smuggled"], undefined);
    assert.equal(got["private-token"], undefined);
    assert.equal(got["x-kept"], "yes");
    // `/bridge/api?x` is the path "/" with the query x: refused by this policy, and judged as "/".
    const bare = await call("/bridge/api?q=1", token, { method: "POST" });
    assert.equal(bare.code, "policy_denied");
    assert.match(bare.text, / \/\./);
  });
});
