/**
 * `paddock bench queue`: the run queue on the embedded SQLite store, through a real host whose runs
 * are real sandboxes running `true`.
 *
 * Figures:
 * - claims_per_s: N runs queued at once, claimed by the engine (claim, boot, start, finish and
 *   their events, 8 at a time): runs claimed per second from the first trigger to the last claim.
 * - claim_ms {p50, p99}: with the engine idle, from a run's `run.queued` event to its
 *   `run.starting` (the claim), one run at a time: the queue's own latency.
 * - schedule_delay_ms {p50, p99}: from a cron slot (a per-second schedule) to the run's first
 *   event, and to its claim (`schedule_claim_ms`).
 */
import { startBenchHost } from "./bench-host.ts";
import { type Dist, dist } from "./stats.ts";

export interface QueueBenchOptions {
  imagesDir: string;
  /** Runs queued at once for claims_per_s. */
  runs: number;
  /** Sequential runs for claim_ms, and slots for schedule_delay_ms. */
  samples: number;
  progress?: (line: string) => void;
}

export interface QueueBenchResult {
  scenario: "queue";
  claims_per_s: number;
  runs: number;
  claim_ms: Dist;
  schedule_delay_ms: Dist;
  schedule_claim_ms: Dist;
  peers: Record<string, number>;
  notes: string;
}

interface EventRow {
  type: string;
  time: string;
  data: { slot?: string };
}

export async function queueBench(opts: QueueBenchOptions): Promise<QueueBenchResult> {
  const b = await startBenchHost({ imagesDir: opts.imagesDir, warmSandboxes: 4, maxConcurrentRuns: 8 });
  try {
    const agent = await b.api("POST", "/v1/agents", { name: "queue-bench", command: ["true"] });
    const events = (runId: string) =>
      b.api<{ data: EventRow[] }>("GET", `/v1/runs/${runId}/events`).then((r) => r.data);
    const waitAll = async (ids: string[]) => {
      for (const id of ids) {
        for (;;) {
          const run = await b.api<{ status: string }>("GET", `/v1/runs/${id}`);
          if (["succeeded", "failed", "timed_out", "canceled"].includes(run.status)) break;
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    };
    const at = (list: EventRow[], type: string) => Date.parse(list.find((e) => e.type === type)?.time ?? "");

    // Throughput: N runs queued back to back.
    const t0 = Date.now();
    const ids: string[] = [];
    for (let i = 0; i < opts.runs; i++) ids.push((await b.api("POST", `/v1/agents/${agent.id}/runs`, {})).id);
    await waitAll(ids);
    let lastClaim = 0;
    for (const id of ids) lastClaim = Math.max(lastClaim, at(await events(id), "run.starting"));
    const claimsPerS = Math.round((opts.runs / Math.max(1, lastClaim - t0)) * 1000 * 10) / 10;
    opts.progress?.(`${opts.runs} runs claimed at ${claimsPerS}/s`);

    // Claim latency with the engine idle.
    const claims: number[] = [];
    for (let i = 0; i < opts.samples; i++) {
      const run = await b.api("POST", `/v1/agents/${agent.id}/runs`, {});
      await waitAll([run.id]);
      const list = await events(run.id);
      claims.push(at(list, "run.starting") - at(list, "run.queued"));
    }

    // Schedule delay: a per-second schedule, its runs side by side.
    const schedule = await b.api("POST", "/v1/schedules", { agent: agent.id, cron: "* * * * * *", overlap: "allow" });
    const deadline = Date.now() + (opts.samples + 3) * 1000;
    let fired: { id: string }[] = [];
    while (Date.now() < deadline) {
      fired = (
        await b.api<{ data: { id: string; trigger: string }[] }>("GET", `/v1/runs?agent_id=${agent.id}&limit=200`)
      ).data.filter((r) => r.trigger === "schedule");
      if (fired.length >= opts.samples + 1) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    await b.api("POST", `/v1/schedules/${schedule.id}/pause`);
    const delays: number[] = [];
    const claimsAfterSlot: number[] = [];
    // The oldest one may have been a late first slot of the new schedule: skip it.
    const measured = fired.slice(0, -1).slice(0, opts.samples);
    await waitAll(measured.map((r) => r.id));
    for (const run of measured) {
      const list = await events(run.id);
      const slot = Date.parse(list.find((e) => e.type === "schedule.fired")?.data.slot ?? "");
      delays.push(at(list, "run.queued") - slot);
      claimsAfterSlot.push(at(list, "run.starting") - slot);
    }
    return {
      scenario: "queue",
      claims_per_s: claimsPerS,
      runs: opts.runs,
      claim_ms: dist(claims),
      schedule_delay_ms: dist(delays),
      schedule_claim_ms: dist(claimsAfterSlot),
      peers: { graphile_worker_add_to_start_ms_avg: 4, temporal_cloud_start_workflow_ms_p50: 20 },
      notes:
        "claims_per_s counts real runs (sandbox boot and teardown included, 8 at a time); event times are the " +
        "host's millisecond timestamps, so claim_ms and schedule delays have 1 ms resolution",
    };
  } finally {
    await b.close();
  }
}
