/**
 * `paddock bench bridge`: what the host bridge adds to a call, measured from inside real
 * sandboxes on their own networks.
 *
 * The bridge is assembled from the host's own parts (sandbox network and driver, run tokens,
 * vault, secrets, connections, the Bridge server); only the engine is left out, so the sandboxes
 * are booted by the driver and listed with the bridge the way an attempt lists them. The stand-in
 * upstream listens on the host side of the sandbox links, and for this benchmark only its port is
 * opened to the sandboxes too: the same request can then go straight to it over the same link,
 * which is the floor. Each sandbox alternates direct and bridged requests on keep-alive
 * connections, so both see the same machine at the same moments.
 *
 * Figures:
 * - added_ms {p50, p99}: bridged minus direct, per percentile, from `latency_ms` (one sandbox).
 * - verify_us: a run token check without the verified-token cache, with it, and a bare Ed25519
 *   signature check (the floor of the former).
 * - throughput: N sandboxes at once, each sending its calls back to back, bridged then direct.
 * - observability: the same bridge with everything off, tracing on, and metrics and tracing on (see observability.ts), each on its own
 *   port, called in turn from the latency sandbox after its pairs; what each variant adds to `off`.
 * Audit events are counted in memory here; the engine writes them in group commits after the
 * answer has gone, off the call's path.
 */
import { generateKeyPairSync, randomBytes, sign, verify } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Bridge } from "../packages/host/src/bridge/bridge.ts";
import { Connections } from "../packages/host/src/bridge/connections.ts";
import { LiveSandboxes } from "../packages/host/src/bridge/live.ts";
import { TokenBucket } from "../packages/host/src/bridge/rate-limit.ts";
import { ImageStore } from "../packages/host/src/images/image-store.ts";
import type { SandboxHandle } from "../packages/host/src/sandbox/driver.ts";
import { LinuxSandboxDriver } from "../packages/host/src/sandbox/linux/linux-driver.ts";
import { SandboxNetwork } from "../packages/host/src/sandbox/linux/network.ts";
import { makeRunnerDir } from "../packages/host/src/sandbox/linux/test-support.ts";
import { openSqlite } from "../packages/host/src/store/sqlite.ts";
import { DEFAULT_LIMITS } from "../packages/protocol/src/limits.ts";
import { INTERLEAVE, type ObservabilityResult, startObservability, VARIANTS } from "./observability.ts";
import { admitSandbox, BENCH_TENANT, openBenchStore } from "./parts.ts";
import { type Dist, dist } from "./stats.ts";
import { measureThenTearDown } from "./teardown.ts";

export interface BridgeBenchOptions {
  imagesDir: string;
  /** Request pairs (direct, bridged) measured in the latency sandbox. */
  calls: number;
  /** Sandboxes calling at once in the throughput phase. */
  sandboxes: number;
  /** Calls each of them sends per phase. */
  callsPerSandbox: number;
  /** Progress lines (to stderr in the CLI). */
  progress?: (line: string) => void;
  /** Names the bench's sandbox network (namespaces paddock-<instance>-N); random by default. */
  instance?: string;
}

export interface BridgeBenchResult {
  scenario: "bridge";
  added_ms: { p50: number; p99: number; target: { p50: number; p99: number } };
  latency_ms: { direct: Dist; bridge: Dist };
  verify_us: { uncached: number; cached: number; ed25519_verify_floor: number };
  throughput: {
    sandboxes: number;
    calls_per_sandbox: number;
    bridge_calls_per_s: number;
    direct_calls_per_s: number;
    errors: number;
  };
  events_recorded: number;
  /** The bridge with each observability variant, side by side: what tracing (and later metrics) adds. */
  observability: ObservabilityResult;
  peers: Record<string, number>;
  notes: string;
}

