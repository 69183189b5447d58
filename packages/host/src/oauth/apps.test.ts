/**
 * OAuth apps through the API over a real store, with discovery against a real OpenID Connect
 * server on loopback: endpoints discovered from an issuer, explicit ones, who may mark an app
 * internal, the checks on endpoints and the client secret, and tenant isolation.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { apiCall, type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { type OidcStandIn, startOidcStandIn } from "../testing/oidc-stand-in.ts";
import { forEachStore } from "../testing/stores.ts";

forEachStore((store) =>
  describe(`OAuth apps on ${store.name}`, { skip: store.skip }, () => {
    let h: NoRootHost;
    let idp: OidcStandIn;
    const keys = { a: "", b: "" };

    const call = (method: string, path: string, key: string, body?: unknown) => apiCall(h, method, path, key, body);

    before(async () => {
      h = await startNoRootHost(store);
      idp = await startOidcStandIn({ redirectUri: "http://127.0.0.1:1/oauth/callback" });
      for (const t of ["a", "b"] as const) {
        const tenant = await call("POST", "/v1/tenants", h.adminKey, { name: `apps-${t}` });
        keys[t] = (await call("POST", `/v1/tenants/${tenant.body.id}/keys`, h.adminKey, {})).body.key;
        await call("PUT", "/v1/secrets/idp-secret", keys[t], { value: idp.clientSecret });
      }
    });
    after(async () => {
      await idp?.close();
      await h?.close();
    });

    it("discovers an issuer's endpoints when the admin key sets an internal app", async () => {
      const spec = { issuer: idp.issuer, client_id: idp.clientId, client_secret: "idp-secret", internal: true };
      const refused = await call("PUT", "/v1/oauth-apps/idp", keys.a, spec);
      assert.equal(refused.status, 403);
      assert.equal(refused.body.error.code, "forbidden");
      // The admin key acts on its own tenant; a tenant's internal app is set through it elsewhere.
      const adminSecret = await call("PUT", "/v1/secrets/idp-secret", h.adminKey, { value: idp.clientSecret });
      assert.ok(adminSecret.status === 201 || adminSecret.status === 200);
      const made = await call("PUT", "/v1/oauth-apps/idp", h.adminKey, { ...spec, scopes: ["openid"] });
      assert.equal(made.status, 201, JSON.stringify(made.body));
      assert.equal(made.body.authorize_url, `${idp.issuer}/auth`);
      assert.equal(made.body.token_url, `${idp.issuer}/token`);
      assert.equal(made.body.revoke_url, `${idp.issuer}/token/revocation`);
      assert.equal(made.body.client_secret, "idp-secret");
      assert.equal(made.body.pkce, true);
      const again = await call("PUT", "/v1/oauth-apps/idp", h.adminKey, { ...spec, revoke_url: `${idp.issuer}/r` });
      assert.equal(again.status, 200);
      assert.equal(again.body.revoke_url, `${idp.issuer}/r`, "an explicit endpoint wins over a discovered one");
    });

    it("refuses an issuer without a discovery document, naming it", async () => {
      const res = await call("PUT", "/v1/oauth-apps/nodisc", h.adminKey, {
        issuer: `${idp.issuer}/nothing-here`,
        client_id: "c",
        internal: true,
      });
      assert.equal(res.status, 422);
      assert.equal(res.body.error.code, "oauth_discovery_failed");
    });

    it("keeps a tenant's app to https on public addresses, with a secret it has", async () => {
      const explicit = {
        authorize_url: "https://github.com/login/oauth/authorize",
        token_url: "https://github.com/login/oauth/access_token",
        client_id: "Iv1.abc",
        client_secret: "idp-secret",
        scopes: ["repo"],
      };
      const made = await call("PUT", "/v1/oauth-apps/github", keys.a, explicit);
      assert.equal(made.status, 201, JSON.stringify(made.body));
      assert.equal(made.body.revoke_url, null);
      for (const [field, value] of [
        ["token_url", "http://github.com/token"],
        ["token_url", "https://127.0.0.1/token"],
        ["authorize_url", "https://localhost/auth"],
        ["token_url", "https://user:pw@github.com/token"],
      ] as const) {
        const res = await call("PUT", "/v1/oauth-apps/github", keys.a, { ...explicit, [field]: value });
        assert.equal(res.status, 400, `${field}=${value}`);
        assert.equal(res.body.error.code, "validation_failed");
        assert.equal(res.body.error.details[0].path, field);
      }
      const neither = await call("PUT", "/v1/oauth-apps/x", keys.a, { client_id: "c", token_url: explicit.token_url });
      assert.equal(neither.status, 400);
      const noSecret = await call("PUT", "/v1/oauth-apps/x", keys.a, { ...explicit, client_secret: "nope" });
      assert.equal(noSecret.status, 422);
      assert.equal(noSecret.body.error.code, "unknown_secret");
      const inUse = await call("DELETE", "/v1/secrets/idp-secret", keys.a);
      assert.equal(inUse.status, 409);
      assert.equal(inUse.body.error.code, "secret_in_use");
    });

    it("shows a tenant only its own apps", async () => {
      assert.deepEqual(
        (await call("GET", "/v1/oauth-apps", keys.a)).body.data.map((a: { name: string }) => a.name),
        ["github"],
      );
      assert.equal((await call("GET", "/v1/oauth-apps", keys.b)).body.data.length, 0);
      assert.equal((await call("GET", "/v1/oauth-apps/github", keys.b)).status, 404);
      assert.equal((await call("DELETE", "/v1/oauth-apps/github", keys.b)).status, 404);
      const gone = await call("DELETE", "/v1/oauth-apps/github", keys.a);
      assert.equal(gone.status, 200);
      assert.equal((await call("GET", "/v1/oauth-apps/github", keys.a)).status, 404);
      assert.equal((await call("DELETE", "/v1/secrets/idp-secret", keys.a)).status, 204);
    });
  }),
);
