/**
 * A tenant's runs and spending per time bucket: how many runs were created in each bucket (by
 * their status now) and what its model calls were settled for in it, in all and by agent. Both
 * are read from indexes that hold every column they need (see store/migrations.ts, 0013).
 */
import { fromMicro, RunStatus, type Stats, type StatsBucket } from "@paddock/protocol";
import type { RunRepository } from "../engine/runs.ts";
import type { Ledger } from "../gateway/ledger.ts";

/** What a stats request asks for: [from, to) in ms, buckets of bucketMs. */
export interface StatsRequest {
  from: number;
  to: number;
  bucketMs: number;
  agentId?: string;
}

const noRuns = () => Object.fromEntries(RunStatus.options.map((s) => [s, 0])) as StatsBucket["runs"];

export class RunStats {
  readonly #runs: RunRepository;
  readonly #ledger: Ledger;

  constructor(deps: { runs: RunRepository; ledger: Ledger }) {
    this.#runs = deps.runs;
    this.#ledger = deps.ledger;
  }

  /** Every bucket of the range, empty ones included, and the totals over it. */
  async stats(tenantId: string, req: StatsRequest): Promise<Stats> {
    const [counts, spent] = await Promise.all([
      this.#runs.countsByBucket(tenantId, req),
      this.#ledger.spentByBucket(tenantId, req),
    ]);
    const buckets = Array.from({ length: Math.ceil((req.to - req.from) / req.bucketMs) }, (_, i) => ({
      start: new Date(req.from + i * req.bucketMs).toISOString(),
      end: new Date(Math.min(req.to, req.from + (i + 1) * req.bucketMs)).toISOString(),
      runs: noRuns(),
      micro: 0,
      byAgent: new Map<string, number>(),
    }));
    const totals = { runs: noRuns(), micro: 0 };
    for (const { bucket, status, n } of counts) {
      const b = buckets[bucket];
      if (!b || !RunStatus.safeParse(status).success) continue;
      b.runs[status as RunStatus] += n;
      totals.runs[status as RunStatus] += n;
    }
    for (const { bucket, agent_id, micro } of spent) {
      const b = buckets[bucket];
      if (!b) continue;
      b.micro += micro;
      totals.micro += micro;
      if (agent_id !== null) b.byAgent.set(agent_id, (b.byAgent.get(agent_id) ?? 0) + micro);
    }
    return {
      from: new Date(req.from).toISOString(),
      to: new Date(req.to).toISOString(),
      bucket_s: req.bucketMs / 1000,
      agent_id: req.agentId ?? null,
      buckets: buckets.map(({ start, end, runs, micro, byAgent }) => ({
        start,
        end,
        runs,
        spent: fromMicro(micro),
        spent_by_agent: Object.fromEntries([...byAgent].map(([agent, m]) => [agent, fromMicro(m)])),
      })),
      totals: { runs: totals.runs, spent: fromMicro(totals.micro) },
    };
  }
}
