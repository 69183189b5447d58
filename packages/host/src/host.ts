/**
 * The composition root of a host: opens the store, bootstraps identity, prepares the runner layer,
 * cleans up after a previous host that died, starts the engine and serves the API.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdir, readFile, realpath, rm, writeFile } from "node:fs/promises";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { serve } from "@hono/node-server";
import { AppError, type Limits, toMicro } from "@paddock/protocol";
import { Agents, runSpec } from "./agents/agents.ts";
import { createApi } from "./api/app.ts";
import { attachShellSocket } from "./api/shell-socket.ts";
import { BlobStore } from "./artifacts/blob-store.ts";
import { Bridge } from "./bridge/bridge.ts";
import { Connections } from "./bridge/connections.ts";
import { LiveSandboxes } from "./bridge/live.ts";
import { TokenBucket } from "./bridge/rate-limit.ts";
import { RunTokens } from "./bridge/tokens.ts";
import type { EgressProxyTestOverrides } from "./egress/egress-proxy.ts";
import { Engine } from "./engine/engine.ts";
import { EventLog } from "./engine/event-log.ts";
import { Journal } from "./engine/journal.ts";
import { RunnerRegistry } from "./engine/runner-registry.ts";
import type { AgentDefinition } from "./engine/runs.ts";
import { RunRepository } from "./engine/runs.ts";
import { EnvSessions } from "./envs/sessions.ts";
import { Gateway, type GatewayBudget } from "./gateway/gateway.ts";
import { Ledger } from "./gateway/ledger.ts";
import { Providers } from "./gateway/providers.ts";
import { collectGarbage } from "./gc.ts";
import { Identity } from "./identity/identity.ts";
import { ImageStore } from "./images/image-store.ts";
import { LayerStore } from "./images/layer-store.ts";
import { AGENT_USER } from "./images/layout.ts";
import { RunnerLayers } from "./images/runner-layers.ts";
import type { SandboxDriver } from "./sandbox/driver.ts";
import { LinuxSandboxDriver } from "./sandbox/linux/linux-driver.ts";
import { SandboxNetwork } from "./sandbox/linux/network.ts";
import { openVault } from "./secrets/master-key.ts";
import { rotateMasterKey, Secrets } from "./secrets/secrets.ts";
import { newId } from "./store/ids.ts";
import { migrate } from "./store/migrations.ts";
import { openSqlite } from "./store/sqlite.ts";
import { AgentCalls } from "./triggers/agent-calls.ts";
import { Scheduler } from "./triggers/scheduler.ts";
import { Webhooks } from "./triggers/webhooks.ts";

export const VERSION = "0.1.0";

export interface HostConfig {
  dataDir: string;
  port: number;
  /** Address to listen on; default 127.0.0.1. */
  listen?: string;
  /** Where base images live; default <dataDir>/images. */
  imagesDir?: string;
  maxConcurrentRuns?: number;
  heartbeatMs?: number;
  heartbeatTimeoutMs?: number;
  /**
   * The most any agent may ask for; tenants choose limits below these. Defaults: 8 GiB memory,
   * 4096 pids, every core, 24 h, 8 GiB disk (RAM-backed), 16 MiB of logs, 4 GiB of artifacts.
   */
  maxLimits?: Partial<Limits>;
  /** Sandboxes booted ahead for agents' next runs (default 4; 0 disables), and their idle lifetime. */
  warmSandboxes?: number;
  warmIdleMs?: number;
  /** Environment edit sessions open at once (default 16). */
  maxSessions?: number;
  /**
   * Non-public addresses or CIDR ranges sessions may reach when an allowlisted name resolves
   * there, such as an internal package mirror (default none: only public addresses).
   */
  egressTrustedAddresses?: string[];
  log?: (line: string) => void;
  /**
   * Tests only: lets sessions' egress proxies resolve names with `resolve` and reach loopback
   * stand-ins for registries. Never set outside tests.
   */
  testOnly?: { egress: EgressProxyTestOverrides; resolve: (host: string) => Promise<string[]> };
  /** The master key's file (see secrets/master-key.ts); default $PADDOCK_MASTER_KEY, else DATA_DIR/master.key. */
  masterKeyFile?: string;
  /** Earlier master keys' files: what they sealed is re-sealed under the master key at start. */
  oldMasterKeyFiles?: string[];
  /** Sandbox networks: the IPv4 range this host claims a block of (default 10.209.0.0/16). */
  sandboxNetwork?: { range?: string };
  /** Run tokens: lifetime (default 10 minutes) and allowed clock skew (default 5 s). */
  runTokens?: { ttlMs?: number; clockToleranceS?: number };
  /** How often due schedules are looked for; 0 leaves it to the caller of `scheduler.tick` (tests). */
  schedulerTickMs?: number;
  /** LLM rate limits every tenant gets (requests and tokens per minute); default none. */
  llmTenantLimits?: { requestsPerMinute?: number; tokensPerMinute?: number };
}

