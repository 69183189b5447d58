/**
 * MCP on the host's side, outside a run's calls: a server's tools as the host sees them now, the
 * pins an agent version's policy is saved with, and re-pinning. The credential attached is the
 * server's secret, or for `oauth` auth an end user's account: the run's own in a run; outside one
 * the end user named, else the tenant's most recently updated active account of the app (a
 * server's tool definitions are the same for every user of it, or should be: pins tell).
 */
import { AppError, type McpPinDiff, type McpPins, type McpPolicyEntry, type McpToolList } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { type BridgeDeps, credentialFor, withCredential } from "../bridge/bridge.ts";
import type { LiveSandbox } from "../bridge/live.ts";
import type { Database } from "../store/schema.ts";
import { parseAgentDefinition } from "../store/stored.ts";
import type { McpClients, McpCredential } from "./client.ts";
import { diffPins, pinsDigest, pinTools, readPins, writePins } from "./pins.ts";
import type { HostMcpServer, McpServers } from "./servers.ts";

export interface McpServiceDeps extends Pick<BridgeDeps, "secrets" | "accounts"> {
  db: Kysely<Database>;
  servers: McpServers;
  clients: McpClients;
}

/** Whose credential a request attaches: a run's sandbox (its end user), or the tenant outside a run. */
type Caller = Pick<LiveSandbox, "tenantId" | "endUser" | "record">;

export class McpService {
  readonly #deps: McpServiceDeps;

  constructor(deps: McpServiceDeps) {
    this.#deps = deps;
  }

  get servers(): McpServers {
    return this.#deps.servers;
  }

  get clients(): McpClients {
    return this.#deps.clients;
  }

  /** What a request to `server` attaches for `caller`, and the spellings of it to redact. */
  async credential(
    caller: Caller,
    server: HostMcpServer,
    stale?: string,
  ): Promise<{ credential: McpCredential; needles: Buffer[] }> {
    const secret = await credentialFor(this.#deps, caller, server, stale, "MCP server");
    const headers: Record<string, string | string[]> = {};
    const { needles, query } = withCredential(headers, server.auth, secret, "");
    const flat = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, Array.isArray(v) ? v.join(", ") : v]));
    return { credential: { headers: flat, query }, needles };
  }

  /** The tools of the tenant's server `name` as the host sees them now. */
  async tools(tenantId: string, name: string, endUser?: string): Promise<McpToolList> {
    const server = await this.#deps.servers.require(tenantId, name);
    const { credential } = await this.credential(await this.#outsideRun(tenantId, server, endUser), server);
    return { server: name, tools: await this.#deps.clients.tools(server, credential) };
  }

  /**
   * Pins the tools `entries` allow on each server; tools pinned in `keep` stay as they were.
   * `unknown_mcp_server` for a server the tenant does not have; `mcp_server_unavailable` (naming
   * the server) for one that cannot be read now.
   */
  async pin(tenantId: string, entries: readonly McpPolicyEntry[], keep: McpPins = {}): Promise<McpPins> {
    const pins: McpPins = {};
    for (const entry of entries) {
      const server = await this.#deps.servers.forHost(tenantId, entry.server);
      if (!server) {
        throw new AppError(
          "unknown_mcp_server",
          `The agent's policy names the MCP server '${entry.server}', which does not exist; register it first.`,
          {
            mcp_servers: [entry.server],
          },
        );
      }
      try {
        const { credential } = await this.credential(await this.#outsideRun(tenantId, server), server);
        pins[entry.server] = pinTools(entry, await this.#deps.clients.tools(server, credential), keep[entry.server]);
      } catch (err) {
        if (!(err instanceof AppError) || !err.code.startsWith("mcp_server")) throw err;
        throw new AppError(
          err.code,
          `The MCP server '${entry.server}' could not be read to pin its tools: ${err.message} Save the agent again once it answers.`,
          { server: entry.server },
        );
      }
    }
    return pins;
  }

  /**
   * Pins the current version of the agent anew and tells what changed. A dry run only tells; with
   * `expect` (a dry run's pins_sha256) nothing is pinned unless the definitions read now are the
   * ones reviewed: a server cannot slip another description in between the look and the pin.
   */
  async repin(
    tenantId: string,
    agentId: string,
    options: { dryRun?: boolean; expect?: string } = {},
  ): Promise<McpPinDiff> {
    const { db } = this.#deps;
    const row = await db
      .selectFrom("agents")
      .select(["id", "version", "spec", "archived_at"])
      .where("tenant_id", "=", tenantId)
      .where("id", "=", agentId)
      .executeTakeFirst();
    if (!row) throw new AppError("not_found", `No agent '${agentId}'.`);
    const entries = parseAgentDefinition(row.spec).policy?.mcp ?? [];
    const before = await readPins(db, row.id, row.version);
    const after = await this.pin(tenantId, entries);
    const digest = pinsDigest(after);
    if (options.expect !== undefined && options.expect !== digest) {
      throw new AppError(
        "mcp_pins_changed",
        "The MCP servers' tool definitions changed since the differences you reviewed; nothing was pinned. Review them again (a dry run) and pin those.",
        { agent_id: row.id, pins_sha256: digest },
      );
    }
    if (!options.dryRun) await writePins(db, { agentId: row.id, version: row.version, tenantId }, after);
    return {
      agent_id: row.id,
      version: row.version,
      ...diffPins(before, after),
      pins: after,
      pins_sha256: digest,
      applied: !options.dryRun,
    };
  }

  /** Whose account an `oauth` server attaches outside a run: `endUser`'s, else the app's most recent active one. */
  async #outsideRun(tenantId: string, server: HostMcpServer, endUser?: string): Promise<Caller> {
    const caller: Caller = { tenantId, endUser: endUser ?? null, record: () => {} };
    if (server.auth.type !== "oauth" || endUser) return caller;
    const found = await this.#deps.db
      .selectFrom("oauth_accounts as a")
      .innerJoin("oauth_apps as p", "p.id", "a.app_id")
      .select("a.end_user")
      .where("a.tenant_id", "=", tenantId)
      .where("p.name", "=", server.auth.app)
      .where("a.status", "=", "active")
      .orderBy("a.updated_at", "desc")
      .limit(1)
      .executeTakeFirst();
    return { ...caller, endUser: found?.end_user ?? null };
  }
}
