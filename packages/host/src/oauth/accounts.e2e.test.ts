/**
 * End users' accounts in runs, end to end: a real host and sandboxes, a real OpenID Connect server
 * on loopback (short-lived access tokens, rotating refresh tokens) and a stand-in upstream. A run
 * triggered for an end user calls a connection with `oauth` auth: the upstream gets that user's
 * token, the sandbox never sees one (not in its environment, not in an event, not echoed back).
 * A real notification endpoint is told of a missing account and of an account needing its user.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { openSqlite } from "../store/sqlite.ts";
import { CALLS_AGENT, pendingApprovals } from "../testing/approval-support.ts";
import { artifactJson, PROBE_AGENT, type ProbeResult, type StandIn, startStandIn } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runEvents, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { type NotificationReceiver, signedWith, startNotificationReceiver } from "../testing/notification-receiver.ts";
import { browserCookies, type OidcStandIn, startOidcStandIn } from "../testing/oidc-stand-in.ts";
import { waitFor } from "../testing/wait.ts";

const NODE = "/opt/paddock/runner/node";
/** Writes the sandbox's environment next to the probe's results, then probes. */
const MAIN = `import { writeFileSync } from "node:fs";
writeFileSync("/outputs/env.json", JSON.stringify(process.env));
await import("./probe.mjs");
`;

