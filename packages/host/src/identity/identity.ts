/**
 * Tenants and API keys. Threat model: the store may leak (backups, a stolen disk), so keys are kept
 * only as SHA-256 of a 256-bit random secret — enough for a high-entropy key, and no plaintext key
 * exists anywhere but in the response that created it and the admin key file (mode 0600). A key
 * names its tenant; every request's tenant comes from the key, never from the request.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { type ApiKey, AppError, type Tenant } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { newId } from "../store/ids.ts";
import type { ApiKeysTable, Database, TenantsTable } from "../store/schema.ts";

export const DEFAULT_TENANT = "default";

export interface Principal {
  tenantId: string;
  keyId: string;
  role: "admin" | "tenant";
  /** Set when the request came with a dashboard session cookie (bound to this key) instead of the key. */
  session?: { csrf: string; expiresAt: number };
}

const hash = (secret: string) => createHash("sha256").update(secret).digest("hex");

export function toTenant(row: TenantsTable): Tenant {
  return { id: row.id, name: row.name, created_at: new Date(row.created_at).toISOString() };
}

function toApiKey(row: ApiKeysTable, key?: string): ApiKey {
  return {
    id: row.id,
    tenant_id: row.tenant_id,
    name: row.name,
    role: row.role,
    created_at: new Date(row.created_at).toISOString(),
    revoked_at: row.revoked_at === null ? null : new Date(row.revoked_at).toISOString(),
    ...(key ? { key } : {}),
  };
}

export class Identity {
  readonly #db: Kysely<Database>;

  constructor(db: Kysely<Database>) {
    this.#db = db;
  }

  /** Creates the default tenant and its admin key on first start; returns the key then, else null. */
  async bootstrap(): Promise<string | null> {
    const admin = await this.#db
      .selectFrom("api_keys")
      .select("id")
      .where("role", "=", "admin")
      .where("revoked_at", "is", null)
      .executeTakeFirst();
    if (admin) return null;
    let tenant = await this.#db.selectFrom("tenants").selectAll().where("name", "=", DEFAULT_TENANT).executeTakeFirst();
    tenant ??= await this.createTenant(DEFAULT_TENANT);
    const created = await this.#createKey(tenant.id, "admin", "admin");
    return created.key ?? null;
  }

  async createTenant(name: string): Promise<TenantsTable> {
    const row: TenantsTable = { id: newId("ten"), name, created_at: Date.now() };
    const taken = await this.#db.selectFrom("tenants").select("id").where("name", "=", name).executeTakeFirst();
    if (taken) throw new AppError("conflict", `A tenant named '${name}' already exists.`);
    await this.#db.insertInto("tenants").values(row).execute();
    return row;
  }

  async listTenants(): Promise<TenantsTable[]> {
    return this.#db.selectFrom("tenants").selectAll().orderBy("id").execute();
  }

  /** Finds a tenant by id or name; unknown → not_found. */
  async findTenant(idOrName: string): Promise<TenantsTable> {
    const row = await this.#db
      .selectFrom("tenants")
      .selectAll()
      .where((eb) => eb.or([eb("id", "=", idOrName), eb("name", "=", idOrName)]))
      .executeTakeFirst();
    if (!row) throw new AppError("not_found", `No tenant '${idOrName}'.`);
    return row;
  }

  async createTenantKey(tenantId: string, name: string | null): Promise<ApiKey> {
    return this.#createKey(tenantId, "tenant", name);
  }

  async #createKey(tenantId: string, role: "admin" | "tenant", name: string | null): Promise<ApiKey> {
    const id = newId("key");
    const secret = randomBytes(32).toString("base64url");
    const row: ApiKeysTable = {
      id,
      tenant_id: tenantId,
      role,
      name,
      secret_hash: hash(secret),
      created_at: Date.now(),
      revoked_at: null,
    };
    await this.#db.insertInto("api_keys").values(row).execute();
    return toApiKey(row, `pdk.${id}.${secret}`);
  }

  /** A tenant's keys, revoked ones included (never their secrets). */
  async listKeys(tenantId: string): Promise<ApiKey[]> {
    const rows = await this.#db
      .selectFrom("api_keys")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .orderBy("id")
      .execute();
    return rows.map((row) => toApiKey(row));
  }

  /**
   * Revokes a tenant's key: it authenticates nothing from now on, and the dashboard sessions it
   * signed in end with it. The admin key cannot be revoked (a host with none makes a new one at
   * start). Revoking a revoked key changes nothing.
   */
  async revokeKey(tenantId: string, keyId: string): Promise<ApiKey> {
    return this.#db.transaction().execute(async (trx) => {
      const row = await trx
        .selectFrom("api_keys")
        .selectAll()
        .where("id", "=", keyId)
        .where("tenant_id", "=", tenantId)
        .executeTakeFirst();
      if (!row) throw new AppError("not_found", `No key '${keyId}'.`);
      if (row.role === "admin") throw new AppError("forbidden", "The admin key cannot be revoked.");
      if (row.revoked_at === null) {
        row.revoked_at = Date.now();
        await trx.updateTable("api_keys").set({ revoked_at: row.revoked_at }).where("id", "=", keyId).execute();
        await trx.deleteFrom("ui_sessions").where("key_id", "=", keyId).execute();
      }
      return toApiKey(row);
    });
  }

  /** Checks a presented key; returns its principal or null. Constant-time on the secret. */
  async authenticate(presented: string): Promise<Principal | null> {
    const [prefix, id, secret, extra] = presented.split(".");
    if (prefix !== "pdk" || !id || !secret || extra !== undefined || id.length > 64) return null;
    const row = await this.#db
      .selectFrom("api_keys")
      .selectAll()
      .where("id", "=", id)
      .where("revoked_at", "is", null)
      .executeTakeFirst();
    if (!row) return null;
    const a = Buffer.from(hash(secret), "hex");
    const b = Buffer.from(row.secret_hash, "hex");
    if (a.length !== b.length || !timingSafeEqual(a, b)) return null;
    return { tenantId: row.tenant_id, keyId: row.id, role: row.role };
  }
}
