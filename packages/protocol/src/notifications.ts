/**
 * Notifications: a tenant's HTTPS endpoints subscribed to event types, each delivery signed like an
 * inbound webhook (see WEBHOOK_HEADERS) and retried with backoff; every attempt is kept.
 */
import { z } from "zod";
import { WEBHOOK_HEADERS } from "./triggers.ts";

/**
 * What a subscription may name. `run.finished` stands for every terminal event (`run.succeeded`,
 * `run.failed`, `run.timed_out`, `run.canceled`); a delivery's `type` is always the event's own.
 * `credits.low`: the tenant's balance fell below the subscription's `credits_below` after a
 * model call was billed. `approval.requested`: a call of a run waits for a person's approval; its
 * delivery also carries the approval's one-time link (`approval_url`) and the run's page (`run_url`).
 * `account.needs_reauth`: an end user's OAuth account was refused by its provider on refresh (sent
 * once, when it turns needs_reauth). `account.missing`: a run's call was refused `account_missing`
 * (its end user has no account at the app; sent once per run and app), so the product can ask its
 * user to connect. Neither ever carries a token.
 */
export const NotificationEventType = z.enum([
  "run.succeeded",
  "run.failed",
  "run.timed_out",
  "run.canceled",
  "run.finished",
  "approval.requested",
  "credits.low",
  "account.needs_reauth",
  "account.missing",
]);
export type NotificationEventType = z.infer<typeof NotificationEventType>;

/**
 * Header names of a notification delivery: those of an inbound webhook delivery (timestamp,
 * delivery id, signature) and the event type. The signature header holds one
 * `sha256=<hex HMAC-SHA256 of "<timestamp>.<delivery>.<body>">` per live secret, comma-separated,
 * the current secret's first (two during a rotation's overlap).
 */
export const NOTIFICATION_HEADERS = { ...WEBHOOK_HEADERS, event: "x-paddock-event" } as const;

/** The run events that end a run, which `run.finished` subscribes to. */
export const RUN_FINISHED_TYPES: readonly NotificationEventType[] = [
  "run.succeeded",
  "run.failed",
  "run.timed_out",
  "run.canceled",
];

export const NotificationCreate = z
  .object({
    /** The endpoint: https:// (http:// only for an internal subscription), no user or password. */
    url: z.url().max(2048),
    events: z
      .array(NotificationEventType)
      .min(1)
      .max(16)
      .refine((e) => new Set(e).size === e.length, "each event type once"),
    description: z.string().max(200).optional(),
    /** With `credits.low`: the balance (in credits) under which it is sent. */
    credits_below: z.number().min(0).max(1_000_000_000).optional(),
    /**
     * Admin key only: the endpoint may be on a private or loopback address (an internal
     * service). Link-local and cloud metadata addresses are refused either way.
     */
    internal: z.boolean().optional(),
    /** Admin key only: the tenant (id or name) the subscription is made for; default the key's own. */
    tenant: z.string().min(1).max(64).optional(),
  })
  .strict()
  .superRefine((body, ctx) => {
    if (body.events.includes("credits.low") && body.credits_below === undefined) {
      ctx.addIssue({ code: "custom", path: ["credits_below"], message: "credits.low needs credits_below" });
    }
  })
  .meta({ id: "NotificationCreate" });
export type NotificationCreate = z.infer<typeof NotificationCreate>;
export type NotificationCreateInput = z.input<typeof NotificationCreate>;

/** The most a rotation's old secret keeps signing beside the new one: a week. */
export const MAX_ROTATION_OVERLAP_S = 7 * 86_400;

export const NotificationRotate = z
  .object({
    /** How long deliveries carry the old secret's signature too (default one day; 0 drops it now). */
    overlap_s: z.number().int().min(0).max(MAX_ROTATION_OVERLAP_S).default(86_400),
  })
  .strict()
  .meta({ id: "NotificationRotate" });
export type NotificationRotate = z.infer<typeof NotificationRotate>;

export const NotificationSubscription = z
  .object({
    id: z.string(),
    url: z.string(),
    events: z.array(NotificationEventType),
    description: z.string().nullable(),
    credits_below: z.number().nullable(),
    internal: z.boolean(),
    /** `disabled`: the endpoint answered 410 Gone; nothing more is sent to it. */
    status: z.enum(["active", "disabled"]),
    disabled_reason: z.string().nullable(),
    /** The HMAC-SHA256 key, shown only when the subscription is created or its secret rotated. */
    secret: z.string().optional(),
    /** Until when deliveries also carry the previous secret's signature (after a rotation). */
    previous_secret_until: z.string().nullable(),
    created_at: z.string(),
    updated_at: z.string(),
  })
  .meta({ id: "NotificationSubscription" });
export type NotificationSubscription = z.infer<typeof NotificationSubscription>;

/** One try at sending a delivery. */
export const NotificationAttempt = z
  .object({
    n: z.number().int(),
    at: z.string(),
    /** The endpoint's HTTP status, or null when it gave none (refused, unreachable, timed out). */
    status: z.number().int().nullable(),
    latency_ms: z.number().nullable(),
    /** Why the attempt did not deliver; null when it did. */
    error: z.string().nullable(),
    node: z.string(),
  })
  .meta({ id: "NotificationAttempt" });
export type NotificationAttempt = z.infer<typeof NotificationAttempt>;

export const NotificationDeliveryStatus = z.enum(["pending", "delivered", "failed", "canceled"]);
export type NotificationDeliveryStatus = z.infer<typeof NotificationDeliveryStatus>;

/** What is POSTed to the endpoint (the exact bytes are signed). */
export const NotificationPayload = z
  .object({
    /** The delivery id, also in x-paddock-delivery: the same for every attempt and resend. */
    id: z.string(),
    type: NotificationEventType.exclude(["run.finished"]),
    /** When the event happened. */
    time: z.string(),
    tenant_id: z.string(),
    /**
     * For run events: run_id, agent_id, attempt, seq and the event's data (status, reason,
     * exit_code); for credits.low: balance and threshold, in credits; for account.needs_reauth:
     * account, end_user and app; for account.missing: run_id, agent_id, end_user, app and connection.
     */
    data: z.record(z.string(), z.unknown()),
  })
  .meta({ id: "NotificationPayload" });
export type NotificationPayload = z.infer<typeof NotificationPayload>;

export const NotificationDelivery = z
  .object({
    id: z.string(),
    subscription_id: z.string(),
    type: z.string(),
    run_id: z.string().nullable(),
    status: NotificationDeliveryStatus,
    /** When the next attempt is due, while pending. */
    next_at: z.string().nullable(),
    delivered_at: z.string().nullable(),
    created_at: z.string(),
    payload: NotificationPayload,
    attempts: z.array(NotificationAttempt),
  })
  .meta({ id: "NotificationDelivery" });
export type NotificationDelivery = z.infer<typeof NotificationDelivery>;
