/**
 * `paddock bench swap`: what the runner hot-swap adds to a run's boot, and what the runner layer's
 * compile cache saves at runner start, measured in one process on one host.
 *
 * swap_added_ms: trigger-to-first-event of a run whose snapshot names an older runner (so the
 * current one is swapped in) minus that of a run whose snapshot names the current runner. Two
 * agents with the same command and environment: "old" was made before the benchmark published a
 * new runner over the API (POST /v1/runners), "current" after. A successful swapped run
 * re-snapshots its agent onto the current runner, so before every measured run each agent is
 * rolled back (POST /v1/agents/{id}/rollback) to its version 1: "old" to the version naming the
 * older runner, "current" to the one naming the current runner, the same step for both. Runs
 * alternate between the two agents (which of them goes first alternates too), N each, first on the
 * default host (warm sandboxes on) and then with the warm pool off. Every swapped run is checked to
 * carry runner.swapped naming both runners; every other run to carry none.
 *
 * runner_start_ms: the runner booted through the host's own Linux driver (cgroups, overlay, bwrap,
 * seccomp) from the current runner layer, timed from boot() to the runner's hello frame, with
 * NODE_COMPILE_CACHE pointing at the layer's cache and without it, interleaved.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ImageStore } from "../packages/host/src/images/image-store.ts";
import { RUNNER_ARGV, RUNNER_ENV } from "../packages/host/src/sandbox/driver.ts";
import { DEFAULT_LIMITS } from "../packages/protocol/src/limits.ts";
import { type BenchHost, now, startBenchHost } from "./bench-host.ts";
import { type Dist, dist } from "./stats.ts";

export interface SwapBenchOptions {
  imagesDir: string;
  runs: number;
}

export interface SwapFigures {
  /** Trigger to first event, snapshot naming an older runner (swapped in). */
  first_event_swapped_ms: Dist;
  /** Trigger to first event, snapshot naming the current runner. */
  first_event_current_ms: Dist;
  /** p50 and p99 of the swapped runs minus p50 and p99 of the others. */
  swap_added_ms: { p50: number; p99: number };
  /** Each swapped run minus the run of the other agent measured next to it. */
  swap_added_paired_ms: Dist;
  /** The `ms` of runner.swapped: looking up the current runner for the run. */
  swap_event_ms: Dist;
  /** The host's own boot_ms (run.running): sandbox boot, or taking a warm one, for each kind of run. */
  boot_swapped_ms: Dist;
  boot_current_ms: Dist;
  warm_runs: number;
}

export interface SwapBenchResult {
  scenario: "swap";
  runs: number;
  method: string;
  /** Default host: warm sandboxes on. */
  warm: SwapFigures;
  /** Warm pool off: every run boots its sandbox and starts the runner after the trigger. */
  cold: SwapFigures;
  /** The headline: the default host's figure. */
  swap_added_ms: { p50: number; p99: number };
  runner_start_ms: {
    cached: Dist;
    uncached: Dist;
    /** Node reported the layer's cache for runner.mjs as accepted (checked once with NODE_DEBUG_NATIVE). */
    cache_accepted: boolean;
  };
  target: { swap_added_ms_p50: number };
  peers: Record<string, number>;
}

const METHOD =
  "Two agents, same command and environment; 'old' was created before a new runner was published over " +
  "POST /v1/runners, 'current' after. Before every measured run each agent is rolled back to its version 1 " +
  "(old: naming the older runner, so the run swaps; current: naming the current runner), since a successful " +
  "swapped run re-snapshots its agent. Runs alternate between the agents, N each. swap_added_ms = p50/p99 of " +
  "swapped minus p50/p99 of current.";

const AGENT_COMMAND = ["sh", "-c", `echo '::paddock::{"type":"ready"}'`];

type Events = {
  data: { type: string; data: { from?: string; to?: string; ms?: number; warm?: boolean; boot_ms?: number } }[];
};

