/**
 * The host's configuration: one schema, parsed once when the host starts, with every default in
 * it. What is not data (the log line writer, test overrides) is passed beside it as HostHooks.
 */
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { Limits } from "@paddock/protocol";
import { z } from "zod";
import { parseBlobsUrl } from "./blobs/open-store.ts";
import { SOURCE_LIMIT_DEFAULTS } from "./bridge/source-limits.ts";
import type { EgressProxyTestOverrides } from "./egress/egress-proxy.ts";
import type { Log } from "./logs/log.ts";
import { NODE_ID } from "./nodes/nodes.ts";
import { DEFAULT_RANGE } from "./sandbox/linux/network.ts";

/**
 * The most any agent may ask for; tenants choose limits below these. Defaults: 8 GiB memory,
 * 4096 pids, every core, 24 h, 8 GiB disk (RAM-backed), 16 MiB of logs, 4 GiB of artifacts, a week
 * of waiting for approvals.
 */
const MaxLimits = z
  .object({
    memory_mb: Limits.shape.memory_mb.unwrap().default(8192),
    pids: Limits.shape.pids.unwrap().default(4096),
    cpus: Limits.shape.cpus.unwrap().default(() => availableParallelism()),
    timeout_s: Limits.shape.timeout_s.unwrap().default(86_400),
    disk_mb: Limits.shape.disk_mb.unwrap().default(8192),
    log_kb: Limits.shape.log_kb.unwrap().default(16_384),
    artifacts_mb: Limits.shape.artifacts_mb.unwrap().default(4096),
    max_wait_s: Limits.shape.max_wait_s.unwrap().default(7 * 86_400),
  })
  .strict();

const PerMinute = z.number().int().min(1);

