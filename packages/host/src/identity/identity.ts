/**
 * Tenants and API keys. Threat model: the store may leak (backups, a stolen disk), so keys are kept
 * only as SHA-256 of a 256-bit random secret — enough for a high-entropy key, and no plaintext key
 * exists anywhere but in the response that created it and the admin key file (mode 0600). A key
 * names its tenant; every request's tenant comes from the key, never from the request.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { type ApiKey, AppError, type SchemaIssue, type Tenant, toMicro, validationFailed } from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
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

/** What a start of the host made of its own tenant: each null when it was there already. */
export interface Bootstrapped {
  /** The admin API key, made when the store had no live one. */
  adminKey: string | null;
  /** The credits granted to the default tenant as the store created it. */
  startingCredits: number | null;
}

/** The note on the grant a fresh store's default tenant starts with. */
export const STARTING_GRANT_NOTE = "starting credits";

/**
 * The credits a fresh store's default tenant is granted, and what grants them inside the
 * transaction that creates it (the credits ledger, which sits above identity).
 */
export interface StartingGrant {
  ledger: {
    grantWithin(trx: Transaction<Database>, tenantId: string, micro: number, note?: string): Promise<unknown>;
  };
  credits: number;
}

export class Identity {
  readonly #db: Kysely<Database>;
  readonly #start: StartingGrant | undefined;

  constructor(db: Kysely<Database>, startingGrant?: StartingGrant) {
    this.#db = db;
    this.#start = startingGrant;
  }

  /**
   * Creates the default tenant with its starting credits, and its admin key, on first start; makes
   * a new admin key if every one was revoked. Hosts starting at once on one store create the
   * tenant, grant and key once: the tenant's insert, its grant and its key are one transaction,
   * and a host whose insert meets another's row waits for that transaction and takes its result.
   */
  async bootstrap(): Promise<Bootstrapped> {
    const none: Bootstrapped = { adminKey: null, startingCredits: null };
    if (await liveAdminKey(this.#db)) return none;
    return this.#db.transaction().execute(async (trx) => {
      const row: TenantsTable = { id: newId("ten"), name: DEFAULT_TENANT, created_at: Date.now() };
      const created = await trx
        .insertInto("tenants")
        .values(row)
        .onConflict((oc) => oc.column("name").doNothing())
        .returning("id")
        .executeTakeFirst();
      if (created) {
        const start = this.#start && toMicro(this.#start.credits) > 0 ? this.#start : null;
        if (start) await start.ledger.grantWithin(trx, row.id, toMicro(start.credits), STARTING_GRANT_NOTE);
        const key = await createKey(trx, row.id, "admin", "admin");
        return { adminKey: key.key ?? null, startingCredits: start?.credits ?? null };
      }
      // The tenant was there: made by another host just now, or its admin keys were all revoked.
      if (await liveAdminKey(trx)) return none;
      const tenant = await trx
        .selectFrom("tenants")
        .select("id")
        .where("name", "=", DEFAULT_TENANT)
        .executeTakeFirstOrThrow();
      const key = await createKey(trx, tenant.id, "admin", "admin");
      return { adminKey: key.key ?? null, startingCredits: null };
    });
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
    return createKey(this.#db, tenantId, "tenant", name);
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

async function liveAdminKey(db: Kysely<Database> | Transaction<Database>): Promise<boolean> {
  const admin = await db
    .selectFrom("api_keys")
    .select("id")
    .where("role", "=", "admin")
    .where("revoked_at", "is", null)
    .executeTakeFirst();
  return admin !== undefined;
}

async function createKey(
  db: Kysely<Database> | Transaction<Database>,
  tenantId: string,
  role: "admin" | "tenant",
  name: string | null,
): Promise<ApiKey> {
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
  await db.insertInto("api_keys").values(row).execute();
  return toApiKey(row, `pdk.${id}.${secret}`);
}

type Db = Kysely<Database> | Transaction<Database>;

/** Approvers that are groups rather than keys: every key of the tenant, and the host's admin key. */
const APPROVER_GROUPS: readonly string[] = ["tenant", "admin"];

/** The approvers among `approvers` that name no live API key of the tenant (by name or id) nor a group. */
export async function unknownApprovers(db: Db, tenantId: string, approvers: readonly string[]): Promise<string[]> {
  const keys = approvers.filter((a) => !APPROVER_GROUPS.includes(a));
  if (keys.length === 0) return [];
  const rows = await db
    .selectFrom("api_keys")
    .select(["id", "name"])
    .where("tenant_id", "=", tenantId)
    .where("revoked_at", "is", null)
    .where((eb) => eb.or([eb("id", "in", keys), eb("name", "in", keys)]))
    .execute();
  const known = new Set(rows.flatMap((r) => [r.id, r.name ?? ""]));
  return keys.filter((k) => !known.has(k));
}

/**
 * Refuses (validation_failed, each at its place in the body) approvers that name no API key of
 * the tenant: a rule saved with one could never be approved by it.
 */
export async function requireApprovers(
  db: Db,
  tenantId: string,
  places: readonly { path: readonly (string | number)[]; approvers: readonly string[] }[],
): Promise<void> {
  const issues: SchemaIssue[] = [];
  for (const place of places) {
    for (const name of await unknownApprovers(db, tenantId, place.approvers)) {
      issues.push({
        path: [...place.path, "approvers"],
        code: "custom",
        message: `unknown approver '${name}': name 'tenant', 'admin' or an API key of this tenant (its name or id)`,
      });
    }
  }
  if (issues.length > 0) throw validationFailed(issues);
}

/**
 * Whether `principal` may decide an approval of `tenantId` that names `approvers`: the admin key
 * when they name `admin`; otherwise only the tenant's own keys, any of them for `tenant`, or a key
 * named there (by name or id).
 */
export async function mayApprove(
  db: Db,
  principal: Principal,
  tenantId: string,
  approvers: readonly string[],
): Promise<boolean> {
  if (principal.role === "admin" && approvers.includes("admin")) return true;
  if (principal.tenantId !== tenantId) return false;
  if (approvers.includes("tenant") || approvers.includes(principal.keyId)) return true;
  const key = await db.selectFrom("api_keys").select("name").where("id", "=", principal.keyId).executeTakeFirst();
  return key?.name !== null && key?.name !== undefined && approvers.includes(key.name);
}
