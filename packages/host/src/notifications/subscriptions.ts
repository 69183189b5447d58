/**
 * A tenant's notification subscriptions: an endpoint, the event types it wants, and its signing
 * secrets; the deliveries written for it, each with every attempt; a delivery sent again by hand.
 *
 * Threat model: the tenant chooses the URL. It must be https:// with no user or password in it,
 * and an address literal (or `localhost`) outside the public range is refused here; a name is
 * judged where it is called, after resolution (see dispatcher.ts). Only the admin may mark a
 * subscription internal (its endpoint may then be private or loopback, as for an internal
 * service, over http:// too). The signing secret is shown once, when made (at creation or
 * rotation), and sealed by the vault at rest; another tenant's ids answer as unknown ones.
 */
import { randomBytes } from "node:crypto";
import {
  AppError,
  fromMicro,
  type NotificationAttempt,
  type NotificationCreate,
  type NotificationDelivery,
  type NotificationDeliveryStatus,
  NotificationPayload,
  type NotificationSubscription,
  toMicro,
} from "@paddock/protocol";
import type { Kysely } from "kysely";
import { z } from "zod";
import { upstreamLiteralRefusal } from "../bridge/connections.ts";
import { notificationAad } from "../secrets/secrets.ts";
import type { Vault } from "../secrets/vault.ts";
import { HINT, type Hints } from "../store/hints.ts";
import { newId } from "../store/ids.ts";
import { type Dialect, dbNow } from "../store/portable.ts";
import type {
  Database,
  NotificationAttemptsTable,
  NotificationDeliveriesTable,
  NotificationSubscriptionsTable,
} from "../store/schema.ts";
import { isoTime, parseStored } from "../store/stored.ts";
import { APPROVAL_URL_FIELD, parseEventTypes } from "./outbox.ts";

/** The signing secrets in their sealed box: the current one, and the one it replaced while it still signs. */
const SigningSecrets = z.object({ current: z.string(), previous: z.string().nullable() }).strict();
type SigningSecrets = z.infer<typeof SigningSecrets>;

/** The secrets of a subscription that sign a delivery sent at `now`: the current one first. */
export function signingSecrets(
  vault: Vault,
  row: Pick<NotificationSubscriptionsTable, "id" | "sealed_secrets" | "previous_until">,
  now = Date.now(),
): string[] {
  const text = vault.open(row.sealed_secrets, notificationAad(row.id)).toString("utf8");
  const secrets = parseStored(SigningSecrets, text, "notification secrets");
  const overlap = secrets.previous !== null && row.previous_until !== null && Number(row.previous_until) > now;
  return overlap && secrets.previous !== null ? [secrets.current, secrets.previous] : [secrets.current];
}

const newSecret = () => `whsec_${randomBytes(32).toString("base64url")}`;

/** Why `url` may not be a subscription's endpoint, or null. */
export function endpointRefusal(url: string, internal: boolean): string | null {
  const parsed = new URL(url);
  if (parsed.protocol !== "https:" && !(internal && parsed.protocol === "http:")) {
    return internal ? "the URL must be https:// or http://" : "the URL must be https://";
  }
  if (parsed.username || parsed.password) return "the URL may not hold a user or password";
  const refusal = upstreamLiteralRefusal(url, internal);
  if (refusal === null) return null;
  return internal
    ? `its address is ${refusal}, which is never called`
    : `its address is ${refusal}; only the admin may mark a subscription internal`;
}

function toSubscription(row: NotificationSubscriptionsTable, secret?: string): NotificationSubscription {
  return {
    id: row.id,
    url: row.url,
    events: parseEventTypes(row.events),
    description: row.description,
    credits_below: row.credits_below === null ? null : fromMicro(Number(row.credits_below)),
    internal: row.internal === 1,
    status: row.status === "disabled" ? "disabled" : "active",
    disabled_reason: row.disabled_reason,
    ...(secret ? { secret } : {}),
    previous_secret_until: isoTime(row.previous_until),
    created_at: new Date(Number(row.created_at)).toISOString(),
    updated_at: new Date(Number(row.updated_at)).toISOString(),
  };
}

