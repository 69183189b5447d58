/**
 * `paddock bench density`: how many live sandboxes one machine holds, through a real host.
 *
 * Figures:
 * - levels[]: N runs of an agent running `sleep`, all live at once (levels are cumulative: the
 *   runs of one level stay up while the next one's are added). At each level: the sandboxes'
 *   own memory (PSS summed over /proc/PID/smaps_rollup of every process in each sandbox's
 *   cgroups, so pages shared between sandboxes count once), the host's RSS and its growth since
 *   before the first run, both per live sandbox; boot p50 (from the trigger to the `run.running`
 *   event, for the runs that level added); the API's p99 latency (GET /v1/runs/{id} and GET
 *   /v1/health, one at a time, while every run is live).
 * - runs_per_s: runs of an agent running `true`, `concurrency` at a time (the agent's limit),
 *   from the first trigger to the last terminal event; beside the floor measured in the same run:
 *   the host's sandbox driver booting sandboxes with the runs' recipe (layers, limits, network)
 *   running `true`, and tearing them down, at the same concurrency.
 * - leftovers: what of the bench host is still on the machine after it closed (namespaces,
 *   links, its filter table, cgroups, its run folder); empty unless cleanup failed.
 */
import { randomUUID } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { ImageStore } from "../packages/host/src/images/image-store.ts";
import { DEFAULT_PATH } from "../packages/host/src/images/resolve-command.ts";
import { detectCgroups, listInstanceCgroups, SandboxCgroup } from "../packages/host/src/sandbox/linux/cgroups.ts";
import { SLOT_PREFIX } from "../packages/host/src/sandbox/linux/launcher-pool.ts";
import { SandboxNetwork } from "../packages/host/src/sandbox/linux/network.ts";
import { DEFAULT_LIMITS } from "../packages/protocol/src/limits.ts";
import { type BenchHost, now, startBenchHost } from "./bench-host.ts";
import { type Dist, dist } from "./stats.ts";
import { measureThenTearDown } from "./teardown.ts";

export interface DensityBenchOptions {
  imagesDir: string;
  /** Live sandboxes at each level, ascending (default 100, 500, 1000). */
  levels: number[];
  /** Runs for runs_per_s and boots for its floor. */
  throughputRuns: number;
  /** Runs (and floor boots) at once for runs_per_s. */
  concurrency: number;
  /** API requests sampled at each level. */
  apiSamples: number;
  /** The IPv4 range the bench host claims its sandbox addresses from. */
  sandboxRange: string;
  /** The whole bench gives up (and cleans up) after this long. */
  timeoutMs: number;
  progress?: (line: string) => void;
}

export interface DensityLevel {
  sandboxes: number;
  /** Sandboxes found live (a cgroup with processes) when memory was measured. */
  live: number;
  /** Runs of this level or an earlier one that ended (failed) before this level was up. */
  ended_early: number;
  /** Processes in those sandboxes. */
  processes: number;
  sandbox_pss_mib_per_sandbox: number;
  host_rss_mib: number;
  host_rss_growth_mib_per_sandbox: number;
  /** Sandbox PSS plus the host's growth, per sandbox: what one more sandbox costs. */
  unique_mib_per_sandbox: number;
  boot_ms: Dist;
  api_ms: { run: Dist; health: Dist; all: Dist };
  /** Sampled requests that got no answer (a network error): left out of api_ms, counted here. */
  api_errors: number;
}

export interface DensityBenchResult {
  scenario: "density";
  levels: DensityLevel[];
  runs_per_s: number;
  floor_runs_per_s: number;
  runs_per_s_vs_floor: number;
  throughput: { runs: number; concurrency: number; all_succeeded: boolean };
  /** How the sleeping runs ended once canceled: all `canceled` unless one failed first. */
  ended: Record<string, number>;
  /** Triggers of sleeping runs sent again after getting no answer (see trigger()). */
  trigger_retries: number;
  leftovers: string[];
  target: { sandboxes: number; unique_mib_per_sandbox: number; api_p99_ms: number; runs_per_s_vs_floor: number };
  peers: Record<string, number>;
  notes: string;
}

/** When waiting gives up: at the deadline, or once the bench is stopped. */
interface Until {
  deadline: number;
  signal: AbortSignal;
}

const MIB = 1024 * 1024;
const TERMINAL = ["succeeded", "failed", "timed_out", "canceled"];
const round = (x: number, places = 2) => Math.round(x * 10 ** places) / 10 ** places;

/**
 * PSS of one process in bytes, 0 when it is gone. Read asynchronously: the host shares this
 * process, and thousands of synchronous reads (each walks the process's mappings) would stall
 * its event loop long enough for runners' heartbeats to seem missed.
 */