async function measureSwap(opts: SwapBenchOptions, warmSandboxes: number): Promise<SwapFigures> {
  const bench = await startBenchHost({ imagesDir: opts.imagesDir, warmSandboxes });
  try {
    const old = await bench.api<{ id: string; snapshot: { runner: string } }>("POST", "/v1/agents", {
      name: "bench-swap-old",
      command: AGENT_COMMAND,
    });
    const published = await publishRunner(bench, "bench-swap");
    const current = await bench.api<{ id: string; snapshot: { runner: string } }>("POST", "/v1/agents", {
      name: "bench-swap-current",
      command: AGENT_COMMAND,
    });
    if (old.snapshot.runner === published || current.snapshot.runner !== published) {
      throw new Error("the benchmark's agents do not name the runners it expects");
    }
    const swapped: number[] = [];
    const plain: number[] = [];
    const paired: number[] = [];
    const swapMs: number[] = [];
    const boot = { swapped: [] as number[], current: [] as number[] };
    let warm = 0;
    /** Rolls the agent back to its version 1, runs it once and checks whether it swapped. */
    const measured = async (agentId: string, expectSwap: boolean): Promise<number> => {
      await bench.api("POST", `/v1/agents/${agentId}/rollback`, { version: 1 });
      const r = await bench.trigger(agentId);
      if (r.status !== "succeeded") throw new Error(`bench run ended ${r.status}`);
      const events = await bench.api<Events>("GET", `/v1/runs/${r.id}/events`);
      const swap = events.data.find((e) => e.type === "runner.swapped")?.data;
      if (expectSwap && (swap?.from !== old.snapshot.runner || swap?.to !== published)) {
        throw new Error(`run ${r.id} did not swap ${old.snapshot.runner} for ${published}`);
      }
      if (!expectSwap && swap) throw new Error(`run ${r.id} swapped although its snapshot names the current runner`);
      if (swap?.ms !== undefined) swapMs.push(swap.ms);
      const running = events.data.find((e) => e.type === "run.running")?.data;
      if (running?.warm) warm++;
      boot[expectSwap ? "swapped" : "current"].push(running?.boot_ms ?? Number.NaN);
      return r.first;
    };
    // Warm-up: page cache, JIT, the first spares.
    await measured(old.id, true);
    await measured(current.id, false);
    warm = 0;
    swapMs.length = 0;
    boot.swapped.length = 0;
    boot.current.length = 0;
    for (let i = 0; i < opts.runs; i++) {
      let s: number;
      let c: number;
      if (i % 2 === 0) {
        s = await measured(old.id, true);
        c = await measured(current.id, false);
      } else {
        c = await measured(current.id, false);
        s = await measured(old.id, true);
      }
      swapped.push(s);
      plain.push(c);
      paired.push(s - c);
    }
    const S = dist(swapped);
    const C = dist(plain);
    const r = (x: number) => Math.round(x * 100) / 100;
    return {
      first_event_swapped_ms: S,
      first_event_current_ms: C,
      swap_added_ms: { p50: r(S.p50 - C.p50), p99: r(S.p99 - C.p99) },
      swap_added_paired_ms: dist(paired),
      swap_event_ms: dist(swapMs),
      boot_swapped_ms: dist(boot.swapped),
      boot_current_ms: dist(boot.current),
      warm_runs: warm,
    };
  } finally {
    await bench.close();
  }
}

/** Publishes the built runner plus a comment over the API; returns its digest. */
async function publishRunner(bench: BenchHost, tag: string): Promise<string> {
  const bundle = await readFile(new URL("../packages/runner/dist/runner.mjs", import.meta.url), "utf8");
  const form = new FormData();
  form.append("bundle", new Blob([`${bundle}\n// ${tag}\n`]), "runner.mjs");
  const res = await fetch(`${bench.host.url}/v1/runners`, {
    method: "POST",
    headers: { authorization: `Bearer ${bench.host.adminKey}` },
    body: form,
  });
  const body = (await res.json()) as { digest: string };
  if (res.status !== 201) throw new Error(`POST /v1/runners: ${JSON.stringify(body)}`);
  return body.digest;
}

