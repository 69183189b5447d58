/**
 * The secrets vault's store: named values per tenant, sealed by the Vault (see vault.ts). The API
 * and CLI see names and metadata only; the value leaves this module through `reveal`, which only
 * the bridge calls, on the host, to attach it to a forwarded request.
 *
 * Threat model: a copy of the database (a backup, a leaked file) yields sealed boxes only, useless
 * without the master key, which is never stored in it (see master-key.ts for keeping it apart). Each value is sealed with its tenant and
 * name as associated data, so someone able to write rows cannot make one tenant's value open as
 * another's, or under another name. An API key can replace or delete its tenant's secrets but
 * never read them back; another tenant's names answer as unknown ones. The cache of opened values
 * lets go of each after a few seconds, and of a secret's at once when it is set or deleted.
 */
import { AppError, type Secret } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { newId } from "../store/ids.ts";
import type { Database, SecretsTable } from "../store/schema.ts";
import type { Vault } from "./vault.ts";

/** The AAD a signing key's sealed private half is bound to: a box moved to another row does not open. */
export function signingKeyAad(kid: string): string {
  return `signing-key:v1:${kid}`;
}

/** Associated data of an end user's OAuth account's sealed tokens. */
export const accountAad = (id: string) => `oauth-account:v1:${id}`;

/** Associated data of a secret's sealed value. */
export const secretAad = (tenantId: string, name: string) => `secret:v1:${tenantId}:${name}`;

const REVEAL_TTL_MS = 5_000;

/** A row as the API shows it: name, version and times, never the sealed value. */
export function toSecret(row: SecretsTable): Secret {
  return {
    name: row.name,
    version: row.version,
    created_at: new Date(row.created_at).toISOString(),
    updated_at: new Date(row.updated_at).toISOString(),
  };
}

/** Tenants' named secrets: set, list, get and delete for the API; reveal for the bridge. */
export class Secrets {
  readonly #db: Kysely<Database>;
  readonly #vault: Vault;
  /** Opened values, briefly: the bridge reveals the same secret on every call. */
  readonly #opened = new Map<string, { value: string; at: number }>();
  /** Bumped by every set and delete, so a reveal that raced one does not cache the old value. */
  #generation = 0;

  constructor(db: Kysely<Database>, vault: Vault) {
    this.#db = db;
    this.#vault = vault;
  }

  /** Sets a secret's value (a new version when it exists); returns its metadata. */
  async set(tenantId: string, name: string, value: string): Promise<{ secret: Secret; created: boolean }> {
    const { sealed, masterKeyId } = this.#vault.seal(Buffer.from(value, "utf8"), secretAad(tenantId, name));
    const now = Date.now();
    const row = await this.#db.transaction().execute(async (trx) => {
      const existing = await trx
        .selectFrom("secrets")
        .selectAll()
        .where("tenant_id", "=", tenantId)
        .where("name", "=", name)
        .executeTakeFirst();
      if (existing) {
        const next = { sealed, master_key_id: masterKeyId, version: existing.version + 1, updated_at: now };
        await trx.updateTable("secrets").set(next).where("id", "=", existing.id).execute();
        return { row: { ...existing, ...next }, created: false };
      }
      const fresh: SecretsTable = {
        id: newId("sec", now),
        tenant_id: tenantId,
        name,
        sealed,
        master_key_id: masterKeyId,
        version: 1,
        created_at: now,
        updated_at: now,
      };
      await trx.insertInto("secrets").values(fresh).execute();
      return { row: fresh, created: true };
    });
    this.#forget(tenantId, name);
    return { secret: toSecret(row.row), created: row.created };
  }

  async list(tenantId: string): Promise<Secret[]> {
    const rows = await this.#db
      .selectFrom("secrets")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .orderBy("name")
      .execute();
    return rows.map(toSecret);
  }

  async get(tenantId: string, name: string): Promise<Secret> {
    const row = await this.#row(tenantId, name);
    if (!row) throw new AppError("not_found", `No secret '${name}'.`);
    return toSecret(row);
  }

  /** Deletes a secret no connection, MCP server or OAuth app uses; `secret_in_use` names those that do. */
  async delete(tenantId: string, name: string): Promise<void> {
    await this.#db.transaction().execute(async (trx) => {
      const users = await trx
        .selectFrom("connections")
        .select("name")
        .where("tenant_id", "=", tenantId)
        .where("secret_name", "=", name)
        .orderBy("name")
        .execute();
      if (users.length > 0) {
        throw new AppError(
          "secret_in_use",
          `The connection(s) ${users.map((u) => `'${u.name}'`).join(", ")} use the secret '${name}'; change or delete them first.`,
          { connections: users.map((u) => u.name) },
        );
      }
      const servers = await trx
        .selectFrom("mcp_servers")
        .select("name")
        .where("tenant_id", "=", tenantId)
        .where("secret_name", "=", name)
        .orderBy("name")
        .execute();
      if (servers.length > 0) {
        throw new AppError(
          "secret_in_use",
          `The MCP server(s) ${servers.map((u) => `'${u.name}'`).join(", ")} use the secret '${name}'; change or delete them first.`,
          { mcp_servers: servers.map((u) => u.name) },
        );
      }
      const apps = await trx
        .selectFrom("oauth_apps")
        .select("name")
        .where("tenant_id", "=", tenantId)
        .where("secret_name", "=", name)
        .orderBy("name")
        .execute();
      if (apps.length > 0) {
        throw new AppError(
          "secret_in_use",
          `The OAuth app(s) ${apps.map((u) => `'${u.name}'`).join(", ")} use the secret '${name}' as their client secret; change or delete them first.`,
          { oauth_apps: apps.map((u) => u.name) },
        );
      }
      const result = await trx
        .deleteFrom("secrets")
        .where("tenant_id", "=", tenantId)
        .where("name", "=", name)
        .executeTakeFirst();
      if (Number(result.numDeletedRows) === 0) throw new AppError("not_found", `No secret '${name}'.`);
    });
    this.#forget(tenantId, name);
  }

  /** The value, for the bridge to attach on the host; null when there is no such secret. */
  async reveal(tenantId: string, name: string): Promise<string | null> {
    const key = `${tenantId}\0${name}`;
    this.#sweep();
    const hit = this.#opened.get(key);
    if (hit) return hit.value;
    const generation = this.#generation;
    const row = await this.#row(tenantId, name);
    if (!row) {
      this.#opened.delete(key);
      return null;
    }
    const value = this.#vault.open(row.sealed, secretAad(tenantId, name)).toString("utf8");
    if (generation === this.#generation) {
      this.#opened.set(key, { value, at: Date.now() });
      setTimeout(() => this.#sweep(), REVEAL_TTL_MS + 10).unref();
    }
    return value;
  }

  /** Drops opened values older than the cache's lifetime, so none lingers after it. */
  #sweep(): void {
    const now = Date.now();
    for (const [key, entry] of this.#opened) if (now - entry.at >= REVEAL_TTL_MS) this.#opened.delete(key);
  }

  #forget(tenantId: string, name: string): void {
    this.#generation++;
    this.#opened.delete(`${tenantId}\0${name}`);
  }

  #row(tenantId: string, name: string): Promise<SecretsTable | undefined> {
    return this.#db
      .selectFrom("secrets")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .where("name", "=", name)
      .executeTakeFirst();
  }
}

