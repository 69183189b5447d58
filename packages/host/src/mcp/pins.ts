/**
 * Pins of MCP tools: the definition (name, description, input schema) of each tool an agent
 * version's policy allows, hashed when the agent is saved. At run time only pinned tools whose
 * server still defines them identically are offered and called; a changed one is refused until
 * someone re-pins. Pins are the allow list: a tool new on the server is offered only once pinned,
 * even when a glob of the policy matches it. What is pinned is all a run's endpoint offers of a
 * tool (name, description, input schema): its title, annotations and output schema are neither
 * offered to runs nor pinned, so a change to them changes nothing a run's model reads.
 */
import { createHash } from "node:crypto";
import type { McpPinDiff, McpPins, McpPolicyEntry, McpToolDefinition } from "@paddock/protocol";
import { McpPins as McpPinsSchema } from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import type { Database } from "../store/schema.ts";
import { parseStored } from "../store/stored.ts";

type Db = Kysely<Database> | Transaction<Database>;

/** JSON with object keys in sorted order, so equal values hash the same however the server ordered them. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** sha256 (hex) of a tool's name, description and input schema. */
export function toolHash(tool: McpToolDefinition): string {
  return createHash("sha256")
    .update(canonical([tool.name, tool.description, tool.input_schema]))
    .digest("hex");
}

/** sha256 (hex) of a set of pins: every server's tools and their definitions' hashes. */
export function pinsDigest(pins: McpPins): string {
  const hashes = Object.fromEntries(
    Object.entries(pins).map(([server, tools]) => [
      server,
      Object.fromEntries(Object.entries(tools).map(([name, pin]) => [name, pin.sha256])),
    ]),
  );
  return createHash("sha256").update(canonical(hashes)).digest("hex");
}

/** A glob of tool names (`*`: any run of characters) as a test. */
export function globMatcher(globs: readonly string[]): (name: string) => boolean {
  if (globs.length === 0) return () => false;
  const source = globs
    .map((g) =>
      g
        .split("*")
        .map((part) => part.replace(/[.+?^${}()|[\]\\/-]/g, "\\$&"))
        .join(".*"),
    )
    .join("|");
  const re = new RegExp(`^(?:${source})$`);
  return (name) => re.test(name);
}

/**
 * The pins of one server's entry: its tools whose names the entry's globs match, each pinned as
 * defined in `live`, except those `keep` pinned already (kept as they were: saving again never
 * re-pins silently).
 */
export function pinTools(
  entry: McpPolicyEntry,
  live: readonly McpToolDefinition[],
  keep: McpPins[string] = {},
): McpPins[string] {
  const allowed = globMatcher(entry.tools);
  const pins: McpPins[string] = {};
  for (const tool of live) {
    // A server's "__proto__" would set the object's prototype rather than pin anything.
    if (!allowed(tool.name) || tool.name === "__proto__") continue;
    const kept = Object.hasOwn(keep, tool.name) ? keep[tool.name] : undefined;
    pins[tool.name] = kept ?? { ...tool, sha256: toolHash(tool) };
  }
  return pins;
}

/** What changed from `before` to `after`. */
export function diffPins(before: McpPins, after: McpPins): Pick<McpPinDiff, "added" | "removed" | "changed"> {
  const diff: Pick<McpPinDiff, "added" | "removed" | "changed"> = { added: [], removed: [], changed: [] };
  const servers = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  for (const server of servers) {
    const old = before[server] ?? {};
    const now = after[server] ?? {};
    for (const tool of [...new Set([...Object.keys(old), ...Object.keys(now)])].sort()) {
      const a = old[tool];
      const b = now[tool];
      if (!a && b) diff.added.push({ server, tool, description: b.description });
      else if (a && !b) diff.removed.push({ server, tool, description: a.description });
      else if (a && b && a.sha256 !== b.sha256) {
        diff.changed.push({
          server,
          tool,
          old_description: a.description,
          new_description: b.description,
          schema_changed: canonical(a.input_schema) !== canonical(b.input_schema),
        });
      }
    }
  }
  return diff;
}

/** The pins of an agent version; {} when it has none. */
export async function readPins(db: Db, agentId: string, version: number): Promise<McpPins> {
  const row = await db
    .selectFrom("mcp_pins")
    .select("pins")
    .where("agent_id", "=", agentId)
    .where("version", "=", version)
    .executeTakeFirst();
  return row ? parseStored(McpPinsSchema, row.pins, "MCP pins") : {};
}

/** Stores (or replaces) an agent version's pins. */
export async function writePins(
  db: Db,
  key: { agentId: string; version: number; tenantId: string },
  pins: McpPins,
): Promise<void> {
  const now = Date.now();
  const text = JSON.stringify(pins);
  const updated = await db
    .updateTable("mcp_pins")
    .set({ pins: text, updated_at: now })
    .where("agent_id", "=", key.agentId)
    .where("version", "=", key.version)
    .executeTakeFirst();
  if (Number(updated.numUpdatedRows) > 0) return;
  await db
    .insertInto("mcp_pins")
    .values({ agent_id: key.agentId, version: key.version, tenant_id: key.tenantId, pins: text, updated_at: now })
    .execute();
}