async function pssBytes(pid: number): Promise<number> {
  try {
    const match = /^Pss:\s+(\d+) kB$/m.exec(await readFile(`/proc/${pid}/smaps_rollup`, "utf8"));
    return match ? Number(match[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** PSS summed over every process of every sandbox of the host (warm launchers' slots left out). */
async function sandboxMemory(instance: string): Promise<{ live: number; processes: number; pss: number }> {
  const layout = await detectCgroups();
  let live = 0;
  let processes = 0;
  let pss = 0;
  for (const id of listInstanceCgroups(layout, instance)) {
    if (id.startsWith(SLOT_PREFIX)) continue;
    const pids = new SandboxCgroup(layout, instance, id).pids();
    if (pids.length === 0) continue;
    live++;
    processes += pids.length;
    for (const bytes of await Promise.all(pids.map(pssBytes))) pss += bytes;
  }
  return { live, processes, pss };
}

/** Runs `tasks` with at most `limit` in flight. */
async function pool(count: number, limit: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, count) }, async () => {
      while (next < count) await task(next++);
    }),
  );
}

/** The agent's runs in `status`, every page. */
async function runsIn(
  b: BenchHost,
  agentId: string,
  status: string,
): Promise<{ id: string; finished_at: string | null }[]> {
  const runs: { id: string; finished_at: string | null }[] = [];
  let cursor: string | null = null;
  do {
    const query: string = `agent_id=${agentId}&status=${status}&limit=200${cursor ? `&cursor=${cursor}` : ""}`;
    const page: { data: { id: string; finished_at: string | null }[]; next_cursor: string | null } = await b.api(
      "GET",
      `/v1/runs?${query}`,
    );
    runs.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor);
  return runs;
}

/**
 * Triggers a run of the agent. A request that got no answer (a connection reset while the host
 * was busy) is sent again under the same Idempotency-Key, so it never makes a second run; counted.
 */
async function trigger(b: BenchHost, agentId: string, retries: { count: number }): Promise<{ id: string }> {
  const headers = { "idempotency-key": randomUUID() };
  for (let attempt = 1; ; attempt++) {
    try {
      return await b.api("POST", `/v1/agents/${agentId}/runs`, {}, headers);
    } catch (err) {
      if (!((err as Error).cause instanceof TypeError) || attempt >= 3) throw err;
      retries.count++;
    }
  }
}

/** ms a GET took; null when it got no answer. */
async function timedGet(b: BenchHost, path: string): Promise<number | null> {
  const t0 = now();
  return b.api("GET", path).then(
    () => now() - t0,
    () => null,
  );
}

/**
 * Waits until `count` runs of the agent are in one of `statuses`; returns how many are in each.
 * A poll that got no answer is tried again at the next turn, until the deadline.
 */
async function waitFor(
  b: BenchHost,
  agentId: string,
  statuses: string[],
  count: number,
  until: Until,
  everyMs = 250,
): Promise<Record<string, number>> {
  for (;;) {
    until.signal.throwIfAborted();
    const found: Record<string, number> = {};
    let n = 0;
    try {
      for (const status of statuses) {
        found[status] = (await runsIn(b, agentId, status)).length;
        n += found[status] ?? 0;
      }
    } catch {
      n = -1;
    }
    if (n >= count) return found;
    if (Date.now() > until.deadline) throw new Error(`only ${n} of ${count} runs ${statuses.join(" or ")} in time`);
    await sleep(everyMs, undefined, { signal: until.signal });
  }
}

/** Waits until every run has ended, whatever its status; returns how many ended in each. */
async function waitForEnd(b: BenchHost, ids: string[], until: Until): Promise<Record<string, number>> {
  let going = ids;
  const ended: Record<string, number> = {};
  const reasons = new Map<string, string>();
  while (going.length > 0) {
    until.signal.throwIfAborted();
    const statuses = new Map<string, string>();
    await pool(going.length, 16, async (i) => {
      const id = going[i] as string;
      const run = await b.api<{ status: string; reason: string | null }>("GET", `/v1/runs/${id}`);
      statuses.set(id, run.status);
      if (TERMINAL.includes(run.status) && run.status !== "canceled") {
        reasons.set(id, run.reason ?? "");
      }
    });
    for (const [id, status] of statuses) {
      // Keyed by status, and by reason for anything but a cancel (`failed/lost`).
      const key = reasons.has(id) ? `${status}/${reasons.get(id)}` : status;
      if (TERMINAL.includes(status)) ended[key] = (ended[key] ?? 0) + 1;
    }
    going = going.filter((id) => !TERMINAL.includes(statuses.get(id) ?? ""));
    if (going.length === 0) return ended;
    if (Date.now() > until.deadline) {
      const counts: Record<string, number> = {};
      for (const id of going) counts[statuses.get(id) ?? "?"] = (counts[statuses.get(id) ?? "?"] ?? 0) + 1;
      throw new Error(`${going.length} runs had not ended in time: ${JSON.stringify(counts)}`);
    }
    await sleep(250, undefined, { signal: until.signal });
  }
  return ended;
}

export async function densityBench(opts: DensityBenchOptions): Promise<DensityBenchResult> {
  const levels = [...opts.levels].sort((a, b) => a - b);
  const top = levels.at(-1) ?? 0;
  const deadline = Date.now() + opts.timeoutMs;
  const b = await startBenchHost({
    imagesDir: opts.imagesDir,
    // Spares would be sandboxes too: every live sandbox here is a run's.
    warmSandboxes: 0,
    maxConcurrentRuns: Math.max(top, opts.concurrency),
    sandboxNetwork: { range: opts.sandboxRange },
  });
  const instance = basename(b.host.runDir);
  const stop = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`bench density: gave up after ${opts.timeoutMs} ms`)), opts.timeoutMs);
  });
  const result = await measureThenTearDown(
    "density",
    () => Promise.race([measure(b, instance, levels, opts, { deadline, signal: stop.signal }), timedOut]),
    async () => {
      // What measure() still has going stops polling instead of outliving the bench.
      stop.abort();
      clearTimeout(timer);
      await b.close();
    },
  );
  // What the bench host left: nothing, when its close cleaned up as it should.
  const leftovers = await new SandboxNetwork({ instance }).leftovers();
  const layout = await detectCgroups();
  for (const id of listInstanceCgroups(layout, instance)) leftovers.push(`cgroup ${id}`);
  if (existsSync(b.host.runDir)) leftovers.push(`folder ${b.host.runDir}`);
  return { ...result, leftovers };
}