/**
 * Re-seals, in one transaction, every secret, signing key and webhook or notification secret
 * sealed under another master key than the vault's current one (a rotation); returns how many.
 * Throws, naming the key, when one was sealed under a key the vault was not given: the host must
 * not start without it.
 */
export async function rotateMasterKey(db: Kysely<Database>, vault: Vault): Promise<number> {
  return db.transaction().execute(async (trx) => {
    let count = 0;
    const secrets = await trx
      .selectFrom("secrets")
      .select(["id", "tenant_id", "name", "sealed"])
      .where("master_key_id", "!=", vault.masterKeyId)
      .execute();
    for (const row of secrets) {
      const what = `secret '${row.name}' of tenant ${row.tenant_id}`;
      const moved = rewrap(vault, row.sealed, secretAad(row.tenant_id, row.name), what);
      await trx
        .updateTable("secrets")
        .set({ sealed: moved, master_key_id: vault.masterKeyId })
        .where("id", "=", row.id)
        .execute();
      count++;
    }
    const keys = await trx
      .selectFrom("signing_keys")
      .select(["kid", "sealed_private"])
      .where("master_key_id", "!=", vault.masterKeyId)
      .execute();
    for (const row of keys) {
      const moved = rewrap(vault, row.sealed_private, signingKeyAad(row.kid), `signing key ${row.kid}`);
      await trx
        .updateTable("signing_keys")
        .set({ sealed_private: moved, master_key_id: vault.masterKeyId })
        .where("kid", "=", row.kid)
        .execute();
      count++;
    }
    const hooks = await trx
      .selectFrom("webhooks")
      .select(["id", "sealed_secret"])
      .where("master_key_id", "!=", vault.masterKeyId)
      .execute();
    for (const row of hooks) {
      const moved = rewrap(vault, row.sealed_secret, webhookAad(row.id), `webhook ${row.id}`);
      await trx
        .updateTable("webhooks")
        .set({ sealed_secret: moved, master_key_id: vault.masterKeyId })
        .where("id", "=", row.id)
        .execute();
      count++;
    }
    const subscriptions = await trx
      .selectFrom("notification_subscriptions")
      .select(["id", "sealed_secrets"])
      .where("master_key_id", "!=", vault.masterKeyId)
      .execute();
    for (const row of subscriptions) {
      const moved = rewrap(vault, row.sealed_secrets, notificationAad(row.id), `notification subscription ${row.id}`);
      await trx
        .updateTable("notification_subscriptions")
        .set({ sealed_secrets: moved, master_key_id: vault.masterKeyId })
        .where("id", "=", row.id)
        .execute();
      count++;
    }
    const accounts = await trx
      .selectFrom("oauth_accounts")
      .select(["id", "sealed_tokens"])
      .where("master_key_id", "!=", vault.masterKeyId)
      .execute();
    for (const row of accounts) {
      const moved = rewrap(vault, row.sealed_tokens, accountAad(row.id), `OAuth account ${row.id}`);
      await trx
        .updateTable("oauth_accounts")
        .set({ sealed_tokens: moved, master_key_id: vault.masterKeyId })
        .where("id", "=", row.id)
        .execute();
      count++;
    }
    // Pending connect sessions last minutes: those of an older key are dropped, not re-sealed.
    await trx.deleteFrom("connect_sessions").where("master_key_id", "!=", vault.masterKeyId).execute();
    return count;
  });
}

/** Associated data of a notification subscription's sealed signing secrets. */
export const notificationAad = (id: string) => `notification:v1:${id}`;

/** Associated data of a webhook's sealed signing secret. */
export const webhookAad = (id: string) => `webhook:v1:${id}`;

function rewrap(vault: Vault, sealed: string, aad: string, what: string): string {
  try {
    return vault.rewrap(sealed, aad).sealed;
  } catch (err) {
    throw new Error(`master key rotation: cannot re-seal ${what}: ${err instanceof Error ? err.message : String(err)}`);
  }
}
