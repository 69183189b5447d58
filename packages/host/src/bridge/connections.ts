/**
 * Connections of a tenant: stored definitions (upstream, secret name, auth, policy, limits) and
 * their compiled form for the bridge, cached briefly.
 *
 * Threat model: definitions come from tenant API keys, calls that use them from sandboxes. A
 * tenant sees and names only its own connections and secrets. A connection that is not internal
 * may not name a private, loopback or link-local address literal (or `localhost`) as its upstream;
 * names that resolve to such addresses are refused by the bridge at call time
 * (`upstreamAddressRefusal`). A connection an agent's policy names cannot be deleted, so a policy
 * never silently points at a later connection of the same name. The cache is per host and short
 * lived, so with several hosts sharing a store a change reaches every host within its lifetime.
 */
import {
  type AgentPolicy,
  AppError,
  type Connection,
  type ConnectionAuth,
  ConnectionPut,
  type ConnectionRateLimit,
  normalizeBaseUrl,
} from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import { isIpLiteralHost } from "../egress/address-policy.ts";
import { requireApprovers } from "../identity/identity.ts";
import { findNamed, listNamed, NamedCache, type NamedRow, type NamedTable, putNamed } from "../store/named.ts";
import type { ConnectionsTable, Database } from "../store/schema.ts";
import { parseAgentDefinition } from "../store/stored.ts";
import { type CompiledPolicy, compilePolicy, upstreamAddressRefusal } from "./policy.ts";

/** A connection as the bridge uses it: parsed, with its policy compiled. */
export interface BridgeConnection {
  id: string;
  tenantId: string;
  name: string;
  /** Normalized, without a trailing slash; the checked request path is appended to it. */
  baseUrl: string;
  /** The name of the secret to attach, or null with auth "none". */
  secret: string | null;
  auth: ConnectionAuth;
  policy: CompiledPolicy;
  rateLimit: ConnectionRateLimit | null;
  /** The upstream may resolve to private and loopback addresses. */
  internal: boolean;
  timeoutMs: number;
  maxResponseBytes: number;
  maxRequestBytes: number;
  /** Milliseconds since the epoch; changes whenever the connection is replaced. */
  updatedAt: number;
}

export interface ConnectionsOptions {
  /** How long a compiled connection (or its absence) is reused (default 5 s). */
  cacheTtlMs?: number;
  /** Most cached entries (default 10 000). */
  cacheMax?: number;
  now?: () => number;
}

type Db = Kysely<Database> | Transaction<Database>;

/** The upstream URL of a call: the base URL, the checked path and the query (if any). */
export function upstreamUrl(connection: Pick<BridgeConnection, "baseUrl">, target: { path: string; query: string }) {
  return `${connection.baseUrl}${target.path}${target.query === "" ? "" : `?${target.query}`}`;
}

/** The names among `names` that are not connections of the tenant. */
export async function missingConnections(db: Db, tenantId: string, names: readonly string[]): Promise<string[]> {
  if (names.length === 0) return [];
  const rows = await db
    .selectFrom("connections")
    .select("name")
    .where("tenant_id", "=", tenantId)
    .where("name", "in", [...names])
    .execute();
  const found = new Set(rows.map((r) => r.name));
  return names.filter((n) => !found.has(n));
}

/** Throws `unknown_connection` naming the connections of `names` the tenant does not have. */
export async function requireConnections(db: Db, tenantId: string, names: readonly string[]): Promise<void> {
  const missing = await missingConnections(db, tenantId, names);
  if (missing.length > 0) {
    throw new AppError(
      "unknown_connection",
      `The agent's policy names connections that do not exist: ${missing.join(", ")}; create them first.`,
      { connections: missing },
    );
  }
}

export class Connections {
  readonly #db: Kysely<Database>;
  readonly #cache: NamedCache<BridgeConnection>;
  readonly #now: () => number;

  constructor(db: Kysely<Database>, options: ConnectionsOptions = {}) {
    this.#db = db;
    this.#cache = new NamedCache({ ttlMs: options.cacheTtlMs, max: options.cacheMax, now: options.now });
    this.#now = options.now ?? Date.now;
  }

