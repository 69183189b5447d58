/**
 * Metrics and logs end to end: a real host, real sandboxes, a stand-in upstream for the bridge
 * and a stand-in model provider. GET /metrics counts exactly the bridge calls a run made and the
 * provider's own token figures; the gauges follow a run going and a client on its events; and
 * with every secret, key and token the host knows set to a random canary, driving successful and
 * failing calls leaves none of them in any log line, JSON or text.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { isEvent, metricValue, parseMetrics } from "@paddock/protocol";
import { createLog } from "../logs/log.ts";
import { artifactJson, PROBE_AGENT, type StandIn, startStandIn } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName } from "../testing/harness.ts";
import { type LlmStandIn, startLlmStandIn } from "../testing/llm-stand-in.ts";
import { promtoolCheck, promtoolSkipReason } from "../testing/promtool.ts";
import { waitFor } from "../testing/wait.ts";

const NODE = "/opt/paddock/runner/node";
const canary = (prefix: string) => `${prefix}${randomBytes(18).toString("hex")}`;
const SECRET = canary("ghs_");
const PROVIDER_KEY = canary("sk-");
const METRICS_TOKEN = canary("mt-");
const MASTER_KEY = randomBytes(32).toString("base64");
const MODEL = "gpt-metrics";
const chat = (say: string) => ({
  method: "POST",
  path: "/v1/chat/completions",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ model: MODEL, max_tokens: 50, messages: [{ role: "user", content: say }] }),
});

describe("metrics and logs end to end", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  let upstream: StandIn;
  let llm: LlmStandIn;
  let dir: string;
  /** Every line the host logged, as JSON and as text. */
  const json: string[] = [];
  const pretty: string[] = [];
  /** Run tokens the sandboxes held, collected as canaries too. */
  const runTokens: string[] = [];

  const scrape = async () => {
    const res = await t.api("GET", "/metrics", undefined, METRICS_TOKEN);
    assert.equal(res.status, 200, String(res.body));
    return res.body as string;
  };
  const ok = async (method: string, path: string, body: unknown) => {
    const res = await t.api(method, path, body);
    assert.ok(res.status < 300, `${path}: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "paddock-observe-"));
    await writeFile(join(dir, "master.key"), MASTER_KEY, { mode: 0o600 });
    await writeFile(join(dir, "metrics.token"), METRICS_TOKEN, { mode: 0o600 });
    const asJson = createLog({ format: "json", node: "observed", destination: { write: (l: string) => json.push(l) } });
    const asText = createLog({ format: "pretty", node: "observed", destination: { write: (l) => pretty.push(l) } });
    upstream = await startStandIn();
    llm = await startLlmStandIn();
    t = await startTestHost({
      masterKeyFile: join(dir, "master.key"),
      metricsTokenFile: join(dir, "metrics.token"),
      log: (line, fields) => {
        asJson(line, fields);
        asText(line, fields);
      },
    });
    await ok("PUT", "/v1/secrets/echo-token", { value: SECRET });
    await ok("PUT", "/v1/secrets/llm-key", { value: PROVIDER_KEY });
    const connection = { secret: "echo-token", internal: true, timeout_ms: 1500, auth: { type: "bearer" } };
    await ok("PUT", "/v1/connections/echo", {
      ...connection,
      base_url: upstream.url,
      policy: { allow: [{ methods: ["GET", "POST"], path: "/echo/**" }] },
    });
    // An upstream nobody listens on: calls through it fail.
    await ok("PUT", "/v1/connections/down", {
      ...connection,
      base_url: "http://127.0.0.1:9",
      policy: { allow: [{ methods: ["GET"], path: "/**" }] },
    });
    await ok("PUT", "/v1/providers/stand-in", {
      kind: "openai_compatible",
      base_url: `${llm.url}/v1`,
      secret: "llm-key",
      models: { [MODEL]: { input: 3, output: 15, max_output_tokens: 1000 } },
    });
    await ok("POST", "/v1/credits/grants", { tenant: "default", credits: 1000 });
  });
  after(async () => {
    await t?.close();
    await upstream?.close();
    await llm?.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** Runs the probe agent with `calls`; returns the run and its events. */
  const probe = async (calls: unknown[]) => {
    const { run, events } = await runAgent(
      t,
      {
        name: uniqueName("observed"),
        command: [NODE, "/app/probe.mjs"],
        files: { "probe.mjs": PROBE_AGENT },
        policy: { connections: ["echo", "down"] },
      },
      { calls },
    );
    assert.equal(run.status, "succeeded", JSON.stringify(events.slice(-5)));
    runTokens.push(((await artifactJson(t, run.id, "result.json")) as { token: string }).token);
    return { run, events };
  };

  test("counts the bridge calls a run made and the provider's own token figures", async () => {
    const before = parseMetrics(await scrape());
    const usageBefore = llm.usage.length;
    const { events } = await probe([
      { path: "/bridge/echo/echo/1" },
      { path: "/bridge/echo/echo/2", method: "POST", body: "two" },
      { path: "/bridge/echo/echo/3" },
      { path: "/bridge/echo/elsewhere" },
      { path: "/bridge/made-up/anything" },
      chat("hello there"),
      chat("count to five please"),
      chat("status:500"),
    ]);
    const after = parseMetrics(await scrape());
    const grew = (name: string, labels: Record<string, string>) =>
      (metricValue(after, name, labels) ?? 0) - (metricValue(before, name, labels) ?? 0);

    const bridge = "paddock_bridge_call_duration_seconds_count";
    assert.equal(grew(bridge, { connection: "echo", outcome: "ok" }), 3);
    assert.equal(grew(bridge, { connection: "echo", outcome: "policy_denied" }), 1);
    // A name the sandbox made up is no label.
    assert.equal(grew(bridge, { connection: "", outcome: "connection_not_allowed" }), 1);
    assert.ok(!after.some((s) => s.labels.connection === "made-up"));
    assert.equal(events.filter(isEvent("bridge.call")).length, 5);

    // The token usage histogram's sums are the stand-in's own figures.
    const served = llm.usage.slice(usageBefore);
    assert.equal(served.length, 2);
    const genai = { gen_ai_provider_name: "stand-in", gen_ai_request_model: MODEL, gen_ai_operation_name: "chat" };
    const tokens = "gen_ai_client_token_usage";
    const input = served.reduce((n, u) => n + u.input, 0);
    const output = served.reduce((n, u) => n + u.output, 0);
    assert.equal(grew(`${tokens}_sum`, { ...genai, gen_ai_token_type: "input" }), input);
    assert.equal(grew(`${tokens}_sum`, { ...genai, gen_ai_token_type: "output" }), output);
    assert.equal(grew(`${tokens}_count`, { ...genai, gen_ai_token_type: "output" }), 2);
    const duration = "gen_ai_client_operation_duration_seconds_count";
    assert.equal(grew(duration, genai), 3);
    assert.equal(grew(duration, { ...genai, error_type: "provider_error" }), 1);
    // What the run was charged, by its tenant.
    const charged = events.filter(isEvent("llm.call")).reduce((n, e) => n + (e.data.cost ?? 0), 0);
    assert.ok(charged > 0);
    assert.ok(Math.abs(grew("paddock_credits_spent_total", {}) - charged) < 1e-6, `${charged}`);

    assert.equal(grew("paddock_runs_finished_total", { status: "succeeded", reason: "completed" }), 1);
    assert.equal(grew("paddock_sandbox_start_seconds_count", {}), 1);
    assert.equal(grew("paddock_run_duration_seconds_count", { status: "succeeded" }), 1);
  });

  test("promtool accepts the output with every family filled", { skip: e2eSkip(promtoolSkipReason()) }, async () => {
    const checked = promtoolCheck(await scrape());
    assert.ok(checked.ok, checked.output);
  });

  test("follows a run going and a client on its events", async () => {
    const agent = await ok("POST", "/v1/agents", {
      name: uniqueName("waits"),
      command: [NODE, "-e", "setTimeout(() => {}, 60000)"],
    });
    const run = await ok("POST", `/v1/agents/${agent.id}/runs`, {});
    const res = await fetch(`${t.host.url}/v1/runs/${run.id}/events`, {
      headers: { accept: "text/event-stream", authorization: `Bearer ${t.adminKey}` },
    });
    const reading = res.text();
    const gauges = async () => {
      const samples = parseMetrics(await scrape());
      return {
        sse: metricValue(samples, "paddock_sse_clients"),
        running: metricValue(samples, "paddock_runs_active", { state: "running" }),
      };
    };
    await waitFor(async () => JSON.stringify(await gauges()) === JSON.stringify({ sse: 1, running: 1 }), {
      what: "one client following one running run",
      timeoutMs: 60_000,
    });
    await ok("POST", `/v1/runs/${run.id}/cancel`, {});
    await reading;
    await waitFor(async () => JSON.stringify(await gauges()) === JSON.stringify({ sse: 0, running: 0 }), {
      what: "the client and the run gone",
    });
  });

  test("no secret, key or token ever appears in a log line, JSON or text", async () => {
    // Failing calls: a stolen admin key as the run token, an upstream that is down, a provider
    // error, the secret echoed back, and API requests carrying canaries where keys go.
    await probe([
      { path: "/bridge/echo/echo/secret", token: t.adminKey },
      { path: "/bridge/echo/echo/again", headers: { authorization: `Bearer ${SECRET}` }, token: "" },
      { path: "/bridge/down/x" },
      { path: "/bridge/echo/echo/plain" },
      { ...chat("status:500"), token: PROVIDER_KEY },
      chat("status:429"),
      chat("echo-key"),
    ]);
    for (const key of [SECRET, PROVIDER_KEY, MASTER_KEY, METRICS_TOKEN]) {
      assert.equal((await t.api("GET", "/v1/runs", undefined, key)).status, 401);
    }
    assert.equal((await t.api("GET", "/metrics", undefined, `${METRICS_TOKEN}-wrong`)).status, 401);
    assert.equal((await t.api("POST", "/v1/agents", `{"name": "${SECRET}",`)).status, 400);
    // A forged webhook delivery, which the host logs.
    const agent = await ok("POST", "/v1/agents", { name: uniqueName("hooked"), command: [NODE, "-e", "0"] });
    const hook = await ok("POST", `/v1/agents/${agent.id}/webhooks`, undefined);
    const forged = await t.api("POST", `/v1/hooks/${hook.id}`, "{}", null, {
      "x-paddock-timestamp": String(Math.floor(Date.now() / 1000)),
      "x-paddock-delivery": SECRET,
      "x-paddock-signature": `sha256=${"ab".repeat(32)}`,
    });
    assert.equal(forged.status, 401);
    await t.restart();

    assert.ok(json.length === pretty.length, `${json.length} JSON, ${pretty.length} text lines`);
    assert.ok(
      json.some((l) => l.includes(`webhook ${hook.id}: refused`)),
      json.join(""),
    );
    assert.ok(json.filter((l) => l.includes("master key")).length === 2, "a line at each start");
    for (const line of json) {
      const parsed = JSON.parse(line);
      assert.equal(parsed.node, "observed");
      assert.equal(typeof parsed.msg, "string");
    }
    const everything = [...json, ...pretty, ...t.logs].join("");
    assert.ok(runTokens.length >= 2);
    const canaries: [string, string][] = [
      ["a tenant's secret", SECRET],
      ["a provider key", PROVIDER_KEY],
      ["the master key", MASTER_KEY],
      ["the metrics token", METRICS_TOKEN],
      ["the admin key", t.adminKey],
      ...runTokens.map((token): [string, string] => ["a run token", token]),
    ];
    for (const [what, value] of canaries) {
      assert.ok(!everything.includes(value), `${what} appears in the log`);
    }
  });
});
