/**
 * JSON the store holds, parsed through its protocol schema at the one place it is read. A row
 * that does not match is a broken store (an internal error the host logs), never a user's error.
 */
import { AgentDefinition, AgentSpec } from "@paddock/protocol";
import { z } from "zod";

export function parseStored<T extends z.ZodType>(schema: T, text: string, what: string): z.output<T> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`the stored ${what} is not JSON`);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`the stored ${what} does not match its schema: ${issue?.path.join(".")}: ${issue?.message}`);
  }
  return parsed.data;
}

/** An agent's definition (`agents.spec`, `agent_versions.spec`). */
export function parseAgentDefinition(text: string): AgentDefinition {
  return parseStored(AgentDefinition, text, "agent definition");
}

/** The digests of a snapshot's environment layers (`snapshots.layers`), top-most first. */
export function parseLayerDigests(text: string): string[] {
  return parseStored(LayerDigests, text, "layer list");
}
const LayerDigests = z.array(z.string());

/** The spec a run froze at trigger time (`runs.spec`). */
export function parseRunSpec(text: string): AgentSpec {
  return parseStored(AgentSpec, text, "run spec");
}

/**
 * A stored time (milliseconds since the epoch; Number() also takes a driver's bigint column given
 * as a string) as the API shows it: an ISO 8601 timestamp, or null for none.
 */
export function isoTime(ms: number | null): string | null {
  return ms === null ? null : new Date(Number(ms)).toISOString();
}
