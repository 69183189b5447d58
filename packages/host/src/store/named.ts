/**
 * Rows a tenant names and that may attach one of its secrets: bridge connections and MCP servers.
 * Both tables have the same columns (id, tenant, name, secret name, JSON spec, times); this is the
 * one place that finds, creates or replaces such a row, and the short-lived per-host cache of
 * their parsed forms.
 */
import type { Kysely, Transaction } from "kysely";
import { newId } from "./ids.ts";
import type { ConnectionsTable, Database } from "./schema.ts";

/** The tables of named rows; their rows all have ConnectionsTable's shape. */
export type NamedTable = "connections" | "mcp_servers";
export type NamedRow = ConnectionsTable;

type Db = Kysely<Database> | Transaction<Database>;

/** The tenant's row named `name` in `table`, if any. */
export function findNamed(db: Db, table: NamedTable, tenantId: string, name: string): Promise<NamedRow | undefined> {
  // Both tables have the same columns: typed as one of them.
  return db
    .selectFrom(table as "connections")
    .selectAll()
    .where("tenant_id", "=", tenantId)
    .where("name", "=", name)
    .executeTakeFirst();
}

/** The tenant's rows of `table`, by name. */
export function listNamed(db: Db, table: NamedTable, tenantId: string): Promise<NamedRow[]> {
  return db
    .selectFrom(table as "connections")
    .selectAll()
    .where("tenant_id", "=", tenantId)
    .orderBy("name")
    .execute();
}

/** Creates the tenant's row `name` (a new id with `idPrefix`) or replaces its secret and spec. */
export async function putNamed(
  trx: Transaction<Database>,
  table: NamedTable,
  row: { tenantId: string; name: string; idPrefix: string; secret: string | null; spec: string; now: number },
): Promise<{ row: NamedRow; created: boolean }> {
  const existing = await findNamed(trx, table, row.tenantId, row.name);
  const next: NamedRow = {
    id: existing?.id ?? newId(row.idPrefix, row.now),
    tenant_id: row.tenantId,
    name: row.name,
    secret_name: row.secret,
    spec: row.spec,
    created_at: existing?.created_at ?? row.now,
    updated_at: row.now,
  };
  if (existing) {
    await trx
      .updateTable(table as "connections")
      .set({ secret_name: next.secret_name, spec: next.spec, updated_at: next.updated_at })
      .where("id", "=", existing.id)
      .execute();
  } else {
    await trx
      .insertInto(table as "connections")
      .values(next)
      .execute();
  }
  return { row: next, created: !existing };
}

/**
 * Parsed forms of named rows (or their absence) by tenant and name, each reused for `ttlMs`; at
 * most `max` kept (the oldest goes first). A host's own writes clear their entry at once.
 */
export class NamedCache<V> {
  readonly #entries = new Map<string, { value: V | null; expires: number }>();
  readonly #ttlMs: number;
  readonly #max: number;
  readonly #now: () => number;

  constructor(
    options: { ttlMs?: number | undefined; max?: number | undefined; now?: (() => number) | undefined } = {},
  ) {
    this.#ttlMs = options.ttlMs ?? 5000;
    this.#max = Math.max(1, options.max ?? 10_000);
    this.#now = options.now ?? Date.now;
  }

  /** The cached value, or `load`'s (cached from now on). */
  async get(tenantId: string, name: string, load: () => Promise<V | null>): Promise<V | null> {
    const key = `${tenantId}\u0000${name}`;
    const now = this.#now();
    const hit = this.#entries.get(key);
    if (hit && hit.expires > now) return hit.value;
    const value = await load();
    this.#entries.delete(key);
    if (this.#entries.size >= this.#max) {
      const oldest = this.#entries.keys().next();
      if (!oldest.done) this.#entries.delete(oldest.value);
    }
    this.#entries.set(key, { value, expires: now + this.#ttlMs });
    return value;
  }

  forget(tenantId: string, name: string): void {
    this.#entries.delete(`${tenantId}\u0000${name}`);
  }
}