/** Boots the runner through the host's driver; ms from boot() to its hello frame, and its stderr. */
async function startRunner(
  bench: BenchHost,
  rootfs: string,
  runnerDir: string,
  env: Record<string, string>,
  id: string,
): Promise<{ ms: number; stderr: string }> {
  const t0 = now();
  const sbx = await bench.host.driver.boot({
    id,
    layers: [rootfs],
    runnerDir,
    limits: DEFAULT_LIMITS,
    files: [],
    argv: [...RUNNER_ARGV],
    env: { PATH: "/usr/bin:/bin", LANG: "C.UTF-8", HOME: "/home/agent", ...env },
    cwd: "/",
  });
  try {
    sbx.stdin.end(
      JSON.stringify({ command: ["/bin/true"], env: {}, cwd: "/", heartbeat_ms: 60_000, max_line_bytes: 16_384 }),
    );
    let stderr = "";
    sbx.stderr.on("data", (c: Buffer) => {
      stderr += c.toString();
    });
    const ms = await new Promise<number>((resolve, reject) => {
      let out = "";
      sbx.stdout.on("data", (c: Buffer) => {
        out += c.toString();
        if (out.includes('"t":"hello"')) resolve(now() - t0);
      });
      sbx.stdout.once("close", () => reject(new Error(`the runner said no hello: ${out} ${stderr}`)));
    });
    sbx.stdout.resume();
    const exit = await sbx.exited;
    if (exit.code !== 0) throw new Error(`the runner exited ${exit.code}: ${stderr}`);
    return { ms, stderr };
  } finally {
    await sbx.destroy();
  }
}

async function measureRunnerStart(opts: SwapBenchOptions): Promise<SwapBenchResult["runner_start_ms"]> {
  const bench = await startBenchHost({ imagesDir: opts.imagesDir, warmSandboxes: 0 });
  try {
    const image = await new ImageStore({ imagesDir: opts.imagesDir }).resolve("default");
    const runners = await bench.api<{ data: { digest: string; current: boolean }[] }>("GET", "/v1/runners");
    const digest = runners.data.find((r) => r.current)?.digest;
    if (!digest) throw new Error("no current runner");
    const runnerDir = join(bench.dataDir, "runners", digest);
    let n = 0;
    const id = () => `bench-runner-${process.pid}-${n++}`;
    const check = await startRunner(
      bench,
      image.rootfs,
      runnerDir,
      { ...RUNNER_ENV, NODE_DEBUG_NATIVE: "COMPILE_CACHE" },
      id(),
    );
    const cacheAccepted = /runner\.mjs was accepted/.test(check.stderr);
    // Warm-up, then interleaved.
    await startRunner(bench, image.rootfs, runnerDir, {}, id());
    await startRunner(bench, image.rootfs, runnerDir, RUNNER_ENV, id());
    const cached: number[] = [];
    const uncached: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      const order: [Record<string, string>, number[]][] =
        i % 2 === 0
          ? [
              [RUNNER_ENV, cached],
              [{}, uncached],
            ]
          : [
              [{}, uncached],
              [RUNNER_ENV, cached],
            ];
      for (const [env, into] of order) into.push((await startRunner(bench, image.rootfs, runnerDir, env, id())).ms);
    }
    return { cached: dist(cached), uncached: dist(uncached), cache_accepted: cacheAccepted };
  } finally {
    await bench.close();
  }
}

export async function swapBench(opts: SwapBenchOptions): Promise<SwapBenchResult> {
  const warm = await measureSwap(opts, 4);
  const cold = await measureSwap(opts, 0);
  const runnerStart = await measureRunnerStart(opts);
  return {
    scenario: "swap",
    runs: opts.runs,
    method: METHOD,
    warm,
    cold,
    swap_added_ms: warm.swap_added_ms,
    runner_start_ms: runnerStart,
    target: { swap_added_ms_p50: 15 },
    peers: {
      reference_design_swap_ms: 300,
      e2b_live_daemon_upgrade_min_ms: 345,
      e2b_live_daemon_upgrade_max_ms: 440,
    },
  };
}