/** Runs in each sandbox: waits for a line on stdin per phase and prints one JSON line per phase. */
const CALLER = `
import http from "node:http";
import { readFileSync } from "node:fs";
${INTERLEAVE}
const [mode, n] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const lines = [];
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => lines.push(...d.split("\\n").filter(Boolean)));
const next = () => new Promise((r) => { const t = setInterval(() => { if (lines.length) { clearInterval(t); r(lines.shift()); } }, 1); });
// The host writes the token once the sandbox is up, then says "start".
await next();
const token = readFileSync(process.env.PADDOCK_TOKEN_FILE, "utf8").trim();
const bridge = new URL(process.env.PADDOCK_BRIDGE_URL + "/bridge/bench/echo/x");
const direct = new URL(process.env.BENCH_UPSTREAM + "/echo/x");
const variants = Object.fromEntries(
  Object.entries(JSON.parse(process.env.BENCH_VARIANTS)).map(([name, base]) => [name, new URL(base + "/bridge/bench/echo/x")]),
);
function call(url, auth) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = http.get(url, { agent, headers: auth ? { authorization: "Bearer " + token } : {} }, (res) => {
      res.resume();
      res.on("end", () => (res.statusCode === 200 ? resolve(performance.now() - t0) : reject(new Error("status " + res.statusCode))));
    });
    req.on("error", reject);
  });
}
const count = Number(n);
if (mode === "latency") {
  for (let i = 0; i < 100; i++) { await call(direct, false); await call(bridge, true); }
  const out = { direct: [], bridge: [] };
  for (let i = 0; i < count; i++) {
    if (i % 2) { out.bridge.push(await call(bridge, true)); out.direct.push(await call(direct, false)); }
    else { out.direct.push(await call(direct, false)); out.bridge.push(await call(bridge, true)); }
  }
  for (let i = 0; i < 50; i++) for (const url of Object.values(variants)) await call(url, true);
  out.variants = await interleave(Object.keys(variants), count, (name) => call(variants[name], true));
  console.log(JSON.stringify(out));
} else {
  await call(bridge, true); await call(direct, false);
  console.log("ready");
  for (const [phase, url, auth] of [["bridge", bridge, true], ["direct", direct, false]]) {
    await next();
    let errors = 0;
    for (let i = 0; i < count; i++) await call(url, auth).catch(() => errors++);
    console.log(JSON.stringify({ phase, errors }));
  }
}
`;

const round = (x: number, digits = 3) => Math.round(x * 10 ** digits) / 10 ** digits;

/** Lines of a sandbox's stdout, as they come; fails with its stderr once it has ended. */
export function lineReader(handle: SandboxHandle): () => Promise<string> {
  let buffer = "";
  let stderr = "";
  let ended = false;
  const waiting: { resolve: (line: string) => void; reject: (err: Error) => void }[] = [];
  const ready: string[] = [];
  const failure = () => new Error(`a bench sandbox ended early: ${stderr.trim().slice(-2000)}`);
  handle.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  handle.stdout.setEncoding("utf8");
  handle.stdout.on("data", (chunk: string) => {
    buffer += chunk;
    for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      const take = waiting.shift();
      if (take) take.resolve(line);
      else ready.push(line);
    }
  });
  handle.stdout.on("end", () => {
    ended = true;
    // stderr may still be draining.
    setTimeout(() => {
      for (const w of waiting.splice(0)) w.reject(failure());
    }, 100);
  });
  return () => {
    const line = ready.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (ended) return Promise.reject(failure());
    return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
  };
}

async function startUpstream(address: string): Promise<{ url: string; server: http.Server }> {
  const body = JSON.stringify({ ok: true, items: [1, 2, 3] });
  const server = http.createServer({ keepAlive: true }, (_req, res) => {
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, address, resolve));
  return { url: `http://${address}:${(server.address() as AddressInfo).port}`, server };
}

function verifyFloor(rounds: number): number {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const data = randomBytes(400);
  const signature = sign(null, data, privateKey);
  const start = performance.now();
  for (let i = 0; i < rounds; i++) verify(null, data, publicKey, signature);
  return ((performance.now() - start) * 1000) / rounds;
}

