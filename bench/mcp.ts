/**
 * `paddock bench mcp`: what the host adds to an MCP `tools/call`, measured from inside a real
 * sandbox of a real host.
 *
 * A stand-in MCP server (the official SDK's, answering plain JSON) listens on the host side of the
 * sandbox links; it is registered as the MCP server `bench` with a secret, and the agent's policy
 * allows its `echo` tool, pinned when the agent is saved. For this benchmark only, the server's port
 * is opened to the sandboxes too, so that the same call can also go straight to it over the same
 * link: the floor. The run alternates calls through `$PADDOCK_BRIDGE_URL/mcp` (the run token, the
 * policy and pin checks, the argument schema check, the credential attached, the call recorded)
 * and direct calls, each on its own keep-alive connection with its own initialized session.
 *
 * Figures:
 * - added_ms {p50, p99}: through the host minus direct, per percentile (target p50 ≤ 2 ms).
 * - latency_ms: both distributions.
 * - calls_recorded: the run's mcp.call events (one per call through the host).
 */

import { startMcpStandIn } from "../packages/host/src/testing/mcp-stand-in.ts";
import { artifactJson, type BenchHost, follow, now, startBenchHost } from "./bench-host.ts";
import { type Dist, dist } from "./stats.ts";

export interface McpBenchOptions {
  imagesDir: string;
  /** Call pairs (direct, through the host). */
  pairs: number;
  progress?: (line: string) => void;
}

export interface McpBenchResult {
  scenario: "mcp";
  added_ms: { p50: number; p99: number; target: { p50: number } };
  latency_ms: { direct: Dist; host: Dist };
  calls_recorded: number;
  peers: Record<string, number>;
  notes: string;
}

/** In the sandbox: opens both sessions, warms up, then times interleaved pairs into /outputs/latency.json. */
const AGENT = `
import http from "node:http";
import { readFileSync, writeFileSync } from "node:fs";
const token = () => readFileSync(process.env.PADDOCK_TOKEN_FILE, "utf8").trim();
const side = (url, tool, auth) => ({ url: new URL(url), tool, auth, session: null, agent: new http.Agent({ keepAlive: true, maxSockets: 1 }) });
const viaHost = side(process.env.PADDOCK_BRIDGE_URL + "/mcp", "bench__echo", true);
const direct = side(process.env.BENCH_MCP_DIRECT, "echo", false);
let id = 0;
function post(s, message) {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ jsonrpc: "2.0", ...message });
    const headers = { "content-type": "application/json", accept: "application/json, text/event-stream", "content-length": Buffer.byteLength(body), "mcp-protocol-version": "2025-06-18" };
    if (s.auth) headers.authorization = "Bearer " + token();
    if (s.session) headers["mcp-session-id"] = s.session;
    const t0 = performance.now();
    const req = http.request(s.url, { method: "POST", agent: s.agent, headers }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c) => { text += c; });
      res.on("end", () => {
        const ms = performance.now() - t0;
        if (res.headers["mcp-session-id"]) s.session = res.headers["mcp-session-id"];
        if (res.statusCode >= 300) reject(new Error(s.tool + ": HTTP " + res.statusCode + " " + text.slice(0, 300)));
        else resolve({ ms, text });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}
async function open(s) {
  await post(s, { id: ++id, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "bench", version: "1" } } });
  await post(s, { method: "notifications/initialized" });
}
async function call(s, i) {
  const { ms, text } = await post(s, { id: ++id, method: "tools/call", params: { name: s.tool, arguments: { text: "call " + i } } });
  const reply = JSON.parse(text.startsWith("{") ? text : text.split("\\n").find((l) => l.startsWith("data:")).slice(5));
  if (!reply.result || reply.result.isError || !JSON.stringify(reply.result).includes("call " + i)) throw new Error(s.tool + ": " + text.slice(0, 300));
  return ms;
}
const pairs = Number(process.env.BENCH_PAIRS);
await open(viaHost);
await open(direct);
for (let i = 0; i < 100; i++) { await call(direct, i); await call(viaHost, i); }
const out = { direct: [], host: [] };
for (let i = 0; i < pairs; i++) {
  if (i % 2) { out.host.push(await call(viaHost, i)); out.direct.push(await call(direct, i)); }
  else { out.direct.push(await call(direct, i)); out.host.push(await call(viaHost, i)); }
}
writeFileSync("/outputs/latency.json", JSON.stringify(out));
`;

