/**
 * The claims part of `paddock bench cluster`: how fast nodes sharing one PostgreSQL store take
 * queued runs through, beside graphile-worker doing the same number of no-op jobs on the same
 * server in the same run.
 *
 * Each pass queues N runs first, then starts its node processes (cluster-claims-node.ts, each with
 * its own pool, as separate `paddock serve` nodes) and lets them go at once. A node takes runs
 * through the engine's own store path (Claims: the runs it has room for, claimed in batches FOR
 * UPDATE SKIP LOCKED under the global limits, then start and finish fenced by the attempt, with
 * every event the engine writes) and boots no sandbox. claims_per_s = N / (ms from the go to the
 * last run finished).
 * graphile-worker gets N jobs of a no-op task added first, then as many processes running `run()`
 * with the same concurrency per process; its figure ends once its jobs table is empty.
 *
 * Passes: 1 node, graphile-worker with 1 process, 3 nodes, graphile-worker with 3 processes.
 * Afterwards every run must have succeeded once, with its events numbered 1..n without a gap and
 * its claim, start and finish events among them.
 */
import { type ChildProcessByStdio, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import { AgentSpec, DEFAULT_LIMITS } from "@paddock/protocol";
import { Logger, makeWorkerUtils } from "graphile-worker";
import pg from "pg";
import { resolveHostConfig } from "../packages/host/src/config.ts";
import { RunRepository } from "../packages/host/src/engine/runs.ts";
import { type OpenDatabase, openDatabase } from "../packages/host/src/store/database.ts";
import { EventLog } from "../packages/host/src/store/event-log.ts";
import { migrate } from "../packages/host/src/store/migrations.ts";
import { startPostgres } from "../packages/host/src/testing/postgres.ts";
import { seedAgent } from "../packages/host/src/testing/test-store.ts";
import type { ClaimsNodeConfig } from "./cluster-claims-node.ts";

export interface ClaimsBenchOptions {
  /** Runs queued (and jobs added) for each pass. */
  runs: number;
  /** A database URL on a PostgreSQL server to use (the bench creates its databases there and drops them); default a private server. */
  postgresUrl?: string;
  /** Runs at once per node and jobs at once per graphile-worker process (default the host's maxConcurrentRuns). */
  concurrency?: number;
  progress?: (line: string) => void;
}

export interface ClaimsResult {
  /** Runs per pass; graphile-worker did as many jobs per pass. */
  runs: number;
  /** Runs at once per node, and graphile-worker's concurrency per process. */
  concurrency: number;
  /** Runs claimed, started and finished per second by 1 node and by 3 nodes. */
  claims_per_s: { nodes_1: number; nodes_3: number };
  /** No-op jobs done per second by graphile-worker with 1 and with 3 processes. */
  graphile_worker_jobs_per_s: { processes_1: number; processes_3: number };
  graphile_worker_version: string;
  /** Runs that ended succeeded, over both passes (2 × runs when every one did). */
  succeeded: number;
  /** Runs executed more than once (by the nodes' own count, attempts or attempt.started events): must be 0. */
  duplicate_executions: number;
  /** Runs whose events are not 1..n without a gap, or lack a claim, start or finish event: must be 0. */
  lost_events: number;
  /** graphile-worker's jobs executed more than once. */
  graphile_worker_duplicate_executions: number;
  notes: string;
}

/** The events every run of the bench must have, in this order: queued, claimed, started, finished. */
const LIFECYCLE = ["run.queued", "run.starting", "attempt.started", "run.running", "attempt.finished", "run.succeeded"];
/** A pass that reports no progress for this long has stalled. */
const STALL_MS = 60_000;
/** How long an idle node waits before looking for runs again: the host engine's poll. */
const POLL_MS = 1000;
const NODE_ENTRY = new URL("./cluster-claims-node.ts", import.meta.url).pathname;

/**
 * Runs the passes and checks every run afterwards.
 * @example const r = await claimsBench({ runs: 2000, progress: console.error }); r.claims_per_s.nodes_3
 */
export async function claimsBench(opts: ClaimsBenchOptions): Promise<ClaimsResult> {
  const concurrency = opts.concurrency ?? resolveHostConfig({ dataDir: "/", port: 0 }).maxConcurrentRuns;
  const server = opts.postgresUrl ? sharedServer(opts.postgresUrl) : privateServer();
  try {
    const tag = `${process.pid}_${Date.now()}`;
    const graphileUrl = await server.createDatabase(`graphile_claims_${tag}`);
    const paddock = await paddockQueue(await server.createDatabase(`paddock_claims_${tag}`));
    try {
      const perS = { paddock: new Map<number, number>(), graphile: new Map<number, number>() };
      let succeeded = 0;
      let duplicates = 0;
      let lost = 0;
      let graphileDuplicates = 0;
      for (const nodes of [1, 3]) {
        const ids = await paddock.queue(opts.runs);
        await analyze(paddock.url);
        const configs = Array.from({ length: nodes }, (_, i) => ({
          kind: "paddock" as const,
          url: paddock.url,
          nodeId: `bench-${nodes}-${i + 1}`,
          concurrency,
          // One tenant's runs may fill every node: its limit, counted in each claim, never binds here.
          maxPerTenant: nodes * concurrency,
          pollMs: POLL_MS,
        }));
        const pass = await race(configs, opts.runs);
        const checked = await paddock.check(ids, pass.executed);
        succeeded += checked.succeeded;
        duplicates += checked.duplicates;
        lost += checked.lost;
        perS.paddock.set(nodes, rate(opts.runs, pass.ms));
        opts.progress?.(
          `${nodes} node(s): ${opts.runs} runs in ${pass.ms} ms, ${perS.paddock.get(nodes)}/s (${checked.succeeded} succeeded)`,
        );

        await addNoopJobs(graphileUrl, opts.runs);
        await analyze(graphileUrl);
        const workers = Array.from({ length: nodes }, () => ({
          kind: "graphile-worker" as const,
          url: graphileUrl,
          concurrency,
        }));
        const jobs = await withClient(graphileUrl, (client) => race(workers, opts.runs, () => jobsLeft(client)));
        graphileDuplicates += executedTwice(jobs.executed).size;
        perS.graphile.set(nodes, rate(opts.runs, jobs.ms));
        opts.progress?.(
          `graphile-worker, ${nodes} process(es): ${opts.runs} jobs in ${jobs.ms} ms, ${perS.graphile.get(nodes)}/s`,
        );
      }
      return {
        runs: opts.runs,
        concurrency,
        claims_per_s: { nodes_1: perS.paddock.get(1) ?? 0, nodes_3: perS.paddock.get(3) ?? 0 },
        graphile_worker_jobs_per_s: { processes_1: perS.graphile.get(1) ?? 0, processes_3: perS.graphile.get(3) ?? 0 },
        graphile_worker_version: graphileVersion(),
        succeeded,
        duplicate_executions: duplicates,
        lost_events: lost,
        graphile_worker_duplicate_executions: graphileDuplicates,
        notes:
          "nodes and graphile-worker processes are separate processes with a pool of their own on one PostgreSQL " +
          `server (${opts.postgresUrl ? "the one given" : "a private one, fsync off"}); ` +
          "a node runs the engine's claim, start and finish with their events and boots no " +
          "sandbox; it leaves out what the engine does beside them (expiring and recovering runs, leases' renewal); " +
          "one tenant, its limit raised to the nodes' total concurrency; times from the go to the last run " +
          "finished (graphile-worker: to its jobs table empty; its run() starts at the go, its pool connected before)",
      };
    } finally {
      await paddock.close();
    }
  } finally {
    await server.stop();
  }
}

/** A PostgreSQL server to make the bench's databases on. */
interface Server {
  createDatabase(name: string): Promise<string>;
  stop(): Promise<void>;
}

function privateServer(): Server {
  const server = startPostgres();
  return { createDatabase: (name) => server.createDatabase(name), stop: async () => server.stop() };
}

/** A server the caller named by a database URL on it: the bench's databases are dropped at the end. */
function sharedServer(url: string): Server {
  const created: string[] = [];
  const admin = (statement: string) => withClient(url, (client) => client.query(statement));
  return {
    async createDatabase(name) {
      await admin(`CREATE DATABASE "${name}"`);
      created.push(name);
      // postgres://user@host/db?…, or postgres://user@/db?host=/socket (which URL cannot parse).
      return url.replace(/^(postgres(?:ql)?:\/\/[^/]*\/)[^?]*/, `$1${name}`);
    },
    async stop() {
      for (const name of created) await admin(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    },
  };
}

async function withClient<T>(url: string, body: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await body(client);
  } finally {
    await client.end();
  }
}

/** Fresh statistics and no dead rows before a timed pass, as autovacuum would leave them sooner or later. */
async function analyze(url: string): Promise<void> {
  await withClient(url, (client) => client.query("VACUUM ANALYZE"));
}

const rate = (n: number, ms: number) => Math.round((n / Math.max(1, ms)) * 1000 * 10) / 10;

/** The ids that appear more than once over the processes' lists. */
function executedTwice(lists: (string | number)[][]): Set<string> {
  const seen = new Set<string>();
  const twice = new Set<string>();
  for (const id of lists.flat().map(String)) {
    if (seen.has(id)) twice.add(id);
    seen.add(id);
  }
  return twice;
}

/** Paddock's database: migrated, one tenant and agent; runs queued through the host's RunRepository. */
async function paddockQueue(url: string) {
  const store: OpenDatabase = await openDatabase({ dataDir: "", database: url });
  try {
    await migrate(store.db);
  } catch (err) {
    await store.close();
    throw err;
  }
  const { tenant, agent } = await seedAgent(store.db);
  const runs = new RunRepository(store.db, new EventLog(store.db, { dialect: store.dialect }));
  const spec = AgentSpec.parse({
    command: ["true"],
    env: {},
    limits: DEFAULT_LIMITS,
    cwd: "/",
    files: [],
    image: "bench",
    layers: [],
  });
  return {
    url,
    /** Queues `n` runs (20 at once, the pool's size) and returns their ids. */
    async queue(n: number): Promise<string[]> {
      const ids: string[] = [];
      for (let i = 0; i < n; i += 20) {
        const batch = Array.from({ length: Math.min(20, n - i) }, () => runs.create(tenant, agent, spec, null));
        for (const { run } of await Promise.all(batch)) ids.push(run.id);
      }
      return ids;
    },
    /** How `ids` ended: how many succeeded, ran more than once, or have events missing. */
    async check(ids: string[], executed: (string | number)[][]) {
      const rows = await store.db
        .selectFrom("runs")
        .select(["id", "status", "event_seq"])
        .where("id", "in", ids)
        .execute();
      const attempts = await store.db.selectFrom("attempts").select("run_id").where("run_id", "in", ids).execute();
      const events = await store.db
        .selectFrom("events")
        .select(["run_id", "seq", "type"])
        .where("run_id", "in", ids)
        .orderBy("run_id")
        .orderBy("seq")
        .execute();
      const twice = executedTwice(executed);
      const count = (list: string[]) => {
        const n = new Map<string, number>();
        for (const id of list) n.set(id, (n.get(id) ?? 0) + 1);
        return n;
      };
      const attemptsOf = count(attempts.map((a) => a.run_id));
      const startsOf = count(events.filter((e) => e.type === "attempt.started").map((e) => e.run_id));
      const eventsOf = new Map<string, { seq: number; type: string }[]>();
      for (const e of events) eventsOf.set(e.run_id, [...(eventsOf.get(e.run_id) ?? []), e]);
      let duplicates = 0;
      let lost = 0;
      for (const run of rows) {
        if (twice.has(run.id) || (attemptsOf.get(run.id) ?? 0) > 1 || (startsOf.get(run.id) ?? 0) > 1) duplicates++;
        const list = eventsOf.get(run.id) ?? [];
        const gapless = list.length === run.event_seq && list.every((e, i) => e.seq === i + 1);
        const types = list.map((e) => e.type);
        if (!gapless || LIFECYCLE.some((type) => !types.includes(type))) lost++;
      }
      // A run missing from the store lost everything.
      lost += ids.length - rows.length;
      return { succeeded: rows.filter((r) => r.status === "succeeded").length, duplicates, lost };
    },
    close: () => store.close(),
  };
}

/** Adds `n` jobs of the no-op task (graphile-worker's own bulk add), after its migrations. */
async function addNoopJobs(url: string, n: number): Promise<void> {
  const utils = await makeWorkerUtils({ connectionString: url, logger: new Logger(() => () => {}) });
  try {
    await utils.migrate();
    for (let i = 0; i < n; i += 1000) {
      await utils.addJobs(Array.from({ length: Math.min(1000, n - i) }, () => ({ identifier: "noop", payload: {} })));
    }
  } finally {
    await utils.release();
  }
}

/** Whether graphile-worker's jobs table still holds jobs (a completion commits after its job:success). */
async function jobsLeft(client: pg.Client): Promise<boolean> {
  const { rows } = await client.query<{ n: string }>("SELECT count(*) AS n FROM graphile_worker.jobs");
  return Number(rows[0]?.n) > 0;
}

function graphileVersion(): string {
  const main = createRequire(import.meta.url).resolve("graphile-worker");
  return JSON.parse(readFileSync(join(dirname(main), "..", "package.json"), "utf8")).version;
}

/** A promise with its settle functions. */
function deferred<T>(): { promise: Promise<T>; resolve(value: T): void; reject(err: Error): void } {
  let resolve: (value: T) => void = () => {};
  let reject: (err: Error) => void = () => {};
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

interface NodeProcess {
  child: ChildProcessByStdio<Writable, Readable, Readable>;
  /** Runs (jobs) this process finished so far. */
  done: number;
  /** It reported what it executed (and exits by itself). */
  reported: boolean;
  ready: Promise<void>;
  /** What it executed, once told to stop. */
  executed: Promise<(string | number)[]>;
  /** Rejects if the process exits before it reported what it executed. */
  failed: Promise<never>;
}

function spawnNode(config: ClaimsNodeConfig, onDone: () => void): NodeProcess {
  const child = spawn(process.execPath, [NODE_ENTRY, JSON.stringify(config)], { stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const ready = deferred<void>();
  const executed = deferred<(string | number)[]>();
  const failed = deferred<never>();
  const node: NodeProcess = {
    child,
    done: 0,
    reported: false,
    ready: ready.promise,
    executed: executed.promise,
    failed: failed.promise,
  };
  // Rejections are raced with what waits on the process; none goes unhandled.
  failed.promise.catch(() => {});
  createInterface({ input: child.stdout }).on("line", (line) => {
    const message = JSON.parse(line) as { t: string; n?: number; ids?: (string | number)[] };
    if (message.t === "ready") ready.resolve();
    else if (message.t === "done") {
      node.done = message.n ?? 0;
      onDone();
    } else if (message.t === "executed") {
      node.reported = true;
      executed.resolve(message.ids ?? []);
    }
  });
  child.once("exit", (code, signal) => {
    if (!node.reported)
      failed.reject(new Error(`a ${config.kind} process exited (${code ?? signal}): ${stderr.trim()}`));
  });
  return node;
}

/**
 * Starts a process per config, lets them all go at once once each is ready, and measures until
 * together they finished `total` (and `pending`, when given, says nothing is left); then stops them.
 */
async function race(
  configs: ClaimsNodeConfig[],
  total: number,
  pending?: () => Promise<boolean>,
): Promise<{ ms: number; executed: (string | number)[][] }> {
  const finished = deferred<void>();
  // Raced with the processes' failure below; a stall seen before the go is not left unhandled.
  finished.promise.catch(() => {});
  let progressAt = Date.now();
  const nodes: NodeProcess[] = [];
  const onDone = () => {
    progressAt = Date.now();
    if (nodes.reduce((sum, n) => sum + n.done, 0) >= total) finished.resolve();
  };
  for (const config of configs) nodes.push(spawnNode(config, onDone));
  const failure = Promise.race(nodes.map((n) => n.failed));
  const watchdog = setInterval(() => {
    if (Date.now() - progressAt > STALL_MS) {
      const done = nodes.map((n) => n.done).join("+");
      finished.reject(new Error(`no progress for ${STALL_MS} ms with ${done} of ${total} done`));
    }
  }, 1000);
  try {
    await Promise.race([Promise.all(nodes.map((n) => n.ready)), failure]);
    const t0 = Date.now();
    progressAt = t0;
    for (const n of nodes) n.child.stdin.write("go\n");
    await Promise.race([finished.promise, failure]);
    while (pending && (await pending())) {
      if (Date.now() - progressAt > STALL_MS) throw new Error(`work left ${STALL_MS} ms after all of it was done`);
    }
    const ms = Date.now() - t0;
    for (const n of nodes) n.child.stdin.write("stop\n");
    const executed = await Promise.race([Promise.all(nodes.map((n) => n.executed)), failure]);
    return { ms, executed };
  } finally {
    clearInterval(watchdog);
    for (const n of nodes) {
      if (n.child.exitCode === null && n.child.signalCode === null) {
        const exited = new Promise((resolve) => n.child.once("exit", resolve));
        // A process that reported is on its way out; any other is stopped.
        if (!n.reported) n.child.kill("SIGKILL");
        await exited;
      }
    }
  }
}
