/**
 * The dashboard in a real browser (Debian's Chromium driven by playwright-core) against a real
 * host with real sandboxes: sign-in and its refusals, a run triggered from the form and followed
 * live to its end, hostile artifacts previewed without running anything, cancel, replay with an
 * edited input, one tenant's view, a 100,000-line log, and an end user's account connected through
 * a real OpenID Connect server's pages. The tests save screenshots of the main pages under docs/.
 */
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import type { Browser, Page } from "playwright-core";
import { openDatabase } from "../../../host/src/store/database.ts";
import { EventLog } from "../../../host/src/store/event-log.ts";
import {
  CALLS_AGENT,
  type CallResult,
  pendingApprovals,
  startRun,
} from "../../../host/src/testing/approval-support.ts";
import { artifactJson, startStandIn } from "../../../host/src/testing/bridge-support.ts";
import { e2eSkip } from "../../../host/src/testing/e2e-skip.ts";
import { hostSkipReason, startTestHost, type TestHost, waitForRun } from "../../../host/src/testing/harness.ts";
import { type LlmStandIn, startLlmStandIn } from "../../../host/src/testing/llm-stand-in.ts";
import { startOidcStandIn } from "../../../host/src/testing/oidc-stand-in.ts";
import { waitFor } from "../../../host/src/testing/wait.ts";
import { assertClean, browserSkipReason, launchBrowser, screenshot, signIn, watchedPage } from "./browser.ts";

/** An agent that reports progress, writes hostile and ordinary artifacts, and gives a result. */
const REPORT_SCRIPT = [
  "echo starting",
  `echo '::paddock::{"type":"progress","data":{"step":1}}'`,
  "sleep 2",
  `printf '# Report\\n\\n<script>alert("md")</script> **bold**\\n' > /outputs/report.md`,
  `printf 'name,value\\nalpha,1\\n"x, y",2\\n' > /outputs/data.csv`,
  `printf '<svg xmlns="http://www.w3.org/2000/svg" width="160" height="80" onload="alert(1)"><script>alert(2)</script><rect width="160" height="80" fill="#2f7d5b"/></svg>' > /outputs/chart.svg`,
  `echo hostile > '/outputs/<img src=x onerror=alert(3)>.txt'`,
  `echo '::paddock::{"type":"result","data":{"ok":true,"lines":3}}'`,
  "echo done >&2",
].join("\n");

