/**
 * MCP servers, as the API accepts and returns them: a remote MCP server (streamable HTTP, or the
 * older HTTP+SSE transport) the host connects to as the client, with the credential it attaches
 * (a secret, or the run's end user's OAuth account) like a bridge connection. An agent's
 * `policy.mcp` names the servers and tools its runs see at `$PADDOCK_BRIDGE_URL/mcp`; the tools'
 * definitions are pinned (hashed) when the agent is saved.
 */
import { z } from "zod";
import {
  BaseUrl,
  ConnectionAuth,
  ConnectionAuthInput,
  ConnectionRateLimit,
  HeaderName,
  SecretRef,
  secretFitsAuth,
} from "./bridge.ts";

/** What separates the server's name from the tool's in the names a run's MCP endpoint offers. */
export const MCP_TOOL_SEPARATOR = "__";

/** Defaults of an MCP server's optional fields. */
export const MCP_SERVER_DEFAULTS = { internal: false, timeout_ms: 30_000 } as const;

const mcpServerFields = {
  /** The server's MCP endpoint (its streamable HTTP URL, or its SSE URL for the older transport). */
  url: BaseUrl,
  auth: ConnectionAuth,
  /** Extra headers sent with every request (not credentials: those come from `secret` or `auth`). */
  headers: z
    .record(
      HeaderName,
      z
        .string()
        .max(1024)
        .regex(/^[\x20-\x7e]*$/, "printable ASCII"),
    )
    .refine((h) => Object.keys(h).length <= 32, "at most 32 headers")
    .default({}),
  /** True lets the URL resolve to private or loopback addresses (admin only). */
  internal: z.boolean().default(MCP_SERVER_DEFAULTS.internal),
  /** How long one request to the server may take (connecting included). */
  timeout_ms: z.number().int().min(100).max(300_000).default(MCP_SERVER_DEFAULTS.timeout_ms),
  /** At most this many requests of runs to the server (from this host), as a token bucket. */
  rate_limit: ConnectionRateLimit.optional(),
};

/** The body of `PUT /v1/mcp-servers/{name}`: creates the server or replaces it whole. */
export const McpServerPut = z
  .object({
    ...mcpServerFields,
    auth: ConnectionAuthInput,
    /** The name of the secret to attach; required unless auth is "none" or "oauth". */
    secret: SecretRef.optional(),
  })
  .strict()
  .superRefine(secretFitsAuth)
  .meta({ id: "McpServerPut" });
export type McpServerPut = z.infer<typeof McpServerPut>;
export type McpServerPutInput = z.input<typeof McpServerPut>;

/** An MCP server as the API returns it: the secret's name only, never its value. */
export const McpServer = z
  .object({
    name: z.string(),
    ...mcpServerFields,
    url: z.string(),
    secret: z.string().nullable(),
    created_at: z.string(),
    updated_at: z.string(),
  })
  .meta({ id: "McpServer" });
export type McpServer = z.infer<typeof McpServer>;

/** A tool as its server defines it: what is pinned. */
export const McpToolDefinition = z
  .object({
    name: z.string(),
    description: z.string().nullable(),
    input_schema: z.record(z.string(), z.unknown()),
  })
  .meta({ id: "McpToolDefinition" });
export type McpToolDefinition = z.infer<typeof McpToolDefinition>;

/** `GET /v1/mcp-servers/{name}/tools`: the server's tools as the host sees them now. */
export const McpToolList = z
  .object({ server: z.string(), tools: z.array(McpToolDefinition) })
  .meta({ id: "McpToolList" });
export type McpToolList = z.infer<typeof McpToolList>;

/** A pinned tool: its definition then and the sha256 of (name, description, input schema). */
export const McpPin = McpToolDefinition.extend({ sha256: z.string() }).meta({ id: "McpPin" });
export type McpPin = z.infer<typeof McpPin>;

/** An agent version's pins: server name → tool name → pin. */
export const McpPins = z.record(z.string(), z.record(z.string(), McpPin));
export type McpPins = z.infer<typeof McpPins>;

const PinRef = z.object({ server: z.string(), tool: z.string() });

/**
 * `POST /v1/agents/{id}/mcp-pin`: `dry_run` shows what pinning now would change and takes
 * nothing; `pins_sha256` (from a dry run's answer) pins only if the servers' definitions are still
 * those that were reviewed. Neither: pins the definitions as they are now.
 */
export const McpPinRequest = z
  .object({
    dry_run: z.boolean().default(false),
    pins_sha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/, "a sha256 in hex, from a dry run's answer")
      .optional(),
  })
  .strict()
  .refine((r) => !(r.dry_run && r.pins_sha256), "give dry_run or pins_sha256, not both")
  .meta({ id: "McpPinRequest" });
export type McpPinRequest = z.infer<typeof McpPinRequest>;

/** What re-pinning changed (or, in a dry run, would change). */
export const McpPinDiff = z
  .object({
    agent_id: z.string(),
    version: z.number().int(),
    added: z.array(PinRef.extend({ description: z.string().nullable() })),
    removed: z.array(PinRef.extend({ description: z.string().nullable() })),
    changed: z.array(
      PinRef.extend({
        old_description: z.string().nullable(),
        new_description: z.string().nullable(),
        schema_changed: z.boolean(),
      }),
    ),
    pins: McpPins,
    /** sha256 of the pins: what `POST …/mcp-pin {pins_sha256}` pins only if it still holds. */
    pins_sha256: z.string(),
    /** False for a dry run: the pins shown are not taken. */
    applied: z.boolean(),
  })
  .meta({ id: "McpPinDiff" });
export type McpPinDiff = z.infer<typeof McpPinDiff>;
