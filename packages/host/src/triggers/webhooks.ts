/**
 * Signed webhooks: a per-agent URL with an unguessable id whose deliveries start runs, the body
 * becoming the run's input.
 *
 * Threat model: anyone on the network may POST to the URL. A delivery starts a run only when it
 * carries `x-paddock-signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<delivery id>.<body>">` made with the
 * webhook's secret (shown once at creation, sealed at rest by the vault), a timestamp within five
 * minutes of the host's clock (a captured delivery cannot be replayed later), and a delivery id,
 * signed too, that was not seen before for this webhook (one replayed inside the window starts
 * nothing new: it answers with the run the first delivery started; a new id needs a new signature). The signature is compared in constant time;
 * an unknown id answers exactly like a bad signature (401), so ids cannot be probed.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import {
  type AgentSpec,
  AppError,
  WEBHOOK_HEADERS,
  WEBHOOK_WINDOW_S,
  type Webhook,
  type WebhookCreate,
} from "@paddock/protocol";
import type { Kysely } from "kysely";
import type { RunRepository } from "../engine/runs.ts";
import type { Metrics } from "../metrics/metrics.ts";
import { webhookAad } from "../secrets/secrets.ts";
import type { Vault } from "../secrets/vault.ts";
import type { Db } from "../store/portable.ts";
import type { Database, RunsTable, WebhooksTable } from "../store/schema.ts";

const ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";

/** 160 random bits: an id nobody guesses. */
function webhookId(): string {
  let out = "";
  for (const b of randomBytes(32)) out += ID_ALPHABET[b % 32];
  return `whk_${out}`;
}

export const webhookPath = (id: string) => `/v1/hooks/${id}`;

function toWebhook(row: WebhooksTable, secret?: string): Webhook {
  return {
    id: row.id,
    agent_id: row.agent_id,
    path: webhookPath(row.id),
    ...(secret ? { secret } : {}),
    end_user: row.end_user,
    created_at: new Date(Number(row.created_at)).toISOString(),
  };
}

/** The signature header value of a delivery (what a sender computes). */
export function signDelivery(secret: string, timestamp: string, delivery: string, body: Buffer | string): string {
  return `sha256=${createHmac("sha256", secret).update(`${timestamp}.${delivery}.`).update(body).digest("hex")}`;
}

export interface WebhookDeps {
  db: Kysely<Database>;
  vault: Vault;
  runs: RunRepository;
  /** The spec a run of the agent freezes now, or null when the agent is gone; agent_archived when it is archived. */
  specOf(tenantId: string, agentId: string): Promise<AgentSpec | null>;
  notify(): void;
  log(line: string): void;
  /** Where each delivery's outcome is reported. */
  metrics?: Pick<Metrics, "webhookDelivery">;
}

export class Webhooks {
  readonly #deps: WebhookDeps;

  constructor(deps: WebhookDeps) {
    this.#deps = deps;
  }

  async create(tenantId: string, agentId: string, body: WebhookCreate = {}): Promise<Webhook> {
    const id = webhookId();
    const secret = randomBytes(32).toString("base64url");
    const { sealed, masterKeyId } = this.#deps.vault.seal(Buffer.from(secret), webhookAad(id));
    const row: WebhooksTable = {
      id,
      tenant_id: tenantId,
      agent_id: agentId,
      sealed_secret: sealed,
      master_key_id: masterKeyId,
      end_user: body.end_user ?? null,
      created_at: Date.now(),
    };
    await this.#deps.db.insertInto("webhooks").values(row).execute();
    return toWebhook(row, secret);
  }

  async list(tenantId: string, agentId: string): Promise<Webhook[]> {
    const rows = await this.#deps.db
      .selectFrom("webhooks")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .where("agent_id", "=", agentId)
      .orderBy("created_at")
      .execute();
    return rows.map((r) => toWebhook(r));
  }

  async delete(tenantId: string, id: string): Promise<Webhook> {
    const row = await this.#deps.db
      .selectFrom("webhooks")
      .selectAll()
      .where("id", "=", id)
      .where("tenant_id", "=", tenantId)
      .executeTakeFirst();
    if (!row) throw new AppError("not_found", `No webhook '${id.slice(0, 64)}'.`);
    await this.#deps.db.deleteFrom("webhooks").where("id", "=", id).execute();
    return toWebhook(row);
  }