function toAttempt(row: NotificationAttemptsTable): NotificationAttempt {
  return {
    n: row.n,
    at: new Date(Number(row.started_at)).toISOString(),
    status: row.status,
    latency_ms: row.latency_ms,
    error: row.error,
    node: row.node_id,
  };
}

function toDelivery(row: NotificationDeliveriesTable, attempts: NotificationAttemptsTable[]): NotificationDelivery {
  const pending = row.status === "pending";
  return {
    id: row.id,
    subscription_id: row.subscription_id,
    type: row.type,
    run_id: row.run_id,
    status: row.status as NotificationDeliveryStatus,
    next_at: pending ? isoTime(row.next_at) : null,
    delivered_at: isoTime(row.delivered_at),
    created_at: new Date(Number(row.created_at)).toISOString(),
    payload: withoutLink(parseStored(NotificationPayload, row.body, "notification payload")),
    attempts: attempts.map(toAttempt),
  };
}

/**
 * A payload as API keys see it: an approval's one-time link decides without an API key, so only
 * the endpoint it was sent to sees it, never a key that is not among the approvers.
 */
function withoutLink(payload: NotificationPayload): NotificationPayload {
  if (!(APPROVAL_URL_FIELD in payload.data)) return payload;
  return { ...payload, data: { ...payload.data, [APPROVAL_URL_FIELD]: "(sent to the endpoint only)" } };
}

export interface NotificationsDeps {
  db: Kysely<Database>;
  vault: Vault;
  hints: Hints;
}

export interface NotificationsConfig {
  dialect: Dialect;
  /** How long a delivery sent again by hand is retried. */
  retryForMs: number;
}

export class Notifications {
  readonly #deps: NotificationsDeps;
  readonly #config: NotificationsConfig;

  constructor(deps: NotificationsDeps, config: NotificationsConfig) {
    this.#deps = deps;
    this.#config = config;
  }

  /** A subscription of `tenantId`, with its secret (shown this once). `internal` is the admin's to give. */
  async create(
    tenantId: string,
    body: Omit<NotificationCreate, "tenant">,
    internal: boolean,
  ): Promise<NotificationSubscription> {
    const refusal = endpointRefusal(body.url, internal);
    if (refusal) throw new AppError("notification_url_refused", `The notification URL is refused: ${refusal}.`);
    const now = Date.now();
    const id = newId("ntf", now);
    const secret = newSecret();
    const row: NotificationSubscriptionsTable = {
      id,
      tenant_id: tenantId,
      url: body.url,
      events: JSON.stringify(body.events),
      description: body.description ?? null,
      credits_below: body.credits_below === undefined ? null : toMicro(body.credits_below),
      internal: internal ? 1 : 0,
      status: "active",
      disabled_reason: null,
      ...this.#seal(id, { current: secret, previous: null }),
      previous_until: null,
      created_at: now,
      updated_at: now,
    };
    await this.#deps.db.insertInto("notification_subscriptions").values(row).execute();
    return toSubscription(row, secret);
  }

  async list(tenantId: string): Promise<NotificationSubscription[]> {
    const rows = await this.#deps.db
      .selectFrom("notification_subscriptions")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .orderBy("id")
      .execute();
    return rows.map((r) => toSubscription(r));
  }