async function measure(
  b: BenchHost,
  instance: string,
  levels: number[],
  opts: DensityBenchOptions,
  until: Until,
): Promise<Omit<DensityBenchResult, "leftovers">> {
  const log = opts.progress ?? (() => {});
  // Warm-up: the runner layer, the page cache and the host's code paths.
  const quick = await b.api("POST", "/v1/agents", {
    name: "density-true",
    command: ["true"],
    max_concurrent_runs: opts.concurrency,
  });
  await b.trigger(quick.id);

  // runs_per_s end to end, then its floor: the driver's recipe running `true`, at the same concurrency.
  // Timed from the first trigger to the last run's finish as the host recorded it, so that
  // polling, kept slow to load the host little, adds nothing.
  const t0 = Date.now();
  await pool(opts.throughputRuns, 20, async () => {
    await b.api("POST", `/v1/agents/${quick.id}/runs`, {});
  });
  await waitFor(b, quick.id, TERMINAL, opts.throughputRuns + 1, until, 1000);
  const done = await runsIn(b, quick.id, "succeeded");
  const last = Math.max(...done.map((r) => Date.parse(r.finished_at ?? "")));
  const runsPerS = opts.throughputRuns / ((last - t0) / 1000);
  const ok = done.length === opts.throughputRuns + 1;
  log(`${opts.throughputRuns} runs at ${round(runsPerS, 1)}/s`);
  const floorPerS = await floor(b, opts);
  log(`floor: ${round(floorPerS, 1)} sandboxes/s`);

  const agent = await b.api("POST", "/v1/agents", { name: "density-sleep", command: ["sleep", "86400"] });
  const baseRss = process.memoryUsage().rss;
  const results: DensityLevel[] = [];
  const ids: string[] = [];
  const retries = { count: 0 };
  for (const level of levels) {
    const added = level - ids.length;
    const triggered = new Map<string, number>();
    await pool(added, 16, async () => {
      const at = Date.now();
      const run = await trigger(b, agent.id, retries);
      triggered.set(run.id, at);
      ids.push(run.id);
    });
    // A run that ended before its level was up (it failed) is counted, not waited for.
    const up = await waitFor(b, agent.id, ["running", ...TERMINAL], level, until);
    const endedEarly = level - (up.running ?? 0);
    const boots: number[] = [];
    await pool(triggered.size, 16, async (i) => {
      const id = [...triggered.keys()][i] as string;
      const events = await b.api<{ data: { type: string; time: string }[] }>("GET", `/v1/runs/${id}/events`);
      const running = events.data.find((e) => e.type === "run.running");
      if (running) boots.push(Date.parse(running.time) - (triggered.get(id) as number));
    });
    // `running` comes once a sandbox is up, a moment before its runner has started `sleep`:
    // measured once the count of processes has settled.
    let memory = await sandboxMemory(instance);
    for (let settled = Date.now() + 10_000; Date.now() < settled; ) {
      await sleep(500);
      const again = await sandboxMemory(instance);
      if (again.processes === memory.processes) break;
      memory = again;
    }
    const rss = process.memoryUsage().rss;
    const runMs: number[] = [];
    const healthMs: number[] = [];
    let errors = 0;
    for (let i = 0; i < opts.apiSamples; i++) {
      const run = await timedGet(b, `/v1/runs/${ids[Math.floor(Math.random() * ids.length)]}`);
      const health = await timedGet(b, "/v1/health");
      errors += Number(run === null) + Number(health === null);
      if (run !== null) runMs.push(run);
      if (health !== null) healthMs.push(health);
    }
    const sandboxMib = memory.pss / MIB / Math.max(1, memory.live);
    const growthMib = Math.max(0, rss - baseRss) / MIB / Math.max(1, memory.live);
    const figures: DensityLevel = {
      sandboxes: level,
      live: memory.live,
      ended_early: endedEarly,
      processes: memory.processes,
      sandbox_pss_mib_per_sandbox: round(sandboxMib),
      host_rss_mib: round(rss / MIB, 1),
      host_rss_growth_mib_per_sandbox: round(growthMib),
      unique_mib_per_sandbox: round(sandboxMib + growthMib),
      boot_ms: dist(boots),
      api_ms: { run: dist(runMs), health: dist(healthMs), all: dist([...runMs, ...healthMs]) },
      api_errors: errors,
    };
    results.push(figures);
    log(
      `${level} live: ${figures.unique_mib_per_sandbox} MiB each, boot p50 ${figures.boot_ms.p50} ms, API p99 ${figures.api_ms.all.p99} ms`,
    );
  }
  // Cancelled through the API, as a user would; what is left the host's close kills.
  await pool(ids.length, 16, async (i) => {
    // Sent again when it got no answer; a run that already ended answers 409, which is fine.
    for (let attempt = 1; attempt <= 3; attempt++) {
      const sent = await b.api("POST", `/v1/runs/${ids[i]}/cancel`).then(
        () => true,
        (err: Error) => !(err.cause instanceof TypeError),
      );
      if (sent) break;
    }
  });
  const tc = now();
  const ended = await waitForEnd(b, ids, until);
  log(`${ids.length} runs ended in ${round((now() - tc) / 1000, 1)} s after their cancel: ${JSON.stringify(ended)}`);
  return {
    scenario: "density",
    levels: results,
    runs_per_s: round(runsPerS, 1),
    floor_runs_per_s: round(floorPerS, 1),
    runs_per_s_vs_floor: round(runsPerS / floorPerS),
    throughput: { runs: opts.throughputRuns, concurrency: opts.concurrency, all_succeeded: ok },
    ended,
    trigger_retries: retries.count,
    target: { sandboxes: 1000, unique_mib_per_sandbox: 12, api_p99_ms: 50, runs_per_s_vs_floor: 0.8 },
    peers: { cubesandbox_mib_per_sandbox_at_1000: 25.7 },
    notes:
      "levels are cumulative; memory is PSS over each sandbox's processes plus the host's RSS growth since before " +
      "the first sleeping run, per live sandbox; boot is trigger to run.running (host ms timestamps); runs_per_s is " +
      "first trigger to the last run's finish; warm pool off (spares would be sandboxes too)",
  };
}

/** Sandboxes per second: the runs' recipe running `true`, booted and torn down `concurrency` at a time. */
async function floor(b: BenchHost, opts: DensityBenchOptions): Promise<number> {
  const runners = join(b.dataDir, "runners");
  const runnerDir = join(runners, readdirSync(runners).find((n) => n.startsWith("sha256-")) ?? "");
  const layers = [(await new ImageStore({ imagesDir: opts.imagesDir }).resolve("default")).rootfs];
  const t0 = now();
  await pool(opts.throughputRuns, opts.concurrency, async (i) => {
    const sandbox = await b.host.driver.boot({
      id: `density-floor-${process.pid}-${i}`,
      layers,
      runnerDir,
      limits: DEFAULT_LIMITS,
      files: [],
      argv: ["true"],
      env: { PATH: DEFAULT_PATH },
      cwd: "/",
      network: true,
    });
    sandbox.stdin.end();
    sandbox.stdout.resume();
    sandbox.stderr.resume();
    const exit = await sandbox.exited;
    await sandbox.destroy();
    if (exit.code !== 0) throw new Error(`true in a sandbox exited ${exit.code ?? exit.signal}`);
  });
  return opts.throughputRuns / ((now() - t0) / 1000);
}