export interface RunningHost {
  url: string;
  port: number;
  /** The admin API key, only on the first start of a data directory. */
  adminKey: string | null;
  adminKeyPath: string;
  /** This host's sandbox driver, for diagnostics. */
  driver: SandboxDriver;
  /** Warm sandboxes waiting for runs. */
  readonly warmCount: number;
  /** Where this host mounts its sandboxes. */
  runDir: string;
  /** The bridge as sandboxes reach it (the host side of their links). */
  bridgeUrl: string;
  /** The tenants' secrets; `reveal` is for host-side code such as the bridge, never for an API answer. */
  secrets: Secrets;
  /** Cron schedules (tests drive `tick` with their own clock). */
  scheduler: Scheduler;
  close(): Promise<void>;
}

const RUNNER_BUNDLE = new URL("../../runner/dist/runner.mjs", import.meta.url).pathname;

async function ensureRunnerBundle(): Promise<string> {
  if (!existsSync(RUNNER_BUNDLE)) await import("../../runner/build.ts");
  return RUNNER_BUNDLE;
}

/** One host per data directory: a second one would fight the first over runs and sandboxes. */
async function lock(dataDir: string): Promise<() => Promise<void>> {
  const file = join(dataDir, "host.pid");
  const previous = Number((await readFile(file, "utf8").catch(() => "")).trim());
  if (previous && previous !== process.pid && existsSync(`/proc/${previous}`)) {
    const cmd = await readFile(`/proc/${previous}/cmdline`, "utf8").catch(() => "");
    if (cmd.includes("node")) {
      throw new Error(`another host (pid ${previous}) is serving ${dataDir}; stop it first`);
    }
  }
  await writeFile(file, `${process.pid}\n`);
  return () => rm(file, { force: true });
}

