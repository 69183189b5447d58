/**
 * One process of the claims scenario (cluster-claims.ts): a Paddock node taking queued runs through
 * the engine's own store path (Claims: claimNext, start, finish, with their events), booting no
 * sandbox, or a graphile-worker runner of no-op jobs. Config from argv[2] (JSON). It opens its pool
 * and says `ready`, starts on a `go` line on stdin, reports how many it finished as it goes, and on
 * `stop` reports which runs or jobs it executed and exits.
 *
 * Lines on stdout (JSON): {t:"ready"}, {t:"done", n} (this process's total so far),
 * {t:"executed", ids}.
 */
import { EventEmitter } from "node:events";
import { createInterface } from "node:readline";
import { Logger, run, type WorkerEvents } from "graphile-worker";
import pg from "pg";
import { Claims } from "../packages/host/src/engine/claims.ts";
import { RunRepository } from "../packages/host/src/engine/runs.ts";
import { openDatabase, POOL_SIZE } from "../packages/host/src/store/database.ts";
import { EventLog } from "../packages/host/src/store/event-log.ts";
import type { RunsTable } from "../packages/host/src/store/schema.ts";

export type ClaimsNodeConfig =
  | {
      kind: "paddock";
      url: string;
      nodeId: string;
      /** Runs at once on this node (the engine's maxConcurrent). */
      concurrency: number;
      /** Root runs of one tenant at once over every node. */
      maxPerTenant: number;
      /** How long an idle node waits before it looks for runs again (the engine's poll). */
      pollMs: number;
    }
  | { kind: "graphile-worker"; url: string; concurrency: number };

const config = JSON.parse(process.argv[2] ?? "{}") as ClaimsNodeConfig;
const say = (line: object) => process.stdout.write(`${JSON.stringify(line)}\n`);

const executed: (string | number)[] = [];
let reported = 0;
/** Counts one finished run or job; reports once per turn of the event loop. */
function finished(id: string | number): void {
  executed.push(id);
  if (executed.length - 1 !== reported) return;
  setImmediate(() => {
    reported = executed.length;
    say({ t: "done", n: reported });
  });
}

const lines = createInterface({ input: process.stdin });
const next = () => new Promise<string>((resolve) => lines.once("line", resolve));

if (config.kind === "paddock") {
  const store = await openDatabase({ dataDir: "", database: config.url });
  const events = new EventLog(store.db, { dialect: store.dialect, hints: store.hints });
  const runs = new RunRepository(store.db, events);
  const claims = new Claims(
    { db: store.db, runs, events },
    {
      workerId: config.nodeId,
      maxConcurrent: config.concurrency,
      maxPerTenant: config.maxPerTenant,
      dialect: store.dialect,
    },
  );
  say({ t: "ready" });
  await next();
  let stopping = false;
  let wake = () => {};
  const stopped = next().then(() => {
    stopping = true;
    wake();
  });
  const going = new Set<Promise<void>>();
  /** What the engine does for a run around its sandbox, with a sandbox that is up at once and exits 0. */
  const execute = async (row: RunsTable) => {
    const fence = { runId: row.id, attempt: row.attempt, workerId: config.nodeId };
    const running = await claims.start(row, { ms: 0, warm: false }, fence);
    const outcome = running
      ? ({ status: "succeeded", reason: "completed", exitCode: 0 } as const)
      : ({ status: "canceled", reason: "canceled", exitCode: null } as const);
    if (!(await claims.finish(row, outcome))) throw new Error(`run ${row.id}: its finish was fenced off`);
    finished(row.id);
  };
  // The engine's pump: claims as many runs as there is room for, up to `concurrency` going.
  while (!stopping) {
    if (going.size >= config.concurrency) {
      await Promise.race(going);
      continue;
    }
    const rows = await claims.claimNext({
      roots: config.concurrency - going.size,
      runs: config.concurrency * 4 - going.size,
    });
    if (rows.length === 0) {
      // Nothing to claim now: wait for a run of this node to end, the poll, or the stop.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, config.pollMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
        void Promise.race(going).then(wake);
      });
      continue;
    }
    for (const row of rows) {
      const done: Promise<void> = execute(row).finally(() => going.delete(done));
      going.add(done);
    }
  }
  await Promise.all(going);
  await stopped;
  await store.close();
} else {
  const events: WorkerEvents = new EventEmitter();
  events.on("job:success", ({ job }) => finished(job.id));
  // The same pool a Paddock node's store holds, connected before the go as a node's is.
  const pool = new pg.Pool({ connectionString: config.url, max: POOL_SIZE });
  pool.on("error", () => {});
  pool.on("connect", (client) => client.on("error", () => {}));
  (await pool.connect()).release();
  say({ t: "ready" });
  await next();
  const runner = await run({
    pgPool: pool,
    concurrency: config.concurrency,
    noHandleSignals: true,
    logger: new Logger(() => () => {}),
    events,
    taskList: { noop: async () => {} },
  });
  await next();
  await runner.stop();
  await pool.end();
}
say({ t: "executed", ids: executed });
lines.close();
