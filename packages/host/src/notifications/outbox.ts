/**
 * The notifications outbox: deliveries are rows written in the transaction of what they announce
 * (a run's event through the event log, a balance falling through the ledger), so a crash between
 * the two cannot lose one nor send one for something that did not happen. The dispatcher drains
 * the rows; a hint after the commit wakes it at once, on every node sharing the store.
 */
import { fromMicro, NotificationEventType, type NotificationPayload, RUN_FINISHED_TYPES } from "@paddock/protocol";
import { z } from "zod";
import { parseSpec } from "../bridge/connections.ts";
import type { SpendWatcher } from "../gateway/ledger.ts";
import type { AccountNotices } from "../oauth/accounts.ts";
import type { AnnouncedRun, EventAnnouncer } from "../store/event-log.ts";
import { HINT, type Hints } from "../store/hints.ts";
import { newId } from "../store/ids.ts";
import { type Db, type Dialect, dbNow } from "../store/portable.ts";
import type { EventsTable, NotificationDeliveriesTable } from "../store/schema.ts";
import { parseStored } from "../store/stored.ts";

/** Where an approval.requested delivery carries the approval's one-time link. */
export const APPROVAL_URL_FIELD = "approval_url";

/** The run events a subscription may name. */
const ANNOUNCED: ReadonlySet<string> = new Set<NotificationEventType>([...RUN_FINISHED_TYPES, "approval.requested"]);
const TERMINAL: ReadonlySet<string> = new Set(RUN_FINISHED_TYPES);
/** A bridge call refused account_missing is announced as account.missing. */
const BRIDGE_CALL = "bridge.call";

const EventTypes = z.array(NotificationEventType);

/** A subscription's event types (`notification_subscriptions.events`). */
export function parseEventTypes(text: string): NotificationEventType[] {
  return parseStored(EventTypes, text, "notification event types");
}

/** Whether a subscription to `events` wants an event of `type`. */
function wants(events: readonly string[], type: string): boolean {
  return events.includes(type) || (TERMINAL.has(type) && events.includes("run.finished"));
}

export interface OutboxConfig {
  dialect: Dialect;
  /** How long a delivery is retried after it was written. */
  retryForMs: number;
}

/** The links an approval.requested delivery carries: its one-time decision link and its run's page. */
export interface AnnouncedLinks {
  approvalUrl(approvalId: string): string;
  runUrl(runId: string): string;
}

export class NotificationOutbox implements EventAnnouncer, SpendWatcher, AccountNotices {
  readonly #hints: Hints;
  readonly #config: OutboxConfig;
  readonly #links: AnnouncedLinks | undefined;

  constructor(deps: { hints: Hints; links?: AnnouncedLinks }, config: OutboxConfig) {
    this.#hints = deps.hints;
    this.#config = config;
    this.#links = deps.links;
  }

  announces(type: string): boolean {
    return ANNOUNCED.has(type) || type === BRIDGE_CALL;
  }

  /** Writes a delivery of each announced event to each of the tenant's active subscriptions that wants it. */
  async announce(trx: Db, run: AnnouncedRun, rows: EventsTable[]): Promise<boolean> {
    const announced = rows.flatMap((row) => {
      if (ANNOUNCED.has(row.type)) return [{ row, type: row.type, event: JSON.parse(row.data) }];
      if (row.type !== BRIDGE_CALL) return [];
      const call = JSON.parse(row.data) as { code?: string; connection: string };
      return call.code === "account_missing" ? [{ row, type: "account.missing", event: call }] : [];
    });
    if (announced.length === 0) return false;
    const subscriptions = await this.#subscriptions(trx, run.tenant_id);
    if (subscriptions.length === 0) return false;
    const deliveries: NotificationDeliveriesTable[] = [];
    for (const { row, type, event } of announced) {
      const data =
        type === "account.missing"
          ? await this.#accountMissing(trx, run, String(event.connection))
          : {
              run_id: run.id,
              agent_id: run.agent_id,
              attempt: row.attempt,
              seq: row.seq,
              ...event,
              // Only the endpoint gets the link that decides without an API key (see the deliveries' view).
              ...(type === "approval.requested" && this.#links
                ? {
                    [APPROVAL_URL_FIELD]: this.#links.approvalUrl(String(event.approval_id)),
                    run_url: this.#links.runUrl(run.id),
                  }
                : {}),
            };
      if (data === null) continue;
      for (const s of subscriptions) {
        if (wants(s.events, type)) deliveries.push(this.#delivery(s.id, run.tenant_id, type, run.id, row.ts, data));
      }
    }
    return this.#insert(trx, deliveries);
  }

  /**
   * What announces a call of `run` refused account_missing: its end user and the connection's app.
   * Null when there is nothing to ask anyone (the run has no end user, the connection is not an
   * OAuth one any more) or this run's missing account at that app was announced already.
   */
  async #accountMissing(trx: Db, run: AnnouncedRun, connection: string): Promise<Record<string, unknown> | null> {
    const owner = await trx.selectFrom("runs").select("end_user").where("id", "=", run.id).executeTakeFirst();
    const stored = await trx
      .selectFrom("connections")
      .selectAll()
      .where("tenant_id", "=", run.tenant_id)
      .where("name", "=", connection)
      .executeTakeFirst();
    const auth = stored ? parseSpec(stored).auth : null;
    if (!owner?.end_user || auth?.type !== "oauth") return null;
    const data = { run_id: run.id, agent_id: run.agent_id, end_user: owner.end_user, app: auth.app, connection };
    const earlier = await trx
      .selectFrom("notification_deliveries")
      .select("body")
      .where("run_id", "=", run.id)
      .where("type", "=", "account.missing")
      .execute();
    const same = earlier.some((d) => (JSON.parse(d.body) as NotificationPayload).data.app === auth.app);
    return same ? null : data;
  }

