/**
 * `paddock bench gateway`: what the LLM gateway adds to a model call, measured from inside a real
 * sandbox on its own network.
 *
 * The gateway is assembled from the host's own parts (sandbox network and driver, run tokens,
 * vault, secrets, providers, the credits ledger on SQLite, the Bridge listener that serves it);
 * only the engine is left out. The stand-in provider listens on the host side of the sandbox
 * links and, for this benchmark only, its port is opened to the sandbox too, so the same request
 * can go straight to it over the same link: the floor. A peer is measured in the same run:
 * Portkey's open-source gateway (npm @portkey-ai/gateway, a dev dependency), started as its own
 * Node process on the host side of the links, its port opened to the sandbox the same way, and
 * pointed at the same stand-in. Each gateway is measured in pairs with direct calls (the order
 * flipping every pair) on keep-alive connections: first Paddock's pairs, then Portkey's, so that
 * one gateway's leftover work never lands inside the other's timed call.
 *
 * Figures:
 * - added_ms {paddock, portkey} {p50, p99}: each gateway minus direct for a whole non-streamed
 *   chat completion; each Paddock call verifies the token, reserves credits, attaches the key,
 *   forwards, reads the provider's usage and settles (two ledger transactions); Portkey forwards
 *   the key the caller sends.
 * - ttft_added_ms {p50, p99}: Paddock's, for the first content chunk of a streamed completion.
 * - observability: Paddock's gateway with everything off, tracing on, and metrics and tracing on (see observability.ts), each behind
 *   its own bridge port, whole calls in turn after Portkey's pairs; what each variant adds to `off`.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Bridge } from "../packages/host/src/bridge/bridge.ts";
import { Connections } from "../packages/host/src/bridge/connections.ts";
import { LiveSandboxes } from "../packages/host/src/bridge/live.ts";
import { TokenBucket } from "../packages/host/src/bridge/rate-limit.ts";
import { toolEnv } from "../packages/host/src/fs/tool-env.ts";
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
import { INTERLEAVE, type ObservabilityResult, startObservability, VARIANTS } from "./observability.ts";
import { admitSandbox, BENCH_TENANT, openBenchStore } from "./parts.ts";
import { type Dist, dist } from "./stats.ts";
import { measureThenTearDown } from "./teardown.ts";

export interface GatewayBenchOptions {
  imagesDir: string;
  /** Request rounds per kind (whole: direct, Paddock, Portkey; streamed: direct, Paddock). */
  calls: number;
  /** Names the bench's sandbox network (namespaces paddock-<instance>-N); random by default. */
  instance?: string;
  progress?: (line: string) => void;
}

interface Added {
  p50: number;
  p99: number;
}

export interface GatewayBenchResult {
  scenario: "gateway";
  /**
   * Each gateway minus direct, side by side. The target is for Paddock's p50: at most `target.p50`
   * ms, and below the gateway `target.p50_below` names as measured in the same run.
   */
  added_ms: { paddock: Added; portkey: Added; target: { p50: number; p50_below: "portkey" } };
  ttft_added_ms: Added;
  /** `direct` is paired with Paddock's calls, `direct_portkey` with Portkey's. */
  latency_ms: { direct: Dist; paddock: Dist; portkey: Dist; direct_portkey: Dist };
  ttft_ms: { direct: Dist; paddock: Dist };
  calls_settled: number;
  events_recorded: number;
  /** Paddock's gateway with each observability variant, side by side: what tracing (and later metrics) adds. */
  observability: ObservabilityResult;
  /** Requests the stand-in provider answered, by all paths. */
  provider_calls: number;
  peer_versions: { portkey: string };
  /** Published medians of other gateways, for reference. */
  peers: Record<string, number>;
  notes: string;
}

/**
 * Runs in the sandbox: N pairs of whole calls direct and through Paddock, N pairs direct and
 * through Portkey, N rounds of whole calls through each observability variant, then N pairs of
 * streamed ones (direct and Paddock); one JSON line.
 */