const round = (x: number) => Math.round(x * 1000) / 1000;

export async function mcpBench(opts: McpBenchOptions): Promise<McpBenchResult> {
  const b = await startBenchHost({ imagesDir: opts.imagesDir, warmSandboxes: 0 });
  const address = new URL(b.host.bridgeUrl).hostname;
  const server = await startMcpStandIn({ json: true, host: address });
  try {
    // The floor's path: the same server, straight over the sandbox's link (this benchmark only).
    await b.host.openToSandboxes(Number(new URL(server.url).port));
    await b.api("PUT", "/v1/secrets/mcp-key", { value: "mcp-secret-value-0123456789" });
    await b.api("PUT", "/v1/mcp-servers/bench", {
      url: server.url,
      auth: { type: "bearer" },
      secret: "mcp-key",
      internal: true,
    });
    const agent = await b.api("POST", "/v1/agents", {
      name: "mcp-bench",
      command: ["/opt/paddock/runner/node", "/app/agent.mjs"],
      files: { "agent.mjs": AGENT },
      env: { BENCH_PAIRS: String(opts.pairs), BENCH_MCP_DIRECT: server.url },
      limits: { timeout_s: 600 + Math.ceil(opts.pairs / 50) },
      policy: { mcp: [{ server: "bench", tools: ["echo"] }] },
    });
    const run = await b.api("POST", `/v1/agents/${agent.id}/runs`, {});
    const ended = await follow(b.host.url, b.host.adminKey as string, run.id, now());
    if (ended.status !== "succeeded")
      throw new Error(`bench mcp: the run ${ended.status}: ${await lastLines(b, run.id)}`);
    const samples = await artifactJson<Record<"direct" | "host", number[]>>(b, run.id, "latency.json");
    const recorded = await countEvents(b, run.id, "mcp.call");
    const direct = dist(samples.direct);
    const host = dist(samples.host);
    opts.progress?.(`tools/call: p50 ${host.p50} ms through the host, ${direct.p50} ms direct`);
    const seen = server.seen.filter((c) => c.tool === "echo");
    const credentials = new Set(seen.map((c) => c.credential));
    if (!credentials.has("Bearer mcp-secret-value-0123456789"))
      throw new Error("bench mcp: the server never received the host's credential");
    return {
      scenario: "mcp",
      added_ms: { p50: round(host.p50 - direct.p50), p99: round(host.p99 - direct.p99), target: { p50: 2 } },
      latency_ms: { direct, host },
      calls_recorded: recorded,
      peers: {},
      notes:
        "both paths are JSON-RPC tools/call requests from the same sandbox to the same stand-in server (official SDK, " +
        "JSON answers), interleaved, each on its own keep-alive connection and initialized session; through the host " +
        "the call is checked (token, policy, pin, argument schema), forwarded on a pooled session with the secret " +
        "attached, redacted and recorded as an mcp.call event. No MCP gateway peer installs from npm; the published " +
        "figure for Bifrost's MCP gateway is +4 ms p50, not measured here",
    };
  } finally {
    await b.close();
    await server.close();
  }
}

/** How many events of `type` the run recorded (pages of 1000). */
async function countEvents(b: BenchHost, runId: string, type: string): Promise<number> {
  let count = 0;
  let after = 0;
  for (;;) {
    const page = await b.api<{ data: { seq: number }[] }>(
      "GET",
      `/v1/runs/${runId}/events?types=${type}&after=${after}&limit=1000`,
    );
    count += page.data.length;
    const last = page.data.at(-1);
    if (!last || page.data.length < 1000) return count;
    after = last.seq;
  }
}

/** The last lines the run logged, to say why it failed. */
async function lastLines(b: BenchHost, runId: string): Promise<string> {
  const events = await b.api<{ data: { type: string; data: { line?: string } }[] }>(
    "GET",
    `/v1/runs/${runId}/events?types=log&limit=1000`,
  );
  return events.data
    .map((e) => e.data.line ?? "")
    .slice(-5)
    .join(" | ");
}