  /**
   * Creates the connection `name` or replaces its whole definition. Throws `unknown_secret` when
   * the tenant has no secret of the name given, `validation_failed` when a connection that is not
   * internal names a non-public address or a rule names an approver that is no key of the tenant.
   */
  async put(
    tenantId: string,
    name: string,
    body: ConnectionPut,
  ): Promise<{ connection: Connection; created: boolean }> {
    const spec = ConnectionPut.parse({ ...body, base_url: normalizeBaseUrl(body.base_url) });
    checkUpstreamLiteral(spec.base_url, spec.internal);
    compilePolicy(spec.policy);
    // A rule asking for approval must name approvers that exist.
    await requireApprovers(
      this.#db,
      tenantId,
      spec.policy.allow.flatMap((rule, i) =>
        rule.approval ? [{ path: ["policy", "allow", i, "approval"], approvers: rule.approval.approvers }] : [],
      ),
    );
    const result = await putHolder(
      this.#db,
      "connections",
      { tenantId, name, idPrefix: "con", now: this.#now() },
      spec,
    );
    this.#cache.forget(tenantId, name);
    return { connection: toConnection(result.row), created: result.created };
  }

  /** The tenant's connections, by name. */
  async list(tenantId: string): Promise<Connection[]> {
    return (await listNamed(this.#db, "connections", tenantId)).map(toConnection);
  }

  /** One connection; `not_found` when the tenant has none of that name. */
  async get(tenantId: string, name: string): Promise<Connection> {
    const row = await findRow(this.#db, tenantId, name);
    if (!row) throw notFound(name);
    return toConnection(row);
  }

  /** Deletes a connection no agent's policy names (`conflict` otherwise); returns what it was. */
  async delete(tenantId: string, name: string): Promise<Connection> {
    const row = await deleteUnused(this.#db, "connections", tenantId, name, "connection", (p) => p.connections);
    this.#cache.forget(tenantId, name);
    return toConnection(row);
  }

  /**
   * The connection compiled for the bridge, or null when the tenant has none of that name.
   * Answers from a short-lived cache that this host's put and delete clear at once.
   */
  forBridge(tenantId: string, name: string): Promise<BridgeConnection | null> {
    return this.#cache.get(tenantId, name, async () => {
      const row = await findRow(this.#db, tenantId, name);
      return row ? compileConnection(row) : null;
    });
  }
}

const notFound = (name: string) => new AppError("not_found", `No connection '${name}'.`);

const findRow = (db: Db, tenantId: string, name: string) => findNamed(db, "connections", tenantId, name);

export async function requireApp(db: Db, tenantId: string, app: string): Promise<void> {
  const row = await db
    .selectFrom("oauth_apps")
    .select("id")
    .where("tenant_id", "=", tenantId)
    .where("name", "=", app)
    .executeTakeFirst();
  if (!row) throw new AppError("unknown_oauth_app", `No OAuth app '${app}'; set it first.`, { app });
}

export async function requireSecret(db: Db, tenantId: string, secret: string): Promise<void> {
  const row = await db
    .selectFrom("secrets")
    .select("id")
    .where("tenant_id", "=", tenantId)
    .where("name", "=", secret)
    .executeTakeFirst();
  if (!row) {
    throw new AppError("unknown_secret", `No secret '${secret}'; set it first, then the connection.`, { secret });
  }
}

/**
 * In one transaction: checks that the secret or OAuth app a connection or MCP server attaches
 * exists (`unknown_secret`, `unknown_oauth_app`), then creates the row or replaces it.
 */
export function putHolder(
  db: Kysely<Database>,
  table: NamedTable,
  row: { tenantId: string; name: string; idPrefix: string; now: number },
  spec: { secret?: string | undefined; auth: ConnectionAuth },
): Promise<{ row: NamedRow; created: boolean }> {
  return db.transaction().execute(async (trx) => {
    if (spec.secret !== undefined) await requireSecret(trx, row.tenantId, spec.secret);
    if (spec.auth.type === "oauth") await requireApp(trx, row.tenantId, spec.auth.app);
    return putNamed(trx, table, { ...row, secret: spec.secret ?? null, spec: JSON.stringify(spec) });
  });
}

/**
 * Deletes the tenant's row `name` of `table` (`what` names its kind in refusals): `not_found` when
 * there is none, `conflict` while a live agent's policy names it (`names` reads the policy's list).
 */
export function deleteUnused(
  db: Kysely<Database>,
  table: NamedTable,
  tenantId: string,
  name: string,
  what: string,
  names: (policy: AgentPolicy) => readonly string[],
): Promise<NamedRow> {
  return db.transaction().execute(async (trx) => {
    const found = await findNamed(trx, table, tenantId, name);
    if (!found) throw new AppError("not_found", `No ${what} '${name}'.`);
    const users = await agentsNaming(trx, tenantId, name, names);
    if (users.length > 0) {
      throw new AppError(
        "conflict",
        `The ${what} '${name}' is in the policy of agent(s) ${users.join(", ")}; it cannot be deleted while they name it.`,
        { agents: users },
      );
    }
    await trx
      .deleteFrom(table as "connections")
      .where("id", "=", found.id)
      .execute();
    return found;
  });
}

/**
 * Names of the tenant's live (not archived) agents whose policy names `name` (a connection by
 * default; `names` reads another list of the policy, such as its MCP servers).
 */
export async function agentsNaming(
  db: Db,
  tenantId: string,
  name: string,
  names: (policy: AgentPolicy) => readonly string[] = (policy) => policy.connections,
): Promise<string[]> {
  // A cheap prefilter on the JSON text; the parsed policy decides.
  const rows = await db
    .selectFrom("agents")
    .select(["name", "spec"])
    .where("tenant_id", "=", tenantId)
    .where("spec", "like", `%"${name}"%`)
    .where("archived_at", "is", null)
    .execute();
  return rows
    .filter((r) => {
      const policy = parseAgentDefinition(r.spec).policy;
      return policy !== undefined && names(policy).includes(name);
    })
    .map((r) => r.name)
    .sort();
}

/**
 * Why an upstream URL's host may not be called, judged without resolving it: an address literal
 * outside the public range (private, loopback, link-local…), or `localhost`, unless `internal`;
 * link-local and other special addresses even then. Null when nothing is wrong with it yet: names
 * are judged once resolved, when called (see pin.ts).
 */
export function upstreamLiteralRefusal(url: string, internal: boolean): string | null {
  const host = new URL(url).hostname;
  const bare = host.startsWith("[") ? host.slice(1, -1) : host.replace(/\.$/, "");
  if (isIpLiteralHost(host)) return upstreamAddressRefusal(bare, internal);
  if (!internal && (bare === "localhost" || bare.endsWith(".localhost"))) return "loopback";
  return null;
}

/** Refuses a connection's base URL (or an MCP server's URL, under `field`) that upstreamLiteralRefusal refuses. */
export function checkUpstreamLiteral(baseUrl: string, internal: boolean, field = "base_url"): void {
  const refusal = upstreamLiteralRefusal(baseUrl, internal);
  if (refusal === null) return;
  const message = internal
    ? `the upstream address is ${refusal}, which the bridge never calls`
    : `the upstream address is ${refusal}; set "internal": true for a service on a private network`;
  throw new AppError("validation_failed", `Invalid request: ${field}: ${message}.`, [
    { path: field, code: "custom", message },
  ]);
}

/** A connection's definition as stored (its spec column). */
export function parseSpec(row: ConnectionsTable): ConnectionPut {
  return ConnectionPut.parse(JSON.parse(row.spec));
}

function toConnection(row: ConnectionsTable): Connection {
  const spec = parseSpec(row);
  return {
    name: row.name,
    base_url: spec.base_url,
    secret: spec.secret ?? null,
    auth: spec.auth,
    policy: spec.policy,
    internal: spec.internal,
    timeout_ms: spec.timeout_ms,
    max_response_bytes: spec.max_response_bytes,
    max_request_bytes: spec.max_request_bytes,
    created_at: new Date(row.created_at).toISOString(),
    updated_at: new Date(row.updated_at).toISOString(),
  };
}

function compileConnection(row: ConnectionsTable): BridgeConnection {
  const spec = parseSpec(row);
  const policy = compilePolicy(spec.policy);
  return {
    id: row.id,
    tenantId: row.tenant_id,
    name: row.name,
    baseUrl: spec.base_url,
    secret: spec.secret ?? null,
    auth: spec.auth,
    policy,
    rateLimit: policy.rateLimit,
    internal: spec.internal,
    timeoutMs: spec.timeout_ms,
    maxResponseBytes: spec.max_response_bytes,
    maxRequestBytes: spec.max_request_bytes,
    updatedAt: row.updated_at,
  };
}