export const HostConfig = z
  .object({
    dataDir: z.string().min(1),
    port: z.number().int().min(0).max(65_535),
    /** Address to listen on. */
    listen: z.string().min(1).default("127.0.0.1"),
    /**
     * The PostgreSQL store several hosts may share (`postgres://USER@HOST/DB`, or
     * `postgres://USER@/DB?host=/socket/dir`); default SQLite in <dataDir>/paddock.db.
     */
    database: z
      .string()
      .regex(/^postgres(ql)?:\/\//, "a postgres:// URL")
      .optional(),
    /** Where base images live; default <dataDir>/images. */
    imagesDir: z.string().min(1).optional(),
    /**
     * The shared blob store (artifacts, packed layers): file:///FOLDER or
     * s3://BUCKET?endpoint=…&region=…&force_path_style=…; default the data folder's own blobs/.
     */
    blobs: z
      .string()
      .superRefine((url, ctx) => {
        try {
          parseBlobsUrl(url);
        } catch (err) {
          ctx.addIssue({ code: "custom", message: err instanceof Error ? err.message : String(err) });
        }
      })
      .optional(),
    /** This node's copies of shared blobs are trimmed to this size at start, least used first (default 20 GiB). */
    blobCacheMb: z.number().int().min(0).default(20_480),
    /** Shared blobs nothing references are deleted once older than this (default one hour). */
    blobGraceMs: z.number().int().min(0).default(3_600_000),
    /** How often the leader sweeps the blob store of what nothing references (default hourly). */
    blobGcIntervalMs: z.number().int().min(100).default(3_600_000),
    /** Root runs at once on this node (`serve --max-runs`). */
    maxConcurrentRuns: z.number().int().min(1).default(32),
    /** Root runs of one tenant at once over every node (`serve --max-runs-per-tenant`); default no limit beyond the nodes'. */
    maxRunsPerTenant: z.number().int().min(1).optional(),
    /**
     * This node's id among the nodes sharing the store (`serve --node-id`); default one derived
     * from the machine's name and the data directory, the same at every start.
     */
    nodeId: z.string().regex(NODE_ID, "letters, digits, '.', '_' and '-', at most 63").optional(),
    /** The API URL other nodes reach this one at (`serve --internal-url`); default its own URL. */
    internalUrl: z.url().optional(),
    /**
     * The URL people reach this host at (`serve --public-url`), for the links notifications carry
     * (an approval's one-time link, a run's page); default the internal URL, else its own URL.
     * End users' connect links and the OAuth callback are on it too (default: where the API was called).
     */
    publicUrl: z.url().optional(),
    /**
     * How long a sandbox's call waiting for approval is held open before it is answered
     * approval_pending and asks again (below the clients' own header timeouts).
     */
    approvalHoldMs: z.number().int().min(10).max(280_000).default(50_000),
    /**
     * What one sandbox may hold open at the bridge at once, over every route on it (bridge
     * calls, the LLM gateway, MCP, agent calls): requests in flight (past it: 429 `bridge_busy`)
     * and TCP connections (past it: closed at accept).
     */
    bridgeLimits: z
      .object({
        requestsPerSandbox: z.number().int().min(1).default(SOURCE_LIMIT_DEFAULTS.requestsPerSandbox),
        connectionsPerSandbox: z.number().int().min(1).default(SOURCE_LIMIT_DEFAULTS.connectionsPerSandbox),
      })
      .strict()
      .prefault({}),
    /** How long a run's claim holds without renewal; renewed with the node's heartbeat at a third of it. */
    leaseMs: z.number().int().min(1000).default(30_000),
    /** The IPv4 range this node's sandboxes take addresses from (`serve --sandbox-cidr`); also sandboxNetwork.range. */
    sandboxCidr: z.string().min(1).optional(),
    heartbeatMs: z.number().int().min(1).default(2000),
    /** How long a silent runner is believed alive; default five heartbeats, at least 15 s. */
    heartbeatTimeoutMs: z.number().int().min(1).optional(),
    maxLimits: MaxLimits.prefault({}),
    /** Sandboxes booted ahead for agents' next runs (0 disables), and their idle lifetime. */
    warmSandboxes: z.number().int().min(0).default(4),
    warmIdleMs: z.number().int().min(0).default(120_000),
    /** Environment edit sessions open at once. */
    maxSessions: z.number().int().min(1).default(16),
    /**
     * Non-public addresses or CIDR ranges sessions may reach when an allowlisted name resolves
     * there, such as an internal package mirror (default none: only public addresses).
     */
    egressTrustedAddresses: z.array(z.string()).default([]),
    /** The master key's file (see secrets/master-key.ts); default $PADDOCK_MASTER_KEY, else DATA_DIR/master.key. */
    masterKeyFile: z.string().min(1).optional(),
    /**
     * A file holding the token that may read GET /metrics beside the admin key (`serve
     * --metrics-token-file`): at least 16 characters, surrounding whitespace ignored. Default none.
     */
    metricsTokenFile: z.string().min(1).optional(),
    /** Log lines as JSON (one object a line) or as text for people; default JSON unless stderr is a terminal. */
    logFormat: z.enum(["json", "pretty"]).optional(),
    /** Earlier master keys' files: what they sealed is re-sealed under the master key at start. */
    oldMasterKeyFiles: z.array(z.string().min(1)).default([]),
    /** Sandbox networks: the IPv4 range this host claims a block of (default 10.209.0.0/16). */
    sandboxNetwork: z.object({ range: z.string().optional() }).strict().default({}),
    /** Run tokens: lifetime (default 10 minutes) and allowed clock skew (default 5 s). */
    runTokens: z
      .object({ ttlMs: z.number().int().min(1000).optional(), clockToleranceS: z.number().min(0).optional() })
      .strict()
      .default({}),
    /** How often due schedules are looked for; 0 leaves it to the caller of `scheduler.tick` (tests). */
    schedulerTickMs: z.number().int().min(0).default(1000),
    /**
     * Credits granted to the host's own tenant (the admin's) when a fresh store creates it, so that
     * a first model call has something to spend (`serve --starting-credits`; 0 grants none).
     * Tenants made later through the API start at 0.
     */
    startingCredits: z.number().min(0).max(1_000_000).default(10),
    /**
     * How long this host reuses an end user's opened OAuth access token before reading its account
     * again (0: every bridge call reads it). An account revoked or reconnected through another
     * node is seen here after at most this long; a token near expiry is always read again.
     */
    accountTokenCacheMs: z.number().int().min(0).max(60_000).default(5000),
    /** Notifications: the first retry's delay (doubling per attempt, up to an hour, with jitter). */
    notificationBackoffMs: z.number().int().min(1).default(5000),
    /** Notifications: one attempt's time limit (connect, send, answer). */
    notificationTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
    /** Notifications: how long a delivery is retried before it fails (default a day). */
    notificationRetryForMs: z.number().int().min(0).default(86_400_000),
    /**
     * The OTLP/HTTP endpoint traces go to, as OTEL_EXPORTER_OTLP_ENDPOINT names it (its
     * /v1/traces); none: no traces, and the OpenTelemetry SDK is never loaded.
     */
    otlpEndpoint: z.url({ protocol: /^https?$/ }).optional(),
    /** Prompt and completion content (and tools' arguments and results) in spans (`serve --trace-content`). */
    traceContent: z.boolean().default(false),
    /** LLM rate limits every tenant gets (requests and tokens per minute); default none. */
    llmTenantLimits: z
      .object({ requestsPerMinute: PerMinute.optional(), tokensPerMinute: PerMinute.optional() })
      .strict()
      .optional(),
  })
  .transform((c) => ({
    ...c,
    imagesDir: c.imagesDir ?? join(c.dataDir, "images"),
    sandboxCidr: c.sandboxCidr ?? c.sandboxNetwork.range ?? DEFAULT_RANGE,
    heartbeatTimeoutMs: c.heartbeatTimeoutMs ?? Math.max(15_000, c.heartbeatMs * 5),
  }));
export type HostConfig = z.output<typeof HostConfig>;

/** What a host is given beside its configuration's data. */
export interface HostHooks {
  /** Where log lines go; default stderr in `logFormat` (see logs/log.ts). */
  log?: Log;
  /**
   * Tests only: lets sessions' egress proxies resolve names with `resolve` and reach loopback
   * stand-ins for registries. Never set outside tests.
   */
  testOnly?: { egress: EgressProxyTestOverrides; resolve: (host: string) => Promise<string[]> };
}

/** What `startHost` takes: the configuration before its defaults, and the hooks. */
export type HostConfigInput = z.input<typeof HostConfig> & HostHooks;

/**
 * The configuration with every default filled in; a value out of range is an error naming it.
 * @example resolveHostConfig({ dataDir: "/var/lib/paddock", port: 7420 }).maxConcurrentRuns // 32
 */
export function resolveHostConfig(input: HostConfigInput): HostConfig {
  const parsed = HostConfig.safeParse(input);
  if (!parsed.success) throw new Error(`invalid host configuration:\n${z.prettifyError(parsed.error)}`);
  return parsed.data;
}
