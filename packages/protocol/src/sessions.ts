/** Environment edit sessions: the API's request and response shapes. */
import { z } from "zod";
import { Snapshot } from "./api.ts";

/** Host name patterns of the default egress allowlist: Debian's and npm's package registries. */
export const DEFAULT_EGRESS_ALLOW: readonly string[] = ["deb.debian.org", "security.debian.org", "registry.npmjs.org"];

const HostPattern = z
  .string()
  .min(1)
  .max(253)
  .regex(
    /^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$/,
    "a host name such as deb.debian.org, or *.example.org for its subdomains",
  );

export const EnvSessionCreate = z
  .object({
    /** Host names the session may reach through the egress proxy; replaces the default list. */
    allow: z.array(HostPattern).max(100).optional(),
    /** Size of the session's writable layer. */
    disk_mb: z.number().int().min(16).max(1_048_576).optional(),
    memory_mb: z.number().int().min(64).max(262_144).optional(),
    /** A session nobody used for this long is discarded. */
    idle_timeout_s: z.number().int().min(60).max(86_400).optional(),
  })
  .strict()
  .meta({ id: "EnvSessionCreate" });
export type EnvSessionCreate = z.infer<typeof EnvSessionCreate>;

export const EnvSessionStatus = z.enum(["active", "frozen", "discarded", "expired", "lost"]);

export const EnvSession = z
  .object({
    id: z.string(),
    agent_id: z.string(),
    status: EnvSessionStatus,
    /** The snapshot version the session started from. */
    base_version: z.number().int(),
    allow: z.array(z.string()),
    disk_mb: z.number().int(),
    memory_mb: z.number().int(),
    idle_timeout_s: z.number().int(),
    commands: z.number().int(),
    busy: z.boolean(),
    disk: z.object({ used_bytes: z.number().int(), size_bytes: z.number().int(), full: z.boolean() }).nullable(),
    egress: z.object({ allowed: z.number().int(), refused: z.number().int() }),
    created_at: z.string(),
    last_used_at: z.string(),
    ended_at: z.string().nullable(),
    end_reason: z.string().nullable(),
    frozen_version: z.number().int().nullable(),
  })
  .meta({ id: "EnvSession" });
export type EnvSession = z.infer<typeof EnvSession>;

export const MAX_EXEC_STDIN_BYTES = 1024 * 1024;

export const EnvExec = z
  .object({
    /** The command and its arguments, run directly (wrap in ["sh", "-c", "..."] for a shell). */
    argv: z.array(z.string().max(65_536)).min(1).max(1024),
    stdin: z.string().max(MAX_EXEC_STDIN_BYTES).optional(),
    timeout_s: z.number().int().min(1).max(3600).optional(),
    cwd: z.string().startsWith("/").max(4096).optional(),
  })
  .strict()
  .meta({ id: "EnvExec" });
export type EnvExec = z.infer<typeof EnvExec>;

export const EnvExecResult = z
  .object({
    exit_code: z.number().int().nullable(),
    signal: z.string().nullable(),
    timed_out: z.boolean(),
    oom: z.boolean(),
    stdout: z.string(),
    stderr: z.string(),
    stdout_truncated: z.boolean(),
    stderr_truncated: z.boolean(),
    ms: z.number(),
    /** The session's writable layer is (nearly) full: the command may have failed for want of space. */
    disk_full: z.boolean(),
  })
  .meta({ id: "EnvExecResult" });
export type EnvExecResult = z.infer<typeof EnvExecResult>;

export const EgressEntry = z
  .object({
    seq: z.number().int(),
    time: z.string(),
    method: z.string(),
    host: z.string(),
    port: z.number().int(),
    decision: z.enum(["allowed", "refused"]),
    reason: z.string().nullable(),
    status: z.number().int().nullable(),
    bytes_in: z.number().int(),
    bytes_out: z.number().int(),
    ms: z.number(),
  })
  .meta({ id: "EgressEntry" });
export type EgressEntry = z.infer<typeof EgressEntry>;

export const FreezeResult = z
  .object({
    snapshot: Snapshot,
    layer: z.string(),
    bytes: z.number().int(),
    entries: z.number().int(),
    reused: z.boolean(),
    session: EnvSession,
  })
  .meta({ id: "FreezeResult" });

/**
 * Whether `path` can name a sandbox path left out of a frozen layer: absolute and normalized (no
 * empty, "." or ".." segment, so no trailing "/"), not "/" itself, no NUL. The schema below and
 * the freeze both use it, so the API refuses exactly what the freeze would.
 * @example isFreezeExcludePath("/var/cache/apt/archives") // true; "/tmp/", "/a/../b" and "/" are not
 */
export function isFreezeExcludePath(path: string): boolean {
  if (!path.startsWith("/") || path.includes("\0")) return false;
  return path
    .split("/")
    .slice(1)
    .every((part) => part !== "" && part !== "." && part !== "..");
}

/** Why `path` was refused as an excluded path (the entry is quoted, so the caller sees which). */
export function freezeExcludeMessage(path: unknown): string {
  return `excluded path must be absolute, normalized and not "/": ${JSON.stringify(path)}`;
}

/** One sandbox path to leave out of a frozen layer. */
export const FreezeExcludePath = z
  .string()
  .max(4096)
  .refine(isFreezeExcludePath, { error: (issue) => freezeExcludeMessage(issue.input) });

export const EnvFreeze = z
  .object({
    /** Sandbox paths left out of the layer; replaces the default list (/tmp, /run, apt's cache...). */
    exclude: z.array(FreezeExcludePath).max(1000).optional(),
  })
  .strict()
  .meta({ id: "EnvFreeze" });
export type EnvFreeze = z.infer<typeof EnvFreeze>;
