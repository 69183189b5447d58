/**
 * `paddock bench approvals`: how soon an approved call leaves, and what approval rules cost the
 * calls they do not hold, through a real host whose runs are real sandboxes calling through the
 * bridge (the SDK's bridge.fetch) to an upstream on loopback.
 *
 * Figures:
 * - decision_to_upstream_ms {p50, p99}: from the moment `POST /v1/approvals/{id}` (approve) is
 *   sent to the held call's arrival at the upstream, one call at a time (the sandbox's request is
 *   held open meanwhile, as the SDK does); the target is p50 at most 10 ms. Both ends are timed in
 *   this process, on one clock.
 * - no_rule_ms: calls that match no approval rule, side by side in one sandbox, interleaved on
 *   keep-alive connections: through a connection without any approval rule (`plain`) and through
 *   one whose other rules hold calls for approval (`with_rules`); `difference` is the latter minus
 *   the former per percentile, the cost approvals add to a call they do not hold (expected 0
 *   within noise).
 * - forwarded: the upstream's count of held calls (must equal the calls approved: each once).
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { startBenchHost, TIMED_BRIDGE_GET } from "./bench-host.ts";
import { type Dist, dist } from "./stats.ts";

export interface ApprovalsBenchOptions {
  imagesDir: string;
  /** Held calls approved one at a time. */
  calls: number;
  /** Call pairs (plain, with rules) for the side-by-side part. */
  pairs: number;
  progress?: (line: string) => void;
}

export interface ApprovalsBenchResult {
  scenario: "approvals";
  calls: number;
  decision_to_upstream_ms: Dist;
  target: { decision_to_upstream_ms_p50: number };
  within_target: boolean;
  forwarded: number;
  no_rule_ms: { plain: Dist; with_rules: Dist; difference: { p50: number; p99: number } };
  notes: string;
}

const TARGET_P50_MS = 10;

/** Makes `calls` held calls one after the other through the SDK, each with its own body. */
const HELD = `
const { bridge } = await import(process.env.PADDOCK_SDK);
const n = Number(process.env.BENCH_CALLS);
for (let i = 0; i < n; i++) {
  const res = await bridge.fetch("held", "/held/" + i, { method: "POST", body: "call " + i });
  if (res.status !== 200) throw new Error("call " + i + ": " + res.status + " " + (await res.text()));
}
`;

/** Interleaved GETs through both connections on keep-alive sockets; writes the times to /outputs/latency.json. */
const SIDE_BY_SIDE = `${TIMED_BRIDGE_GET}
const n = Number(process.env.BENCH_PAIRS);
for (let i = 0; i < 50; i++) { await call("plain"); await call("held"); }
const out = { plain: [], with_rules: [] };
for (let i = 0; i < n; i++) {
  if (i % 2) { out.with_rules.push(await call("held")); out.plain.push(await call("plain")); }
  else { out.plain.push(await call("plain")); out.with_rules.push(await call("held")); }
}
writeFileSync("/outputs/latency.json", JSON.stringify(out));
`;

const round = (x: number) => Math.round(x * 1000) / 1000;

