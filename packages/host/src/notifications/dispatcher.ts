/**
 * The notifications dispatcher: sends the outbox's due deliveries to their endpoints, signed as
 * inbound webhooks are (NOTIFICATION_HEADERS), records every attempt, and retries with
 * exponential backoff and jitter until the delivery's retry window (a day) closes.
 *
 * Threat model: a tenant chooses the URL, and would like the host to call its own network or the
 * cloud metadata service for it (SSRF). At every attempt the name is resolved, every address it
 * resolves to checked (private, loopback and CGNAT only for a subscription the admin marked
 * internal; link-local and metadata never) and the connection pinned to the checked address, so
 * DNS cannot re-point it in between (rebinding). A redirect is never followed: it is a failed
 * attempt. Each attempt has a time limit and reads at most a little of the answer, of which only
 * the status is kept. The payload holds ids and statuses, never a run's input, output or a secret.
 *
 * Nodes sharing the store share the work: a claim takes due rows (FOR UPDATE SKIP LOCKED on
 * PostgreSQL) and holds them for an attempt's time limit. A node that dies mid-attempt leaves a
 * claim that lapses, or that its restart releases at once; the delivery is then sent again with
 * the same id, which an endpoint may deduplicate on. An endpoint answering 410 Gone disables its
 * subscription and cancels what was still pending for it.
 */
import http from "node:http";
import https from "node:https";
import { isIP } from "node:net";
import { NOTIFICATION_HEADERS } from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import { AddressPinner, PinRefusal, pinnedLookup } from "../bridge/pin.ts";
import { backoffMs } from "../engine/retry.ts";
import type { Vault } from "../secrets/vault.ts";
import { HINT, type Hints } from "../store/hints.ts";
import { type Dialect, dbNow } from "../store/portable.ts";
import type { Database, NotificationAttemptsTable } from "../store/schema.ts";
import { StoreFailures } from "../store/unavailable.ts";
import { signDelivery } from "../triggers/webhooks.ts";
import { signingSecrets } from "./subscriptions.ts";

/** The most of an answer read (and thrown away) before the connection is closed. */
const MAX_ANSWER_BYTES = 64 * 1024;
/** A claim outlives an attempt's time limit by this much, so a slow record does not let another node in. */
const CLAIM_MARGIN_MS = 5000;
const JITTER = 0.2;

export interface DispatcherConfig {
  /** This node: the holder of its claims. */
  nodeId: string;
  dialect: Dialect;
  /** The first retry's delay; each next one doubles, with jitter. */
  backoffMs: number;
  maxBackoffMs: number;
  /** An attempt's time limit: connect, send, and the answer. */
  timeoutMs: number;
  /** How often due deliveries (retries) are looked for besides the hints. */
  pollMs: number;
  /** Deliveries this node sends at once. */
  concurrency: number;
}

export interface DispatcherDeps {
  db: Kysely<Database>;
  hints: Hints;
  vault: Vault;
  log: (line: string) => void;
  /** Name resolution for endpoints; default the system resolver. */
  resolve?: ((host: string) => Promise<string[]>) | undefined;
}

/** A claimed delivery with what sending it needs. */
interface Claimed {
  id: string;
  subscription_id: string;
  type: string;
  body: string;
  /** This attempt's number. */
  n: number;
  retry_until: number;
  url: string;
  internal: number;
  subscription_status: string;
  sealed_secrets: string;
  previous_until: number | null;
}

/** How an attempt went. */
interface Outcome {
  /** The endpoint's status; null when it gave none. */
  status: number | null;
  error: string | null;
  latencyMs: number | null;
  /** Not tried: the subscription was disabled meanwhile. */
  skipped?: boolean;
  /** Cut short by this host stopping: due again at once. */
  interrupted?: boolean;
}

export class NotificationDispatcher {
  readonly #deps: DispatcherDeps;
  readonly #config: DispatcherConfig;
  readonly #pinner: AddressPinner;
  readonly #store: StoreFailures;
  readonly #inflight = new Map<string, { done: Promise<void>; abort: AbortController }>();
  #timer: NodeJS.Timeout | null = null;
  #unlisten: (() => void) | null = null;
  /** The pass in progress, if any. */
  #passing: Promise<void> | null = null;
  #again = false;
  /** The last claim took all it could: more may be due once a send ends. */
  #full = false;
  #closed = false;