export async function bridgeBench(opts: BridgeBenchOptions): Promise<BridgeBenchResult> {
  const id = opts.instance ?? randomBytes(5).toString("hex");
  const dataDir = await mkdtemp(join(tmpdir(), "paddock-bench-bridge-"));
  const db = openSqlite(join(dataDir, "paddock.db"));
  const network = new SandboxNetwork({ instance: id, spare: 8 });
  const driver = new LinuxSandboxDriver({
    runDir: `/run/paddock/bench-${id}`,
    instance: `bench-${id}`,
    network,
    warmLaunchers: 8,
  });
  const handles: SandboxHandle[] = [];
  let upstream: { url: string; server: http.Server } | undefined;
  const bridges: Bridge[] = [];
  let observability: Awaited<ReturnType<typeof startObservability>> | undefined;
  let runnerDir: string | undefined;
  const measure = async (): Promise<BridgeBenchResult> => {
    const tenant = BENCH_TENANT;
    const { secrets, tokens } = await openBenchStore(db, id);
    const connections = new Connections(db);
    const live = new LiveSandboxes();
    let events = 0;
    const rateLimits = new TokenBucket();
    observability = await startObservability();
    const obs = observability;

    await network.start();
    upstream = await startUpstream(network.hostAddress);
    // One bridge per observability variant on its own port; the first (off) is the one measured against direct.
    const variantUrls: Record<string, string> = {};
    for (const variant of VARIANTS) {
      const b = new Bridge({ live, tokens, connections, secrets, rateLimits, log: () => {}, ...obs.depsOf(variant) });
      bridges.push(b);
      const port = await b.listen(network.hostAddress);
      await network.allowPort(port);
      variantUrls[variant.name] = `http://${network.hostAddress}:${port}`;
    }
    const bridgeUrl = variantUrls[VARIANTS[0]?.name ?? ""] as string;
    // The floor's path: the same upstream, straight over the sandbox's link (this benchmark only).
    await network.allowPort(Number(new URL(upstream.url).port));
    await secrets.set(tenant, "bench-token", randomBytes(24).toString("hex"));
    await connections.put(tenant, "bench", {
      base_url: upstream.url,
      secret: "bench-token",
      auth: { type: "bearer" },
      internal: true,
      policy: { allow: [{ methods: ["GET"], path: "/echo/**" }] },
      timeout_ms: 30_000,
      max_response_bytes: 1 << 20,
      max_request_bytes: 1 << 20,
    });

    const rootfs = (await new ImageStore({ imagesDir: opts.imagesDir }).resolve("default")).rootfs;
    runnerDir = await makeRunnerDir();
    let seq = 0;
    const boot = async (mode: "latency" | "throughput", n: number): Promise<SandboxHandle> => {
      const n0 = ++seq;
      const handle = await driver.boot({
        id: `bench-bridge-${id}-${n0}`,
        layers: [rootfs],
        runnerDir: runnerDir as string,
        limits: { ...DEFAULT_LIMITS, memory_mb: 256 },
        files: [{ path: "/app/caller.mjs", content: CALLER }],
        argv: ["/opt/paddock/runner/node", "/app/caller.mjs", mode, String(n)],
        env: {
          PATH: "/usr/bin:/bin",
          PADDOCK_BRIDGE_URL: bridgeUrl,
          PADDOCK_TOKEN_FILE: "/run/paddock/token",
          BENCH_UPSTREAM: upstream?.url ?? "",
          BENCH_VARIANTS: JSON.stringify(variantUrls),
        },
        cwd: "/",
        network: true,
      });
      handles.push(handle);
      const run = `run_bench${n0}`;
      const record = () => {
        events++;
      };
      await admitSandbox(
        handle,
        { tokens, live },
        { run, scopes: ["bridge:bench"], record, trace: obs.attemptSpan(run).ref },
      );
      handle.stdin.write("start\n");
      return handle;
    };

    // Latency: one sandbox, pairs of calls.
    const one = await boot("latency", opts.calls);
    const read = lineReader(one);
    const samples = JSON.parse(await read()) as {
      direct: number[];
      bridge: number[];
      variants: Record<string, number[]>;
    };
    const direct = dist(samples.direct);
    const bridged = dist(samples.bridge);

    // Throughput: many sandboxes, all released at once per phase.
    const progress = opts.progress ?? (() => {});
    progress(`latency: bridged p50 ${bridged.p50} ms, direct p50 ${direct.p50} ms`);
    const many = await Promise.all(
      Array.from({ length: opts.sandboxes }, () => boot("throughput", opts.callsPerSandbox)),
    );
    progress(`${many.length} sandboxes booted`);
    const readers = many.map((h) => lineReader(h));
    let readyCount = 0;
    await Promise.all(
      readers.map(async (r) => {
        await r();
        if (++readyCount % 10 === 0) progress(`${readyCount} sandboxes ready`);
      }),
    );
    const phase = async (): Promise<{ perS: number; errors: number }> => {
      const start = performance.now();
      for (const h of many) h.stdin.write("go\n");
      const done = await Promise.all(readers.map(async (r) => JSON.parse(await r()) as { errors: number }));
      const seconds = (performance.now() - start) / 1000;
      return {
        perS: Math.round((opts.sandboxes * opts.callsPerSandbox) / seconds),
        errors: done.reduce((n, d) => n + d.errors, 0),
      };
    };
    const viaBridge = await phase();
    const straight = await phase();

    // Token checks, in this process.
    const minted = await Promise.all(
      Array.from({ length: 500 }, (_, i) =>
        tokens.mint({
          run: `run_v${i}`,
          attempt: 1,
          tenant,
          agent: "agt_v",
          addr: "10.0.0.1",
          sandbox: "s",
          scopes: [],
        }),
      ),
    );
    const time = async (fn: (token: string) => Promise<unknown>, rounds: number) => {
      const start = performance.now();
      for (let i = 0; i < rounds; i++) await fn(minted[i % minted.length]?.token as string);
      return ((performance.now() - start) * 1000) / rounds;
    };
    const uncached = await time((t) => tokens.verifyUncached(t), 2000);
    await time((t) => tokens.verify(t), 500);
    const cached = await time((t) => tokens.verify(t), 20_000);

    return {
      scenario: "bridge",
      added_ms: {
        p50: round(bridged.p50 - direct.p50),
        p99: round(bridged.p99 - direct.p99),
        target: { p50: 1, p99: 3 },
      },
      latency_ms: { direct, bridge: bridged },
      verify_us: {
        uncached: round(uncached, 1),
        cached: round(cached, 2),
        ed25519_verify_floor: round(verifyFloor(2000), 1),
      },
      throughput: {
        sandboxes: opts.sandboxes,
        calls_per_sandbox: opts.callsPerSandbox,
        bridge_calls_per_s: viaBridge.perS,
        direct_calls_per_s: straight.perS,
        errors: viaBridge.errors + straight.errors,
      },
      events_recorded: events,
      observability: await obs.result(samples.variants),
      peers: {
        litellm_added_ms_p50: 4.3,
        portkey_added_ms_p50: 2.4,
        agentgateway_p99_ms: 0.58,
        agentgateway_direct_p99_ms: 0.21,
      },
      notes:
        "added_ms = bridged minus direct per percentile, same sandbox, same link, interleaved; verify_us uncached is the " +
        "full check (signature, header, claims), cached skips the signature for a token already verified; " +
        "observability: one bridge per variant (all off; tracing; metrics and tracing), called in turn from one sandbox, rise_ms = each minus off",
    };
  };
  return measureThenTearDown("bridge", measure, async () => {
    await Promise.all(handles.map((h) => h.destroy().catch(() => {})));
    for (const b of bridges) await b.close();
    await observability?.close();
    upstream?.server.closeAllConnections();
    upstream?.server.close();
    await driver.reapOrphans().catch(() => {});
    await driver.close().catch(() => {});
    await network.close();
    await db.destroy();
    if (runnerDir) await rm(runnerDir, { recursive: true, force: true });
    await rm(dataDir, { recursive: true, force: true });
  });
}
