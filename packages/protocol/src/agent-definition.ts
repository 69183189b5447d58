/**
 * What an agent runs, as the host stores it: the definition on the agent (and in each of its
 * versions), and that definition with its environment frozen into each run. The host parses
 * stored JSON through these schemas where it reads it from the store, nowhere else.
 *
 * Definitions stored by earlier versions of the host must keep parsing: fields added since are
 * optional (or have defaults), and keys this version does not know are dropped (agents stored
 * before environments were snapshots also held `image` and `layers`).
 */
import { z } from "zod";
import { AgentPolicy } from "./bridge.ts";
import { AgentBudget } from "./gateway.ts";
import { Limits } from "./limits.ts";
import { RetryPolicy } from "./triggers.ts";

/** The built-in agent's loop: its instructions (system prompt), model, tools and step bound. */
export const BuiltinDefinition = z
  .object({
    instructions: z.string(),
    model: z.string(),
    tools: z.array(z.string()),
    max_steps: z.number().int(),
  })
  .meta({ id: "BuiltinDefinition" });
export type BuiltinDefinition = z.infer<typeof BuiltinDefinition>;

/** What an agent runs: its command (or built-in agent), variables, limits, files and policies. */
export const AgentDefinition = z.object({
  /** The built-in agent's command starts the runner in agent mode. */
  command: z.array(z.string()).min(1),
  env: z.record(z.string(), z.string()),
  limits: Limits,
  cwd: z.string().min(1),
  /** The agent's files (at /app), by path and size; their content is in the environment. */
  files: z.array(z.object({ path: z.string(), size: z.number().int().min(0) })),
  /** Digest of the environment layer holding those files; absent for none, or in older definitions. */
  files_layer: z.string().optional(),
  /**
   * The bridge connections and agents the agent's runs may call; a run's token carries a scope
   * for each. Absent in definitions stored before agents had policies, which means none.
   */
  policy: AgentPolicy.optional(),
  /** Credits budgets and LLM rate limits; absent means only the tenant's balance bounds spending. */
  budget: AgentBudget.optional(),
  /** How failed attempts are retried; absent means one attempt. */
  retry: RetryPolicy.optional(),
  /** Runs of this agent at once; absent means no limit of its own. */
  max_concurrent_runs: z.number().int().min(1).optional(),
  /** Seconds a run may wait in the queue before it expires. */
  queue_ttl_s: z.number().int().min(1).optional(),
  /** The built-in agent's loop (the command then starts it from the runner layer). */
  builtin: BuiltinDefinition.optional(),
});
export type AgentDefinition = z.infer<typeof AgentDefinition>;

/** An agent's definition with its environment and versions, frozen into each run at trigger time. */
export const AgentSpec = AgentDefinition.extend({
  /** Digest of the base image. */
  image: z.string().min(1),
  /** Digests of environment layers, top-most first. */
  layers: z.array(z.string()),
  /** The runner digest the snapshot names ("" when unknown); the current runner is swapped in. */
  runner: z.string().default(""),
  /** The environment version (runs triggered before environments had versions ran version 1). */
  snapshot_version: z.number().int().min(1).default(1),
  /** The definition version (runs triggered before definitions had versions ran version 1). */
  agent_version: z.number().int().min(1).default(1),
});
export type AgentSpec = z.infer<typeof AgentSpec>;
