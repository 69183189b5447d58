/**
 * `paddock top`: a live view of the host, redrawn every second: the caller's runs going and
 * queued, what its tenant spends per minute, and with the admin key the answering node's view
 * (the store's queue, its warm pool and spend, from GET /metrics) and the nodes. Only the public
 * API is read.
 */
import { metricValue, type NodeInfo, parseMetrics, type Run } from "@paddock/protocol";
import { CONNECTION_HELP, parseCommand, parseNumber, UsageError } from "../args.ts";
import { ApiError, type Client } from "../client.ts";
import { type Command, connect } from "../context.ts";
import { formatTable } from "../format.ts";

/** Runs read per status and frame: a count past it shows as "200+". */
const LIST_CAP = 200;
/** Runs going listed under the summary. */
const SHOWN_RUNS = 10;
/** Spend per minute is measured over at most this much history. */
const RATE_WINDOW_MS = 60_000;

/** What one refresh read. */
export interface TopSample {
  at: number;
  /** The caller's tenant's runs, by status (each list capped at LIST_CAP). */
  runs: { running: Run[]; waiting: Run[]; starting: Run[]; queued: Run[] };
  /** The tenant's credits: spent so far and available. */
  credits: { spent: number; available: number };
  /** With the admin key: the answering node's metrics, and every node. */
  admin: { node: string; queued: number; warm: number; spent: number; nodes: NodeInfo[] } | null;
}

async function sampleHost(client: Client): Promise<TopSample> {
  const list = (status: string) => client.listRuns({ status }, LIST_CAP);
  const [running, waiting, starting, queued, credits, metrics] = await Promise.all([
    list("running"),
    list("waiting"),
    list("starting"),
    list("queued"),
    client.credits(),
    client.metrics().catch((err: unknown) => {
      // A tenant's key may not read the node's metrics: its view is its own runs and credits.
      if (err instanceof ApiError && err.status === 403) return null;
      throw err;
    }),
  ]);
  let admin: TopSample["admin"] = null;
  if (metrics !== null) {
    const samples = parseMetrics(metrics);
    admin = {
      node: samples.find((s) => s.name === "paddock_build_info")?.labels.node ?? "?",
      queued: metricValue(samples, "paddock_runs_queued") ?? 0,
      warm: metricValue(samples, "paddock_warm_sandboxes") ?? 0,
      spent: metricValue(samples, "paddock_credits_spent_total") ?? 0,
      nodes: await client.listNodes(),
    };
  }
  return {
    at: Date.now(),
    runs: { running, waiting, starting, queued },
    credits: { spent: credits.tenant.spent, available: credits.tenant.available },
    admin,
  };
}

/** Credits per minute between the oldest sample kept and the newest; null with one sample. */
function perMinute(samples: readonly TopSample[], spent: (s: TopSample) => number | undefined): number | null {
  const first = samples[0];
  const last = samples[samples.length - 1];
  if (!first || !last || first === last) return null;
  const from = spent(first);
  const to = spent(last);
  if (from === undefined || to === undefined) return null;
  return ((to - from) / (last.at - first.at)) * 60_000;
}

const count = (runs: readonly Run[]) => (runs.length >= LIST_CAP ? `${LIST_CAP}+` : String(runs.length));
const credits = (n: number | null) => (n === null ? "-" : String(Math.round(n * 1000) / 1000));
const age = (from: string | null, now: number) => {
  if (!from) return "-";
  const s = Math.max(0, Math.round((now - Date.parse(from)) / 1000));
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
};

/** One frame of the view from the samples so far (newest last). */
export function renderTop(url: string, samples: readonly TopSample[]): string {
  const now = samples[samples.length - 1];
  if (!now) return `paddock top  ${url}\n(waiting for the host)`;
  const { runs } = now;
  const lines = [
    `paddock top  ${url}  ${new Date(now.at).toISOString().replace("T", " ").slice(0, 19)}`,
    "",
    `runs    ${count(runs.running)} running  ${count(runs.waiting)} waiting  ${count(runs.starting)} starting  ${count(runs.queued)} queued  (this tenant)`,
    `spend   ${credits(perMinute(samples, (s) => s.credits.spent))} credits/min  (spent ${credits(now.credits.spent)}, available ${credits(now.credits.available)})`,
  ];
  const admin = now.admin;
  if (admin) {
    const nodeRate = perMinute(samples, (s) => s.admin?.spent);
    lines.push(
      `node    ${admin.node}: ${admin.queued} queued in the store, ${admin.warm} warm sandbox(es), ${credits(nodeRate)} credits/min on this node`,
      "",
      formatTable(
        ["NODE", "STATE", "RUNS"],
        admin.nodes.map((n) => [
          n.id,
          n.stopped_at ? "stopped" : !n.live ? "lost" : n.draining ? "draining" : "live",
          String(n.active_runs),
        ]),
      ),
    );
  }
  const going = [...runs.running, ...runs.waiting, ...runs.starting];
  if (going.length > 0) {
    lines.push(
      "",
      formatTable(
        ["RUN", "AGENT", "STATUS", "FOR"],
        going.slice(0, SHOWN_RUNS).map((r) => [r.id, r.agent_id, r.status, age(r.started_at, now.at)]),
      ),
    );
    if (going.length > SHOWN_RUNS) lines.push(`… and ${going.length - SHOWN_RUNS} more`);
  }
  return lines.join("\n");
}

/** Clears the screen and puts the cursor at its top left. */
const CLEAR = "\x1b[H\x1b[2J";

export const top: Command = {
  name: "top",
  summary: "a live view of runs going, the queue, the warm pool and spend",
  usage: `Usage: paddock top [--once] [--interval SECONDS]

A live view of the host, redrawn every second until Ctrl-C: your tenant's runs running,
waiting for approvals, starting and queued, and what it spends per minute. With the admin key, also the answering
node's view (runs queued in the whole store, its warm sandboxes, what it charged per minute;
from GET /metrics) and every node with its runs.

Options:
  --once            print one frame and exit (spend is measured over one interval first)
  --interval SECONDS
                    time between frames (default 1)

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, {
      command: "top",
      options: { once: { type: "boolean" }, interval: { type: "string" } },
    });
    const interval = (parseNumber(values.interval, "interval", true) ?? 1) * 1000;
    if (interval <= 0) throw new UsageError("--interval must be more than 0", "top");
    const client = await connect(values, ctx);
    const samples: TopSample[] = [];
    const take = async () => {
      const sample = await sampleHost(client);
      samples.push(sample);
      while (samples.length > 1 && sample.at - (samples[0]?.at ?? 0) > RATE_WINDOW_MS) samples.shift();
    };
    if (values.once) {
      await take();
      await new Promise((resolve) => setTimeout(resolve, interval));
      await take();
      ctx.out(renderTop(client.baseUrl, samples));
      return 0;
    }
    let stop: () => void = () => {};
    const stopped = new Promise<void>((resolve) => {
      stop = resolve;
    });
    let running = true;
    const onSignal = () => {
      running = false;
      stop();
    };
    process.once("SIGINT", onSignal);
    try {
      while (running) {
        let problem = "";
        await take().catch((err: unknown) => {
          problem = `\n\n${err instanceof Error ? err.message : String(err)} (retrying)`;
        });
        ctx.out(`${CLEAR}${renderTop(client.baseUrl, samples)}${problem}`);
        await Promise.race([stopped, new Promise((resolve) => setTimeout(resolve, interval))]);
      }
    } finally {
      process.off("SIGINT", onSignal);
    }
    return 0;
  },
};