  async get(tenantId: string, id: string): Promise<NotificationSubscription> {
    return toSubscription(await this.#row(tenantId, id));
  }

  /** Deletes a subscription with its deliveries and their attempts; nothing more is sent to it. */
  async delete(tenantId: string, id: string): Promise<NotificationSubscription> {
    const row = await this.#row(tenantId, id);
    await this.#deps.db.deleteFrom("notification_subscriptions").where("id", "=", id).execute();
    return toSubscription(row);
  }

  /**
   * A new signing secret, shown this once; for `overlapS` seconds deliveries carry the old one's
   * signature too, so the endpoint can switch without missing one.
   */
  async rotate(tenantId: string, id: string, overlapS: number): Promise<NotificationSubscription> {
    const row = await this.#row(tenantId, id);
    const [current] = signingSecrets(this.#deps.vault, row);
    const secret = newSecret();
    const now = Date.now();
    const previous = overlapS > 0 ? (current ?? null) : null;
    const patch = {
      ...this.#seal(id, { current: secret, previous }),
      previous_until: previous === null ? null : now + overlapS * 1000,
      updated_at: now,
    };
    await this.#deps.db.updateTable("notification_subscriptions").set(patch).where("id", "=", id).execute();
    return toSubscription({ ...row, ...patch }, secret);
  }

  /** A subscription's deliveries, newest first, each with its attempts. */
  async deliveries(
    tenantId: string,
    id: string,
    page: { limit: number; cursor?: string | undefined },
  ): Promise<NotificationDelivery[]> {
    await this.#row(tenantId, id);
    let q = this.#deps.db.selectFrom("notification_deliveries").selectAll().where("subscription_id", "=", id);
    if (page.cursor) q = q.where("id", "<", page.cursor);
    return this.#withAttempts(await q.orderBy("id", "desc").limit(page.limit).execute());
  }

  /**
   * Sends a delivery again, now, with the same id and payload, and retries it as a new one would
   * be. A delivery being sent at this moment is left to that attempt. A disabled subscription's
   * deliveries are not sent again (notification_disabled).
   */
  async resend(tenantId: string, id: string, deliveryId: string): Promise<NotificationDelivery> {
    const subscription = await this.#row(tenantId, id);
    if (subscription.status !== "active") {
      throw new AppError("notification_disabled", `The subscription is disabled: ${subscription.disabled_reason}.`);
    }
    const one = this.#deps.db
      .selectFrom("notification_deliveries")
      .selectAll()
      .where("id", "=", deliveryId)
      .where("subscription_id", "=", id);
    if (!(await one.executeTakeFirst())) throw new AppError("not_found", `No delivery '${deliveryId.slice(0, 64)}'.`);
    await this.#deps.db
      .updateTable("notification_deliveries")
      .set({
        status: "pending",
        next_at: dbNow(this.#config.dialect),
        retry_until: Date.now() + this.#config.retryForMs,
      })
      .where("id", "=", deliveryId)
      .where("claimed_by", "is", null)
      .execute();
    this.#deps.hints.notify(HINT.notifications, "");
    const [delivery] = await this.#withAttempts(await one.execute());
    if (!delivery) throw new AppError("not_found", `No delivery '${deliveryId.slice(0, 64)}'.`);
    return delivery;
  }

  /** Deliveries with their attempts, in the order given. */
  async #withAttempts(rows: NotificationDeliveriesTable[]): Promise<NotificationDelivery[]> {
    if (rows.length === 0) return [];
    const attempts = await this.#deps.db
      .selectFrom("notification_attempts")
      .selectAll()
      .where(
        "delivery_id",
        "in",
        rows.map((r) => r.id),
      )
      .orderBy("n")
      .execute();
    return rows.map((r) =>
      toDelivery(
        r,
        attempts.filter((a) => a.delivery_id === r.id),
      ),
    );
  }

  #seal(id: string, secrets: SigningSecrets): Pick<NotificationSubscriptionsTable, "sealed_secrets" | "master_key_id"> {
    const { sealed, masterKeyId } = this.#deps.vault.seal(Buffer.from(JSON.stringify(secrets)), notificationAad(id));
    return { sealed_secrets: sealed, master_key_id: masterKeyId };
  }

  async #row(tenantId: string, id: string): Promise<NotificationSubscriptionsTable> {
    const row = await this.#deps.db
      .selectFrom("notification_subscriptions")
      .selectAll()
      .where("id", "=", id)
      .where("tenant_id", "=", tenantId)
      .executeTakeFirst();
    if (!row) throw new AppError("not_found", `No notification subscription '${id.slice(0, 64)}'.`);
    return row;
  }
}
