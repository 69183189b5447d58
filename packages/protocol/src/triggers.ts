/**
 * What starts runs besides a person: API calls with idempotency keys, cron schedules and signed
 * webhooks; and how a failed attempt is retried.
 */
import { z } from "zod";
import { EndUser } from "./oauth.ts";

/** Why an attempt may be retried. */
export const RetryReason = z.enum(["crashed", "oom", "timed_out", "lost", "exit_code", "sandbox_error"]);
export type RetryReason = z.infer<typeof RetryReason>;

/** An agent's retry policy: attempts, exponential backoff with jitter, and what retries. */
export const RetryPolicy = z
  .object({
    max_attempts: z.number().int().min(1).max(20).default(1),
    backoff_s: z.number().min(0).max(3600).default(5),
    max_backoff_s: z.number().min(0).max(86_400).default(300),
    /** A random share of each delay added or taken (0 to 1). */
    jitter: z.number().min(0).max(1).default(0.2),
    on: z.array(RetryReason).max(6).default(["crashed", "oom", "lost", "sandbox_error"]),
    /** Exit codes that retry (with `exit_code` in `on`, every non-zero exit does). */
    exit_codes: z.array(z.number().int().min(1).max(255)).max(64).default([]),
  })
  .strict()
  .meta({ id: "RetryPolicy" });
export type RetryPolicy = z.infer<typeof RetryPolicy>;

/** What happens when a schedule's slot comes while its previous run is still going. */
export const OverlapPolicy = z.enum(["skip", "queue_one", "allow"]);
export type OverlapPolicy = z.infer<typeof OverlapPolicy>;

export const ScheduleCreate = z
  .object({
    /** The agent's id or name. */
    agent: z.string().min(1).max(64),
    /** Five or six fields (seconds first), as croner reads them, for example "0 9 * * 1-5". */
    cron: z.string().min(1).max(128),
    /** An IANA time zone such as Europe/Paris (default UTC). */
    timezone: z.string().min(1).max(64).default("UTC"),
    overlap: OverlapPolicy.default("skip"),
    /** After downtime, a slot missed by at most this long still runs, once (default 0: none). */
    catch_up_s: z
      .number()
      .int()
      .min(0)
      .max(7 * 86_400)
      .default(0),
    input: z.unknown().optional(),
    /** The end user its runs act for (see RunCreate). */
    end_user: EndUser.optional(),
  })
  .strict()
  .meta({ id: "ScheduleCreate" });
export type ScheduleCreate = z.infer<typeof ScheduleCreate>;
export type ScheduleCreateInput = z.input<typeof ScheduleCreate>;

export const Schedule = z
  .object({
    id: z.string(),
    agent_id: z.string(),
    cron: z.string(),
    timezone: z.string(),
    overlap: OverlapPolicy,
    catch_up_s: z.number().int(),
    paused: z.boolean(),
    /** The next slot the schedule has not run yet (kept while it is paused). */
    next_at: z.string().nullable(),
    /**
     * When it starts its next run: its next slot, now when a slot is due (a host was down and
     * the slot is inside the catch-up window), null while paused or when no slot is left.
     */
    next_fire_at: z.string().nullable(),
    last_slot_at: z.string().nullable(),
    end_user: z.string().nullable(),
    created_at: z.string(),
  })
  .meta({ id: "Schedule" });
export type Schedule = z.infer<typeof Schedule>;

/** A webhook as created: its URL path and signing secret are shown once. */
export const Webhook = z
  .object({
    id: z.string(),
    agent_id: z.string(),
    /** Path of the URL to call: POST it with the signature headers. */
    path: z.string(),
    /** The HMAC-SHA256 key, shown only when the webhook is created. */
    secret: z.string().optional(),
    /** The end user its runs act for (see RunCreate). */
    end_user: z.string().nullable(),
    created_at: z.string(),
  })
  .meta({ id: "Webhook" });

/** The body of `POST /v1/agents/{id}/webhooks` (may be empty). */
export const WebhookCreate = z.object({ end_user: EndUser.optional() }).strict().meta({ id: "WebhookCreate" });
export type WebhookCreate = z.infer<typeof WebhookCreate>;
export type Webhook = z.infer<typeof Webhook>;

/** Header names of a signed webhook delivery. */
export const WEBHOOK_HEADERS = {
  timestamp: "x-paddock-timestamp",
  signature: "x-paddock-signature",
  delivery: "x-paddock-delivery",
} as const;
/** How far a delivery's timestamp may be from the host's clock. */
export const WEBHOOK_WINDOW_S = 300;
export const MAX_WEBHOOK_BODY_BYTES = 256 * 1024;

/** A child run as the bridge reports it to the run that started it. */
export const ChildRun = z
  .object({
    run_id: z.string(),
    agent: z.string(),
    status: z.string(),
    reason: z.string().nullable(),
    exit_code: z.number().int().nullable(),
    /** The data of the child's last `result` event, once it has finished and emitted one. */
    result: z.unknown(),
    artifacts: z.array(z.object({ path: z.string(), size: z.number().int() })),
  })
  .meta({ id: "ChildRun" });
export type ChildRun = z.infer<typeof ChildRun>;
