/**
 * `paddock bench cluster`: three `paddock serve` nodes on one PostgreSQL and one blob folder (the
 * cluster the tests start), real sandboxes.
 *
 * Figures:
 * - failover_ms {p50, max}: from SIGKILL of the node running a run (its agent retries lost
 *   attempts at once) to the retry's `attempt.started` on another node; target lease + 2 s. The
 *   node is started again after each trial.
 * - cross_node_event_ms {p50, p99}: from a log event's time (when node A wrote it) to its arrival
 *   on an SSE stream of node B; target p50 ≤ 20 ms.
 * - duplicate_executions: failover runs whose retry started before every process of the killed
 *   attempt was gone, or that started an attempt twice; lost_events: runs of the bench whose events
 *   are not numbered 1..n; overspend_credits: what one agent's runs on all three nodes (102 calls
 *   at once) spent past its budget. All must be 0.
 * - claims (claims_per_s with 1 and 3 nodes beside graphile-worker): see cluster-claims.ts.
 */
import { existsSync } from "node:fs";
import { type Cluster, type ClusterNode, nodeProcesses, startCluster } from "../packages/host/src/testing/cluster.ts";
import { FLOOD_AGENT, startLlmStandIn } from "../packages/host/src/testing/llm-stand-in.ts";
import { type ClaimsResult, claimsBench } from "./cluster-claims.ts";
import { type Dist, dist } from "./stats.ts";

export interface ClusterBenchOptions {
  imagesDir: string;
  /** SIGKILL trials for failover_ms. */
  failovers: number;
  /** Log lines followed across nodes for cross_node_event_ms. */
  events: number;
  /** Runs queued per pass of the claims part (0 skips it). */
  claimRuns: number;
  leaseMs?: number;
  progress?: (line: string) => void;
}

export interface ClusterBenchResult {
  scenario: "cluster";
  nodes: number;
  lease_ms: number;
  failover_ms: Dist & { target_max: number };
  cross_node_event_ms: Dist & { target_p50: number };
  duplicate_executions: number;
  lost_events: number;
  overspend_credits: number;
  claims: ClaimsResult | null;
  notes: string;
}

interface Event {
  seq: number;
  type: string;
  attempt: number;
  time: string;
  data: Record<string, unknown>;
}

const TERMINAL = ["succeeded", "failed", "timed_out", "canceled"];

export async function clusterBench(opts: ClusterBenchOptions): Promise<ClusterBenchResult> {
  const leaseMs = opts.leaseMs ?? 5000;
  const say = opts.progress ?? (() => {});
  const c = await startCluster({ nodes: 3, leaseMs, maxRuns: 4, cidrBase: 244, imagesDir: opts.imagesDir });
  let measured: Omit<ClusterBenchResult, "claims" | "scenario" | "notes">;
  try {
    measured = await measure(c, opts, leaseMs, say);
  } finally {
    await c.close();
  }
  const claims = opts.claimRuns > 0 ? await claimsBench({ runs: opts.claimRuns, progress: say }) : null;
  return {
    scenario: "cluster",
    ...measured,
    claims,
    notes:
      "event times are the writing node's millisecond timestamps and all nodes share this machine's clock; " +
      "failover includes the lease lapsing (a node renews every third of it) and the retry's claim",
  };
}