  /**
   * A delivery: checks it, then starts a run whose input is the body (JSON when it parses, else
   * the text). Returns the run and whether this delivery created it (false for a replayed id).
   */
  async receive(
    id: string,
    headers: Record<string, string | undefined>,
    body: Buffer,
    now = Date.now(),
  ): Promise<{ run: RunsTable; created: boolean }> {
    const metrics = this.#deps.metrics;
    return this.#receive(id, headers, body, now).then(
      (result) => {
        metrics?.webhookDelivery(result.created ? "accepted" : "duplicate");
        return result;
      },
      (err: unknown) => {
        metrics?.webhookDelivery(err instanceof AppError ? err.code : "internal");
        throw err;
      },
    );
  }

  async #receive(
    id: string,
    headers: Record<string, string | undefined>,
    body: Buffer,
    now: number,
  ): Promise<{ run: RunsTable; created: boolean }> {
    const refuse = (code: "webhook_signature_invalid" | "webhook_timestamp_expired", why: string) => {
      this.#deps.log(`webhook ${id.slice(0, 40)}: refused: ${why}`);
      return new AppError(code);
    };
    const row = await this.#deps.db.selectFrom("webhooks").selectAll().where("id", "=", id).executeTakeFirst();
    if (!row) throw refuse("webhook_signature_invalid", "unknown webhook");
    const timestamp = headers[WEBHOOK_HEADERS.timestamp] ?? "";
    const signature = headers[WEBHOOK_HEADERS.signature] ?? "";
    const delivery = headers[WEBHOOK_HEADERS.delivery] ?? "";
    if (!/^\d{1,12}$/.test(timestamp)) throw refuse("webhook_signature_invalid", "no timestamp");
    if (!/^sha256=[0-9a-f]{64}$/.test(signature)) throw refuse("webhook_signature_invalid", "no signature");
    if (!/^[\x21-\x7e]{1,128}$/.test(delivery)) {
      throw new AppError("validation_failed", `${WEBHOOK_HEADERS.delivery}: 1 to 128 printable ASCII characters.`);
    }
    const secret = this.#deps.vault.open(row.sealed_secret, webhookAad(row.id)).toString("utf8");
    const expected = Buffer.from(signDelivery(secret, timestamp, delivery, body));
    if (!timingSafeEqual(expected, Buffer.from(signature))) throw refuse("webhook_signature_invalid", "bad signature");
    // Checked after the signature, so that the clock is not an oracle for unsigned requests.
    if (Math.abs(now / 1000 - Number(timestamp)) > WEBHOOK_WINDOW_S) {
      throw refuse("webhook_timestamp_expired", `timestamp ${timestamp} outside the window`);
    }
    // A delivery seen before answers with its run, even once the agent is archived.
    const seen = await this.#delivered(this.#deps.db, row.id, delivery);
    const first = seen === null ? undefined : await this.#deps.runs.getById(seen);
    if (first) return { run: first, created: false };
    const spec = await this.#deps.specOf(row.tenant_id, row.agent_id);
    if (!spec) throw new AppError("not_found", "The webhook's agent no longer exists.");
    const text = body.toString("utf8");
    let input: unknown = text;
    try {
      input = JSON.parse(text);
    } catch {}
    const result = await this.#deps.runs.create(row.tenant_id, row.agent_id, spec, input, {
      trigger: "webhook",
      endUser: row.end_user,
      events: [{ type: "webhook.received", data: { webhook_id: row.id, delivery_id: delivery, bytes: body.length } }],
      dedupe: async (trx, runId) => {
        // One of several deliveries racing (on any host) inserts; the others read its run.
        const inserted = await trx
          .insertInto("webhook_deliveries")
          .values({ webhook_id: row.id, delivery_id: delivery, run_id: runId, received_at: now })
          .onConflict((oc) => oc.columns(["webhook_id", "delivery_id"]).doNothing())
          .returning("run_id")
          .executeTakeFirst();
        if (inserted) return null;
        const winner = await this.#delivered(trx, row.id, delivery);
        if (winner === null) throw new Error(`webhook delivery ${delivery} conflicted but cannot be read`);
        return winner;
      },
    });
    if (result.created) this.#deps.notify();
    return result;
  }

  /** The run a delivery of this id started, or null. */
  async #delivered(db: Db, webhookId: string, delivery: string): Promise<string | null> {
    const seen = await db
      .selectFrom("webhook_deliveries")
      .select("run_id")
      .where("webhook_id", "=", webhookId)
      .where("delivery_id", "=", delivery)
      .executeTakeFirst();
    return seen?.run_id ?? null;
  }
}