const CALLER = `
import http from "node:http";
import { readFileSync } from "node:fs";
${INTERLEAVE}
const n = Number(process.argv[2]);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
await new Promise((r) => process.stdin.once("data", r));
const token = readFileSync(process.env.PADDOCK_TOKEN_FILE, "utf8").trim();
const paths = {
  direct: [new URL(process.env.BENCH_UPSTREAM + "/v1/chat/completions"), {}],
  paddock: [new URL(process.env.PADDOCK_BRIDGE_URL + "/v1/chat/completions"), { authorization: "Bearer " + token }],
  portkey: [new URL(process.env.BENCH_PORTKEY + "/v1/chat/completions"), {
    authorization: "Bearer " + process.env.BENCH_PROVIDER_KEY,
    "x-portkey-provider": "openai",
    "x-portkey-custom-host": process.env.BENCH_UPSTREAM + "/v1",
  }],
};
const variants = Object.keys(JSON.parse(process.env.BENCH_VARIANTS));
for (const [name, base] of Object.entries(JSON.parse(process.env.BENCH_VARIANTS))) {
  paths["variant:" + name] = [new URL(base + "/v1/chat/completions"), paths.paddock[1]];
}
const body = (stream) => JSON.stringify({ model: "bench-model", max_tokens: 64, stream, messages: [{ role: "user", content: "say hello in a few words" }] });
function call(path, stream) {
  const [url, auth] = paths[path];
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const payload = body(stream);
    const headers = { "content-type": "application/json", "content-length": Buffer.byteLength(payload), ...auth };
    const req = http.request(url, { method: "POST", agent, headers }, (res) => {
      let first = 0;
      res.on("data", (c) => { if (!first && (!stream || String(c).includes('"content":"'))) first = performance.now() - t0; });
      res.on("end", () => (res.statusCode === 200 ? resolve([performance.now() - t0, first]) : reject(new Error(path + ": status " + res.statusCode))));
    });
    req.on("error", reject);
    req.end(payload);
  });
}
for (let i = 0; i < 50; i++) for (const path of ["direct", "paddock", "portkey"]) await call(path, false);
const out = { direct: [], paddock: [], portkey: [], direct_portkey: [], ttft_direct: [], ttft_paddock: [] };
const pairs = async (via, floor) => {
  for (let i = 0; i < n; i++) {
    for (const path of i % 2 ? [via, "direct"] : ["direct", via]) out[path === "direct" ? floor : via].push((await call(path, false))[0]);
  }
};
await pairs("paddock", "direct");
await pairs("portkey", "direct_portkey");
for (let i = 0; i < 50; i++) for (const name of variants) await call("variant:" + name, false);
out.variants = await interleave(variants, n, async (name) => (await call("variant:" + name, false))[0]);
for (let i = 0; i < n; i++) {
  for (const path of i % 2 ? ["paddock", "direct"] : ["direct", "paddock"]) out["ttft_" + path].push((await call(path, true))[1]);
}
console.log(JSON.stringify(out));
`;

/** How long Portkey may take to start (it shows a one-second spinner first). */
const READY_WITHIN_MS = 30_000;

/** Portkey's gateway as its own Node process, listening on every address at a free port; resolves once it says it is ready. */
async function startPortkey(trustedHost: string): Promise<{ port: number; version: string; child: ChildProcess }> {
  const entry = fileURLToPath(import.meta.resolve("@portkey-ai/gateway/build/start-server.js"));
  const pkg = JSON.parse(await readFile(join(entry, "../../package.json"), "utf8")) as { version: string };
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, resolve));
  const port = (probe.address() as AddressInfo).port;
  await new Promise((resolve) => probe.close(resolve));
  // A third party's process gets none of the operator's environment (a master key, provider keys,
  // proxy settings), only what it needs: Portkey refuses custom hosts on private addresses unless
  // they are listed as trusted, and runs in production mode as when deployed.
  const child = spawn(process.execPath, [entry, `--port=${port}`, "--headless"], {
    env: toolEnv({ TRUSTED_CUSTOM_HOSTS: trustedHost, NODE_ENV: "production" }),
    stdio: ["ignore", "pipe", "pipe"],
  });
  // Its output is read all along (a full pipe would stall it); the tail is kept for an error message.
  let said = "";
  const hear = (chunk: string) => {
    said = (said + chunk).slice(-4000);
  };
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      hear(chunk);
      if (said.includes("Ready for connections")) resolve();
    });
    child.stderr?.setEncoding("utf8").on("data", hear);
    child.once("exit", (code) => reject(new Error(`portkey exited (${code}) before it was ready: ${said}`)));
  });
  const bound = setTimeout(() => child.kill(), READY_WITHIN_MS);
  try {
    await ready;
  } finally {
    clearTimeout(bound);
  }
  return { port, version: pkg.version, child };
}

const round = (x: number, digits = 3) => Math.round(x * 10 ** digits) / 10 ** digits;

