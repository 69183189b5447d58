/**
 * `paddock bench gateway`: what the LLM gateway adds to a model call, measured from inside a real
 * sandbox on its own network.
 *
 * The gateway is assembled from the host's own parts (sandbox network and driver, run tokens,
 * vault, secrets, providers, the credits ledger on SQLite, the Bridge listener that serves it);
 * only the engine is left out. The stand-in provider listens on the host side of the sandbox
 * links and, for this benchmark only, its port is opened to the sandbox too, so the same request
 * can go straight to it over the same link: the floor. The sandbox alternates direct and gateway
 * requests on keep-alive connections.
 *
 * Figures:
 * - added_ms {p50, p99}: gateway minus direct for a whole non-streamed chat completion; each
 *   gateway call verifies the token, reserves credits, attaches the key, forwards, reads the
 *   provider's usage and settles (two ledger transactions).
 * - ttft_added_ms {p50, p99}: the same for the first content chunk of a streamed completion.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Bridge } from "../packages/host/src/bridge/bridge.ts";
import { Connections } from "../packages/host/src/bridge/connections.ts";
import { LiveSandboxes } from "../packages/host/src/bridge/live.ts";
import { TokenBucket } from "../packages/host/src/bridge/rate-limit.ts";
import { Gateway } from "../packages/host/src/gateway/gateway.ts";
import { Ledger } from "../packages/host/src/gateway/ledger.ts";
import { Providers } from "../packages/host/src/gateway/providers.ts";
import { ImageStore } from "../packages/host/src/images/image-store.ts";
import type { SandboxHandle } from "../packages/host/src/sandbox/driver.ts";
import { LinuxSandboxDriver } from "../packages/host/src/sandbox/linux/linux-driver.ts";
import { SandboxNetwork } from "../packages/host/src/sandbox/linux/network.ts";
import { makeRunnerDir } from "../packages/host/src/sandbox/linux/test-support.ts";
import { openSqlite } from "../packages/host/src/store/sqlite.ts";
import { type LlmStandIn, startLlmStandIn } from "../packages/host/src/testing/llm-stand-in.ts";
import { DEFAULT_LIMITS } from "../packages/protocol/src/limits.ts";
import { lineReader } from "./bridge.ts";
import { admitSandbox, BENCH_TENANT, openBenchStore } from "./parts.ts";
import { type Dist, dist } from "./stats.ts";
import { measureThenTearDown } from "./teardown.ts";

export interface GatewayBenchOptions {
  imagesDir: string;
  /** Request pairs (direct, gateway) per kind (whole and streamed). */
  calls: number;
  progress?: (line: string) => void;
}

export interface GatewayBenchResult {
  scenario: "gateway";
  added_ms: { p50: number; p99: number; target: { p50: number } };
  ttft_added_ms: { p50: number; p99: number };
  latency_ms: { direct: Dist; gateway: Dist };
  ttft_ms: { direct: Dist; gateway: Dist };
  calls_settled: number;
  events_recorded: number;
  peers: Record<string, number>;
  notes: string;
}

/** Runs in the sandbox: N pairs of whole calls, then N pairs of streamed ones; one JSON line. */
const CALLER = `
import http from "node:http";
import { readFileSync } from "node:fs";
const n = Number(process.argv[2]);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
await new Promise((r) => process.stdin.once("data", r));
const token = readFileSync(process.env.PADDOCK_TOKEN_FILE, "utf8").trim();
const gateway = new URL(process.env.PADDOCK_BRIDGE_URL + "/v1/chat/completions");
const direct = new URL(process.env.BENCH_UPSTREAM + "/v1/chat/completions");
const body = (stream) => JSON.stringify({ model: "bench-model", max_tokens: 64, stream, messages: [{ role: "user", content: "say hello in a few words" }] });
function call(url, auth, stream) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const payload = body(stream);
    const headers = { "content-type": "application/json", "content-length": Buffer.byteLength(payload) };
    if (auth) headers.authorization = "Bearer " + token;
    const req = http.request(url, { method: "POST", agent, headers }, (res) => {
      let first = 0;
      res.on("data", (c) => { if (!first && (!stream || String(c).includes('"content":"'))) first = performance.now() - t0; });
      res.on("end", () => (res.statusCode === 200 ? resolve([performance.now() - t0, first]) : reject(new Error("status " + res.statusCode))));
    });
    req.on("error", reject);
    req.end(payload);
  });
}
for (let i = 0; i < 50; i++) { await call(direct, false, false); await call(gateway, true, false); }
const out = { direct: [], gateway: [], ttft_direct: [], ttft_gateway: [] };
for (let i = 0; i < n; i++) {
  const pair = i % 2 ? [[gateway, true], [direct, false]] : [[direct, false], [gateway, true]];
  for (const [url, auth] of pair) out[auth ? "gateway" : "direct"].push((await call(url, auth, false))[0]);
}
for (let i = 0; i < n; i++) {
  const pair = i % 2 ? [[gateway, true], [direct, false]] : [[direct, false], [gateway, true]];
  for (const [url, auth] of pair) out[auth ? "ttft_gateway" : "ttft_direct"].push((await call(url, auth, true))[1]);
}
console.log(JSON.stringify(out));
`;

