/**
 * Connecting end users' accounts, against a real OpenID Connect server on loopback (PKCE required,
 * rotating refresh tokens): the whole flow driven as a browser would, and every bad input of the
 * callback (wrong, reused or expired state, a code of another session, the provider's refusal),
 * bad end users, and another tenant's end users. No answer carries a token.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { openVault } from "../secrets/master-key.ts";
import { apiCall, type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { browserCookies, type OidcStandIn, startOidcStandIn } from "../testing/oidc-stand-in.ts";
import { forEachStore } from "../testing/stores.ts";
import { Accounts, type AccountsDeps, UNAUTHORIZED_REFRESH_INTERVAL_MS } from "./accounts.ts";
import { OAuthApps } from "./apps.ts";
import { ProviderHttp } from "./provider-http.ts";

const ORIGIN = "http://localhost";
const PRODUCT = "https://product.example/connected";

forEachStore((store) =>
  describe(`connecting end users' accounts on ${store.name}`, { skip: store.skip }, () => {
    let h: NoRootHost;
    let idp: OidcStandIn;
    let keyB = "";
    let tenantB = "";

    const request = (path: string, init: RequestInit = {}) => h.services.app.request(path, init);
    const call = (method: string, path: string, key: string, body?: unknown) => apiCall(h, method, path, key, body);
    /** The cookies of the browser that opened each flow, by the flow's state. */
    const browsers = new Map<string, string>();
    /** A connect session's URL, opened: the provider's authorization URL it redirects to. */
    const open = async (endUser: string, extra: Record<string, unknown> = {}) => {
      const made = await call("POST", "/v1/connect-sessions", h.adminKey, { end_user: endUser, app: "idp", ...extra });
      assert.equal(made.status, 201, JSON.stringify(made.body));
      assert.ok(made.body.url.startsWith(`${ORIGIN}/oauth/connect/`));
      const res = await request(made.body.url.slice(ORIGIN.length));
      assert.equal(res.status, 302);
      const authorize = new URL(res.headers.get("location") ?? "");
      assert.equal(authorize.searchParams.get("code_challenge_method"), "S256");
      browsers.set(authorize.searchParams.get("state") ?? "", browserCookies(res));
      return { session: made.body, authorize: authorize.toString(), link: made.body.url.slice(ORIGIN.length) };
    };
    /**
     * Sends the browser back to the host's callback (the one that opened the flow, unless `cookie`
     * names another); the answer's status and where it leads.
     */
    const back = async (callbackUrl: string, cookie?: string) => {
      const state = new URL(callbackUrl).searchParams.get("state") ?? "";
      const jar = cookie ?? browsers.get(state) ?? "";
      const res = await request(callbackUrl.slice(ORIGIN.length), { headers: jar ? { cookie: jar } : {} });
      return { status: res.status, location: res.headers.get("location"), text: await res.text() };
    };
    /** Another node's Accounts (its own in-process queue and opened tokens) over the same store. */
    const anotherNode = async (options: Pick<AccountsDeps, "cacheMs" | "now" | "publicUrl"> = {}) => {
      const { vault } = await openVault({ dataDir: h.dataDir });
      const http = new ProviderHttp();
      return new Accounts({
        db: h.db,
        vault,
        apps: new OAuthApps(h.db, http),
        http,
        secrets: h.services.secrets,
        ...options,
      });
    };
    const accounts = async (key: string, endUser?: string) =>
      (await call("GET", `/v1/accounts${endUser ? `?end_user=${encodeURIComponent(endUser)}` : ""}`, key)).body.data;

    before(async () => {
      // Every call reads its account: the tests expire tokens by writing the store behind the host's back.
      h = await startNoRootHost(store, { config: { accountTokenCacheMs: 0 } });
      idp = await startOidcStandIn({ redirectUri: `${ORIGIN}/oauth/callback` });
      await call("PUT", "/v1/secrets/idp-secret", h.adminKey, { value: idp.clientSecret });
      const app = await call("PUT", "/v1/oauth-apps/idp", h.adminKey, idp.appBody("idp-secret"));
      assert.equal(app.status, 201, JSON.stringify(app.body));
      const tenant = await call("POST", "/v1/tenants", h.adminKey, { name: "connect-b" });
      tenantB = tenant.body.id;
      keyB = (await call("POST", `/v1/tenants/${tenantB}/keys`, h.adminKey, {})).body.key;
    });
    after(async () => {
      await idp?.close();
      await h?.close();
    });

    it("connects an account through the provider and sends the user back to the product", async () => {
      const { authorize } = await open("alice", { redirect_after: PRODUCT });
      const returned = await back(await idp.authorize(authorize, { login: "alice" }));
      assert.equal(returned.status, 302, returned.text);
      const to = new URL(returned.location ?? "");
      assert.equal(`${to.origin}${to.pathname}`, PRODUCT);
      assert.equal(to.searchParams.get("status"), "connected");
      const [account, ...more] = await accounts(h.adminKey, "alice");
      assert.equal(more.length, 0);
      assert.equal(account.id, to.searchParams.get("account"));
      assert.equal(account.app, "idp");
      assert.equal(account.status, "active");
      assert.ok(account.expires_at, "the provider's expires_in is kept");
      assert.deepEqual(Object.keys(account).sort(), [
        "app",
        "created_at",
        "end_user",
        "expires_at",
        "id",
        "refreshed_at",
        "scopes",
        "status",
        "updated_at",
      ]);
      assert.equal(idp.counts.codes, 1);
      // The sealed tokens open on the host, and are the user's own.
      const row = await h.db
        .selectFrom("oauth_accounts")
        .selectAll()
        .where("id", "=", account.id)
        .executeTakeFirstOrThrow();
      const tokens = h.services.accounts.open(row);
      assert.equal(await idp.userOf(tokens.access_token), "alice");
      assert.ok(tokens.refresh_token);
      assert.ok(!row.sealed_tokens.includes(tokens.access_token), "stored sealed");
    });

    it("refuses a reused, wrong or expired state and a used or unknown connect link, storing nothing", async () => {
      const { authorize, link } = await open("carol");
      const callbackUrl = await idp.authorize(authorize, { login: "carol" });
      assert.equal((await back(callbackUrl)).status, 200, "no redirect_after: a page of the host's own");
      const updated = (await accounts(h.adminKey, "carol"))[0].updated_at;
      const reused = await back(callbackUrl);
      assert.equal(reused.status, 400);
      assert.match(reused.text, /used or expired/);
      assert.equal((await accounts(h.adminKey, "carol"))[0].updated_at, updated);
      const wrong = new URL(callbackUrl);
      wrong.searchParams.set("state", "forged-state");
      assert.equal((await back(wrong.toString())).status, 400);
      assert.equal((await back(`${ORIGIN}/oauth/callback?code=x`)).status, 400);
      assert.equal((await request(link)).status, 400, "a used connect link");
      assert.equal((await request("/oauth/connect/nonsense")).status, 400);

      const late = await open("dave");
      const lateCallback = await idp.authorize(late.authorize, { login: "dave" });
      await h.db
        .updateTable("connect_sessions")
        .set({ expires_at: Date.now() - 1 })
        .where("id", "=", late.session.id)
        .execute();
      assert.equal((await back(lateCallback)).status, 400);
      assert.deepEqual(await accounts(h.adminKey, "dave"), []);
    });

    it("binds the flow to the browser that opened the connect link: another browser's callback stores nothing", async () => {
      // Mallory opens her own connect link and hands the provider's authorization URL to Hana,
      // whose browser authorizes it: Hana's account must not become Mallory's end user's.
      const { authorize } = await open("mallory-csrf", { redirect_after: PRODUCT });
      const callbackUrl = await idp.authorize(authorize, { login: "hana" });
      const codes = idp.counts.codes;
      const elsewhere = await back(callbackUrl, "");
      assert.equal(elsewhere.status, 400, "no cookie of the browser that started it");
      assert.match(elsewhere.text, /started in this browser/);
      const state = new URL(callbackUrl).searchParams.get("state") ?? "";
      const [name] = (browsers.get(state) ?? "").split("=");
      assert.equal((await back(callbackUrl, `${name}=guessed`)).status, 400, "a cookie of the right name, wrong value");
      assert.deepEqual(await accounts(h.adminKey, "mallory-csrf"), []);
      assert.equal(idp.counts.codes, codes, "the code was never exchanged");
      // The browser that opened the link finishes it.
      const done = await back(callbackUrl);
      assert.equal(done.status, 302, done.text);
      assert.equal(new URL(done.location ?? "").searchParams.get("status"), "connected");
    });

    it("refuses an authorization that comes back naming another issuer (RFC 9207)", async () => {
      const { authorize } = await open("ivan", { redirect_after: PRODUCT });
      const callbackUrl = new URL(await idp.authorize(authorize, { login: "ivan" }));
      assert.equal(callbackUrl.searchParams.get("iss"), idp.issuer, "the stand-in names its issuer");
      const codes = idp.counts.codes;
      callbackUrl.searchParams.set("iss", "https://attacker.example");
      const mixed = await back(callbackUrl.toString());
      assert.equal(mixed.status, 302);
      assert.equal(new URL(mixed.location ?? "").searchParams.get("error"), "invalid_issuer");
      assert.equal(idp.counts.codes, codes, "the code was not sent to the token endpoint");
      assert.deepEqual(await accounts(h.adminKey, "ivan"), []);

      // The stand-in's discovery says it always names its issuer: an answer naming none is refused too.
      const app = await call("GET", "/v1/oauth-apps/idp", h.adminKey);
      assert.equal(app.body.iss_required, true, JSON.stringify(app.body));
      const second = await open("ivan", { redirect_after: PRODUCT });
      const unnamed = new URL(await idp.authorize(second.authorize, { login: "ivan" }));
      unnamed.searchParams.delete("iss");
      const stripped = await back(unnamed.toString());
      assert.equal(new URL(stripped.location ?? "").searchParams.get("error"), "invalid_issuer");
      assert.equal(idp.counts.codes, codes, "the code was not sent to the token endpoint");
      assert.deepEqual(await accounts(h.adminKey, "ivan"), []);
    });

    it("puts connect URLs and the callback on the host's public URL when it has one", async () => {
      const node = await anotherNode({ publicUrl: "https://paddock.example/" });
      const app = await h.db.selectFrom("oauth_apps").selectAll().where("name", "=", "idp").executeTakeFirstOrThrow();
      const made = await node.createSession(app.tenant_id, { end_user: "lee", app: "idp" }, "http://10.0.0.7:8080");
      assert.ok(made.url.startsWith("https://paddock.example/oauth/connect/"), made.url);
      const row = await h.db
        .selectFrom("connect_sessions")
        .select("redirect_uri")
        .where("id", "=", made.id)
        .executeTakeFirstOrThrow();
      assert.equal(row.redirect_uri, "https://paddock.example/oauth/callback");
    });

    it("keeps a provider's fractional or absurd expires_in as a date it can show", async () => {
      const app = await h.db.selectFrom("oauth_apps").selectAll().where("name", "=", "idp").executeTakeFirstOrThrow();
      const store = (endUser: string, expiresIn: number) =>
        h.services.accounts.store(app.tenant_id, app.id, endUser, { access_token: "t", expires_in: expiresIn }, []);
      const fraction = await store("fraction", 3599.5);
      assert.ok(Date.parse(fraction.expires_at ?? "") > Date.now() + 3_500_000);
      const forever = await store("forever", 1e300);
      assert.ok(Date.parse(forever.expires_at ?? "") > Date.now() + 300 * 24 * 3600_000);
      const listed = await call("GET", "/v1/accounts", h.adminKey);
      assert.equal(listed.status, 200, JSON.stringify(listed.body));
      for (const account of [fraction, forever]) {
        assert.equal((await call("DELETE", `/v1/accounts/${account.id}`, h.adminKey)).status, 200);
      }
    });

    it("refuses a code of another session (its PKCE verifier does not match) and the provider's refusal", async () => {
      const mallory = await open("mallory", { redirect_after: PRODUCT });
      const victim = await open("erin", { redirect_after: PRODUCT });
      const erinCallback = new URL(await idp.authorize(victim.authorize, { login: "erin" }));
      const malloryCallback = new URL(await idp.authorize(mallory.authorize, { login: "mallory" }));
      // Erin's code under Mallory's state: the provider checks the code against Mallory's verifier.
      malloryCallback.searchParams.set("code", erinCallback.searchParams.get("code") ?? "");
      const swapped = await back(malloryCallback.toString());
      assert.equal(swapped.status, 302);
      assert.equal(new URL(swapped.location ?? "").searchParams.get("error"), "invalid_grant");
      assert.deepEqual(await accounts(h.adminKey, "mallory"), []);
      assert.deepEqual(await accounts(h.adminKey, "erin"), []);

      const denied = await open("frank", { redirect_after: PRODUCT });
      const refused = await back(await idp.authorize(denied.authorize, { deny: true }));
      assert.equal(new URL(refused.location ?? "").searchParams.get("error"), "access_denied");
      assert.deepEqual(await accounts(h.adminKey, "frank"), []);
    });

    it("refuses bad end users, and keeps each tenant's end users its own", async () => {
      for (const bad of ["a\nb", "tab\there", "\u0000", "x".repeat(257), "", "line\u2028sep"]) {
        const res = await call("POST", "/v1/connect-sessions", h.adminKey, { end_user: bad, app: "idp" });
        assert.equal(res.status, 400, JSON.stringify(bad));
        assert.equal(res.body.error.code, "validation_failed");
      }
      const badRedirect = await call("POST", "/v1/connect-sessions", h.adminKey, {
        end_user: "alice",
        app: "idp",
        redirect_after: "javascript:alert(1)",
      });
      assert.equal(badRedirect.status, 400);
      const theirs = await call("POST", "/v1/connect-sessions", keyB, { end_user: "alice", app: "idp" });
      assert.equal(theirs.status, 422);
      assert.equal(theirs.body.error.code, "unknown_oauth_app");
      assert.deepEqual(await accounts(keyB, "alice"), []);
      assert.deepEqual(await accounts(keyB), []);
      const alice = (await accounts(h.adminKey, "alice"))[0];
      const aliceRow = await h.db
        .selectFrom("oauth_accounts")
        .selectAll()
        .where("id", "=", alice.id)
        .executeTakeFirstOrThrow();
      // What the bridge attaches for a run of alice: her token in her tenant, nothing in another.
      const { token } = await h.services.accounts.accessToken(aliceRow.tenant_id, "alice", "idp");
      assert.equal(await idp.userOf(token), "alice");
      await assert.rejects(h.services.accounts.accessToken(tenantB, "alice", "idp"), { code: "account_missing" });
      const res = await call("DELETE", `/v1/accounts/${alice.id}`, keyB);
      assert.equal(res.status, 404);
      assert.equal((await accounts(h.adminKey, "alice")).length, 1);
    });

    it("refreshes an expiring token once for 20 callers on two nodes, rotating the refresh token", async () => {
      const { authorize } = await open("frank");
      await back(await idp.authorize(authorize, { login: "frank" }));
      const row = await h.db
        .selectFrom("oauth_accounts")
        .selectAll()
        .where("end_user", "=", "frank")
        .executeTakeFirstOrThrow();
      const first = h.services.accounts.open(row);
      const other = await anotherNode();
      await h.db
        .updateTable("oauth_accounts")
        .set({ access_expires_at: Date.now() })
        .where("id", "=", row.id)
        .execute();
      const { refreshed, invalidGrant } = idp.counts;
      const grants = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          (i % 2 === 0 ? h.services.accounts : other).accessToken(row.tenant_id, "frank", "idp"),
        ),
      );
      assert.equal(idp.counts.refreshed, refreshed + 1, "one refresh");
      assert.equal(idp.counts.invalidGrant, invalidGrant);
      assert.equal(
        grants.filter((g) => g.refreshed !== null).length,
        1,
        "one caller refreshed, the others used its token",
      );
      assert.equal(new Set(grants.map((g) => g.token)).size, 1);
      assert.equal(await idp.userOf(grants[0]?.token ?? ""), "frank");
      const after = await h.db
        .selectFrom("oauth_accounts")
        .selectAll()
        .where("id", "=", row.id)
        .executeTakeFirstOrThrow();
      const tokens = h.services.accounts.open(after);
      assert.notEqual(tokens.refresh_token, first.refresh_token, "the rotated refresh token is stored");
      assert.ok(Number(after.access_expires_at) > Date.now() + 30_000);
      assert.ok(after.refreshed_at !== null);

      // Refused at the provider: the next refresh marks it needs_reauth, and calls fail so.
      await idp.revokeUser("frank");
      await h.db
        .updateTable("oauth_accounts")
        .set({ access_expires_at: Date.now() })
        .where("id", "=", row.id)
        .execute();
      await assert.rejects(h.services.accounts.accessToken(row.tenant_id, "frank", "idp"), {
        code: "account_needs_reauth",
      });
      assert.equal((await accounts(h.adminKey, "frank"))[0].status, "needs_reauth");
      await assert.rejects(other.accessToken(row.tenant_id, "frank", "idp"), { code: "account_needs_reauth" });
    });

    it("refreshes a token an upstream refused, but not again within the interval however often it is refused", async () => {
      const { authorize } = await open("olga");
      await back(await idp.authorize(authorize, { login: "olga" }));
      const row = await h.db
        .selectFrom("oauth_accounts")
        .selectAll()
        .where("end_user", "=", "olga")
        .executeTakeFirstOrThrow();
      let clock = Date.now();
      const node = await anotherNode({ now: () => clock });
      const first = await node.accessToken(row.tenant_id, "olga", "idp");
      const { refreshed } = idp.counts;
      const second = await node.accessToken(row.tenant_id, "olga", "idp", first.token);
      assert.notEqual(second.token, first.token);
      assert.equal(idp.counts.refreshed, refreshed + 1, "a refused token is refreshed");
      // An upstream that refuses every token: no refresh per call.
      for (let i = 0; i < 5; i++) {
        const again = await node.accessToken(row.tenant_id, "olga", "idp", second.token);
        assert.equal(again.token, second.token);
        assert.equal(again.refreshed, null);
      }
      assert.equal(idp.counts.refreshed, refreshed + 1, "no refresh within the interval");
      clock += UNAUTHORIZED_REFRESH_INTERVAL_MS;
      const later = await node.accessToken(row.tenant_id, "olga", "idp", second.token);
      assert.notEqual(later.token, second.token);
      assert.equal(idp.counts.refreshed, refreshed + 2);
    });

    it("does not hold the store while a provider takes its time to answer a refresh", async () => {
      // A token endpoint that answers only when told to, after saying it has the request.
      let arrived = () => {};
      const asked = new Promise<void>((resolve) => {
        arrived = resolve;
      });
      let release = () => {};
      const released = new Promise<void>((resolve) => {
        release = resolve;
      });
      const slow = http.createServer((req, res) => {
        arrived();
        req.resume();
        void released.then(() =>
          res
            .writeHead(200, { "content-type": "application/json" })
            .end(JSON.stringify({ access_token: "fresh", token_type: "Bearer", expires_in: 3600 })),
        );
      });
      slow.listen(0, "127.0.0.1");
      await once(slow, "listening");
      const base = `http://127.0.0.1:${(slow.address() as AddressInfo).port}`;
      try {
        const put = await call("PUT", "/v1/oauth-apps/slow", h.adminKey, {
          authorize_url: `${base}/authorize`,
          token_url: `${base}/token`,
          client_id: "slow",
          internal: true,
        });
        assert.equal(put.status, 201, JSON.stringify(put.body));
        const app = await h.db
          .selectFrom("oauth_apps")
          .selectAll()
          .where("name", "=", "slow")
          .executeTakeFirstOrThrow();
        const tokens = { access_token: "old", refresh_token: "r1", expires_in: 0 };
        await h.services.accounts.store(app.tenant_id, app.id, "pat", tokens, []);
        const refreshing = h.services.accounts.accessToken(app.tenant_id, "pat", "slow");
        await asked;
        let timer: NodeJS.Timeout | undefined;
        const read = h.db.selectFrom("tenants").select("id").execute();
        const stalled = new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error("the store waited for the provider")), 3000);
        });
        await Promise.race([read, stalled]).finally(() => clearTimeout(timer));
        release();
        assert.equal((await refreshing).token, "fresh");
        const [account] = await accounts(h.adminKey, "pat");
        assert.equal((await call("DELETE", `/v1/accounts/${account.id}`, h.adminKey)).status, 200);
        assert.equal((await call("DELETE", "/v1/oauth-apps/slow", h.adminKey)).status, 200);
      } finally {
        release();
        slow.closeAllConnections();
        slow.close();
      }
    });

    it("reuses an opened token within cacheMs; a delete through another node is seen once it has passed", async () => {
      const { authorize } = await open("gina");
      await back(await idp.authorize(authorize, { login: "gina" }));
      const row = await h.db
        .selectFrom("oauth_accounts")
        .selectAll()
        .where("end_user", "=", "gina")
        .executeTakeFirstOrThrow();
      let clock = Date.now();
      const cached = await anotherNode({ cacheMs: 5000, now: () => clock });
      const first = await cached.accessToken(row.tenant_id, "gina", "idp");
      assert.equal((await call("DELETE", `/v1/accounts/${row.id}`, h.adminKey)).status, 200);
      const again = await cached.accessToken(row.tenant_id, "gina", "idp");
      assert.equal(again.token, first.token, "reused within cacheMs");
      clock += 5000;
      await assert.rejects(cached.accessToken(row.tenant_id, "gina", "idp"), { code: "account_missing" });
    });

    it("deletes an account and revokes its tokens at the provider", async () => {
      const alice = (await accounts(h.adminKey, "alice"))[0];
      const row = await h.db
        .selectFrom("oauth_accounts")
        .selectAll()
        .where("id", "=", alice.id)
        .executeTakeFirstOrThrow();
      const tokens = h.services.accounts.open(row);
      const before = idp.counts.revoked;
      const gone = await call("DELETE", `/v1/accounts/${alice.id}`, h.adminKey);
      assert.equal(gone.status, 200);
      assert.equal(gone.body.id, alice.id);
      assert.equal(gone.body.provider_revocation, "revoked");
      assert.ok(idp.counts.revoked > before, "revoked at the provider");
      assert.equal(await idp.userOf(tokens.access_token), null);
      assert.deepEqual(await accounts(h.adminKey, "alice"), []);
      assert.equal((await call("DELETE", `/v1/accounts/${alice.id}`, h.adminKey)).status, 404);
    });

    it("deletes an account here when the provider's revocation endpoint is down, and says so", async () => {
      const { authorize } = await open("kim");
      await back(await idp.authorize(authorize, { login: "kim" }));
      const kim = (await accounts(h.adminKey, "kim"))[0];
      // The same app, its revocation endpoint on a port nothing listens on.
      const down = { ...idp.appBody("idp-secret"), revoke_url: "http://127.0.0.1:9/revoke" };
      assert.equal((await call("PUT", "/v1/oauth-apps/idp", h.adminKey, down)).status, 200);
      try {
        const gone = await call("DELETE", `/v1/accounts/${kim.id}`, h.adminKey);
        assert.equal(gone.status, 200, JSON.stringify(gone.body));
        assert.equal(gone.body.provider_revocation, "failed");
        assert.deepEqual(await accounts(h.adminKey, "kim"), [], "deleted here all the same");
      } finally {
        await call("PUT", "/v1/oauth-apps/idp", h.adminKey, idp.appBody("idp-secret"));
      }
    });
  }),
);