export async function gatewayBench(opts: GatewayBenchOptions): Promise<GatewayBenchResult> {
  const id = opts.instance ?? randomBytes(5).toString("hex");
  const dataDir = await mkdtemp(join(tmpdir(), "paddock-bench-gateway-"));
  const db = openSqlite(join(dataDir, "paddock.db"));
  const network = new SandboxNetwork({ instance: id, spare: 1 });
  const driver = new LinuxSandboxDriver({ runDir: `/run/paddock/bench-${id}`, instance: `bench-${id}`, network });
  let handle: SandboxHandle | undefined;
  let stand: LlmStandIn | undefined;
  const bridges: Bridge[] = [];
  const gateways: Gateway[] = [];
  let observability: Awaited<ReturnType<typeof startObservability>> | undefined;
  let portkey: ChildProcess | undefined;
  let runnerDir: string | undefined;
  const measure = async (): Promise<GatewayBenchResult> => {
    const tenant = BENCH_TENANT;
    const { secrets, tokens } = await openBenchStore(db, id);
    const providers = new Providers(db);
    const ledger = new Ledger(db);
    const rateLimits = new TokenBucket();
    const live = new LiveSandboxes();
    const connections = new Connections(db);
    let events = 0;
    observability = await startObservability();
    const obs = observability;

    await network.start();
    stand = await startLlmStandIn(network.hostAddress);
    // One gateway (behind its bridge) per observability variant, each on its own port; the first
    // (off) is the one measured against direct and Portkey.
    const variantUrls: Record<string, string> = {};
    for (const variant of VARIANTS) {
      const deps = obs.depsOf(variant);
      const gateway = new Gateway({
        providers,
        ledger,
        secrets,
        rateLimits,
        budgetOf: async () => ({}),
        log: () => {},
        ...deps,
      });
      const bridge = new Bridge({
        live,
        tokens,
        connections,
        secrets,
        rateLimits,
        routes: [gateway],
        log: () => {},
        ...deps,
      });
      gateways.push(gateway);
      bridges.push(bridge);
      const port = await bridge.listen(network.hostAddress);
      await network.allowPort(port);
      variantUrls[variant.name] = `http://${network.hostAddress}:${port}`;
    }
    // The floor's path: the same provider, straight over the sandbox's link (this benchmark only).
    await network.allowPort(Number(new URL(stand.url).port));
    // The peer's path: Portkey on the host side of the same link, calling the same stand-in.
    const peer = await startPortkey(network.hostAddress);
    portkey = peer.child;
    await network.allowPort(peer.port);
    const providerKey = `sk-${randomBytes(24).toString("hex")}`;
    await secrets.set(tenant, "bench-key", providerKey);
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
        PADDOCK_BRIDGE_URL: variantUrls[VARIANTS[0]?.name ?? ""] as string,
        PADDOCK_TOKEN_FILE: "/run/paddock/token",
        BENCH_UPSTREAM: stand.url,
        BENCH_PORTKEY: `http://${network.hostAddress}:${peer.port}`,
        BENCH_PROVIDER_KEY: providerKey,
        BENCH_VARIANTS: JSON.stringify(variantUrls),
      },
      cwd: "/",
      network: true,
    });
    const record = () => {
      events++;
    };
    const trace = obs.attemptSpan("run_bench").ref;
    await admitSandbox(handle, { tokens, live }, { run: "run_bench", scopes: ["llm"], record, trace });
    const read = lineReader(handle);
    handle.stdin.write("start\n");
    const samples = JSON.parse(await read()) as Record<
      "direct" | "paddock" | "portkey" | "direct_portkey" | "ttft_direct" | "ttft_paddock",
      number[]
    > & { variants: Record<string, number[]> };
    const direct = dist(samples.direct);
    const paddock = dist(samples.paddock);
    const viaPortkey = dist(samples.portkey);
    const directPortkey = dist(samples.direct_portkey);
    const ttftDirect = dist(samples.ttft_direct);
    const ttftPaddock = dist(samples.ttft_paddock);
    opts.progress?.(`p50: paddock ${paddock.p50} ms, portkey ${viaPortkey.p50} ms, direct ${direct.p50} ms`);
    const bill = await ledger.runCalls(tenant, "run_bench");
    const added = (via: Dist, floor: Dist): Added => ({
      p50: round(via.p50 - floor.p50),
      p99: round(via.p99 - floor.p99),
    });
    return {
      scenario: "gateway",
      added_ms: {
        paddock: added(paddock, direct),
        portkey: added(viaPortkey, directPortkey),
        target: { p50: 1, p50_below: "portkey" },
      },
      ttft_added_ms: added(ttftPaddock, ttftDirect),
      latency_ms: { direct, paddock, portkey: viaPortkey, direct_portkey: directPortkey },
      ttft_ms: { direct: ttftDirect, paddock: ttftPaddock },
      calls_settled: bill.calls.filter((c) => c.status === "settled").length,
      events_recorded: events,
      observability: await obs.result(samples.variants),
      provider_calls: stand.seen.length,
      peer_versions: { portkey: peer.version },
      peers: { litellm_added_ms_p50: 4.3, portkey_added_ms_p50: 2.4, bifrost_added_ms_p50: 0.44 },
      notes:
        "added_ms = each gateway minus the direct calls paired with it, per percentile, same sandbox, same link; every Paddock call " +
        "verifies the run token, reserves and settles credits in SQLite and attaches the provider key; Portkey " +
        "(run with its defaults, --headless) forwards the key the caller sends. Streams are measured for Paddock " +
        "only: Portkey 1.15.2 on Node 24 answers streamed chat completions with 500. peers: published medians. " +
        "observability: one gateway per variant (all off; tracing; metrics and tracing), called in turn from the same sandbox, rise_ms = each minus off",
    };
  };
  return measureThenTearDown("gateway", measure, async () => {
    await handle?.destroy().catch(() => {});
    for (const bridge of bridges) await bridge.close();
    for (const gateway of gateways) gateway.close();
    await observability?.close();
    if (portkey && portkey.exitCode === null && portkey.signalCode === null) {
      const exited = once(portkey, "exit");
      portkey.kill();
      await exited;
    }
    await stand?.close();
    await driver.reapOrphans().catch(() => {});
    await driver.close().catch(() => {});
    await network.close();
    await db.destroy();
    if (runnerDir) await rm(runnerDir, { recursive: true, force: true });
    await rm(dataDir, { recursive: true, force: true });
  });
}