  /**
   * An account turned needs_reauth (in the transaction that marks it): a delivery to each of the
   * tenant's subscriptions to account.needs_reauth.
   */
  async needsReauth(trx: Db, tenantId: string, account: { account: string; end_user: string; app: string }) {
    const subscriptions = (await this.#subscriptions(trx, tenantId)).filter((s) =>
      s.events.includes("account.needs_reauth"),
    );
    const now = Date.now();
    return this.#insert(
      trx,
      subscriptions.map((s) => this.#delivery(s.id, tenantId, "account.needs_reauth", null, now, account)),
    );
  }

  /**
   * A model call billed: the balance fell from `beforeMicro` to `afterMicro`. Writes a credits.low
   * delivery to each subscription whose threshold it crossed (at or above before, below after), so
   * each crossing is announced once, however many calls follow below it.
   */
  async spent(trx: Db, tenantId: string, beforeMicro: number, afterMicro: number): Promise<boolean> {
    const subscriptions = (await this.#subscriptions(trx, tenantId)).filter(
      (s) =>
        s.events.includes("credits.low") &&
        s.credits_below !== null &&
        beforeMicro >= s.credits_below &&
        afterMicro < s.credits_below,
    );
    const now = Date.now();
    const deliveries = subscriptions.map((s) =>
      this.#delivery(s.id, tenantId, "credits.low", null, now, {
        balance: fromMicro(afterMicro),
        threshold: fromMicro(s.credits_below ?? 0),
      }),
    );
    return this.#insert(trx, deliveries);
  }

  committed(): void {
    this.#hints.notify(HINT.notifications, "");
  }

  async #subscriptions(trx: Db, tenantId: string) {
    const rows = await trx
      .selectFrom("notification_subscriptions")
      .select(["id", "events", "credits_below"])
      .where("tenant_id", "=", tenantId)
      .where("status", "=", "active")
      .execute();
    return rows.map((r) => ({
      id: r.id,
      events: parseEventTypes(r.events),
      credits_below: r.credits_below === null ? null : Number(r.credits_below),
    }));
  }

  #delivery(
    subscriptionId: string,
    tenantId: string,
    type: NotificationPayload["type"] | string,
    runId: string | null,
    at: number,
    data: Record<string, unknown>,
  ): NotificationDeliveriesTable {
    const now = Date.now();
    const id = newId("ntd", now);
    const payload = { id, type, time: new Date(at).toISOString(), tenant_id: tenantId, data };
    return {
      id,
      subscription_id: subscriptionId,
      tenant_id: tenantId,
      type,
      run_id: runId,
      body: JSON.stringify(payload),
      status: "pending",
      attempts: 0,
      next_at: now,
      retry_until: now + this.#config.retryForMs,
      claimed_by: null,
      created_at: now,
      delivered_at: null,
    };
  }

  async #insert(trx: Db, deliveries: NotificationDeliveriesTable[]): Promise<boolean> {
    if (deliveries.length === 0) return false;
    // Due at once by the database's clock, which the dispatcher compares with.
    const due = dbNow(this.#config.dialect);
    for (let i = 0; i < deliveries.length; i += 50) {
      await trx
        .insertInto("notification_deliveries")
        .values(deliveries.slice(i, i + 50).map((d) => ({ ...d, next_at: due })))
        .execute();
    }
    return true;
  }
}