describe("the dashboard in a browser", { skip: e2eSkip(hostSkipReason() || browserSkipReason()) }, () => {
  let t: TestHost;
  let stand: LlmStandIn;
  let browser: Browser;
  let base: string;
  let hasReplay = false;
  const agents = { report: "", sleeper: "" };

  /** Follows a run page to its status, through the page's own attribute. */
  const statusIs = (page: Page, status: string, timeout = 120_000) =>
    page.waitForSelector(`[data-page=run][data-status=${status}]`, { timeout });

  before(async () => {
    stand = await startLlmStandIn();
    t = await startTestHost();
    base = t.host.url;
    browser = await launchBrowser();
    const doc = await t.api("GET", "/v1/openapi.json");
    hasReplay = Boolean(doc.body?.paths?.["/v1/runs/{id}/replay"]?.post);
    const report = await t.api("POST", "/v1/agents", {
      name: "report",
      command: ["sh", "-c", REPORT_SCRIPT],
    });
    assert.equal(report.status, 201, JSON.stringify(report.body));
    agents.report = report.body.id;
    const sleeper = await t.api("POST", "/v1/agents", { name: "sleeper", command: ["sleep", "300"] });
    agents.sleeper = sleeper.body.id;
    // A model provider (a local stand-in for one) and credits, for the built-in agent.
    await t.api("PUT", "/v1/secrets/llm-key", { value: "sk-stand-in" });
    const provider = await t.api("PUT", "/v1/providers/local", {
      kind: "openai_compatible",
      base_url: `${stand.url}/v1`,
      secret: "llm-key",
      models: { "gpt-ui": { input: 3, output: 15 } },
    });
    assert.ok(provider.status < 300, JSON.stringify(provider.body));
    await t.api("POST", "/v1/credits/grants", { tenant: "default", credits: 100 });
  });
  after(async () => {
    await browser?.close();
    await t?.close();
    await stand?.close();
  });

  it("refuses a wrong key, signs in with a good one, and signs out", async () => {
    const { context, page, seen } = await watchedPage(browser);
    await signIn(page, base, "pdk.key_nope.notakey");
    await page.waitForSelector("form .error");
    assert.match((await page.textContent("form .error")) ?? "", /not valid/);
    assert.deepEqual(await context.cookies(), []);

    await page.fill("#api-key", t.adminKey);
    await page.click("button[type=submit]");
    await page.waitForSelector("[data-page=runs][data-ready]");
    const [cookie] = await context.cookies();
    assert.equal(cookie?.name, "paddock_session");
    assert.equal(cookie?.httpOnly, true);
    assert.equal(cookie?.sameSite, "Strict");
    // The key is not kept by the page.
    assert.equal(await page.evaluate(() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage)), "{}{}");

    await page.click("text=Sign out");
    await page.waitForSelector("#api-key");
    await page.goto(`${base}/ui/runs`);
    await page.waitForSelector("#api-key");
    assertClean(seen, "sign-in");
    await context.close();
  });

  it("ends a session when its key is revoked", async () => {
    const tenant = await t.api("POST", "/v1/tenants", { name: "revoked-co" });
    const key = await t.api("POST", `/v1/tenants/${tenant.body.id}/keys`, {});
    const { context, page } = await watchedPage(browser);
    await signIn(page, base, key.body.key);
    await page.waitForSelector("[data-page=runs][data-ready]");
    const revoked = await t.api("DELETE", `/v1/tenants/${tenant.body.id}/keys/${key.body.id}`);
    assert.equal(revoked.status, 200);
    await page.goto(`${base}/ui/agents`);
    await page.waitForSelector("#api-key");
    await context.close();
  });

  it("refuses a write posted from another site's page, though the browser sends the cookie", async () => {
    const { context, page } = await watchedPage(browser);
    await signIn(page, base, t.adminKey);
    await page.waitForSelector("[data-page=runs][data-ready]");
    const before = (await t.api("GET", `/v1/runs?agent_id=${agents.sleeper}`)).body.data.length;
    // Another origin on the same machine (same site: a SameSite=Strict cookie still goes along).
    const evil: Server = createServer((_req, res) => {
      res.setHeader("content-type", "text/html");
      res.end(
        `<form method="post" action="${base}/v1/agents/${agents.sleeper}/runs"><input name="input" value="x"><button id="go">go</button></form>`,
      );
    });
    await new Promise<void>((r) => evil.listen(0, "127.0.0.1", r));
    try {
      await page.goto(`http://127.0.0.1:${(evil.address() as AddressInfo).port}/`);
      const [answer] = await Promise.all([page.waitForResponse(/\/v1\/agents\/.*\/runs/), page.click("#go")]);
      assert.equal(answer.status(), 403);
      assert.equal((await answer.json()).error.code, "csrf_failed");
    } finally {
      evil.close();
    }
    assert.equal((await t.api("GET", `/v1/runs?agent_id=${agents.sleeper}`)).body.data.length, before);
    await context.close();
  });

  it("runs an agent from its form and follows the run live to succeeded, with safe previews", async () => {
    const { context, page, seen } = await watchedPage(browser);
    await signIn(page, base, t.adminKey, `/ui/agents/${agents.report}`);
    await page.waitForSelector("#run-input");
    await screenshot(page, "agent");
    await page.fill("#run-input", '{"city": "Lyon", "days": 3}');
    await page.click("#run-now button:has-text('Run')");
    await page.waitForURL(/\/ui\/runs\/run_/);
    // Live: the page shows the run going before it shows it done, without a reload.
    await statusIs(page, "running");
    await page.waitForSelector("rect.bar-running.bar-open[data-seq]");
    await statusIs(page, "succeeded");
    await page.waitForSelector("rect.bar-event[data-seq]");
    assert.equal(await page.locator("rect.bar-running.bar-open[data-seq]").count(), 0);
    assert.match((await page.textContent(".facts")) ?? "", /succeeded/);
    await screenshot(page, "run");

    await page.click(".tabs button:has-text('log')");
    await page.waitForSelector(".log-row:has-text('starting')");
    assert.ok(await page.locator(".log-stderr:has-text('done')").count());

    await page.click(".tabs button:has-text('input')");
    await page.waitForSelector(".json-tree :text('Lyon')");
    assert.ok(await page.locator(".json-key:has-text('lines')").count(), "the result");

    await page.click(".tabs button:has-text('artifacts')");
    await page.waitForSelector("[data-artifact='chart.svg']");
    // The hostile name is text; no element was made from it.
    const hostile = "<img src=x onerror=alert(3)>.txt";
    assert.equal(await page.textContent(`[data-artifact="${hostile}"] .artifact-path`), hostile);
    assert.equal(await page.locator("img[src=x]").count(), 0);
    for (const name of ["chart.svg", "report.md", "data.csv"]) {
      await page.click(`[data-artifact="${name}"] button:has-text('Preview')`);
    }
    const img = page.locator("[data-artifact='chart.svg'] img");
    // Polled from here: a predicate evaluated in the page would be refused by its CSP (no eval).
    await waitFor(async () => (await img.evaluate((el: { naturalWidth: number }) => el.naturalWidth)) === 160, {
      what: "the SVG preview to load",
    });
    assert.match((await img.getAttribute("src")) ?? "", /^\/v1\/runs\/run_\w+\/artifacts\/art_\w+\/content$/);
    await page.waitForSelector("[data-artifact='report.md'] pre");
    assert.match((await page.textContent("[data-artifact='report.md'] pre")) ?? "", /<script>alert\("md"\)<\/script>/);
    await page.waitForSelector("[data-artifact='data.csv'] td:text('x, y')");
    // The only script on the page is the app's own.
    assert.equal(await page.locator("script").count(), 1);
    await screenshot(page, "artifacts");
    assertClean(seen, "run page with hostile artifacts");
    await context.close();
  });

  it("approves a held call from the approvals page, its hostile body shown as text", async () => {
    const upstream = await startStandIn();
    try {
      await t.api("PUT", "/v1/secrets/held-key", { value: "held-secret-value-1234" });
      const put = await t.api("PUT", "/v1/connections/held", {
        base_url: upstream.url,
        secret: "held-key",
        auth: { type: "bearer" },
        internal: true,
        policy: { allow: [{ methods: ["POST"], path: "/send/**", approval: { timeout_s: 300 } }] },
      });
      assert.equal(put.status, 201, JSON.stringify(put.body));
      const hostile = "<img src=x onerror=alert(7)>";
      const { runId } = await startRun(
        t,
        {
          name: "held-caller",
          command: ["/opt/paddock/runner/node", "/app/calls.mjs"],
          files: { "calls.mjs": CALLS_AGENT },
          policy: { connections: ["held"] },
        },
        { calls: [{ connection: "held", path: "/send/x", body: hostile }] },
      );
      const [pending] = await pendingApprovals(t, runId);
      const { context, page, seen } = await watchedPage(browser);
      await signIn(page, base, t.adminKey, "/ui/approvals");
      const card = page.locator(`section#${pending.id}`);
      await card.waitFor();
      assert.equal(await card.locator(".approval-body").textContent(), hostile, "the body is shown as its text");
      assert.match((await card.locator(".approval-request").textContent()) ?? "", /<secret held-key>/);
      await card.locator("input").fill("looks fine");
      await card.locator("button:has-text('Approve')").click();
      const done = await waitForRun(t, runId);
      assert.equal(done.status, "succeeded");
      const results: CallResult[] = await artifactJson(t, runId, "result.json");
      assert.equal(results[0]?.status, 200);
      assert.deepEqual(
        upstream.seen.filter((r) => r.url === "/send/x").map((r) => r.body),
        [hostile],
        "the approved call reached the upstream once, with the body shown",
      );
      const decided = (await t.api("GET", `/v1/approvals/${pending.id}`)).body;
      assert.deepEqual([decided.status, decided.note, decided.decided_by.via], ["approved", "looks fine", "api"]);
      assertClean(seen, "approvals");
      await screenshot(page, "approvals");
      await context.close();
    } finally {
      await upstream.close();
    }
  });

  it("connects an end user's account through the provider's pages, lists it, and revokes it", async () => {
    const idp = await startOidcStandIn({ redirectUri: `${base}/oauth/callback` });
    try {
      await t.api("PUT", "/v1/secrets/idp-secret", { value: idp.clientSecret });
      const app = await t.api("PUT", "/v1/oauth-apps/idp", idp.appBody("idp-secret"));
      assert.ok(app.status < 300, JSON.stringify(app.body));
      const endUser = "<b>ui-user</b>";
      const made = await t.api("POST", "/v1/connect-sessions", {
        end_user: endUser,
        app: "idp",
        redirect_after: `${base}/ui/accounts`,
      });
      assert.equal(made.status, 201, JSON.stringify(made.body));
      const { context, page, seen } = await watchedPage(browser);
      await signIn(page, base, t.adminKey, "/ui/accounts");
      await page.waitForSelector("[data-page=accounts][data-ready]");
      // The product sends its user to the connect URL: the provider's login, then its consent.
      await page.goto(made.body.url);
      await page.fill("input[name=login]", "ui-user");
      await page.click("button:has-text('Sign in')");
      await page.click("button:has-text('Allow')");
      await page.waitForURL((url) => url.pathname === "/ui/accounts");
      const landed = new URL(page.url());
      assert.equal(`${landed.origin}${landed.pathname}`, `${base}/ui/accounts`, "back on redirect_after");
      assert.equal(landed.searchParams.get("status"), "connected");
      const id = landed.searchParams.get("account") ?? "";
      const row = page.locator(`tr[data-account='${id}']`);
      await row.waitFor();
      assert.equal(await row.getAttribute("data-status"), "active");
      assert.equal(await row.locator("td").first().textContent(), endUser, "the end user's id shown as text");
      assert.match((await row.textContent()) ?? "", /idp.*active.*openid offline_access/);
      assert.equal(idp.counts.codes, 1);
      assertClean(seen, "accounts");
      await screenshot(page, "accounts");
      await row.locator("button:has-text('Revoke')").click();
      await row.locator("button:has-text('Yes')").click();
      await row.waitFor({ state: "detached" });
      assert.ok(idp.counts.revoked > 0, "revoked at the provider too");
      assert.deepEqual((await t.api("GET", "/v1/accounts")).body.data, []);
      await context.close();
    } finally {
      await idp.close();
    }
  });

  it("cancels a long run from its page", async () => {
    const started = await t.api("POST", `/v1/agents/${agents.sleeper}/runs`, {});
    const { context, page, seen } = await watchedPage(browser);
    await signIn(page, base, t.adminKey, `/ui/runs/${started.body.id}`);
    await statusIs(page, "running");
    await page.click(".page-head button:has-text('Cancel')");
    await page.click(".page-head button:has-text('Yes')");
    await statusIs(page, "canceled");
    assert.equal((await waitForRun(t, started.body.id)).status, "canceled");
    assertClean(seen, "cancel");
    await context.close();
  });

  it("cancels the runs selected in the list, which shows them canceled without a reload", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) ids.push((await t.api("POST", `/v1/agents/${agents.sleeper}/runs`, {})).body.id);
    const { context, page, seen } = await watchedPage(browser);
    await signIn(page, base, t.adminKey, `/ui/runs?agent=${agents.sleeper}`);
    for (const id of ids) {
      await page.waitForSelector(`tr[data-run="${id}"]`);
      await page.check(`tr[data-run="${id}"] input[type=checkbox]`);
    }
    await page.click("button:has-text('Cancel 2 selected')");
    await page.click(".page-head button:has-text('Yes')");
    for (const id of ids) await page.waitForSelector(`tr[data-run="${id}"][data-status=canceled]`, { timeout: 60_000 });
    // The filter is in the URL: a reload shows the same list.
    await page.reload();
    await page.waitForSelector(`tr[data-run="${ids[0]}"][data-status=canceled]`);
    assert.equal(new URL(page.url()).search, `?agent=${agents.sleeper}`);
    assertClean(seen, "bulk cancel");
    await context.close();
  });

  it("replays a run with an edited input", async (ctx) => {
    if (!hasReplay) {
      ctx.skip("this host has no POST /v1/runs/{id}/replay");
      return;
    }
    const first = await t.api("POST", `/v1/agents/${agents.report}/runs`, { input: { city: "Oslo" } });
    await waitForRun(t, first.body.id);
    const { context, page, seen } = await watchedPage(browser);
    await signIn(page, base, t.adminKey, `/ui/runs/${first.body.id}`);
    await statusIs(page, "succeeded");
    await page.click("button:has-text('Replay with edited input')");
    await page.fill("#replay-input", '{"city": "Bergen"}');
    await page.click("button:has-text('Replay with this input')");
    await page.waitForURL((url) => /\/ui\/runs\/run_/.test(url.pathname) && !url.pathname.endsWith(first.body.id));
    const replayId = new URL(page.url()).pathname.split("/").pop() as string;
    const replayed = await waitForRun(t, replayId);
    assert.deepEqual(replayed.input, { city: "Bergen" });
    assert.equal(replayed.agent_version, first.body.agent_version);
    assertClean(seen, "replay");
    await context.close();
  });

  it("shows a tenant's key only that tenant's runs", async () => {
    const tenant = await t.api("POST", "/v1/tenants", { name: "acme" });
    const key = (await t.api("POST", `/v1/tenants/${tenant.body.id}/keys`, {})).body.key;
    const agent = await t.api("POST", "/v1/agents", { name: "acme-agent", command: ["true"] }, key);
    const theirs = await t.api("POST", `/v1/agents/${agent.body.id}/runs`, {}, key);
    await waitForRun(t, theirs.body.id, key);
    // A run of the admin's own tenant, which the tenant's key must not see.
    const noop = await t.api("POST", "/v1/agents", { name: "admin-noop", command: ["true"] });
    const admins = [(await t.api("POST", `/v1/agents/${noop.body.id}/runs`, {})).body.id];

    const { context, page, seen } = await watchedPage(browser);
    await signIn(page, base, key);
    await page.waitForSelector(`[data-page=runs][data-ready] tr[data-run="${theirs.body.id}"]`);
    const shown = await page.locator("tr[data-run]").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-run")));
    assert.deepEqual(shown, [theirs.body.id]);
    await page.goto(`${base}/ui/runs/${admins[0]}`);
    await page.waitForSelector(".error");
    assert.match((await page.textContent(".error")) ?? "", /not_found/);
    assertClean(seen, "tenant view");
    await context.close();
  });

  it("scrolls a 100,000-line log with the rows rendered bounded", async () => {
    const run = await t.api("POST", `/v1/agents/${agents.report}/runs`, {});
    await waitForRun(t, run.body.id);
    // An attempt stores at most 10,000 events: the lines are written to the store as a host writes them.
    const store = await openDatabase({ dataDir: t.dataDir });
    try {
      const log = new EventLog(store.db);
      const at = Date.now();
      await store.db.transaction().execute(async (trx) => {
        for (let i = 0; i < 100_000; i += 1000) {
          const lines = Array.from({ length: 1000 }, (_, j) => ({
            type: "log" as const,
            data: { stream: "stdout" as const, line: `line ${i + j + 1} ${"x".repeat((i + j) % 80)}` },
            ts: at + i + j,
          }));
          await log.append(trx, run.body.id, 1, lines);
        }
      });
    } finally {
      await store.close();
    }
    const { context, page, seen } = await watchedPage(browser);
    await signIn(page, base, t.adminKey, `/ui/runs/${run.body.id}`);
    await statusIs(page, "succeeded");
    await page.click(".tabs button:has-text('log')");
    // The run's own two lines, and the 100,000 written.
    await page.waitForSelector(".log-box[data-total='100002']", { timeout: 120_000 });
    const rendered = async () => Number(await page.getAttribute(".log-box", "data-rendered"));
    assert.ok((await rendered()) <= 60, `${await rendered()} rows rendered`);
    assert.ok((await page.locator(".log-row").count()) <= 60);
    // Following: the last line is in view.
    await page.waitForSelector(".log-row:has-text('line 100000 ')");
    await screenshot(page, "log");
    // Scrolled to the middle: the lines there are drawn, and still only a screenful of rows.
    await page.evaluate(`(() => {
      const box = document.querySelector(".log-box");
      box.scrollTop = box.scrollHeight / 2;
    })()`);
    await page.waitForSelector(".log-row:has-text('line 50000 ')");
    assert.ok((await page.locator(".log-row").count()) <= 60);
    await page.fill("input[aria-label='Filter log lines']", "line 4242 ");
    await page.waitForSelector(".log-box[data-total='1']");
    assertClean(seen, "long log");
    await context.close();
  });

  it("shows a built-in agent's model calls, its tool call and what they cost", async () => {
    stand.script("gpt-ui", [
      { tools: [{ id: "call_1", name: "shell", arguments: { command: "echo from-a-tool" } }] },
      { text: "All done." },
    ]);
    const agent = await t.api("POST", "/v1/agents", {
      name: "writer",
      instructions: "Write a short briefing.",
      model: "gpt-ui",
    });
    assert.equal(agent.status, 201, JSON.stringify(agent.body));
    const run = await t.api("POST", `/v1/agents/${agent.body.id}/runs`, { input: { topic: "weather" } });
    const done = await waitForRun(t, run.body.id);
    assert.equal(done.status, "succeeded", JSON.stringify(done));

    const { context, page, seen } = await watchedPage(browser);
    await signIn(page, base, t.adminKey, `/ui/runs/${run.body.id}`);
    await statusIs(page, "succeeded");
    await page.waitForSelector("rect.bar-llm[data-seq]");
    await page.waitForSelector("rect.bar-tool[data-seq]");
    await page.click(".tabs button:has-text('model calls')");
    await page.waitForSelector("table.calls tbody tr");
    const rows = await page.locator("table.calls tbody tr").allTextContents();
    assert.equal(rows.length, 2);
    assert.match(rows[0] ?? "", /local.*gpt-ui/);
    assert.match((await page.textContent("[data-page=run]")) ?? "", /Billed: [\d.]+ credits over 2 call/);
    await page.click(".tabs button:has-text('timeline')");
    await screenshot(page, "run-model-calls");
    assertClean(seen, "model calls");
    await context.close();
  });

  it("saves screenshots of the other main pages", async () => {
    const { context, page, seen } = await watchedPage(browser);
    await signIn(page, base, t.adminKey);
    await page.waitForSelector("[data-page=runs][data-ready] tr[data-run]");
    await screenshot(page, "runs");
    for (const [path, name] of [
      ["/ui/credits", "credits"],
      ["/ui/settings", "settings"],
      ["/ui/admin", "admin"],
    ] as const) {
      await page.click(`nav a[href='${path}']`);
      await page.waitForSelector(`[data-page=${name}]`);
      await page.waitForLoadState("networkidle");
      await screenshot(page, name);
    }
    assertClean(seen, "other pages");
    await context.close();
  });
});
