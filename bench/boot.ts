/**
 * `paddock bench boot`: trigger-to-first-event and trigger-to-finish of a trivial agent over HTTP,
 * on the default host (warm sandboxes on) and with the warm pool off, beside two floors measured
 * in the same run on the same machine: bwrap running `true` (the bare namespace cost) and
 * `node -e 0` booted through the full sandbox recipe (what a cold Node-based runner must pay).
 */
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { unsealRunners } from "../packages/host/src/engine/runner-registry.ts";
import { type RunningHost, startHost } from "../packages/host/src/host.ts";
import { ImageStore } from "../packages/host/src/images/image-store.ts";
import { RUNNER_MOUNT } from "../packages/host/src/sandbox/driver.ts";
import { DEFAULT_LIMITS } from "../packages/protocol/src/limits.ts";
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

const now = () => performance.now();

async function timeProcess(argv: string[]): Promise<number> {
  const start = now();
  await new Promise<void>((resolve, reject) => {
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: "ignore", env: { PATH: "/usr/bin:/bin" } });
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${argv.join(" ")} exited ${code}`))));
  });
  return now() - start;
}

/** Reads SSE from a run until `until` matches an event; returns ms (from `t0`) of the first match of each predicate. */
async function follow(
  url: string,
  key: string,
  runId: string,
  t0: number,
): Promise<{ first: number; finished: number; status: string }> {
  const res = await fetch(`${url}/v1/runs/${runId}/events`, {
    headers: { authorization: `Bearer ${key}`, accept: "text/event-stream" },
  });
  if (!res.body) throw new Error("no event stream");
  let first = Number.NaN;
  let buf = "";
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    buf += decoder.decode(chunk, { stream: true });
    let i = buf.indexOf("\n\n");
    while (i !== -1) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (data) {
        const e = JSON.parse(data) as { type: string; data: { status?: string } };
        if (Number.isNaN(first) && (e.type === "user" || e.type === "log")) first = now() - t0;
        if (
          e.type.startsWith("run.") &&
          ["succeeded", "failed", "timed_out", "canceled"].includes(e.data.status ?? "")
        ) {
          return { first, finished: now() - t0, status: e.data.status as string };
        }
      }
      i = buf.indexOf("\n\n");
    }
  }
  throw new Error(`event stream of ${runId} ended early`);
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
  host: RunningHost;
  dataDir: string;
}> {
  const dataDir = await mkdtemp(join(tmpdir(), "paddock-bench-"));
  const host = await startHost({ dataDir, port: 0, imagesDir: opts.imagesDir, warmSandboxes, log: () => {} });
  const key = host.adminKey as string;
  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${host.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const json = (await res.json()) as { id: string; data?: { type: string; data: { warm?: boolean } }[] };
    if (!res.ok) throw new Error(`${method} ${path}: ${JSON.stringify(json)}`);
    return json;
  };
  const agent = await api("POST", "/v1/agents", {
    name: "bench-trivial",
    command: ["sh", "-c", 'echo \'::paddock::{"type":"ready"}\''],
  });
  const trigger = async () => {
    const t0 = now();
    const run = await api("POST", `/v1/agents/${agent.id}/runs`, {});
    return { id: run.id, ...(await follow(host.url, key, run.id, t0)) };
  };
  await trigger(); // warm-up: page cache, JIT, and the first spare
  const first: number[] = [];
  const finished: number[] = [];
  let warm = 0;
  for (let i = 0; i < opts.runs; i++) {
    const r = await trigger();
    if (r.status !== "succeeded") throw new Error(`bench run ended ${r.status}`);
    first.push(r.first);
    finished.push(r.finished);
    const events = await api("GET", `/v1/runs/${r.id}/events`);
    if (events.data?.find((e) => e.type === "run.running")?.data.warm) warm++;
  }
  let wall = 0;
  let allOk = true;
  if (concurrent > 0) {
    const t0 = now();
    const results = await Promise.all(Array.from({ length: concurrent }, () => trigger()));
    wall = now() - t0;
    allOk = results.every((r) => r.status === "succeeded");
  }
  const runnerDir = join(dataDir, "runners");
  const runnerLayer = join(runnerDir, readdirSync(runnerDir).find((n) => n.startsWith("sha256-")) ?? "");
  return { first, finished, warm, wall, allOk, runnerLayer, host, dataDir };
}

export async function bootBench(opts: BootBenchOptions): Promise<BootBenchResult> {
  const cold = await sequential(opts, 0, 0);
  await cold.host.close();
  await unsealRunners(cold.dataDir);
  await rm(cold.dataDir, { recursive: true, force: true });
  const main = await sequential(opts, 4, opts.concurrent);
  const { host, dataDir } = main;
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
    await host.close();
    await unsealRunners(dataDir);
    await rm(dataDir, { recursive: true, force: true });
  }
}
