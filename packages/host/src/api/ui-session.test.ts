/**
 * The dashboard's sign-in over the API's app and a real store (SQLite and PostgreSQL): a key buys
 * an HttpOnly, SameSite=Strict cookie that works as the key does, for its tenant only; writes with
 * the cookie need the session's CSRF value and a same-origin request; a revoked key, sign-out and
 * expiry end the session.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { SESSION_COOKIE } from "../identity/ui-sessions.ts";
import { type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { forEachStore } from "../testing/stores.ts";

const ORIGIN = "http://dash.example:7420";

interface Answer {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers.
  body: any;
  headers: Headers;
}

forEachStore((store) =>
  describe(`dashboard sessions on ${store.name}`, { skip: store.skip }, () => {
    let h: NoRootHost;
    const keys = { a: "", b: "" };
    const agents = { a: "", b: "" };
    let tenantA = "";

    const call = async (
      method: string,
      path: string,
      options: { key?: string; cookie?: string; headers?: Record<string, string>; body?: unknown } = {},
    ): Promise<Answer> => {
      const headers: Record<string, string> = { host: "dash.example:7420", ...options.headers };
      if (options.key) headers.authorization = `Bearer ${options.key}`;
      if (options.cookie) headers.cookie = `${SESSION_COOKIE}=${options.cookie}`;
      if (options.body !== undefined) headers["content-type"] = "application/json";
      const res = await h.services.app.request(`http://dash.example:7420${path}`, {
        method,
        headers,
        ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}),
      });
      const text = await res.text();
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch {}
      assert.notEqual(res.status, 500, text);
      return { status: res.status, body, headers: res.headers };
    };
    /** Signs in with a key; the cookie's token and the session's CSRF value. */
    const signIn = async (key: string, headers: Record<string, string> = {}) => {
      const res = await call("POST", "/v1/ui/session", { key, headers });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      const cookie = res.headers.get("set-cookie") ?? "";
      const token = new RegExp(`^${SESSION_COOKIE}=([^;]+)`).exec(cookie)?.[1];
      assert.ok(token, cookie);
      return { token, csrf: res.body.csrf_token as string, cookie, body: res.body };
    };
    const sameOrigin = (csrf: string) => ({ "x-paddock-csrf": csrf, origin: ORIGIN, "sec-fetch-site": "same-origin" });

    before(async () => {
      h = await startNoRootHost(store);
      for (const t of ["a", "b"] as const) {
        const tenant = await call("POST", "/v1/tenants", { key: h.adminKey, body: { name: `ui-${t}` } });
        if (t === "a") tenantA = tenant.body.id;
        keys[t] = (await call("POST", `/v1/tenants/${tenant.body.id}/keys`, { key: h.adminKey, body: {} })).body.key;
        const agent = await call("POST", "/v1/agents", {
          key: keys[t],
          body: { name: `agent-${t}`, instructions: "Say hi.", model: "m" },
        });
        assert.equal(agent.status, 201, JSON.stringify(agent.body));
        agents[t] = agent.body.id;
      }
    });
    after(async () => {
      await h?.close();
    });

    it("refuses a sign-in without a valid key", async () => {
      for (const key of [undefined, "pdk.key_nope.secret", "garbage"]) {
        const res = await call("POST", "/v1/ui/session", key ? { key } : {});
        assert.equal(res.status, 401, String(key));
        assert.equal(res.body.error.code, "unauthorized");
        assert.equal(res.headers.get("set-cookie"), null);
      }
    });

    it("sets an HttpOnly, SameSite=Strict cookie that reads as the key does, its tenant only", async () => {
      const { token, csrf, cookie, body } = await signIn(keys.a);
      assert.match(cookie, /HttpOnly/);
      assert.match(cookie, /SameSite=Strict/);
      assert.match(cookie, /Path=\//);
      assert.doesNotMatch(cookie, /Secure/);
      assert.equal(body.tenant_id, tenantA);
      assert.equal(body.tenant_name, "ui-a");
      assert.equal(body.role, "tenant");
      assert.ok(csrf.length >= 32);

      const session = await call("GET", "/v1/ui/session", { cookie: token });
      assert.equal(session.status, 200);
      assert.equal(session.body.csrf_token, csrf);
      assert.equal(session.body.key_id, keys.a.split(".")[1]);
      // With the key itself there is no session and no CSRF value.
      assert.equal((await call("GET", "/v1/ui/session", { key: keys.a })).body.csrf_token, null);

      assert.equal((await call("GET", `/v1/agents/${agents.a}`, { cookie: token })).status, 200);
      const theirs = await call("GET", `/v1/agents/${agents.b}`, { cookie: token });
      assert.equal(theirs.status, 404);
      assert.equal(theirs.body.error.code, "not_found");
      const listed = await call("GET", "/v1/agents", { cookie: token });
      assert.deepEqual(
        listed.body.data.map((a: { id: string }) => a.id),
        [agents.a],
      );
      // Admin routes stay the admin key's.
      assert.equal((await call("GET", "/v1/tenants", { cookie: token })).body.error.code, "forbidden");
      // A made-up cookie is no session.
      assert.equal((await call("GET", "/v1/agents", { cookie: "x".repeat(43) })).status, 401);
    });

    it("marks the cookie Secure when the request came over https", async () => {
      const { cookie } = await signIn(keys.a, { "x-forwarded-proto": "https" });
      assert.match(cookie, /Secure/);
    });

    it("refuses a write with the cookie unless it carries the CSRF value and comes from this origin", async () => {
      const { token, csrf } = await signIn(keys.a);
      const trigger = `/v1/agents/${agents.a}/runs`;
      const refusals: Record<string, Record<string, string>> = {
        "no CSRF header": { origin: ORIGIN, "sec-fetch-site": "same-origin" },
        "a wrong CSRF value": {
          ...sameOrigin(csrf),
          // Its last character changed (whatever it was).
          "x-paddock-csrf": `${csrf.slice(0, -1)}${csrf.endsWith("A") ? "B" : "A"}`,
        },
        "another site's Origin": { ...sameOrigin(csrf), origin: "http://evil.example", "sec-fetch-site": "cross-site" },
        "a cross-site fetch": { "x-paddock-csrf": csrf, "sec-fetch-site": "cross-site" },
        "a same-site but other origin": { "x-paddock-csrf": csrf, origin: "http://other.dash.example:7420" },
        "no Origin nor Sec-Fetch-Site": { "x-paddock-csrf": csrf },
        "an opaque Origin": { "x-paddock-csrf": csrf, origin: "null" },
      };
      for (const [what, headers] of Object.entries(refusals)) {
        const res = await call("POST", trigger, { cookie: token, headers, body: {} });
        assert.equal(res.status, 403, what);
        assert.equal(res.body.error.code, "csrf_failed", what);
      }
      // A form posted from another site carries the cookie only if the browser sends it; even then:
      const form = await h.services.app.request(`http://dash.example:7420/v1/runs/run_x/cancel`, {
        method: "POST",
        headers: {
          host: "dash.example:7420",
          cookie: `${SESSION_COOKIE}=${token}`,
          origin: "http://evil.example",
          "content-type": "application/x-www-form-urlencoded",
        },
        body: "a=1",
      });
      assert.equal(form.status, 403);
      const ok = await call("POST", trigger, { cookie: token, headers: sameOrigin(csrf), body: {} });
      assert.equal(ok.status, 201, JSON.stringify(ok.body));
      const alsoOk = await call("POST", trigger, {
        cookie: token,
        headers: { "x-paddock-csrf": csrf, origin: ORIGIN },
        body: {},
      });
      assert.equal(alsoOk.status, 201, JSON.stringify(alsoOk.body));
      // Reads need no CSRF value; a write with the key needs none either.
      assert.equal((await call("GET", `/v1/runs/${ok.body.id}`, { cookie: token })).status, 200);
      assert.equal((await call("POST", trigger, { key: keys.a, body: {} })).status, 201);
      // Signing in needs the key, not a session.
      const again = await call("POST", "/v1/ui/session", { cookie: token, headers: sameOrigin(csrf) });
      assert.equal(again.status, 403);
      assert.equal(again.body.error.code, "forbidden");
    });

    it("ends the session at sign-out, at expiry, and when its key is revoked", async () => {
      const out = await signIn(keys.a);
      const bye = await call("DELETE", "/v1/ui/session", { cookie: out.token, headers: sameOrigin(out.csrf) });
      assert.equal(bye.status, 204);
      assert.match(bye.headers.get("set-cookie") ?? "", new RegExp(`^${SESSION_COOKIE}=;.*Max-Age=0`));
      assert.equal((await call("GET", "/v1/ui/session", { cookie: out.token })).status, 401);

      const expiring = await signIn(keys.a);
      await h.db
        .updateTable("ui_sessions")
        .set({ expires_at: Date.now() - 1 })
        .execute();
      assert.equal((await call("GET", "/v1/agents", { cookie: expiring.token })).status, 401);

      const { token: kept } = await signIn(keys.b);
      const { token: revoked } = await signIn(keys.a);
      assert.equal((await call("GET", "/v1/agents", { cookie: revoked })).status, 200);
      const keyId = keys.a.split(".")[1] as string;
      const res = await call("DELETE", `/v1/tenants/${tenantA}/keys/${keyId}`, { key: h.adminKey });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.ok(res.body.revoked_at);
      assert.equal((await call("GET", "/v1/agents", { cookie: revoked })).status, 401);
      assert.equal((await call("GET", "/v1/agents", { key: keys.a })).status, 401);
      // Another key's session goes on.
      assert.equal((await call("GET", "/v1/agents", { cookie: kept })).status, 200);
      const listed = await call("GET", `/v1/tenants/${tenantA}/keys`, { key: h.adminKey });
      assert.deepEqual(
        listed.body.data.map((k: { id: string; revoked_at: string | null }) => [k.id, k.revoked_at !== null]),
        [[keyId, true]],
      );
      assert.equal(
        listed.body.data.some((k: { key?: string }) => k.key),
        false,
      );
    });

    it("never revokes the admin key", async () => {
      const admin = (await call("GET", "/v1/ui/session", { key: h.adminKey })).body;
      assert.equal(admin.role, "admin");
      const res = await call("DELETE", `/v1/tenants/${admin.tenant_id}/keys/${admin.key_id}`, { key: h.adminKey });
      assert.equal(res.status, 403);
      assert.equal(res.body.error.code, "forbidden");
      assert.equal((await call("GET", "/v1/tenants", { key: h.adminKey })).status, 200);
    });
  }),
);