  constructor(deps: DispatcherDeps, config: DispatcherConfig) {
    this.#deps = deps;
    this.#config = config;
    this.#pinner = new AddressPinner(deps.resolve);
    this.#store = new StoreFailures(deps.log, "notifications");
  }

  /**
   * Releases the claims an earlier process of this node left (it stopped mid-attempt; no other
   * live node has this node's id), then sends what is due: at each hint, and every pollMs.
   */
  async start(): Promise<void> {
    const released = await this.#releaseOwnClaims();
    if (released > 0)
      this.#deps.log(`notifications: ${released} delivery(ies) interrupted by the previous host are due again`);
    this.#unlisten = this.#deps.hints.listen(HINT.notifications, () => this.wake());
    this.#timer = setInterval(() => this.wake(), this.#config.pollMs);
    this.#timer.unref();
    this.wake();
  }

  /** Looks for due deliveries now (a pass at a time; a wake during one runs another after it). */
  wake(): void {
    if (this.#closed) return;
    if (this.#passing) {
      this.#again = true;
      return;
    }
    this.#passing = this.#pass()
      .then(
        () => void this.#store.succeeded(),
        (err: unknown) => this.#store.failed("claiming deliveries", err),
      )
      .finally(() => {
        this.#passing = null;
        if (this.#again) {
          this.#again = false;
          this.wake();
        }
      });
  }

  /** Stops claiming, cuts the attempts in flight short (each recorded, due again at once) and waits for them. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#unlisten?.();
    // A pass still claiming starts its sends first: they are cut short with the others.
    await this.#passing;
    for (const { abort } of this.#inflight.values()) abort.abort();
    await Promise.allSettled([...this.#inflight.values()].map((f) => f.done));
  }

  async #pass(): Promise<void> {
    for (;;) {
      const free = this.#config.concurrency - this.#inflight.size;
      if (free <= 0 || this.#closed) return;
      const claimed = await this.#claim(free);
      this.#full = claimed.length === free;
      for (const d of claimed) {
        const abort = new AbortController();
        const done = this.#send(d, abort.signal)
          .catch((err: unknown) => this.#store.failed(`recording delivery ${d.id}`, err))
          .finally(() => {
            this.#inflight.delete(d.id);
            if (this.#full) this.wake();
          });
        this.#inflight.set(d.id, { done, abort });
      }
      if (!this.#full) return;
    }
  }

  /** Takes up to `limit` due deliveries for this node, each for one attempt. */
  async #claim(limit: number): Promise<Claimed[]> {
    const { dialect, nodeId, timeoutMs } = this.#config;
    return this.#deps.db.transaction().execute(async (trx) => {
      let due = trx
        .selectFrom("notification_deliveries")
        .select(["id", "attempts", "claimed_by"])
        .where("status", "=", "pending")
        .where("next_at", "<=", dbNow(dialect))
        .orderBy("next_at")
        .limit(limit);
      if (dialect === "postgres") due = due.forUpdate().skipLocked();
      const rows = await due.execute();
      if (rows.length === 0) return [];
      const ids = rows.map((r) => r.id);
      await trx
        .updateTable("notification_deliveries")
        .set((eb) => ({
          attempts: eb("attempts", "+", 1),
          claimed_by: nodeId,
          next_at: eb(dbNow(dialect), "+", timeoutMs + CLAIM_MARGIN_MS),
        }))
        .where("id", "in", ids)
        .execute();
      // A claim that lapsed: its node stopped before recording the attempt, which is recorded here.
      const now = Date.now();
      for (const r of rows) {
        if (r.claimed_by === null) continue;
        await insertAttempt(trx, {
          delivery_id: r.id,
          n: r.attempts,
          node_id: r.claimed_by,
          started_at: now,
          status: null,
          latency_ms: null,
          error: "no outcome: the node sending it stopped answering",
        });
      }
      const claimed = await trx
        .selectFrom("notification_deliveries as d")
        .innerJoin("notification_subscriptions as s", "s.id", "d.subscription_id")
        .select([
          "d.id",
          "d.subscription_id",
          "d.type",
          "d.body",
          "d.attempts as n",
          "d.retry_until",
          "s.url",
          "s.internal",
          "s.status as subscription_status",
          "s.sealed_secrets",
          "s.previous_until",
        ])
        .where("d.id", "in", ids)
        .execute();
      return claimed.map((c) => ({ ...c, retry_until: Number(c.retry_until) }));
    });
  }

  async #send(d: Claimed, signal: AbortSignal): Promise<void> {
    const started = Date.now();
    const outcome: Outcome =
      d.subscription_status === "active"
        ? await this.#post(d, signal)
        : { status: null, error: "not sent: the subscription is disabled", latencyMs: null, skipped: true };
    const again = await this.#record(d, started, outcome);
    // A retry due before the next poll gets a wake of its own.
    if (again !== null && again < this.#config.pollMs && !this.#closed) setTimeout(() => this.wake(), again).unref();
  }

  /** One attempt: resolve and check the endpoint, sign, POST, and read the answer's status. */
  async #post(d: Claimed, signal: AbortSignal): Promise<Outcome> {
    const url = new URL(d.url);
    const t0 = performance.now();
    const latency = () => Math.round((performance.now() - t0) * 10) / 10;
    const failed = (error: string, status: number | null = null): Outcome => ({
      status,
      error,
      latencyMs: latency(),
      ...(signal.aborted ? { interrupted: true } : {}),
    });
    let address: string;
    try {
      address = await this.#pinner.pin(url.hostname, d.internal === 1);
    } catch (err) {
      if (!(err instanceof PinRefusal)) throw err;
      return failed(
        err.refusal === null
          ? `not sent: ${err.host} does not resolve`
          : `not sent: ${err.host} resolves to a ${err.refusal} address, which ${d.internal === 1 ? "is never called" : "only an internal subscription may call"}`,
      );
    }
    const timestamp = String(Math.floor(Date.now() / 1000));
    const signature = signingSecrets(this.#deps.vault, { ...d, id: d.subscription_id })
      .map((secret) => signDelivery(secret, timestamp, d.id, d.body))
      .join(",");
    const body = Buffer.from(d.body);
    const secure = url.protocol === "https:";
    const status = await new Promise<number | string>((resolve) => {
      const req = (secure ? https : http).request({
        protocol: url.protocol,
        hostname: url.hostname,
        port: url.port || (secure ? 443 : 80),
        method: "POST",
        path: `${url.pathname}${url.search}`,
        headers: {
          "content-type": "application/json",
          "content-length": String(body.length),
          "user-agent": "Paddock-Notifications/1",
          [NOTIFICATION_HEADERS.timestamp]: timestamp,
          [NOTIFICATION_HEADERS.delivery]: d.id,
          [NOTIFICATION_HEADERS.signature]: signature,
          [NOTIFICATION_HEADERS.event]: d.type,
        },
        agent: false,
        lookup: pinnedLookup(address),
        ...(secure && isIP(url.hostname.replace(/^\[|\]$/g, "")) === 0 ? { servername: url.hostname } : {}),
        signal,
      });
      const timer = setTimeout(() => {
        req.destroy();
        resolve(`no answer within ${this.#config.timeoutMs} ms`);
      }, this.#config.timeoutMs);
      const end = (value: number | string) => {
        clearTimeout(timer);
        resolve(value);
      };
      req.on("error", (err: NodeJS.ErrnoException) =>
        end(signal.aborted ? "the host stopped during the attempt" : `could not send (${err.code ?? err.message})`),
      );
      req.on("response", (res) => {
        // The status is all that is kept; a little of the answer is read so the endpoint can finish.
        let read = 0;
        res.on("data", (chunk: Buffer) => {
          read += chunk.length;
          if (read > MAX_ANSWER_BYTES) res.destroy();
        });
        res.on("close", () => end(res.statusCode ?? 0));
        res.on("error", () => {});
      });
      req.end(body);
    });
    if (typeof status === "string") return failed(status);
    if (status >= 200 && status < 300) return { status, error: null, latencyMs: latency() };
    if (status >= 300 && status < 400) return failed(`redirect (${status}) not followed`, status);
    if (status === 410) return failed("410 Gone: the subscription is disabled", status);
    return failed(`the endpoint answered ${status}`, status);
  }

  /**
   * Records the attempt and what follows from it, in one transaction: delivered; disabled (410);
   * due again after a backoff; or failed once the next try would fall past the retry window. Only
   * while this node's claim still holds: a delivery another node took over is left to it. Returns
   * in how many ms it is due again, or null when it is not.
   */
  async #record(d: Claimed, started: number, o: Outcome): Promise<number | null> {
    const { dialect, nodeId } = this.#config;
    const now = Date.now();
    const delivered = o.status !== null && o.status >= 200 && o.status < 300;
    const gone = o.status === 410;
    const delay = backoffMs(this.#config.backoffMs, this.#config.maxBackoffMs, d.n, JITTER);
    const next = o.interrupted ? 0 : delay;
    const giveUp = !delivered && !gone && !o.interrupted && (o.skipped || now + delay > d.retry_until);
    const status = delivered ? "delivered" : gone || giveUp ? (o.skipped ? "canceled" : "failed") : "pending";
    const recorded = await this.#deps.db.transaction().execute(async (trx) => {
      const exists = await trx
        .selectFrom("notification_deliveries")
        .select("id")
        .where("id", "=", d.id)
        .executeTakeFirst();
      // Deleted with its subscription meanwhile: nothing is left to record on.
      if (!exists) return false;
      await insertAttempt(trx, {
        delivery_id: d.id,
        n: d.n,
        node_id: nodeId,
        started_at: started,
        status: o.status,
        latency_ms: o.latencyMs,
        error: o.error,
      });
      await trx
        .updateTable("notification_deliveries")
        .set((eb) => ({
          status,
          claimed_by: null,
          next_at: eb(dbNow(dialect), "+", next),
          ...(delivered ? { delivered_at: now } : {}),
        }))
        .where("id", "=", d.id)
        .where("attempts", "=", d.n)
        .where("claimed_by", "=", nodeId)
        .where("status", "=", "pending")
        .execute();
      if (!gone) return true;
      await trx
        .updateTable("notification_subscriptions")
        .set({ status: "disabled", disabled_reason: "the endpoint answered 410 Gone", updated_at: now })
        .where("id", "=", d.subscription_id)
        .execute();
      await trx
        .updateTable("notification_deliveries")
        .set({ status: "canceled" })
        .where("subscription_id", "=", d.subscription_id)
        .where("status", "=", "pending")
        .execute();
      return true;
    });
    if (!recorded) return null;
    if (gone)
      this.#deps.log(`notifications: subscription ${d.subscription_id} disabled: its endpoint answered 410 Gone`);
    else if (status === "failed") {
      this.#deps.log(`notifications: delivery ${d.id} failed after ${d.n} attempt(s): ${o.error}`);
    }
    return status === "pending" ? next : null;
  }

  /** Makes this node's claims due again, recording each interrupted attempt; returns how many. */
  async #releaseOwnClaims(): Promise<number> {
    const { dialect, nodeId } = this.#config;
    return this.#deps.db.transaction().execute(async (trx) => {
      const mine = await trx
        .selectFrom("notification_deliveries")
        .select(["id", "attempts"])
        .where("status", "=", "pending")
        .where("claimed_by", "=", nodeId)
        .execute();
      const now = Date.now();
      for (const r of mine) {
        await insertAttempt(trx, {
          delivery_id: r.id,
          n: r.attempts,
          node_id: nodeId,
          started_at: now,
          status: null,
          latency_ms: null,
          error: "no outcome: the host stopped during the attempt",
        });
      }
      if (mine.length > 0) {
        await trx
          .updateTable("notification_deliveries")
          .set({ claimed_by: null, next_at: dbNow(dialect) })
          .where("status", "=", "pending")
          .where("claimed_by", "=", nodeId)
          .execute();
      }
      return mine.length;
    });
  }
}

/** Records an attempt, once: a lapsed claim's attempt may be recorded by its node and by the next. */
async function insertAttempt(trx: Transaction<Database>, row: NotificationAttemptsTable): Promise<void> {
  await trx
    .insertInto("notification_attempts")
    .values(row)
    .onConflict((oc) => oc.columns(["delivery_id", "n"]).doNothing())
    .execute();
}