export async function approvalsBench(opts: ApprovalsBenchOptions): Promise<ApprovalsBenchResult> {
  /** When each held call arrived (this process's clock), by its path. */
  const arrived = new Map<string, number>();
  let forwarded = 0;
  const wakers = new Set<() => void>();
  const upstream = http.createServer({ keepAlive: true }, (req, res) => {
    if (req.url?.startsWith("/held/")) {
      forwarded++;
      arrived.set(req.url, performance.now());
      for (const wake of wakers) wake();
    }
    req.resume();
    req.on("end", () => res.writeHead(200, { "content-type": "text/plain" }).end("ok"));
  });
  await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  const b = await startBenchHost({ imagesDir: opts.imagesDir, warmSandboxes: 0 });
  try {
    const echo = { methods: ["GET"], path: "/echo/**" };
    const connection = (allow: unknown[]) => ({
      base_url: base,
      auth: { type: "none" },
      internal: true,
      policy: { allow },
    });
    await b.api("PUT", "/v1/connections/plain", connection([echo]));
    await b.api(
      "PUT",
      "/v1/connections/held",
      connection([{ methods: ["POST"], path: "/held/**", approval: { timeout_s: 600 } }, echo]),
    );
    const agent = (name: string, script: string, env: Record<string, string>) =>
      b.api("POST", "/v1/agents", {
        name,
        command: ["/opt/paddock/runner/node", "/app/agent.mjs"],
        files: { "agent.mjs": script },
        env,
        policy: { connections: ["plain", "held"] },
      });

    // Decision to upstream: each held call is approved once the host shows it pending.
    const held = await agent("approvals-bench", HELD, { BENCH_CALLS: String(opts.calls) });
    const run = await b.api("POST", `/v1/agents/${held.id}/runs`, {});
    const latencies: number[] = [];
    for (let i = 0; i < opts.calls; i++) {
      const pending = await until(async () => {
        const page = await b.api<{ data: { id: string }[] }>("GET", `/v1/approvals?status=pending&run_id=${run.id}`);
        return page.data[0];
      }, `call ${i}'s approval`);
      const path = `/held/${i}`;
      const sent = performance.now();
      const landed = new Promise<number>((resolve) => {
        const check = () => {
          const at = arrived.get(path);
          if (at === undefined) return;
          wakers.delete(check);
          resolve(at);
        };
        wakers.add(check);
        check();
      });
      await b.api("POST", `/v1/approvals/${pending.id}`, { decision: "approve" });
      latencies.push((await landed) - sent);
    }
    const decision = dist(latencies);
    opts.progress?.(`${opts.calls} approvals: p50 ${decision.p50} ms from the decision to the upstream`);

    // Side by side: calls no rule holds, through a connection with approval rules and one without.
    const side = await agent("approvals-bench-side", SIDE_BY_SIDE, { BENCH_PAIRS: String(opts.pairs) });
    const sideRun = await b.api("POST", `/v1/agents/${side.id}/runs`, {});
    const ended = await until(
      async () => {
        const r = await b.api<{ status: string }>("GET", `/v1/runs/${sideRun.id}`);
        return ["succeeded", "failed", "timed_out", "canceled"].includes(r.status) ? r.status : undefined;
      },
      "the side-by-side calls",
      60_000 + opts.pairs * 50,
    );
    if (ended !== "succeeded") throw new Error(`bench approvals: the side-by-side run ${ended}`);
    const artifacts = await b.api<{ data: { id: string; path: string }[] }>("GET", `/v1/runs/${sideRun.id}/artifacts`);
    const file = artifacts.data.find((a) => a.path === "latency.json");
    const content = await fetch(`${b.host.url}/v1/runs/${sideRun.id}/artifacts/${file?.id}/content`, {
      headers: { authorization: `Bearer ${b.host.adminKey}` },
    });
    const samples = (await content.json()) as { plain: number[]; with_rules: number[] };
    const plain = dist(samples.plain);
    const withRules = dist(samples.with_rules);
    opts.progress?.(`side by side: p50 ${plain.p50} ms without rules, ${withRules.p50} ms with`);
    return {
      scenario: "approvals",
      calls: opts.calls,
      decision_to_upstream_ms: decision,
      target: { decision_to_upstream_ms_p50: TARGET_P50_MS },
      within_target: decision.p50 <= TARGET_P50_MS,
      forwarded,
      no_rule_ms: {
        plain,
        with_rules: withRules,
        difference: { p50: round(withRules.p50 - plain.p50), p99: round(withRules.p99 - plain.p99) },
      },
      notes:
        "decision_to_upstream_ms includes the API request itself (auth, the decision's transaction) and the held " +
        "call's forward (the claim's compare-and-set, connection setup to the upstream); no_rule_ms are whole bridged " +
        "calls from inside one sandbox, interleaved",
    };
  } finally {
    await b.close();
    upstream.closeAllConnections();
    upstream.close();
  }
}

/** Polls `check` until it returns a value (bounded: a minute, unless told otherwise). */
async function until<T>(check: () => Promise<T | undefined>, what: string, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`bench approvals: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}