describe("end users' accounts in runs", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  let idp: OidcStandIn;
  let upstream: StandIn;
  let receiver: NotificationReceiver;
  let subscriptionSecret = "";
  let agentId = "";

  /** The notifications of `type` the endpoint received. */
  const notified = (type: string) => receiver.received.filter((r) => r.payload.type === type);

  /** Connects `user`'s account at the tenant's app `idp`, as the user's browser would. */
  const connect = async (user: string, key = t.adminKey) => {
    const made = await t.api("POST", "/v1/connect-sessions", { end_user: user, app: "idp" }, key);
    assert.equal(made.status, 201, JSON.stringify(made.body));
    const opened = await fetch(made.body.url, { redirect: "manual" });
    assert.equal(opened.status, 302);
    const back = await idp.authorize(opened.headers.get("location") ?? "", { login: user });
    const cookie = browserCookies(opened);
    assert.equal((await fetch(back, { redirect: "manual", headers: { cookie } })).status, 200);
  };

  /** Sets up app `idp` and connection `mail` (auth `oauth:idp`) for the admin's tenant. */
  const setUp = async (key = t.adminKey) => {
    const put = async (path: string, body: unknown) => {
      const res = await t.api("PUT", path, body, key);
      assert.ok(res.status === 200 || res.status === 201, `${path}: ${res.status} ${JSON.stringify(res.body)}`);
      return res.body;
    };
    await put("/v1/secrets/idp-secret", { value: idp.clientSecret });
    await put("/v1/oauth-apps/idp", idp.appBody("idp-secret"));
    const connection = await put("/v1/connections/mail", {
      base_url: upstream.url,
      auth: "oauth:idp",
      internal: true,
      policy: { allow: [{ methods: ["GET", "POST"], path: "/echo/**" }] },
    });
    assert.deepEqual(connection.auth, { type: "oauth", app: "idp" });
    const agent = await t.api(
      "POST",
      "/v1/agents",
      {
        name: uniqueName("mail"),
        command: [NODE, "/app/main.mjs"],
        files: { "main.mjs": MAIN, "probe.mjs": PROBE_AGENT },
        policy: { connections: ["mail"] },
      },
      key,
    );
    assert.equal(agent.status, 201, JSON.stringify(agent.body));
    return agent.body.id as string;
  };

  /** Runs the agent for `endUser` (none when undefined) with `calls`; its results, events and environment. */
  const runFor = async (endUser: string | undefined, calls: unknown[], agent = agentId, key = t.adminKey) => {
    const body = { input: { calls }, ...(endUser === undefined ? {} : { end_user: endUser }) };
    const started = await t.api("POST", `/v1/agents/${agent}/runs`, body, key);
    assert.equal(started.status, 201, JSON.stringify(started.body));
    assert.equal(started.body.end_user, endUser ?? null);
    const run = await waitForRun(t, started.body.id, key);
    const events = await runEvents(t, run.id, key);
    assert.equal(run.status, "succeeded", JSON.stringify(events));
    const out = (await artifactJson(t, run.id, "result.json", key)) as { results: ProbeResult[] };
    const env = await artifactJson(t, run.id, "env.json", key);
    return { run, events, results: out.results, leaked: JSON.stringify([events, out, env]) };
  };

  /** The access token the upstream received with its latest request, and whose it is. */
  const lastToken = async () => {
    const auth = String(upstream.seen.at(-1)?.headers.authorization ?? "");
    const token = auth.replace(/^Bearer /, "");
    return { token, user: await idp.userOf(token) };
  };

  before(async () => {
    upstream = await startStandIn();
    // Every call reads its account: the tests expire tokens by writing the store behind the host's back.
    t = await startTestHost({ accountTokenCacheMs: 0 });
    idp = await startOidcStandIn({ redirectUri: `${t.host.url}/oauth/callback`, accessTtlS: 3600 });
    agentId = await setUp(t.adminKey);
    await connect("alice");
    await connect("bob");
    receiver = await startNotificationReceiver();
    const sub = await t.api("POST", "/v1/notifications", {
      url: receiver.url,
      events: ["account.needs_reauth", "account.missing"],
      internal: true,
    });
    assert.equal(sub.status, 201, JSON.stringify(sub.body));
    subscriptionSecret = sub.body.secret;
  });

  after(async () => {
    await t?.close();
    await receiver?.close();
    await idp?.close();
    await upstream?.close();
  });

  test("a run attaches its own end user's token, whatever the sandbox sends, and never shows it", async () => {
    const calls = [
      { path: "/bridge/mail/echo/inbox", headers: { "x-end-user": "bob", "x-paddock-end-user": "bob" } },
      { path: "/bridge/mail/echo/send", method: "POST", body: "hi" },
    ];
    const alice = await runFor("alice", calls);
    assert.deepEqual(
      alice.results.map((r) => r.status),
      [200, 200],
    );
    const a = await lastToken();
    assert.equal(a.user, "alice");
    // The upstream echoes the token in a header and in the body: both redacted on the way back.
    for (const result of alice.results) {
      assert.ok(!result.body?.includes(a.token));
      assert.ok(!result.headers?.["x-echo-auth"]?.includes(a.token));
    }
    assert.ok(!alice.leaked.includes(a.token), "no token in the environment, the events or the answers");
    const bridgeCalls = alice.events.filter((e) => e.type === "bridge.call");
    assert.equal(bridgeCalls.length, 2);
    assert.ok(bridgeCalls.every((e) => (e.data as { redacted?: number }).redacted));

    const bob = await runFor("bob", calls.slice(0, 1));
    const b = await lastToken();
    assert.equal(b.user, "bob");
    assert.notEqual(b.token, a.token);
    assert.ok(!bob.leaked.includes(b.token));
  });

  test("a held call shows approvers the account, never a token; approved, it goes with the end user's", async () => {
    const put = await t.api("PUT", "/v1/connections/mail-held", {
      base_url: upstream.url,
      auth: "oauth:idp",
      internal: true,
      policy: { allow: [{ methods: ["POST"], path: "/echo/held/**", approval: { timeout_s: 120 } }] },
    });
    assert.equal(put.status, 201, JSON.stringify(put.body));
    const agent = await t.api("POST", "/v1/agents", {
      name: uniqueName("mail-held"),
      command: [NODE, "/app/calls.mjs"],
      files: { "calls.mjs": CALLS_AGENT },
      policy: { connections: ["mail-held"] },
    });
    assert.equal(agent.status, 201, JSON.stringify(agent.body));
    const calls = [{ connection: "mail-held", path: "/echo/held/a", body: "hi" }];
    const started = await t.api("POST", `/v1/agents/${agent.body.id}/runs`, { end_user: "alice", input: { calls } });
    assert.equal(started.status, 201, JSON.stringify(started.body));
    const [held] = await pendingApprovals(t, started.body.id);
    assert.equal(held.request.headers.authorization, "Bearer <account idp>");
    const approved = await t.api("POST", `/v1/approvals/${held.id}`, { decision: "approve" });
    assert.equal(approved.status, 200, JSON.stringify(approved.body));
    const run = await waitForRun(t, started.body.id);
    const events = await runEvents(t, run.id);
    assert.equal(run.status, "succeeded", JSON.stringify(events));
    const sent = await lastToken();
    assert.equal(sent.user, "alice");
    const kept = await t.api("GET", `/v1/approvals/${held.id}`);
    assert.ok(!JSON.stringify([held, kept.body, events]).includes(sent.token), "approvers and events never see it");
  });

  test("a run without an end user, or whose end user has no account, is refused account_missing", async () => {
    const calls = [{ path: "/bridge/mail/echo/x" }, { path: "/bridge/mail/echo/y" }];
    const seen = upstream.seen.length;
    const runs: string[] = [];
    for (const endUser of [undefined, "zoe"]) {
      const { run, results, events } = await runFor(endUser, calls);
      runs.push(run.id);
      assert.equal(results[0]?.status, 403);
      const error = JSON.parse(results[0]?.body ?? "{}").error;
      assert.equal(error.code, "account_missing");
      assert.match(error.message, /'idp'/);
      const recorded = events.find((e) => e.type === "bridge.call");
      assert.equal((recorded?.data as { code?: string } | undefined)?.code, "account_missing");
    }
    assert.equal(upstream.seen.length, seen, "nothing reached the upstream");
    // The product is told once per run and app, and only of the run that has an end user to ask.
    await waitFor(() => notified("account.missing").length > 0, { what: "the account.missing notification" });
    const [missing, ...more] = notified("account.missing");
    assert.equal(more.length, 0, "one notification for the run's two refused calls");
    assert.deepEqual(signedWith(missing as NonNullable<typeof missing>, [subscriptionSecret]), [subscriptionSecret]);
    assert.deepEqual(missing?.payload.data, {
      run_id: runs[1],
      agent_id: agentId,
      end_user: "zoe",
      app: "idp",
      connection: "mail",
    });
  });

  /** Makes `user`'s access token expire now, as the host sees it. */
  const expire = async (user: string) => {
    const db = openSqlite(join(t.dataDir, "paddock.db"));
    try {
      await db
        .updateTable("oauth_accounts")
        .set({ access_expires_at: Date.now() })
        .where("end_user", "=", user)
        .execute();
    } finally {
      await db.destroy();
    }
  };

  test("a token expiring during a run is refreshed on the call's path, recorded without its value", async () => {
    await connect("carol");
    const before = await runFor("carol", [{ path: "/bridge/mail/echo/1" }]);
    const old = await lastToken();
    assert.equal(before.events.filter((e) => e.type === "account.refreshed").length, 0);
    await expire("carol");
    const { refreshed } = idp.counts;
    const after = await runFor("carol", [{ path: "/bridge/mail/echo/2" }, { path: "/bridge/mail/echo/3" }]);
    assert.deepEqual(
      after.results.map((r) => r.status),
      [200, 200],
    );
    assert.equal(idp.counts.refreshed, refreshed + 1);
    const fresh = await lastToken();
    assert.equal(fresh.user, "carol");
    assert.notEqual(fresh.token, old.token);
    const records = after.events.filter((e) => e.type === "account.refreshed");
    assert.equal(records.length, 1);
    assert.equal((records[0]?.data as { reason: string } | undefined)?.reason, "expiry");
    assert.ok(!after.leaked.includes(fresh.token) && !after.leaked.includes(old.token));
  });

  test("an upstream's 401 refreshes the token once and sends the call again with the same body", async () => {
    await connect("erin");
    const { refreshed } = idp.counts;
    const { results, events, leaked } = await runFor("erin", [
      { path: "/bridge/mail/echo/unauthorized-once/a", method: "POST", body: "again" },
    ]);
    assert.deepEqual(
      results.map((r) => r.status),
      [200],
    );
    assert.equal(idp.counts.refreshed, refreshed + 1);
    const [refused, sent] = upstream.seen.filter((r) => r.url === "/echo/unauthorized-once/a").slice(-2);
    assert.deepEqual([refused?.body, sent?.body], ["again", "again"]);
    assert.notEqual(refused?.headers.authorization, sent?.headers.authorization);
    const fresh = await lastToken();
    assert.equal(fresh.user, "erin");
    const records = events.filter((e) => e.type === "account.refreshed");
    assert.deepEqual(
      records.map((e) => (e.data as { reason: string }).reason),
      ["unauthorized"],
    );
    assert.ok(!leaked.includes(fresh.token));
  });

  test("an account revoked at the provider becomes needs_reauth: calls fail account_needs_reauth", async () => {
    await connect("dora");
    await idp.revokeUser("dora");
    await expire("dora");
    const { results, events } = await runFor("dora", [
      { path: "/bridge/mail/echo/1" },
      { path: "/bridge/mail/echo/2" },
    ]);
    assert.deepEqual(
      results.map((r) => JSON.parse(r.body ?? "{}").error?.code),
      ["account_needs_reauth", "account_needs_reauth"],
    );
    const records = events.filter((e) => e.type === "account.refreshed");
    assert.equal(records.length, 1, "the refused refresh is recorded once");
    assert.equal((records[0]?.data as { needs_reauth: boolean } | undefined)?.needs_reauth, true);
    const listed = await t.api("GET", "/v1/accounts?end_user=dora");
    assert.equal(listed.body.data[0].status, "needs_reauth");
    // Notified once, with who and where, never a token.
    await waitFor(() => notified("account.needs_reauth").length > 0, { what: "the account.needs_reauth notification" });
    const [told, ...more] = notified("account.needs_reauth");
    assert.equal(more.length, 0);
    assert.deepEqual(told?.payload.data, { account: listed.body.data[0].id, end_user: "dora", app: "idp" });
    assert.doesNotMatch(told?.body ?? "", /token/i);
  });

  test("an end user with control characters, empty or too long is refused at the trigger", async () => {
    for (const bad of ["a\nb", "", "x".repeat(257), "\u0000", "a\u2028b"]) {
      const res = await t.api("POST", `/v1/agents/${agentId}/runs`, { end_user: bad });
      assert.equal(res.status, 400, JSON.stringify(res.body));
      assert.equal(res.body.error.code, "validation_failed");
    }
  });
});
