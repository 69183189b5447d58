/**
 * MCP servers of a tenant: stored definitions (URL, secret name, auth, extra headers, limits),
 * registered like bridge connections and checked by the same rules, and their parsed form for
 * the host's MCP client, cached briefly.
 *
 * Threat model: definitions come from tenant API keys; a tenant sees and names only its own
 * servers and secrets. A server that is not internal may not name a private, loopback or
 * link-local address literal (or `localhost`); names that resolve to such addresses are refused
 * when the host connects (see client.ts). Only the admin key may mark a server internal (api/mcp.ts).
 * A server an agent's policy names cannot be deleted.
 */
import {
  AppError,
  type ConnectionAuth,
  type ConnectionRateLimit,
  type McpServer,
  McpServerPut,
} from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import { checkUpstreamLiteral, deleteUnused, putHolder } from "../bridge/connections.ts";
import { findNamed, listNamed, NamedCache, type NamedRow } from "../store/named.ts";
import type { Database } from "../store/schema.ts";
import { parseStored } from "../store/stored.ts";

/** An MCP server as the host's client uses it. */
export interface HostMcpServer {
  id: string;
  tenantId: string;
  name: string;
  url: string;
  /** The name of the secret to attach, or null (auth "none" or "oauth"). */
  secret: string | null;
  auth: ConnectionAuth;
  headers: Record<string, string>;
  internal: boolean;
  timeoutMs: number;
  rateLimit: ConnectionRateLimit | null;
  /** Milliseconds since the epoch; changes whenever the server is replaced. */
  updatedAt: number;
}

type Db = Kysely<Database> | Transaction<Database>;

export interface McpServersOptions {
  /** How long a parsed server (or its absence) is reused (default 5 s). */
  cacheTtlMs?: number;
  now?: () => number;
}

/** The names among `names` that are not MCP servers of the tenant. */
export async function missingMcpServers(db: Db, tenantId: string, names: readonly string[]): Promise<string[]> {
  if (names.length === 0) return [];
  const rows = await db
    .selectFrom("mcp_servers")
    .select("name")
    .where("tenant_id", "=", tenantId)
    .where("name", "in", [...names])
    .execute();
  const found = new Set(rows.map((r) => r.name));
  return names.filter((n) => !found.has(n));
}

/** Throws `unknown_mcp_server` naming the servers of `names` the tenant does not have. */
export async function requireMcpServers(db: Db, tenantId: string, names: readonly string[]): Promise<void> {
  const missing = await missingMcpServers(db, tenantId, names);
  if (missing.length > 0) {
    throw new AppError(
      "unknown_mcp_server",
      `The agent's policy names MCP servers that do not exist: ${missing.join(", ")}; register them first.`,
      { mcp_servers: missing },
    );
  }
}

export class McpServers {
  readonly #db: Kysely<Database>;
  readonly #cache: NamedCache<HostMcpServer>;
  readonly #now: () => number;

  constructor(db: Kysely<Database>, options: McpServersOptions = {}) {
    this.#db = db;
    this.#cache = new NamedCache({ ttlMs: options.cacheTtlMs, now: options.now });
    this.#now = options.now ?? Date.now;
  }

  /**
   * Creates the server `name` or replaces its whole definition. Throws `unknown_secret` or
   * `unknown_oauth_app` for a credential the tenant does not have, `validation_failed` for a URL
   * on a non-public address of a server that is not internal.
   */
  async put(tenantId: string, name: string, body: McpServerPut): Promise<{ server: McpServer; created: boolean }> {
    const spec = McpServerPut.parse(body);
    checkUpstreamLiteral(spec.url, spec.internal, "url");
    const result = await putHolder(
      this.#db,
      "mcp_servers",
      { tenantId, name, idPrefix: "mcp", now: this.#now() },
      spec,
    );
    this.#cache.forget(tenantId, name);
    return { server: toMcpServer(result.row), created: result.created };
  }

  async list(tenantId: string): Promise<McpServer[]> {
    return (await listNamed(this.#db, "mcp_servers", tenantId)).map(toMcpServer);
  }

  /** One server; `not_found` when the tenant has none of that name. */
  async get(tenantId: string, name: string): Promise<McpServer> {
    const row = await findRow(this.#db, tenantId, name);
    if (!row) throw notFound(name);
    return toMcpServer(row);
  }

  /** Deletes a server no agent's policy names (`conflict` otherwise); returns what it was. */
  async delete(tenantId: string, name: string): Promise<McpServer> {
    const row = await deleteUnused(this.#db, "mcp_servers", tenantId, name, "MCP server", (policy) =>
      (policy.mcp ?? []).map((e) => e.server),
    );
    this.#cache.forget(tenantId, name);
    return toMcpServer(row);
  }

  /** The server as the host's client uses it, or null; from a short-lived cache this host's writes clear. */
  forHost(tenantId: string, name: string): Promise<HostMcpServer | null> {
    return this.#cache.get(tenantId, name, async () => {
      const row = await findRow(this.#db, tenantId, name);
      return row ? toHost(row) : null;
    });
  }

  /** The server as the host's client uses it; `not_found` when the tenant has none of that name. */
  async require(tenantId: string, name: string): Promise<HostMcpServer> {
    const server = await this.forHost(tenantId, name);
    if (!server) throw notFound(name);
    return server;
  }
}

const notFound = (name: string) => new AppError("not_found", `No MCP server '${name}'.`);

const findRow = (db: Db, tenantId: string, name: string) => findNamed(db, "mcp_servers", tenantId, name);

const parseSpec = (row: NamedRow): McpServerPut => parseStored(McpServerPut, row.spec, "MCP server");

function toMcpServer(row: NamedRow): McpServer {
  const spec = parseSpec(row);
  return {
    name: row.name,
    url: spec.url,
    secret: spec.secret ?? null,
    auth: spec.auth,
    headers: spec.headers,
    internal: spec.internal,
    timeout_ms: spec.timeout_ms,
    ...(spec.rate_limit ? { rate_limit: spec.rate_limit } : {}),
    created_at: new Date(row.created_at).toISOString(),
    updated_at: new Date(row.updated_at).toISOString(),
  };
}

function toHost(row: NamedRow): HostMcpServer {
  const spec = parseSpec(row);
  return {
    id: row.id,
    tenantId: row.tenant_id,
    name: row.name,
    url: spec.url,
    secret: spec.secret ?? null,
    auth: spec.auth,
    headers: spec.headers,
    internal: spec.internal,
    timeoutMs: spec.timeout_ms,
    rateLimit: spec.rate_limit ?? null,
    updatedAt: row.updated_at,
  };
}
