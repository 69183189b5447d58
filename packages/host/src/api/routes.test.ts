/**
 * Every route of the API, read from its own OpenAPI document, against real services over a real
 * SQLite store (testing/no-root-host.ts): who may call it, what bad input answers, and that
 * another tenant's resources answer as unknown ones do. Nothing here needs root, Linux networking
 * or a base image, so it runs on any machine; a route added to the API is covered by being in the
 * document, and fails here until it has the sample values it needs below.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ApprovalRule } from "@paddock/protocol";
import { ApprovalStore } from "../store/approvals.ts";
import { EventLog } from "../store/event-log.ts";
import { newId } from "../store/ids.ts";
import { type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { forEachStore } from "../testing/stores.ts";
import { waitFor } from "../testing/wait.ts";

interface Operation {
  method: string;
  path: string;
  auth: "none" | "tenant" | "admin";
  params: string[];
  query: { name: string; schema: QuerySchema }[];
  /** The request body's media types, or none when the route takes no body. */
  bodyTypes: string[];
}
interface QuerySchema {
  type?: string;
  enum?: string[];
  maxLength?: number;
  minimum?: number;
}
interface Answer {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers.
  body: any;
}

const MALFORMED = "';--";

/** A JSON string that never ends, made as it is read (a reader that stops at its cap stops it). */
function endless(): ReadableStream<Uint8Array> {
  const chunk = new Uint8Array(256 * 1024).fill(0x61);
  let started = false;
  return new ReadableStream({
    pull(controller) {
      controller.enqueue(started ? chunk : new TextEncoder().encode('{"x":"'));
      started = true;
    },
  });
}
const JSON_TYPE = "application/json";