const round = (x: number, digits = 3) => Math.round(x * 10 ** digits) / 10 ** digits;

export async function gatewayBench(opts: GatewayBenchOptions): Promise<GatewayBenchResult> {
  const id = randomBytes(5).toString("hex");
  const dataDir = await mkdtemp(join(tmpdir(), "paddock-bench-gateway-"));
  const db = openSqlite(join(dataDir, "paddock.db"));
  const network = new SandboxNetwork({ instance: id, spare: 1 });
  const driver = new LinuxSandboxDriver({ runDir: `/run/paddock/bench-${id}`, instance: `bench-${id}`, network });
  let handle: SandboxHandle | undefined;
  let stand: LlmStandIn | undefined;
  let bridge: Bridge | undefined;
  let gateway: Gateway | undefined;
  let runnerDir: string | undefined;
  const measure = async (): Promise<GatewayBenchResult> => {
    const tenant = BENCH_TENANT;
    const { secrets, tokens } = await openBenchStore(db, id);
    const providers = new Providers(db);
    const ledger = new Ledger(db);
    const rateLimits = new TokenBucket();
    gateway = new Gateway({ providers, ledger, secrets, rateLimits, budgetOf: async () => ({}), log: () => {} });
    const live = new LiveSandboxes();
    let events = 0;
    bridge = new Bridge({
      live,
      tokens,
      connections: new Connections(db),
      secrets,
      rateLimits,
      routes: [gateway],
      log: () => {},
    });

    await network.start();
    stand = await startLlmStandIn(network.hostAddress);
    const port = await bridge.listen(network.hostAddress);
    await network.allowPort(port);
    // The floor's path: the same provider, straight over the sandbox's link (this benchmark only).
    await network.allowPort(Number(new URL(stand.url).port));
    await secrets.set(tenant, "bench-key", `sk-${randomBytes(24).toString("hex")}`);
    await providers.put(tenant, "bench", {
      kind: "openai_compatible",
      base_url: `${stand.url}/v1`,
      secret: "bench-key",
      models: { "bench-model": { input: 1, output: 2 } },
    });
    await ledger.grant(tenant, 1e12);

    const rootfs = (await new ImageStore({ imagesDir: opts.imagesDir }).resolve("default")).rootfs;
    runnerDir = await makeRunnerDir();
    handle = await driver.boot({
      id: `bench-gateway-${id}`,
      layers: [rootfs],
      runnerDir,
      limits: { ...DEFAULT_LIMITS, memory_mb: 256 },
      files: [{ path: "/app/caller.mjs", content: CALLER }],
      argv: ["/opt/paddock/runner/node", "/app/caller.mjs", String(opts.calls)],
      env: {
        PATH: "/usr/bin:/bin",
        PADDOCK_BRIDGE_URL: `http://${network.hostAddress}:${port}`,
        PADDOCK_TOKEN_FILE: "/run/paddock/token",
        BENCH_UPSTREAM: stand.url,
      },
      cwd: "/",
      network: true,
    });
    await admitSandbox(handle, { tokens, live }, "run_bench", ["llm"], () => {
      events++;
    });
    const read = lineReader(handle);
    handle.stdin.write("start\n");
    const samples = JSON.parse(await read()) as Record<"direct" | "gateway" | "ttft_direct" | "ttft_gateway", number[]>;
    const direct = dist(samples.direct);
    const via = dist(samples.gateway);
    const ttftDirect = dist(samples.ttft_direct);
    const ttftVia = dist(samples.ttft_gateway);
    opts.progress?.(`gateway p50 ${via.p50} ms, direct p50 ${direct.p50} ms`);
    const bill = await ledger.runCalls(tenant, "run_bench");
    return {
      scenario: "gateway",
      added_ms: { p50: round(via.p50 - direct.p50), p99: round(via.p99 - direct.p99), target: { p50: 1 } },
      ttft_added_ms: { p50: round(ttftVia.p50 - ttftDirect.p50), p99: round(ttftVia.p99 - ttftDirect.p99) },
      latency_ms: { direct, gateway: via },
      ttft_ms: { direct: ttftDirect, gateway: ttftVia },
      calls_settled: bill.calls.filter((c) => c.status === "settled").length,
      events_recorded: events,
      peers: { litellm_added_ms_p50: 4.3, portkey_added_ms_p50: 2.4, bifrost_added_ms_p50: 0.44 },
      notes:
        "added_ms = gateway minus direct per percentile, same sandbox, same link, interleaved; every gateway call " +
        "verifies the run token, reserves and settles credits in SQLite and attaches the provider key",
    };
  };
  return measureThenTearDown("gateway", measure, async () => {
    await handle?.destroy().catch(() => {});
    await bridge?.close();
    gateway?.close();
    await stand?.close();
    await driver.reapOrphans().catch(() => {});
    await driver.close().catch(() => {});
    await network.close();
    await db.destroy();
    if (runnerDir) await rm(runnerDir, { recursive: true, force: true });
    await rm(dataDir, { recursive: true, force: true });
  });
}
