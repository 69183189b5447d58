/**
 * `paddock bench notifications`: how soon a notification leaves after the event it announces,
 * through a real host whose runs are real sandboxes running `true`, to an endpoint on loopback
 * (a subscription the admin marked internal, to run.finished).
 *
 * Figures:
 * - delivery_ms {p50, p99}: from a run's terminal event (its time in the event log) to the
 *   delivery's arrival at the endpoint, one run at a time; the target is p50 under 1000 ms.
 * - burst_delivery_ms: the same with N runs triggered at once.
 * - duplicates: deliveries that arrived more than once (must be 0: the endpoint answers 200).
 */
import { startNotificationReceiver } from "../packages/host/src/testing/notification-receiver.ts";
import { startBenchHost } from "./bench-host.ts";
import { type Dist, dist } from "./stats.ts";

export interface NotificationsBenchOptions {
  imagesDir: string;
  /** Runs one at a time, then as many at once. */
  runs: number;
  progress?: (line: string) => void;
}

export interface NotificationsBenchResult {
  scenario: "notifications";
  runs: number;
  delivery_ms: Dist;
  burst_delivery_ms: Dist;
  target: { delivery_ms_p50: number };
  within_target: boolean;
  duplicates: number;
  notes: string;
}

const TARGET_P50_MS = 1000;

export async function notificationsBench(opts: NotificationsBenchOptions): Promise<NotificationsBenchResult> {
  const receiver = await startNotificationReceiver();
  const b = await startBenchHost({ imagesDir: opts.imagesDir, warmSandboxes: 4, maxConcurrentRuns: 8 });
  try {
    await b.api("POST", "/v1/notifications", { url: receiver.url, events: ["run.finished"], internal: true });
    const agent = await b.api("POST", "/v1/agents", { name: "notifications-bench", command: ["true"] });
    /** ms from each run's terminal event to its delivery's arrival, once all `ids` arrived. */
    const latencies = async (ids: string[]): Promise<number[]> => {
      const deadline = Date.now() + 120_000 + ids.length * 5000;
      const wanted = new Set(ids);
      for (;;) {
        const arrived = receiver.received.filter((r) => wanted.has(String(r.payload.data.run_id)));
        if (arrived.length >= ids.length) return arrived.map((r) => r.at - Date.parse(r.payload.time));
        if (Date.now() > deadline) throw new Error(`${arrived.length} of ${ids.length} notifications arrived`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    const trigger = async () => (await b.api("POST", `/v1/agents/${agent.id}/runs`, {})).id;

    const one: number[] = [];
    for (let i = 0; i < opts.runs; i++) one.push(...(await latencies([await trigger()])));
    opts.progress?.(`${opts.runs} runs one at a time: p50 ${dist(one).p50} ms`);
    const burst = await latencies(await Promise.all(Array.from({ length: opts.runs }, trigger)));
    opts.progress?.(`${opts.runs} runs at once: p50 ${dist(burst).p50} ms`);
    const ids = receiver.received.map((r) => r.payload.id);
    const delivery = dist(one);
    return {
      scenario: "notifications",
      runs: opts.runs,
      delivery_ms: delivery,
      burst_delivery_ms: dist(burst),
      target: { delivery_ms_p50: TARGET_P50_MS },
      within_target: delivery.p50 < TARGET_P50_MS,
      duplicates: ids.length - new Set(ids).size,
      notes:
        "event times are the host's millisecond timestamps, taken before the event's transaction commits; " +
        "the endpoint is on loopback, so the figure is the outbox and dispatcher's own delay",
    };
  } finally {
    await b.close();
    await receiver.close();
  }
}
