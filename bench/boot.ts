/**
 * `paddock bench boot`: trigger-to-first-event and trigger-to-finish of a trivial agent over HTTP,
 * on the default host (warm sandboxes on) and with the warm pool off, beside two floors measured
 * in the same run on the same machine: bwrap running `true` (the bare namespace cost) and
 * `node -e 0` booted through the full sandbox recipe (what a cold Node-based runner must pay).
 */
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { ImageStore } from "../packages/host/src/images/image-store.ts";
import { RUNNER_MOUNT } from "../packages/host/src/sandbox/driver.ts";
import { DEFAULT_LIMITS } from "../packages/protocol/src/limits.ts";
import { type BenchHost, now, startBenchHost } from "./bench-host.ts";
import { type Dist, dist } from "./stats.ts";

export interface BootBenchOptions {
  imagesDir: string;
  runs: number;
  concurrent: number;
}

export interface BootBenchResult {
  scenario: "boot";
  runs: number;
  /** Default host: a warm sandbox (booted ahead for the agent) serves each run after the first. */
  first_event_ms: Dist;
  finished_ms: Dist;
  /** Same, with the warm pool off: every run boots its sandbox and starts Node after the trigger. */
  first_event_cold_ms: Dist;
  finished_cold_ms: Dist;
  warm_runs: number;
  floor_bwrap_true_ms: Dist;
  floor_node_ms: Dist;
  concurrent_20: { runs: number; all_succeeded: boolean; wall_ms: number };
  target: { first_event_ms_p50: number; first_event_ms_p99: number };
  peers: Record<string, number>;
}

async function timeProcess(argv: string[]): Promise<number> {
  const start = now();
  await new Promise<void>((resolve, reject) => {
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: "ignore", env: { PATH: "/usr/bin:/bin" } });
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${argv.join(" ")} exited ${code}`))));
  });
  return now() - start;
}

async function sequential(
  opts: BootBenchOptions,
  warmSandboxes: number,
  concurrent: number,
): Promise<{
  first: number[];
  finished: number[];
  warm: number;
  wall: number;
  allOk: boolean;
  runnerLayer: string;
  bench: BenchHost;
}> {
  const bench = await startBenchHost({ imagesDir: opts.imagesDir, warmSandboxes });
  const agent = await bench.api("POST", "/v1/agents", {
    name: "bench-trivial",
    command: ["sh", "-c", 'echo \'::paddock::{"type":"ready"}\''],
  });
  const trigger = () => bench.trigger(agent.id);
  await trigger(); // warm-up: page cache, JIT, and the first spare
  const first: number[] = [];
  const finished: number[] = [];
  let warm = 0;
  for (let i = 0; i < opts.runs; i++) {
    const r = await trigger();
    if (r.status !== "succeeded") throw new Error(`bench run ended ${r.status}`);
    first.push(r.first);
    finished.push(r.finished);
    const events = await bench.api<{ data: { type: string; data: { warm?: boolean } }[] }>(
      "GET",
      `/v1/runs/${r.id}/events`,
    );
    if (events.data.find((e) => e.type === "run.running")?.data.warm) warm++;
  }
  let wall = 0;
  let allOk = true;
  if (concurrent > 0) {
    const t0 = now();
    const results = await Promise.all(Array.from({ length: concurrent }, () => trigger()));
    wall = now() - t0;
    allOk = results.every((r) => r.status === "succeeded");
  }
  const runnerDir = join(bench.dataDir, "runners");
  const runnerLayer = join(runnerDir, readdirSync(runnerDir).find((n) => n.startsWith("sha256-")) ?? "");
  return { first, finished, warm, wall, allOk, runnerLayer, bench };
}

export async function bootBench(opts: BootBenchOptions): Promise<BootBenchResult> {
  const cold = await sequential(opts, 0, 0);
  await cold.bench.close();
  const main = await sequential(opts, 4, opts.concurrent);
  const { host } = main.bench;
  try {
    // Floors, measured now on the same machine.
    const image = await new ImageStore({ imagesDir: opts.imagesDir }).resolve("default");
    const bwrapTrue: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      bwrapTrue.push(
        await timeProcess([
          "setpriv",
          "--reuid=61000",
          "--regid=61000",
          "--clear-groups",
          "bwrap",
          "--unshare-all",
          "--ro-bind",
          image.rootfs,
          "/",
          "--proc",
          "/proc",
          "--dev",
          "/dev",
          "--",
          "/bin/true",
        ]),
      );
    }
    const nodeFloor: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      const start = now();
      const sbx = await host.driver.boot({
        id: `bench-node-${process.pid}-${i}`,
        layers: [image.rootfs],
        runnerDir: main.runnerLayer,
        limits: DEFAULT_LIMITS,
        files: [],
        argv: [`${RUNNER_MOUNT}/node`, "-e", "0"],
        env: { PATH: "/usr/bin:/bin" },
        cwd: "/",
      });
      sbx.stdin.end();
      sbx.stdout.resume();
      sbx.stderr.resume();
      const exit = await sbx.exited;
      nodeFloor.push(now() - start);
      await sbx.destroy();
      if (exit.code !== 0) throw new Error(`node -e 0 in a sandbox exited ${exit.code}`);
    }

    return {
      scenario: "boot",
      runs: opts.runs,
      first_event_ms: dist(main.first),
      finished_ms: dist(main.finished),
      first_event_cold_ms: dist(cold.first),
      finished_cold_ms: dist(cold.finished),
      warm_runs: main.warm,
      floor_bwrap_true_ms: dist(bwrapTrue),
      floor_node_ms: dist(nodeFloor),
      concurrent_20: {
        runs: opts.concurrent,
        all_succeeded: main.allOk,
        wall_ms: Math.round(main.wall),
      },
      target: { first_event_ms_p50: 60, first_event_ms_p99: 150 },
      peers: { e2b_create_to_first_command_p50_ms: 440, daytona_create_to_first_command_p50_ms: 110 },
    };
  } finally {
    await main.bench.close();
  }
}