export async function startHost(config: HostConfig): Promise<RunningHost> {
  const log = config.log ?? ((line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`));
  await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  const dataDir = await realpath(config.dataDir);
  const unlock = await lock(dataDir);
  const instance = createHash("sha256").update(dataDir).digest("hex").slice(0, 10);

  const db = openSqlite(join(dataDir, "paddock.db"));
  /** What a failed start has to stop again, last started first. */
  const undo: (() => Promise<unknown>)[] = [];
  try {
    await migrate(db);
    const events = new EventLog(db);
    const runs = new RunRepository(db, events);
    const identity = new Identity(db);
    const images = new ImageStore({ imagesDir: config.imagesDir ?? join(dataDir, "images") });
    const layers = new LayerStore({ layersDir: join(dataDir, "layers"), uid: AGENT_USER.uid, gid: AGENT_USER.gid });
    const runnersDir = join(dataDir, "runners");
    const runners = new RunnerRegistry(db, new RunnerLayers({ runnersDir }), runnersDir, log);
    const blobs = new BlobStore(join(dataDir, "blobs"));
    const maxLimits: Limits = {
      memory_mb: 8192,
      pids: 4096,
      cpus: availableParallelism(),
      timeout_s: 86_400,
      disk_mb: 8192,
      log_kb: 16_384,
      artifacts_mb: 4096,
      ...config.maxLimits,
    };
    const agents = new Agents(db, images, layers, runners, maxLimits);
    const connections = new Connections(db);
    const { vault, source: keySource } = await openVault({
      dataDir,
      masterKeyFile: config.masterKeyFile,
      oldMasterKeyFiles: config.oldMasterKeyFiles,
    });
    const resealed = await rotateMasterKey(db, vault);
    if (resealed > 0) log(`re-sealed ${resealed} secret(s) and signing key(s) under master key ${vault.masterKeyId}`);
    log(`master key ${vault.masterKeyId} from ${keySource}`);
    const secrets = new Secrets(db, vault);
    const tokens = new RunTokens({
      db,
      sealer: vault,
      issuer: `paddock:${instance}`,
      ...(config.runTokens?.ttlMs ? { ttlMs: config.runTokens.ttlMs } : {}),
      ...(config.runTokens?.clockToleranceS !== undefined ? { clockToleranceS: config.runTokens.clockToleranceS } : {}),
    });
    await tokens.start();
    const runDir = `/run/paddock/${instance}`;
    // Sandboxes' networks and the bridge on the host side of their links.
    const network = new SandboxNetwork({
      instance,
      ...(config.sandboxNetwork?.range ? { range: config.sandboxNetwork.range } : {}),
    });
    undo.push(() => network.close());
    await network.start();
    const live = new LiveSandboxes();
    // The LLM gateway: providers' keys stay here, every call is metered against the ledger.
    const providers = new Providers(db);
    const ledger = new Ledger(db);
    const abandoned = await ledger.settleAbandoned();
    if (abandoned > 0)
      log(`billed ${abandoned} model call(s) left open by the previous host at their reserved worst case`);
    const rateLimits = new TokenBucket();
    const budgets = new Map<string, GatewayBudget>();
    const journal = new Journal(db);
    const gateway = new Gateway({
      journal,
      providers,
      ledger,
      secrets,
      rateLimits,
      // Agents' definitions never change once created: their budgets are read once and kept.
      budgetOf: async (tenantId, agentId) => {
        const key = `${tenantId}/${agentId}`;
        const known = budgets.get(key);
        if (known) return known;
        const row = await db
          .selectFrom("agents")
          .select("spec")
          .where("id", "=", agentId)
          .where("tenant_id", "=", tenantId)
          .executeTakeFirst();
        const budget = row ? (JSON.parse(row.spec) as AgentDefinition).budget : undefined;
        const limits = {
          ...(budget?.per_run !== undefined ? { perRun: toMicro(budget.per_run) } : {}),
          ...(budget?.total !== undefined ? { agentTotal: toMicro(budget.total) } : {}),
          ...(budget?.requests_per_minute ? { requestsPerMinute: budget.requests_per_minute } : {}),
          ...(budget?.tokens_per_minute ? { tokensPerMinute: budget.tokens_per_minute } : {}),
        };
        if (row) {
          if (budgets.size >= 10_000) budgets.clear();
          budgets.set(key, limits);
        }
        return limits;
      },
      ...(config.llmTenantLimits ? { tenantLimits: config.llmTenantLimits } : {}),
      log,
    });
    undo.push(async () => gateway.close());
    // Agent-to-agent calls wake the engine, which is made below.
    let wakeEngine = () => {};
    const agentCalls = new AgentCalls({ db, agents, runs, notify: () => wakeEngine(), journal });
    const routes = [agentCalls, gateway];
    const bridge = new Bridge({ live, tokens, connections, secrets, rateLimits, log, routes, journal });
    undo.push(() => bridge.close());
    const bridgePort = await bridge.listen(network.hostAddress);
    await network.allowPort(bridgePort);
    const bridgeUrl = `http://${network.hostAddress}:${bridgePort}`;
    const driver = new LinuxSandboxDriver({ runDir, instance, network });

    // This host's runner becomes current unless it already is (deploying a host deploys its runner).
    await runners.ensureCurrent({ bundlePath: await ensureRunnerBundle(), nodePath: process.execPath });
    const gc = await collectGarbage({ db, snapshots: agents.snapshots, runners, layersDir: join(dataDir, "layers") });
    if (gc.runners.length + gc.layers.length > 0) {
      log(`removed ${gc.runners.length} unused runner layer(s) and ${gc.layers.length} environment layer(s)`);
    }
    const adminKey = await identity.bootstrap();
    const adminKeyPath = join(dataDir, "admin.key");
    if (adminKey) {
      await writeFile(adminKeyPath, `${adminKey}\n`, { mode: 0o600 });
      await chmod(adminKeyPath, 0o600);
    }

    const reaped = await driver.reapOrphans();
    if (reaped > 0) log(`cleaned up ${reaped} sandbox(es) left by a previous host`);
    const heartbeatMs = config.heartbeatMs ?? 2000;
    const engine = new Engine(
      db,
      runs,
      events,
      agents.snapshots,
      {
        driver,
        events,
        blobs,
        resolveLayers: (spec) => agents.layerPaths(spec),
        currentRunner: () => runners.current(),
        recordArtifacts: async ({ runId, tenantId, attempt }, rows, evs) => {
          const written = await db.transaction().execute(async (trx) => {
            if (rows.length > 0) {
              await trx
                .insertInto("artifacts")
                .values(
                  rows.map((r) => ({ ...r, run_id: runId, tenant_id: tenantId, attempt, created_at: Date.now() })),
                )
                .execute();
            }
            return events.append(trx, runId, attempt, evs);
          });
          events.publish(written);
        },
        heartbeatMs,
        heartbeatTimeoutMs: config.heartbeatTimeoutMs ?? Math.max(15_000, heartbeatMs * 5),
        bridge: { url: bridgeUrl, live, mint: (claims) => tokens.mint(claims), ttlMs: tokens.ttlMs },
        log,
      },
      {
        workerId: newId("wrk"),
        maxConcurrent: config.maxConcurrentRuns ?? 32,
        pollMs: 1000,
        warm: { max: config.warmSandboxes ?? 4, idleMs: config.warmIdleMs ?? 120_000 },
      },
    );
    wakeEngine = () => engine.notify();
    const recovered = await engine.reconcile();
    if (recovered > 0) log(`reconciled ${recovered} run(s) left in flight by a previous host`);
    engine.start();
    // What a triggered run of an agent freezes now; null once the agent is gone.
    const specOf = (tenantId: string, agentId: string) =>
      agents.get(tenantId, agentId).then(
        (agent) => runSpec(agent),
        (err: unknown) => {
          if (err instanceof AppError && err.code === "not_found") return null;
          throw err;
        },
      );
    const scheduler = new Scheduler({
      db,
      runs,
      specOf,
      notify: () => engine.notify(),
      log,
    });
    scheduler.start(config.schedulerTickMs ?? 1000);
    const webhooks = new Webhooks({
      db,
      vault,
      runs,
      specOf,
      notify: () => engine.notify(),
      log,
    });

    const sessions = new EnvSessions({
      db,
      driver,
      agents,
      runners,
      layersDir: join(dataDir, "layers"),
      maxLimits,
      log,
      maxSessions: config.maxSessions,
      egressTrustedAddresses: config.egressTrustedAddresses,
      egressTestOverrides: config.testOnly?.egress,
      resolve: config.testOnly?.resolve,
    });
    const lost = await sessions.start();
    if (lost > 0) log(`${lost} environment session(s) ended with the previous host`);
    const app = createApi({
      db,
      identity,
      agents,
      runs,
      events,
      engine,
      blobs,
      runners,
      sessions,
      connections,
      secrets,
      providers,
      ledger,
      scheduler,
      webhooks,
      version: VERSION,
      log,
    });
    const listen = config.listen ?? "127.0.0.1";
    const server = await new Promise<ReturnType<typeof serve>>((resolve, reject) => {
      const s = serve({ fetch: app.fetch, port: config.port, hostname: listen }, () => resolve(s));
      s.once("error", reject);
    });
    const detachShells = attachShellSocket(server as Server, { identity, sessions, log });
    const port = (server.address() as AddressInfo).port;
    const host = listen.includes(":") ? `[${listen}]` : listen;

    let closing: Promise<void> | null = null;
    return {
      url: `http://${host}:${port}`,
      port,
      adminKey,
      adminKeyPath,
      driver,
      runDir,
      bridgeUrl,
      secrets,
      scheduler,
      get warmCount() {
        return engine.warmCount;
      },
      close: () => {
        closing ??= (async () => {
          detachShells();
          const closed = new Promise<void>((r) => server.close(() => r()));
          if ("closeAllConnections" in server) server.closeAllConnections();
          await closed;
          await sessions.stop();
          await scheduler.stop();
          await engine.close();
          await bridge.close();
          gateway.close();
          await driver.close();
          await network.close();
          await db.destroy();
          await unlock();
        })();
        return closing;
      },
    };
  } catch (err) {
    for (const step of undo.reverse()) await step().catch(() => {});
    await db.destroy().catch(() => {});
    await unlock();
    throw err;
  }
}
