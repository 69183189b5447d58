/**
 * GET /metrics without root: a host whose driver refuses every boot runs a scenario (runs by the
 * API, a schedule and a webhook, requests that fail), and its metrics say exactly what happened;
 * promtool accepts the output; only the admin key or the metrics token may read it; a scrape
 * with many queued runs and requests in flight answers within its budget; two hosts in one
 * process keep their own registries.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { metricValue, parseMetrics, WEBHOOK_HEADERS } from "@paddock/protocol";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { promtoolCheck, promtoolSkipReason } from "../testing/promtool.ts";
import { sqliteStore } from "../testing/stores.ts";
import { runRow } from "../testing/test-store.ts";
import { waitFor } from "../testing/wait.ts";
import { signDelivery } from "../triggers/webhooks.ts";

const RUNS = 5;
const TOKEN = `metrics-${"x".repeat(8)}-${process.pid}-token`;
/** What a scrape may take, even with many queued runs and requests in flight. */
const SCRAPE_BUDGET_MS = 1000;
const sampleOf = (text: string, name: string, labels: Record<string, string>) =>
  metricValue(parseMetrics(text), name, labels);

describe("GET /metrics", () => {
  let h: NoRootHost;
  let dir: string;
  let tenantKey: string;
  let tenantId: string;
  let agentId: string;
  const runIds: string[] = [];

  const call = async (path: string, key: string | null, init: RequestInit = {}) => {
    const headers = new Headers(init.headers);
    if (key !== null) headers.set("authorization", `Bearer ${key}`);
    const res = await h.services.app.request(path, { ...init, headers });
    return { status: res.status, type: res.headers.get("content-type"), text: await res.text() };
  };
  const post = (path: string, body: unknown, key = h.adminKey) =>
    call(path, key, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const scrape = async (key: string = h.adminKey) => {
    const res = await call("/metrics", key);
    assert.equal(res.status, 200, res.text);
    return res.text;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "paddock-metrics-"));
    await writeFile(join(dir, "token"), `${TOKEN}\n`, { mode: 0o600 });
    h = await startNoRootHost(sqliteStore(), { config: { metricsTokenFile: join(dir, "token") } });
    const tenant = JSON.parse((await post("/v1/tenants", { name: "metrics-tenant" })).text);
    tenantKey = JSON.parse((await post(`/v1/tenants/${tenant.id}/keys`, {})).text).key;
    tenantId = tenant.id;
    const agent = await post("/v1/agents", { name: "counted", instructions: "Say hi.", model: "m" });
    assert.equal(agent.status, 201, agent.text);
    agentId = JSON.parse(agent.text).id;
  });
  after(async () => {
    await h?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("counts the runs a scenario made and how each ended, by trigger, status and reason", async () => {
    for (let i = 0; i < RUNS; i++) {
      const res = await post(`/v1/agents/${agentId}/runs`, { input: i });
      assert.equal(res.status, 201, res.text);
      runIds.push(JSON.parse(res.text).id);
    }
    // A schedule's slot and a webhook's delivery start one run each; a forged delivery none.
    const schedule = await post("/v1/schedules", { agent: agentId, cron: "* * * * *" });
    assert.equal(schedule.status, 201, schedule.text);
    const fired = await h.services.scheduler.tick(Date.now() + 61_000);
    assert.equal(fired.length, 1);
    runIds.push(...fired);
    const hook = JSON.parse((await call(`/v1/agents/${agentId}/webhooks`, h.adminKey, { method: "POST" })).text);
    const ts = String(Math.floor(Date.now() / 1000));
    const deliver = (signature: string) =>
      call(`/v1/hooks/${hook.id}`, null, {
        method: "POST",
        body: "{}",
        headers: {
          [WEBHOOK_HEADERS.timestamp]: ts,
          [WEBHOOK_HEADERS.delivery]: "d-1",
          [WEBHOOK_HEADERS.signature]: signature,
        },
      });
    const delivered = await deliver(signDelivery(hook.secret, ts, "d-1", "{}"));
    assert.equal(delivered.status, 202, delivered.text);
    runIds.push(JSON.parse(delivered.text).run_id);
    assert.equal((await deliver(`sha256=${"0".repeat(64)}`)).status, 401);
    // Every run fails: this host's driver refuses to boot.
    await waitFor(
      async () => {
        const text = await scrape();
        return sampleOf(text, "paddock_runs_finished_total", { status: "failed", reason: "sandbox_error" }) === RUNS + 2
          ? text
          : null;
      },
      { what: "every run to be counted as failed" },
    );
    const text = await scrape();
    assert.equal(sampleOf(text, "paddock_runs_created_total", { trigger: "api" }), RUNS);
    assert.equal(sampleOf(text, "paddock_runs_created_total", { trigger: "schedule" }), 1);
    assert.equal(sampleOf(text, "paddock_runs_created_total", { trigger: "webhook" }), 1);
    assert.equal(sampleOf(text, "paddock_schedule_fires_total", { outcome: "started" }), 1);
    assert.equal(sampleOf(text, "paddock_webhook_deliveries_total", { outcome: "accepted" }), 1);
    assert.equal(sampleOf(text, "paddock_webhook_deliveries_total", { outcome: "webhook_signature_invalid" }), 1);
    // Each attempt was claimed (its queue wait) and ended on this node.
    assert.equal(sampleOf(text, "paddock_run_queue_wait_seconds_count", {}), RUNS + 2);
    assert.equal(sampleOf(text, "paddock_run_duration_seconds_count", { status: "failed" }), RUNS + 2);
    assert.equal(sampleOf(text, "paddock_runs_queued", {}), 0);
    assert.equal(sampleOf(text, "paddock_runs_active", { state: "running" }), 0);
    assert.equal(sampleOf(text, "paddock_warm_sandboxes", {}), 0);
    assert.equal(sampleOf(text, "paddock_sse_clients", {}), 0);
    assert.equal(sampleOf(text, "paddock_build_info", { version: "0.1.0", node: h.services.nodeId }), 1);
    // Requests by their declared route, never the URL: no run id is a label anywhere.
    const route = { method: "POST", route: "/v1/agents/{id}/runs", status_class: "2xx" };
    assert.equal(sampleOf(text, "paddock_http_request_duration_seconds_count", route), RUNS);
    for (const id of [...runIds, agentId]) assert.ok(!text.includes(id), `${id} is in the metrics`);
  });

  it("passes promtool check metrics", { skip: e2eSkip(promtoolSkipReason()) }, async () => {
    const checked = promtoolCheck(await scrape());
    assert.ok(checked.ok, checked.output);
  });

  it("answers the admin key and the metrics token, and refuses anyone else with their codes", async () => {
    const viaToken = await call("/metrics", TOKEN);
    assert.equal(viaToken.status, 200);
    assert.match(viaToken.type ?? "", /^text\/plain; version=0\.0\.4/);
    assert.match(viaToken.text, /^paddock_build_info\{/m);
    const refused = async (key: string | null, status: number, code: string) => {
      const res = await call("/metrics", key);
      assert.equal(res.status, status, res.text);
      assert.equal(JSON.parse(res.text).error.code, code);
    };
    await refused(null, 401, "unauthorized");
    await refused(`${TOKEN}x`, 401, "metrics_token_invalid");
    await refused("pdk.key_nope.secret", 401, "unauthorized");
    await refused(tenantKey, 403, "forbidden");
    const doc = JSON.parse((await call("/v1/openapi.json", null)).text);
    assert.deepEqual(doc.paths["/metrics"].get.security, [{ admin: [] }, { metrics: [] }]);
  });

  it("answers within its budget with many runs queued and requests in flight", async () => {
    // Queued, but not due for an hour: the engine leaves them, the count sees them.
    const later = Date.now() + 3_600_000;
    const rows = Array.from({ length: 20_000 }, (_, i) =>
      runRow(tenantId, agentId, {
        status: "queued",
        attempt: 0,
        input: String(i),
        started_at: null,
        not_before: later,
      }),
    );
    for (let i = 0; i < rows.length; i += 500) {
      await h.db
        .insertInto("runs")
        .values(rows.slice(i, i + 500))
        .execute();
    }
    const load = Array.from({ length: 100 }, () => call("/v1/runs?limit=200", h.adminKey));
    const took: number[] = [];
    for (let i = 0; i < 5; i++) {
      const started = performance.now();
      const text = await scrape(TOKEN);
      took.push(performance.now() - started);
      assert.equal(sampleOf(text, "paddock_runs_queued", {}), rows.length);
    }
    await Promise.all(load);
    assert.ok(Math.max(...took) < SCRAPE_BUDGET_MS, `scrapes took ${took.map((t) => t.toFixed(1)).join(", ")} ms`);
    await h.db.deleteFrom("runs").where("tenant_id", "=", tenantId).execute();
  });

  it("keeps each host's metrics in its own registry", async () => {
    const other = await startNoRootHost(sqliteStore(), { config: { nodeId: "second-node" } });
    try {
      const res = await other.services.app.request("/metrics", {
        headers: { authorization: `Bearer ${other.adminKey}` },
      });
      const text = await res.text();
      assert.equal(sampleOf(text, "paddock_build_info", { version: "0.1.0", node: "second-node" }), 1);
      assert.equal(parseMetrics(text).filter((s) => s.name === "paddock_build_info").length, 1);
      assert.equal(sampleOf(text, "paddock_runs_created_total", { trigger: "api" }), undefined);
      const mine = await scrape();
      assert.equal(sampleOf(mine, "paddock_runs_created_total", { trigger: "api" }), RUNS);
    } finally {
      await other.close();
    }
  });
});