async function measure(
  c: Cluster,
  opts: ClusterBenchOptions,
  leaseMs: number,
  say: (line: string) => void,
): Promise<Omit<ClusterBenchResult, "claims" | "scenario" | "notes">> {
  const api = async (n: ClusterNode, method: string, path: string, body?: unknown) => {
    const res = await c.api(n, method, path, body);
    if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body;
  };
  // Any node that is up answers; the one being killed may be any of them.
  const live = () => c.nodes.find((n) => n.child) as ClusterNode;
  const events = async (runId: string): Promise<Event[]> =>
    (await api(live(), "GET", `/v1/runs/${runId}/events?limit=1000`)).data;
  const finished = async (runId: string) => {
    for (;;) {
      const run = await api(live(), "GET", `/v1/runs/${runId}`);
      if (TERMINAL.includes(run.status)) return run;
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const untilEvent = async (runId: string, match: (e: Event) => boolean) => {
    for (;;) {
      const found = (await events(runId)).find(match);
      if (found) return found;
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  const allRuns: string[] = [];
  const agent = async (def: Record<string, unknown>) =>
    (await api(live(), "POST", "/v1/agents", { name: `bench-${Date.now()}-${allRuns.length}`, ...def })).id as string;
  const trigger = async (agentId: string, input: unknown = {}) => {
    const id = (await api(live(), "POST", `/v1/agents/${agentId}/runs`, { input })).id as string;
    allRuns.push(id);
    return id;
  };

  // Cross-node events: a run on node A prints a line every 20 ms; node B streams them.
  const ticker = await agent({ command: ["sh", "-c", `for i in $(seq ${opts.events}); do echo $i; sleep 0.02; done`] });
  const tickRun = await trigger(ticker);
  const started = await untilEvent(tickRun, (e) => e.type === "attempt.started");
  const owner = started.data.worker;
  const follower = c.nodes.find((n) => n.id !== owner) as ClusterNode;
  const latencies = await followLogs(follower, c.adminKey, tickRun);
  say(`cross-node events: ${latencies.length} followed on ${follower.id} from ${owner}`);

  // Failover: SIGKILL the node of a run whose first attempt hangs; its retry ends at once.
  const hangs = await agent({
    command: ["sh", "-c", 'if [ "$PADDOCK_ATTEMPT" = 1 ]; then echo up; sleep 600; fi; echo again'],
    retry: { max_attempts: 2, backoff_s: 0, jitter: 0, on: ["lost"] },
  });
  const failovers: number[] = [];
  let duplicates = 0;
  for (let i = 0; i < opts.failovers; i++) {
    const runId = await trigger(hangs);
    await untilEvent(runId, (e) => e.type === "log");
    const worker = (await untilEvent(runId, (e) => e.type === "attempt.started")).data.worker;
    const victim = c.nodes.find((n) => n.id === worker) as ClusterNode;
    const pids = await nodeProcesses(victim);
    const killedAt = Date.now();
    await c.kill(victim);
    let goneAt = Number.POSITIVE_INFINITY;
    const watch = (async () => {
      while (pids.some((pid) => existsSync(`/proc/${pid}`))) await new Promise((r) => setTimeout(r, 5));
      goneAt = Date.now();
    })();
    const retry = await untilEvent(runId, (e) => e.type === "attempt.started" && e.attempt === 2);
    await watch;
    const retryAt = Date.parse(retry.time);
    failovers.push(retryAt - killedAt);
    const list = await events(runId);
    if (retryAt < goneAt || list.filter((e) => e.type === "attempt.started").length !== 2) duplicates++;
    await finished(runId);
    await c.restart(victim);
    say(`failover ${i + 1}: ${retryAt - killedAt} ms (${victim.id} killed)`);
  }

  // Overspend: one agent's budget against 102 calls at once from runs on all three nodes.
  const stand = await startLlmStandIn();
  let overspend = 0;
  try {
    await api(live(), "PUT", "/v1/secrets/bench-openai-key", { value: "sk-bench" });
    await api(live(), "PUT", "/v1/providers/bench-openai", {
      kind: "openai_compatible",
      base_url: `${stand.url}/v1`,
      secret: "bench-openai-key",
      models: { "gpt-test": { input: 3, output: 15, max_output_tokens: 1000 } },
    });
    await api(live(), "POST", "/v1/credits/grants", { tenant: "default", credits: 1000 });
    const budget = 0.005;
    const flood = await agent({
      command: ["/opt/paddock/runner/node", "/app/flood.mjs"],
      files: { "flood.mjs": FLOOD_AGENT },
      budget: { total: budget },
    });
    const floods = await Promise.all(Array.from({ length: 6 }, () => trigger(flood, { count: 17, delay_ms: 1500 })));
    for (const r of floods) await finished(r);
    const credits = await api(c.nodes[2] as ClusterNode, "GET", "/v1/credits");
    const spent = credits.agents.find((a: { agent_id: string }) => a.agent_id === flood).spent as number;
    overspend = Math.max(0, spent - budget);
    say(`budget ${budget}: spent ${spent}`);
  } finally {
    await stand.close();
  }

  let lost = 0;
  for (const runId of allRuns) {
    const list = await events(runId);
    if (list.some((e, i) => e.seq !== i + 1)) lost++;
  }
  return {
    nodes: c.nodes.length,
    lease_ms: leaseMs,
    failover_ms: { ...dist(failovers), target_max: leaseMs + 2000 },
    cross_node_event_ms: { ...dist(latencies), target_p50: 20 },
    duplicate_executions: duplicates,
    lost_events: lost,
    overspend_credits: overspend,
  };
}

/** Follows the run's events on `node` over SSE to the end; returns each log line's ms from its write to its arrival. */
async function followLogs(node: ClusterNode, key: string, runId: string): Promise<number[]> {
  const openedAt = Date.now();
  const res = await fetch(`${node.url}/v1/runs/${runId}/events`, {
    headers: { authorization: `Bearer ${key}`, accept: "text/event-stream" },
  });
  if (!res.ok || !res.body) throw new Error(`SSE on ${node.id}: ${res.status}`);
  const decoder = new TextDecoder();
  const latencies: number[] = [];
  let buffer = "";
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    const arrived = Date.now();
    buffer += decoder.decode(chunk, { stream: true });
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      end = buffer.indexOf("\n\n");
      const data = frame.split("\n").find((l) => l.startsWith("data: "));
      if (!data) continue;
      const event = JSON.parse(data.slice(6)) as Event;
      // Events written before the stream opened are history, not live.
      const written = Date.parse(event.time);
      if (event.type === "log" && written >= openedAt) latencies.push(arrived - written);
      if (TERMINAL.some((s) => event.type === `run.${s}`)) return latencies;
    }
  }
  return latencies;
}