forEachStore((store) =>
  describe(`every API route without root on ${store.name}`, { skip: store.skip }, () => {
    let h: NoRootHost;
    let ops: Operation[];
    /** Two tenants' keys, and tenant A's resources. */
    const keys = { a: "", b: "" };
    const a = {
      tenant: "",
      agent: "",
      run: "",
      artifact: "",
      schedule: "",
      webhook: "",
      notification: "",
      delivery: "",
      account: "",
      approval: "",
    };
    const names = { connection: "conn-a", secret: "sec-a", provider: "prov-a", oauthApp: "app-a", mcpServer: "mcp-a" };
    const requests: string[] = [];

    /** Calls the app as the HTTP server would; no answer may be a 500. */
    const call = async (
      method: string,
      path: string,
      options: { key?: string | null; body?: string | ReadableStream<Uint8Array>; type?: string; length?: string } = {},
    ): Promise<Answer> => {
      const headers: Record<string, string> = {};
      const key = options.key === undefined ? h.adminKey : options.key;
      if (key !== null) headers.authorization = `Bearer ${key}`;
      if (options.type) headers["content-type"] = options.type;
      if (options.length) headers["content-length"] = options.length;
      const res = await h.services.app.request(path, {
        method: method.toUpperCase(),
        headers,
        ...(options.body !== undefined ? { body: options.body, duplex: "half" } : {}),
      });
      const text = await res.text();
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch {}
      requests.push(`${method} ${path} -> ${res.status}`);
      assert.notEqual(res.status, 500, `${method} ${path}: ${text}`);
      return { status: res.status, body };
    };
    const send = (method: string, path: string, body: unknown, key: string | null = h.adminKey) =>
      call(method, path, { key, body: JSON.stringify(body), type: JSON_TYPE });
    const created = async (res: Promise<Answer>) => {
      const answer = await res;
      assert.ok(answer.status === 200 || answer.status === 201, JSON.stringify(answer.body));
      return answer.body;
    };
    const expectError = (res: Answer, status: number, code: string, what: string) => {
      assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body?.error?.code, code, `${what}: ${JSON.stringify(res.body)}`);
      assert.ok(String(res.body.error.message).length > 5, what);
    };

    /** Tenant A's resource a path parameter names (the route's first segment says which kind). */
    const sample = (path: string, param: string): string => {
      const kind = path.split("/")[2];
      const value = (
        {
          "tenants:id": a.tenant,
          "tenants:key_id": keys.a.split(".")[1] ?? "",
          "agents:id": a.agent,
          "agents:version": "1",
          "runs:id": a.run,
          "runs:artifact_id": a.artifact,
          "schedules:id": a.schedule,
          "webhooks:id": a.webhook,
          "hooks:id": a.webhook,
          "notifications:id": a.notification,
          "notifications:delivery_id": a.delivery,
          "approvals:id": a.approval,
          "connections:name": names.connection,
          "mcp-servers:name": names.mcpServer,
          "secrets:name": names.secret,
          "oauth-apps:name": names.oauthApp,
          "accounts:id": a.account,
          "providers:name": names.provider,
          "nodes:id": h.services.nodeId,
        } as Record<string, string>
      )[`${kind}:${param}`];
      if (value === undefined) throw new Error(`no sample value for {${param}} of ${path}: add one to this test`);
      return value;
    };
    /** A value of the same shape that names nothing. */
    const unknown = (value: string) =>
      /^[a-z]{3}_/.test(value)
        ? value.slice(0, 4) + "z".repeat(value.length - 4)
        : /^\d+$/.test(value)
          ? "999"
          : `zz${value}`;
    const pathOf = (op: Operation, value: (param: string) => string) =>
      op.path.replace(/\{(\w+)\}/g, (_, param: string) => encodeURIComponent(value(param)));
    const theirs = (op: Operation) => pathOf(op, (p) => sample(op.path, p));
    const nobodys = (op: Operation) => pathOf(op, (p) => unknown(sample(op.path, p)));

    /** A body each JSON route accepts (for tenant A, or the admin). */
    const validBody = (op: Operation): unknown => {
      const bodies: Record<string, unknown> = {
        "post /v1/tenants": { name: `t-${newId("tmp").slice(-8)}` },
        "post /v1/tenants/{id}/keys": {},
        "post /v1/agents": { name: `agent-${newId("tmp").slice(-8)}`, instructions: "Say hi.", model: "m" },
        "patch /v1/agents/{id}": { max_steps: 5 },
        "put /v1/agents/{id}": { instructions: "Say hi.", model: "m" },
        "post /v1/agents/{id}/rollback": { version: 1 },
        "post /v1/agents/{id}/runs": { end_user: "user-a" },
        "post /v1/agents/{id}/webhooks": { end_user: "user-a" },
        "post /v1/agents/{id}/env/session": {},
        "post /v1/agents/{id}/env/session/exec": { argv: ["true"] },
        "post /v1/agents/{id}/env/freeze": {},
        "post /v1/agents/{id}/mcp-pin": { dry_run: true },
        "post /v1/runs/{id}/cancel": {},
        "post /v1/runs/{id}/replay": {},
        "post /v1/schedules": { agent: a.agent, cron: "0 9 * * *" },
        "put /v1/secrets/{name}": { value: "v" },
        "put /v1/connections/{name}": connection,
        "put /v1/mcp-servers/{name}": mcpServer,
        "put /v1/oauth-apps/{name}": oauthApp,
        "post /v1/connect-sessions": { end_user: "user-a", app: names.oauthApp },
        "put /v1/providers/{name}": provider,
        "post /v1/credits/grants": { tenant: a.tenant, credits: 1 },
        "post /v1/notifications": notification,
        "post /v1/notifications/{id}/rotate": {},
        "post /v1/approvals/{id}": { decision: "approve" },
      };
      const key = `${op.method} ${op.path}`;
      if (!(key in bodies)) throw new Error(`no sample body for ${key}: add one to this test`);
      return bodies[key];
    };
    const connection = {
      base_url: "https://api.example.com/",
      auth: { type: "none" },
      policy: { allow: [{ methods: ["GET"], path: "/**" }] },
    };
    const mcpServer = { url: "https://mcp.example.com/mcp", auth: { type: "none" } };
    const oauthApp = {
      authorize_url: "https://auth.example.com/authorize",
      token_url: "https://auth.example.com/token",
      client_id: "client-a",
      client_secret: names.secret,
    };
    const provider = { kind: "openai", models: { "model-a": { input: 1, output: 1 } } };
    const notification = { url: "https://hooks.example.com/paddock", events: ["run.finished"] };
    /** The key that may call a route: the admin's for admin routes, tenant A's otherwise. */
    const ownKey = (op: Operation) => (op.auth === "admin" ? h.adminKey : keys.a);

    before(async () => {
      h = await startNoRootHost(store);
      const doc = (await call("get", "/v1/openapi.json", { key: null })).body;
      ops = [];
      for (const [path, item] of Object.entries<Record<string, OpenApiOperation>>(doc.paths)) {
        for (const [method, op] of Object.entries(item)) {
          const security = (op.security ?? []).flatMap((s) => Object.keys(s));
          ops.push({
            method,
            path,
            auth: security.includes("admin") ? "admin" : security.includes("bearer") ? "tenant" : "none",
            params: (op.parameters ?? []).filter((p) => p.in === "path").map((p) => p.name),
            query: (op.parameters ?? [])
              .filter((p) => p.in === "query")
              .map((p) => ({ name: p.name, schema: p.schema })),
            bodyTypes: Object.keys(op.requestBody?.content ?? {}),
          });
        }
      }

      for (const tenant of ["a", "b"] as const) {
        const t = await created(send("post", "/v1/tenants", { name: `tenant-${tenant}` }));
        if (tenant === "a") a.tenant = t.id;
        keys[tenant] = (await created(send("post", `/v1/tenants/${t.id}/keys`, {}))).key;
      }
      a.agent = (await created(send("post", "/v1/agents", validBody(op("post", "/v1/agents")), keys.a))).id;
      // Subscribed before the run: its end (the driver refuses to boot it) makes a delivery, left pending.
      a.notification = (await created(send("post", "/v1/notifications", notification, keys.a))).id;
      a.run = (await created(send("post", `/v1/agents/${a.agent}/runs`, {}, keys.a))).id;
      a.delivery = await waitFor(
        async () =>
          (await call("get", `/v1/notifications/${a.notification}/deliveries`, { key: keys.a })).body.data[0]?.id,
        { what: "the run's end to make a delivery" },
      );
      a.artifact = newId("art");
      await h.services.artifacts.record(
        { runId: a.run, tenantId: a.tenant, attempt: 1 },
        [{ id: a.artifact, path: "out.txt", size: 2, sha256: "0".repeat(64), content_type: "text/plain" }],
        [],
      );
      // A call of tenant A's run held for approval (the run ended already: nothing waits on it).
      const held = await new ApprovalStore(h.db, new EventLog(h.db, { dialect: store.name })).ask(
        { runId: a.run, attempt: 1, tenantId: a.tenant, agentId: a.agent },
        {
          kind: "bridge",
          target: names.connection,
          ruleKey: "bridge:conn-a:0",
          step: null,
          hash: "0".repeat(64),
          request: {
            kind: "bridge",
            target: names.connection,
            method: "POST",
            path: "/x",
            query: "",
            url: "https://api.example.com/x",
            headers: {},
            body: { size: 0, sha256: "", preview: "", truncated: false, binary: false },
          },
          held: {},
          body: Buffer.alloc(0),
          rule: ApprovalRule.parse({}),
        },
      );
      a.approval = held.id;
      a.schedule = (await created(send("post", "/v1/schedules", { agent: a.agent, cron: "0 9 * * *" }, keys.a))).id;
      a.webhook = (await created(call("post", `/v1/agents/${a.agent}/webhooks`, { key: keys.a }))).id;
      await created(send("put", `/v1/secrets/${names.secret}`, { value: "s3cret" }, keys.a));
      await created(send("put", `/v1/connections/${names.connection}`, connection, keys.a));
      await created(send("put", `/v1/mcp-servers/${names.mcpServer}`, mcpServer, keys.a));
      await created(send("put", `/v1/oauth-apps/${names.oauthApp}`, oauthApp, keys.a));
      const app = await h.db
        .selectFrom("oauth_apps")
        .select("id")
        .where("tenant_id", "=", a.tenant)
        .executeTakeFirstOrThrow();
      a.account = (await h.services.accounts.store(a.tenant, app.id, "user-a", { access_token: "t" }, [])).id;
      await created(send("put", `/v1/providers/${names.provider}`, provider));
    });
    after(async () => {
      await h?.close();
    });
    const op = (method: string, path: string): Operation => {
      const found = ops.find((o) => o.method === method && o.path === path);
      if (!found) throw new Error(`${method} ${path} is not in the OpenAPI document`);
      return found;
    };

    it("documents every route, each with the key it needs", () => {
      assert.ok(ops.length >= 40, `${ops.length} operations`);
      assert.deepEqual(
        ops.filter((o) => o.auth === "none").map((o) => `${o.method} ${o.path}`),
        ["get /v1/health", "post /v1/hooks/{id}"],
      );
      // A route that reads a body documents it: the cancel route takes an empty one.
      assert.deepEqual(op("post", "/v1/runs/{id}/cancel").bodyTypes, [JSON_TYPE]);
    });

    it("a run on a host whose driver refuses to boot fails, and nothing answered 500", async () => {
      const run = await waitFor(
        async () => {
          const got = (await call("get", `/v1/runs/${a.run}`, { key: keys.a })).body;
          return got.status === "failed" && got;
        },
        { what: "the run to fail" },
      );
      assert.equal(run.reason, "sandbox_error");
      assert.ok(h.driver.refused >= 1);
    });

    it("refuses a missing or unknown key on every route that needs one, and a tenant key on admin routes", async () => {
      for (const o of ops.filter((x) => x.auth !== "none")) {
        const path = theirs(o);
        const what = `${o.method} ${o.path}`;
        expectError(await call(o.method, path, { key: null }), 401, "unauthorized", what);
        expectError(await call(o.method, path, { key: "pdk.key_nope.secret" }), 401, "unauthorized", what);
        expectError(await call(o.method, path, { key: "garbage" }), 401, "unauthorized", what);
        if (o.auth === "admin") expectError(await call(o.method, path, { key: keys.a }), 403, "forbidden", what);
      }
    });

    it("answers malformed JSON, a wrong content type and schema violations with their codes", async () => {
      for (const o of ops.filter((x) => x.bodyTypes.includes(JSON_TYPE))) {
        const what = `${o.method} ${o.path}`;
        const path = theirs(o);
        const key = ownKey(o);
        expectError(
          await call(o.method, path, { key, body: '{"name": "x",', type: JSON_TYPE }),
          400,
          "invalid_json",
          what,
        );
        expectError(
          await call(o.method, path, { key, body: JSON.stringify(validBody(o)), type: "text/plain" }),
          415,
          "unsupported_media_type",
          what,
        );
        for (const bad of [[], 7, { ...(validBody(o) as object), surprise_field: 1 }]) {
          const res = await send(o.method, path, bad, key);
          expectError(res, 400, "validation_failed", `${what} ${JSON.stringify(bad)}`);
          assert.ok(Array.isArray(res.body.error.details) && res.body.error.details.length > 0, what);
        }
        // Over the cap whether it says its length or not; the body is read only up to the cap.
        const declared = await call(o.method, path, { key, body: "{}", type: JSON_TYPE, length: "1099511627776" });
        expectError(declared, 413, "body_too_large", what);
        expectError(await call(o.method, path, { key, body: endless(), type: JSON_TYPE }), 413, "body_too_large", what);
      }
    });

    it("refuses a freeze exclude entry it could not use, naming it, before looking for the session", async () => {
      // Tenant A's agent has no session: a valid body would answer 409 no_session.
      const freeze = `/v1/agents/${a.agent}/env/freeze`;
      expectError(await send("post", freeze, { exclude: ["/tmp"] }, keys.a), 409, "no_session", "a valid exclude");
      for (const bad of ["/tmp/", "/a/../b", "/", "tmp"]) {
        const res = await send("post", freeze, { exclude: ["/tmp", bad] }, keys.a);
        expectError(res, 400, "validation_failed", bad);
        assert.ok(String(res.body.error.message).includes(JSON.stringify(bad)), res.body.error.message);
      }
    });

    it("refuses limits over this host's caps, naming each", async () => {
      const res = await send(
        "post",
        "/v1/agents",
        { name: "greedy", command: ["true"], limits: { memory_mb: 100_000 } },
        keys.a,
      );
      expectError(res, 400, "validation_failed", "limits over the caps");
      assert.equal(res.body.error.message, "Invalid request: limits.memory_mb: at most 8192 on this host.");
      assert.deepEqual(res.body.error.details, [
        { path: "limits.memory_mb", code: "too_big", message: "at most 8192 on this host" },
      ]);
    });

    it("answers a body of another type than the route takes with 415", async () => {
      for (const o of ops.filter((x) => x.bodyTypes.length > 0 && !x.bodyTypes.includes(JSON_TYPE))) {
        if (o.bodyTypes.includes("*/*")) continue;
        const what = `${o.method} ${o.path}`;
        const res = await call(o.method, theirs(o), { key: ownKey(o), body: "plain text", type: "text/plain" });
        expectError(res, 415, "unsupported_media_type", what);
      }
    });

    it("reads no body on a route that documents none", async () => {
      for (const o of ops.filter((x) => x.bodyTypes.length === 0 && x.method !== "get" && x.auth !== "none")) {
        const res = await call(o.method, nobodys(o), { key: ownKey(o), body: '{"broken', type: JSON_TYPE });
        assert.notEqual(res.body?.error?.code, "invalid_json", `${o.method} ${o.path}`);
        assert.notEqual(res.body?.error?.code, "validation_failed", `${o.method} ${o.path}`);
      }
    });

    it("answers a query parameter out of its schema with validation_failed", async () => {
      let checked = 0;
      for (const o of ops) {
        for (const { name, schema } of o.query) {
          const bad = schema.enum
            ? "not-an-option"
            : schema.type === "number" || schema.type === "integer"
              ? "NaN"
              : schema.maxLength !== undefined
                ? "x".repeat(schema.maxLength + 1)
                : null;
          if (bad === null) continue;
          const res = await call(o.method, `${theirs(o)}?${name}=${encodeURIComponent(bad)}`, { key: ownKey(o) });
          expectError(res, 400, "validation_failed", `${o.method} ${o.path}?${name}=${bad}`);
          assert.equal(res.body.error.details[0].path, name);
          checked++;
        }
      }
      assert.ok(checked >= 8, `${checked} query parameters`);
    });

    it("answers a malformed path parameter as it answers an unknown one", async () => {
      for (const o of ops.filter((x) => x.params.length > 0)) {
        const what = `${o.method} ${o.path}`;
        const key = ownKey(o);
        const body = o.bodyTypes.includes(JSON_TYPE) ? JSON.stringify(validBody(o)) : undefined;
        const type = body === undefined ? undefined : JSON_TYPE;
        for (const param of o.params) {
          const path = pathOf(o, (p) => (p === param ? MALFORMED : unknown(sample(o.path, p))));
          const malformed = await call(o.method, path, { key, body, type });
          if (o.method === "put") {
            // A put by name creates what it names: a name that cannot exist is not_found.
            expectError(malformed, 404, "not_found", `${what} {${param}}`);
            continue;
          }
          const unknownAnswer = await call(o.method, nobodys(o), { key, body, type });
          assert.ok([401, 404].includes(unknownAnswer.status), `${what}: ${JSON.stringify(unknownAnswer.body)}`);
          assert.equal(malformed.status, unknownAnswer.status, `${what} {${param}}: ${JSON.stringify(malformed.body)}`);
          assert.equal(malformed.body.error.code, unknownAnswer.body.error.code, `${what} {${param}}`);
        }
      }
    });

    it("answers another tenant's resources exactly as unknown ones, on every route that names one", async () => {
      // A name is the caller's own: tenant B putting a connection or secret by A's name makes B's.
      const ownNamespace = new Set([
        "put /v1/connections/{name}",
        "put /v1/mcp-servers/{name}",
        "put /v1/secrets/{name}",
        "put /v1/oauth-apps/{name}",
      ]);
      let checked = 0;
      for (const o of ops.filter((x) => x.auth === "tenant" && x.params.length > 0)) {
        if (ownNamespace.has(`${o.method} ${o.path}`)) continue;
        const what = `${o.method} ${o.path}`;
        const body = o.bodyTypes.includes(JSON_TYPE) ? JSON.stringify(validBody(o)) : o.bodyTypes[0] ? "x" : undefined;
        const type = o.bodyTypes.includes(JSON_TYPE) ? JSON_TYPE : o.bodyTypes[0];
        const mine = await call(o.method, theirs(o), { key: keys.b, body, type });
        const none = await call(o.method, nobodys(o), { key: keys.b, body, type });
        expectError(mine, 404, none.body?.error?.code, what);
        expectError(none, 404, mine.body.error.code, what);
        checked++;
      }
      // A resource named in the body is looked up in the caller's tenant too.
      const schedule = await send("post", "/v1/schedules", { agent: a.agent, cron: "0 9 * * *" }, keys.b);
      expectError(schedule, 404, "not_found", "a schedule of another tenant's agent");
      assert.ok(checked >= 25, `${checked} routes`);
      // Tenant A's resources are all still there.
      assert.equal((await call("get", `/v1/agents/${a.agent}`, { key: keys.a })).status, 200);
      assert.equal((await call("get", `/v1/schedules/${a.schedule}`, { key: keys.a })).status, 200);
      assert.equal((await call("get", `/v1/connections/${names.connection}`, { key: keys.a })).status, 200);
      assert.equal((await call("get", `/v1/secrets/${names.secret}`, { key: keys.a })).status, 200);
      assert.equal((await call("get", `/v1/oauth-apps/${names.oauthApp}`, { key: keys.a })).status, 200);
      const hooks = (await call("get", `/v1/agents/${a.agent}/webhooks`, { key: keys.a })).body.data;
      assert.deepEqual(
        hooks.map((w: { id: string }) => w.id),
        [a.webhook],
      );
    });

    it("answers unknown endpoints and methods with route_not_found", async () => {
      for (const [method, path] of [
        ["get", "/v1/nothing"],
        ["get", "/"],
        ["patch", "/v1/agents"],
        ["delete", "/v1/runs"],
        ["get", "/v1/runs/../../etc/passwd"],
        ["post", "/v1/agents/x/y/z"],
      ] as const) {
        expectError(await call(method, path), 404, "route_not_found", `${method} ${path}`);
      }
    });

    it("makes one run of an Idempotency-Key that 20 requests race on", async () => {
      const answers = await Promise.all(
        Array.from({ length: 20 }, () =>
          h.services.app.request(`/v1/agents/${a.agent}/runs`, {
            method: "POST",
            headers: {
              authorization: `Bearer ${keys.a}`,
              "content-type": JSON_TYPE,
              "idempotency-key": `race-${store.name}`,
            },
            body: JSON.stringify({ input: { n: 1 } }),
          }),
        ),
      );
      const ids = new Set<string>();
      for (const res of answers) {
        assert.ok(res.status === 200 || res.status === 201, `status ${res.status}: ${await res.clone().text()}`);
        ids.add(((await res.json()) as { id: string }).id);
      }
      assert.equal(ids.size, 1, [...ids].join(", "));
    });

    it("logged no internal error for any request", () => {
      assert.ok(requests.length > 300, `${requests.length} requests`);
      assert.deepEqual(
        h.logs.filter((l) => l.startsWith("api:")),
        [],
      );
    });
  }),
);

interface OpenApiOperation {
  security?: Record<string, string[]>[];
  parameters?: { name: string; in: string; schema: QuerySchema }[];
  requestBody?: { content?: Record<string, unknown> };
}
