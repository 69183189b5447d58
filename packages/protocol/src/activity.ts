/**
 * Views over all of a tenant's runs: its model and bridge calls (each an `llm.call` or
 * `bridge.call` event of one of its runs), and its runs and spending counted per time bucket.
 */
import { z } from "zod";
import { PageQuery, QueryTime, RunStatus } from "./api.ts";
import { BridgeCallData, LlmCallData } from "./events.ts";

const Int = z.number().int();

/** Where a call's event is: its run, the run's agent, the event's seq and attempt, and when. */
const CallEnvelope = { run_id: z.string(), agent_id: z.string(), seq: Int, attempt: Int, time: z.string() };

/** An `llm.call` event with its run and agent: one model call. */
export const LlmCallEvent = LlmCallData.extend(CallEnvelope).meta({ id: "LlmCallEvent" });
export type LlmCallEvent = z.infer<typeof LlmCallEvent>;

/** A `bridge.call` event with its run and agent: one call to a connection, or its refusal. */
export const BridgeCallEvent = BridgeCallData.extend(CallEnvelope).meta({ id: "BridgeCallEvent" });
export type BridgeCallEvent = z.infer<typeof BridgeCallEvent>;

/** A call failed when it was refused (it has a `code`) or its answer is an HTTP error. */
export const CallOutcome = z.enum(["ok", "error"]);
export type CallOutcome = z.infer<typeof CallOutcome>;

/** Whether a call's event says it went through or failed. */
export function callOutcome(data: { status?: number | undefined; code?: string | undefined }): CallOutcome {
  const failed = data.code !== undefined || (data.status !== undefined && data.status >= 400);
  return failed ? "error" : "ok";
}

/**
 * The filters both call lists take: newest first, `created_after` (inclusive) and
 * `created_before` (exclusive) bound the call's time.
 */
const CallsQuery = PageQuery.extend({
  cursor: z.string().max(128).optional(),
  agent_id: z.string().max(64).optional(),
  run_id: z.string().max(64).optional(),
  created_after: QueryTime.optional(),
  created_before: QueryTime.optional(),
  outcome: CallOutcome.optional(),
});

/** `GET /v1/llm-calls`: the tenant's model calls; `model` narrows within what the others select. */
export const LlmCallsQuery = CallsQuery.extend({
  provider: z.string().max(64).optional(),
  model: z.string().max(128).optional(),
});
export type LlmCallsQuery = z.input<typeof LlmCallsQuery>;

/** `GET /v1/bridge-calls`: the tenant's calls through the bridge. */
export const BridgeCallsQuery = CallsQuery.extend({
  connection: z.string().max(64).optional(),
});
export type BridgeCallsQuery = z.input<typeof BridgeCallsQuery>;

/** The most buckets one stats request may ask for. */
export const MAX_STATS_BUCKETS = 1000;
/** The shortest and longest bucket, in seconds: a minute, 31 days. */
export const STATS_BUCKET_S = { min: 60, max: 31 * 86_400 } as const;

/** How far back stats reach when `from` is not given. */
export const DEFAULT_STATS_SPAN_MS = 86_400_000;

/** The range a stats query asks for, in ms since the epoch, defaults applied. */
export function statsRange(q: { from?: string | undefined; to?: string | undefined }, now = Date.now()) {
  const to = q.to === undefined ? now : Date.parse(q.to);
  const from = q.from === undefined ? to - DEFAULT_STATS_SPAN_MS : Date.parse(q.from);
  return { from, to };
}

/**
 * `GET /v1/stats`: buckets of `bucket_s` seconds from `from` (default: a day before `to`) to `to`
 * (default now); the last one may be shorter. `from` must be before `to`, with at most
 * MAX_STATS_BUCKETS buckets between them.
 */
export const StatsQuery = z
  .object({
    from: QueryTime.optional(),
    to: QueryTime.optional(),
    bucket_s: z.coerce.number().int().min(STATS_BUCKET_S.min).max(STATS_BUCKET_S.max).default(3600),
    agent_id: z.string().max(64).optional(),
  })
  .superRefine((q, ctx) => {
    const { from, to } = statsRange(q);
    if (from >= to) {
      ctx.addIssue({ code: "custom", path: ["from"], message: "from must be before to" });
    } else if (Math.ceil((to - from) / (q.bucket_s * 1000)) > MAX_STATS_BUCKETS) {
      ctx.addIssue({
        code: "custom",
        path: ["bucket_s"],
        message: `at most ${MAX_STATS_BUCKETS} buckets: a longer bucket or a shorter range`,
      });
    }
  });
export type StatsQuery = z.input<typeof StatsQuery>;

/** How many runs are in each status. */
export const RunCounts = z.record(RunStatus, Int);
export type RunCounts = z.infer<typeof RunCounts>;

export const StatsBucket = z.object({
  start: z.string(),
  end: z.string(),
  /** The runs created in the bucket, by their status now. */
  runs: RunCounts,
  /** Credits spent in the bucket: model calls settled then. */
  spent: z.number(),
  /** The same credits by agent id (agents that spent nothing are left out). */
  spent_by_agent: z.record(z.string(), z.number()),
});
export type StatsBucket = z.infer<typeof StatsBucket>;

export const Stats = z
  .object({
    from: z.string(),
    to: z.string(),
    bucket_s: Int,
    /** The agent the counts are narrowed to; null for all the tenant's. */
    agent_id: z.string().nullable(),
    buckets: z.array(StatsBucket),
    totals: z.object({ runs: RunCounts, spent: z.number() }),
  })
  .meta({ id: "Stats" });
export type Stats = z.infer<typeof Stats>;
