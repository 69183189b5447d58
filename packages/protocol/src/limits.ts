import { z } from "zod";

/** Resource limits the host enforces on one sandbox. Every field has a default and a range. */
export const Limits = z
  .object({
    memory_mb: z.number().int().min(32).max(262_144).default(512),
    pids: z.number().int().min(16).max(65_536).default(256),
    cpus: z.number().min(0.05).max(256).default(1),
    timeout_s: z.number().int().min(1).max(86_400).default(600),
    disk_mb: z.number().int().min(8).max(1_048_576).default(512),
    log_kb: z.number().int().min(1).max(1_048_576).default(1024),
    artifacts_mb: z.number().int().min(0).max(1_048_576).default(256),
    /**
     * How long, in all, the run's calls may wait for people's approvals without that time counting
     * against timeout_s; waiting past it counts again.
     */
    max_wait_s: z.number().int().min(0).max(2_592_000).default(86_400),
  })
  .strict()
  .meta({ id: "Limits" });
export type Limits = z.infer<typeof Limits>;

export const DEFAULT_LIMITS: Limits = Limits.parse({});
