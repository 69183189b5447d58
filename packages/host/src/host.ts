/**
 * The composition root of a host: opens the store, builds the services over it (buildServices,
 * which needs neither root nor Linux), then gives them this machine's sandboxes and networks,
 * cleans up after a previous host that died, starts the engine and serves the API.
 */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, statSync } from "node:fs";
import { chmod, mkdir, readFile, realpath, rm, writeFile } from "node:fs/promises";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { serve } from "@hono/node-server";
import type { OpenAPIHono } from "@hono/zod-openapi";
import { AppError } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { CallLog } from "./activity/calls.ts";
import { RunStats } from "./activity/stats.ts";
import { Agents, runSpec } from "./agents/agents.ts";
import { LayerBlobs } from "./agents/layer-blobs.ts";
import { archiveLimits, SnapshotArchives } from "./agents/snapshot-archive.ts";
import { createApi } from "./api/app.ts";
import type { ApiEnv } from "./api/http.ts";
import { attachShellSocket } from "./api/shell-socket.ts";
import { Artifacts } from "./artifacts/artifacts.ts";
import type { BlobStore } from "./blobs/blobs.ts";
import { BlobCache } from "./blobs/cache.ts";
import { FileBlobStore } from "./blobs/file-store.ts";
import { openBlobStore } from "./blobs/open-store.ts";
import { ApprovalLinks, Approvals } from "./bridge/approvals.ts";
import { Bridge } from "./bridge/bridge.ts";
import { Connections } from "./bridge/connections.ts";
import { LiveSandboxes } from "./bridge/live.ts";
import { TokenBucket } from "./bridge/rate-limit.ts";
import { RunTokens } from "./bridge/tokens.ts";
import { type HostConfig, type HostConfigInput, type HostHooks, resolveHostConfig } from "./config.ts";
import { Engine } from "./engine/engine.ts";
import { RunRepository } from "./engine/runs.ts";
import { EnvSessions } from "./envs/sessions.ts";
import { AGENT_USER } from "./fs/layout.ts";
import { Gateway } from "./gateway/gateway.ts";
import { Ledger } from "./gateway/ledger.ts";
import { Providers } from "./gateway/providers.ts";
import { collectBlobGarbage, collectGarbage } from "./gc.ts";
import { Identity } from "./identity/identity.ts";
import { UiSessions } from "./identity/ui-sessions.ts";
import { ImageStore } from "./images/image-store.ts";
import { LayerStore } from "./images/layer-store.ts";
import { RunnerLayers } from "./images/runner-layers.ts";
import { RunnerRegistry } from "./images/runner-registry.ts";
import { createLog, defaultLogFormat, type Log } from "./logs/log.ts";
import { McpClients } from "./mcp/client.ts";
import { McpEndpoint } from "./mcp/endpoint.ts";
import { McpServers } from "./mcp/servers.ts";
import { McpService } from "./mcp/service.ts";
import { Metrics } from "./metrics/metrics.ts";
import { type Leader, leaderFor, soleLeader } from "./nodes/leader.ts";
import { defaultNodeId, Nodes } from "./nodes/nodes.ts";
import { NotificationDispatcher } from "./notifications/dispatcher.ts";
import { NotificationOutbox } from "./notifications/outbox.ts";
import { Notifications } from "./notifications/subscriptions.ts";
import { Accounts } from "./oauth/accounts.ts";
import { OAuthApps } from "./oauth/apps.ts";
import { ProviderHttp } from "./oauth/provider-http.ts";
import type { SandboxDriver } from "./sandbox/driver.ts";
import { LinuxSandboxDriver } from "./sandbox/linux/linux-driver.ts";
import { SandboxNetwork } from "./sandbox/linux/network.ts";
import { openVault } from "./secrets/master-key.ts";
import { rotateMasterKey, Secrets } from "./secrets/secrets.ts";
import { ApprovalStore } from "./store/approvals.ts";
import { openDatabase } from "./store/database.ts";
import { EventLog } from "./store/event-log.ts";
import { HINT, type Hints, LocalHints } from "./store/hints.ts";
import { Journal } from "./store/journal.ts";
import { migrate } from "./store/migrations.ts";
import type { Dialect } from "./store/portable.ts";
import type { Database } from "./store/schema.ts";
import { openTracing, type Tracing } from "./tracing/tracing.ts";
import { AgentCalls } from "./triggers/agent-calls.ts";
import { Scheduler } from "./triggers/scheduler.ts";
import { Webhooks } from "./triggers/webhooks.ts";

export const VERSION = "0.1.0";

export interface RunningHost {
  url: string;
  port: number;
  /** The admin API key, only on the first start of a data directory. */
  adminKey: string | null;
  adminKeyPath: string;
  /** The credits its own tenant was granted, only on the start that created it. */
  startingCredits: number | null;
  /** This host's sandbox driver, for diagnostics. */
  driver: SandboxDriver;
  /** Warm sandboxes waiting for runs. */
  readonly warmCount: number;
  /** Where this host mounts its sandboxes. */
  runDir: string;
  /** The bridge as sandboxes reach it (the host side of their links). */
  bridgeUrl: string;
  /**
   * Lets this host's sandboxes reach `port` on the host side of their links, as they reach the
   * bridge. Only benchmarks use it, to measure a call straight to a server beside the same call
   * through the host.
   */
  openToSandboxes(port: number): Promise<void>;
  /** The tenants' secrets; `reveal` is for host-side code such as the bridge, never for an API answer. */
  secrets: Secrets;
  /** Cron schedules (tests drive `tick` with their own clock). */
  scheduler: Scheduler;
  /** This node's traces; null without an OTLP endpoint. */
  tracing: Tracing | null;
  close(): Promise<void>;
}

/** Where buildServices puts its services: a store, a sandbox driver and, optionally, networks. */
export interface ServiceEnv {
  db: Kysely<Database>;
  /** Which SQL the store speaks; default SQLite. */
  dialect?: Dialect;
  /** Wake-up hints between hosts sharing the store; default within this process only. */
  hints?: Hints;
  /** Names this host's run tokens' issuer (a hash of its data directory). */
  instance: string;
  driver: SandboxDriver;
  /** Sandboxes' networks; without them sandboxes get none and the bridge does not listen. */
  network?: SandboxNetwork;
  log: Log;
  testOnly?: HostHooks["testOnly"];
  /** Who runs the singletons (scheduler ticks, GC); default this node alone. */
  leader?: Leader;
  /** Stops what was started, pushed as each part starts, for a start that fails later. */
  undo: (() => Promise<unknown>)[];
  /** The built dashboard to serve under /ui; none: no dashboard. */
  uiDir?: string;
}

/** Every service of a host and the API over them; nothing is started that needs a timer. */
export interface Services {
  identity: Identity;
  /** End users' OAuth accounts (connect sessions, tokens the bridge attaches). */
  accounts: Accounts;
  agents: Agents;
  runs: RunRepository;
  runners: RunnerRegistry;
  artifacts: Artifacts;
  /** The shared blob store, and this node's verified copy of it. */
  blobs: BlobStore;
  blobCache: BlobCache;
  engine: Engine;
  scheduler: Scheduler;
  nodes: Nodes;
  /** This node's id. */
  nodeId: string;
  leader: Leader;
  sessions: EnvSessions;
  secrets: Secrets;
  bridge: Bridge;
  /** The sandboxes the bridge answers, and the run tokens it checks. */
  live: LiveSandboxes;
  tokens: RunTokens;
  /** MCP servers, the host's MCP client and agents' pins. */
  mcp: McpService;
  gateway: Gateway;
  notifications: Notifications;
  /** Calls held for people's approval; its sweep of expired ones is started by the caller. */
  approvals: Approvals;
  /** Sends notification deliveries; started by the caller. */
  dispatcher: NotificationDispatcher;
  /** This node's metrics (GET /metrics). */
  metrics: Metrics;
  /** The bridge's URL as sandboxes reach it; null without sandbox networks. */
  bridgeUrl: string | null;
  /** Traces; null without an OTLP endpoint (the SDK is then never loaded). */
  tracing: Tracing | null;
  app: OpenAPIHono<ApiEnv>;
}

const RUNNER_BUNDLE = new URL("../../runner/dist/runner.mjs", import.meta.url).pathname;

async function ensureRunnerBundle(): Promise<string> {
  if (!existsSync(RUNNER_BUNDLE)) await import("../../runner/build.ts");
  return RUNNER_BUNDLE;
}

const UI_SOURCES = new URL("../../ui/src/app", import.meta.url).pathname;

/**
 * The folder of the built dashboard, built now when there is none or its sources are newer
 * (`make build` builds it ahead; a checkout without the sources serves what was built).
 */
export async function ensureUiBuild(): Promise<string> {
  const { buildUi, currentUiBuild } = await import("../../ui/build.ts");
  const current = currentUiBuild();
  const built = current ? statSync(join(current, "index.html")).mtimeMs : 0;
  const sources = existsSync(UI_SOURCES)
    ? readdirSync(UI_SOURCES, { recursive: true, encoding: "utf8" }).map((f) => statSync(join(UI_SOURCES, f)).mtimeMs)
    : [];
  if (current && !sources.some((m) => m > built)) return current;
  return (await buildUi()).dir;
}

/** One host per data directory: a second one would fight the first over runs and sandboxes. */
/** The id a host's data folder (its real path) gives the sandboxes, networks and cgroups it makes. */
export function instanceOf(dataDir: string): string {
  return createHash("sha256").update(dataDir).digest("hex").slice(0, 10);
}

/** Where a host on `dataDir` (its real path) mounts its sandboxes. */
export function sandboxRunDir(dataDir: string): string {
  return `/run/paddock/${instanceOf(dataDir)}`;
}

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

/**
 * The blob store `--blobs` names and a verified cache of it under DATA/cache/blobs; without it,
 * DATA/blobs, read in place.
 */
function openBlobs(config: HostConfig): { blobs: BlobStore; blobCache: BlobCache } {
  if (!config.blobs) {
    const local = new FileBlobStore(join(config.dataDir, "blobs"));
    return { blobs: local, blobCache: new BlobCache({ store: local, inPlace: true }) };
  }
  const dir = join(config.dataDir, "cache", "blobs");
  const blobs = openBlobStore(config.blobs, join(dir, "tmp"));
  return { blobs, blobCache: new BlobCache({ store: blobs, dir }) };
}

/**
 * Builds every service of a host over a migrated store, and the API over them. Nothing here
 * needs root or Linux unless `env.network` is given: then the bridge listens on the host side
 * of the sandboxes' links.
 * @example const services = await buildServices(config, { db, instance, driver, log, undo: [] });
 */
export async function buildServices(config: HostConfig, env: ServiceEnv): Promise<Services> {
  const { db, driver, log } = env;
  const { dataDir, maxLimits } = config;
  const dialect = env.dialect ?? "sqlite";
  const hints = env.hints ?? new LocalHints();
  const nodeId = config.nodeId ?? defaultNodeId(dataDir);
  const leader = env.leader ?? soleLeader;
  const metrics = new Metrics({ version: VERSION, node: nodeId });
  const metricsToken = config.metricsTokenFile ? await readMetricsToken(config.metricsTokenFile) : null;
  const { vault, source: keySource } = await openVault({
    dataDir,
    masterKeyFile: config.masterKeyFile,
    oldMasterKeyFiles: config.oldMasterKeyFiles,
  });
  // Approvals' one-time links are signed with the vault and point at the host's public URL (known
  // once it listens, unless configured).
  const links = new ApprovalLinks(
    vault,
    config.publicUrl ?? config.internalUrl ?? `http://${listenHostOf(config.listen)}:${config.port}`,
  );
  // Notification deliveries are written with the events and spending they announce.
  const outbox = new NotificationOutbox({ hints, links }, { dialect, retryForMs: config.notificationRetryForMs });
  const events = new EventLog(db, {
    dialect,
    hints,
    announcer: outbox,
    observe: (rows) => metrics.published(rows),
  });
  const nodes = new Nodes(db, { dialect, staleMs: config.leaseMs });
  const runs = new RunRepository(db, events);
  const uiSessions = new UiSessions(db);
  const images = new ImageStore({ imagesDir: config.imagesDir });
  const layers = new LayerStore({ layersDir: join(dataDir, "layers"), uid: AGENT_USER.uid, gid: AGENT_USER.gid });
  const runnersDir = join(dataDir, "runners");
  const { blobs, blobCache } = openBlobs(config);
  env.undo.push(async () => blobs.close());
  // Runners' sources go to the blob store only when other nodes share it.
  const shared = config.blobs ? blobCache : null;
  const runners = new RunnerRegistry(db, new RunnerLayers({ runnersDir }), runnersDir, log, shared);
  const artifacts = new Artifacts({ db, events, blobs: blobCache });
  // With a shared store, layers made here are published to it and layers missing here fetched.
  const layerBlobs = config.blobs
    ? new LayerBlobs({
        db,
        cache: blobCache,
        layersDir: layers.layersDir,
        imagesDir: config.imagesDir,
        tmpDir: join(dataDir, "cache", "packing"),
      })
    : null;
  // The MCP service is made below, once secrets and accounts are: agents pin through it when saved.
  const agents = new Agents(db, images, layers, runners, maxLimits, layerBlobs, (tenantId, entries, keep) =>
    mcp.pin(tenantId, entries, keep),
  );
  const archives = new SnapshotArchives({ db, agents, images, layers, runners }, archiveLimits(maxLimits));
  const connections = new Connections(db);
  const resealed = await rotateMasterKey(db, vault);
  if (resealed > 0) log(`re-sealed ${resealed} secret(s) and signing key(s) under master key ${vault.masterKeyId}`);
  log(`master key ${vault.masterKeyId} from ${keySource}`);
  const secrets = new Secrets(db, vault);
  const providerHttp = new ProviderHttp(env.testOnly?.resolve);
  const oauthApps = new OAuthApps(db, providerHttp);
  const accounts = new Accounts({
    db,
    vault,
    apps: oauthApps,
    http: providerHttp,
    secrets,
    notices: outbox,
    publicUrl: config.publicUrl,
    cacheMs: config.accountTokenCacheMs,
  });
  const mcpClients = new McpClients({ resolve: env.testOnly?.resolve });
  env.undo.push(() => mcpClients.close());
  const mcp = new McpService({ db, servers: new McpServers(db), clients: mcpClients, secrets, accounts });
  const tokens = new RunTokens({
    db,
    sealer: vault,
    issuer: `paddock:${env.instance}`,
    ...(config.runTokens.ttlMs ? { ttlMs: config.runTokens.ttlMs } : {}),
    ...(config.runTokens.clockToleranceS !== undefined ? { clockToleranceS: config.runTokens.clockToleranceS } : {}),
  });
  await tokens.start();
  const live = new LiveSandboxes();
  // The LLM gateway: providers' keys stay here, every call is metered against the ledger.
  const providers = new Providers(db);
  const ledger = new Ledger(db, { dialect, watcher: outbox, metrics });
  const identity = new Identity(db, { ledger, credits: config.startingCredits });
  const abandoned = await ledger.settleAbandoned(nodeId);
  if (abandoned > 0)
    log(`billed ${abandoned} model call(s) left open by the previous host at their reserved worst case`);
  const rateLimits = new TokenBucket();
  const journal = new Journal(db, { dialect });
  const tracing = await openTracing({
    endpoint: config.otlpEndpoint,
    content: config.traceContent,
    version: VERSION,
    nodeId,
    log,
  });
  if (tracing) {
    env.undo.push(() => tracing.close());
    log(`tracing to ${config.otlpEndpoint}${config.traceContent ? ", with prompt and completion content" : ""}`);
  }
  const approvals = new Approvals(
    { db, store: new ApprovalStore(db, events), events, links, log },
    { holdMs: config.approvalHoldMs },
  );
  env.undo.push(async () => approvals.close());
  const gateway = new Gateway({
    approvals,
    journal,
    providers,
    ledger,
    secrets,
    rateLimits,
    budgetOf: (runId) => agents.budgetOfRun(runId),
    ...(config.llmTenantLimits ? { tenantLimits: config.llmTenantLimits } : {}),
    log,
    metrics,
    tracing,
  });
  env.undo.push(async () => gateway.close());
  // Agent-to-agent calls wake the engine, which is made below.
  let wakeEngine = () => {};
  const agentCalls = new AgentCalls({
    db,
    agents,
    runs,
    events,
    artifacts,
    notify: () => wakeEngine(),
    journal,
    approvals,
  });
  // Each run's MCP endpoint ($PADDOCK_BRIDGE_URL/mcp).
  const mcpEndpoint = new McpEndpoint({ db, mcp, rateLimits, journal, approvals, tracing, metrics, log });
  const routes = [agentCalls, gateway, mcpEndpoint];
  const bridge = new Bridge({
    live,
    tokens,
    connections,
    secrets,
    accounts,
    rateLimits,
    log,
    routes,
    journal,
    metrics,
    tracing,
    approvals,
    limits: config.bridgeLimits,
  });
  env.undo.push(() => bridge.close());
  let bridgeUrl: string | null = null;
  if (env.network) {
    const bridgePort = await bridge.listen(env.network.hostAddress);
    await env.network.allowPort(bridgePort);
    bridgeUrl = `http://${env.network.hostAddress}:${bridgePort}`;
  }

  const engine = new Engine(
    {
      db,
      runs,
      events,
      snapshots: agents.snapshots,
      nodes,
      driver,
      blobs: blobCache,
      artifacts,
      resolveLayers: (spec) => agents.layerPaths(spec),
      currentRunner: () => runners.current(),
      heartbeatMs: config.heartbeatMs,
      heartbeatTimeoutMs: config.heartbeatTimeoutMs,
      ...(bridgeUrl
        ? { bridge: { url: bridgeUrl, live, mint: (claims) => tokens.mint(claims), ttlMs: tokens.ttlMs } }
        : {}),
      log,
      metrics,
      tracing,
    },
    {
      workerId: nodeId,
      dialect,
      leaseMs: config.leaseMs,
      maxConcurrent: config.maxConcurrentRuns,
      ...(config.maxRunsPerTenant !== undefined ? { maxPerTenant: config.maxRunsPerTenant } : {}),
      pollMs: 1000,
      warm: { max: config.warmSandboxes, idleMs: config.warmIdleMs },
    },
  );
  wakeEngine = () => engine.notify();
  metrics.watch({ active: () => engine.activeStates, warm: () => engine.warmCount, queued: () => runs.countQueued() });
  // What a triggered run of an agent freezes now; null once the agent is gone.
  const specOf = (tenantId: string, agentId: string) =>
    agents.get(tenantId, agentId).then(
      (agent) => runSpec(agent),
      (err: unknown) => {
        if (err instanceof AppError && err.code === "not_found") return null;
        throw err;
      },
    );
  const scheduler = new Scheduler({ db, runs, specOf, notify: () => engine.notify(), log, leader, metrics });
  const webhooks = new Webhooks({ db, vault, runs, specOf, notify: () => engine.notify(), log, metrics });
  const notifications = new Notifications({ db, vault, hints }, { dialect, retryForMs: config.notificationRetryForMs });
  const dispatcher = new NotificationDispatcher(
    { db, hints, vault, log, resolve: env.testOnly?.resolve },
    {
      nodeId,
      dialect,
      backoffMs: config.notificationBackoffMs,
      maxBackoffMs: 3_600_000,
      timeoutMs: config.notificationTimeoutMs,
      pollMs: 1000,
      concurrency: 16,
    },
  );
  env.undo.push(() => dispatcher.close());
  const sessions = new EnvSessions({
    db,
    nodeId,
    nodes,
    driver,
    agents,
    runners,
    layersDir: join(dataDir, "layers"),
    maxLimits,
    log,
    maxSessions: config.maxSessions,
    egressTrustedAddresses: config.egressTrustedAddresses,
    egressTestOverrides: env.testOnly?.egress,
    resolve: env.testOnly?.resolve,
  });
  const app = createApi({
    identity,
    uiSessions,
    agents,
    runs,
    events,
    engine,
    artifacts,
    archives,
    runners,
    sessions,
    connections,
    mcp,
    secrets,
    oauthApps,
    accounts,
    providers,
    ledger,
    scheduler,
    webhooks,
    notifications,
    approvals,
    nodes,
    calls: new CallLog(db),
    stats: new RunStats({ runs, ledger }),
    nodeId,
    version: VERSION,
    ...(env.uiDir ? { uiDir: env.uiDir } : {}),
    log,
    metrics,
    metricsToken,
  });
  return {
    identity,
    accounts,
    agents,
    runs,
    runners,
    artifacts,
    blobs,
    blobCache,
    engine,
    scheduler,
    nodes,
    nodeId,
    leader,
    sessions,
    secrets,
    bridge,
    live,
    tokens,
    mcp,
    gateway,
    notifications,
    approvals,
    dispatcher,
    metrics,
    bridgeUrl,
    tracing,
    app,
  };
}

/** An address to listen on as a URL's host (an IPv6 one in brackets). */
const listenHostOf = (listen: string) => (listen.includes(":") ? `[${listen}]` : listen);

/** The metrics token in `file`: at least 16 characters once surrounding whitespace is trimmed. */
async function readMetricsToken(file: string): Promise<string> {
  const token = (await readFile(file, "utf8")).trim();
  if (token.length < 16 || /\s/.test(token)) {
    throw new Error(`the metrics token in ${file} must be at least 16 characters, without spaces`);
  }
  return token;
}

export async function startHost(input: HostConfigInput): Promise<RunningHost> {
  const resolved = resolveHostConfig(input);
  // The first folder mkdir made, removed again when the store cannot be opened.
  const made = await mkdir(resolved.dataDir, { recursive: true, mode: 0o700 });
  const dataDir = await realpath(resolved.dataDir);
  const nodeId = resolved.nodeId ?? defaultNodeId(dataDir);
  const config: HostConfig = { ...resolved, dataDir, nodeId };
  const log = input.log ?? createLog({ format: config.logFormat ?? defaultLogFormat(), node: nodeId });
  const unlock = await lock(dataDir);
  const instance = instanceOf(dataDir);

  let store: Awaited<ReturnType<typeof openDatabase>>;
  try {
    store = await openDatabase({ dataDir, database: config.database });
  } catch (err) {
    await unlock();
    if (made) await rm(made, { recursive: true, force: true });
    throw err;
  }
  const { db, dialect, hints } = store;
  /** What a failed start has to stop again, last started first. */
  const undo: (() => Promise<unknown>)[] = [];
  try {
    await migrate(db);
    // This node joins the store first: a second live node with its id or range refuses here,
    // before anything else is made.
    const nodes = new Nodes(db, { dialect, staleMs: config.leaseMs });
    const listenHost = listenHostOf(config.listen);
    await nodes.register({
      id: nodeId,
      version: VERSION,
      internalUrl: config.internalUrl ?? `http://${listenHost}:${config.port}`,
      sandboxCidr: config.sandboxCidr,
    });
    undo.push(() => nodes.stop(nodeId));
    const runDir = sandboxRunDir(dataDir);
    // Sandboxes' networks and the bridge on the host side of their links.
    const network = new SandboxNetwork({ instance, range: config.sandboxCidr });
    undo.push(() => network.close());
    await network.start();
    const driver = new LinuxSandboxDriver({ runDir, instance, network });
    const services = await buildServices(config, {
      db,
      dialect,
      hints,
      leader: leaderFor(dialect, { id: nodeId, staleMs: config.leaseMs }, store.dedicated),
      instance,
      driver,
      network,
      log,
      testOnly: input.testOnly,
      undo,
      uiDir: await ensureUiBuild(),
    });
    const { identity, runners, agents, engine, scheduler, sessions, bridge, gateway, leader, dispatcher, approvals } =
      services;

    // This host's runner becomes current unless it already is (deploying a host deploys its runner).
    await runners.ensureCurrent({ bundlePath: await ensureRunnerBundle(), nodePath: process.execPath });
    // Garbage collection is the leader's: another node's runs may still need what looks unused here.
    if (await leader.isLeader()) {
      const gc = await collectGarbage({ db, snapshots: agents.snapshots, runners, layersDir: join(dataDir, "layers") });
      if (gc.runners.length + gc.layers.length > 0) {
        log(`removed ${gc.runners.length} unused runner layer(s) and ${gc.layers.length} environment layer(s)`);
      }
    }
    // The shared blob store is swept by the leader at start and then periodically.
    const sweepBlobs = async () => {
      if (!(await leader.isLeader())) return;
      const swept = await collectBlobGarbage({
        db,
        snapshots: agents.snapshots,
        blobs: services.blobs,
        graceMs: config.blobGraceMs,
      });
      if (swept.length > 0) log(`removed ${swept.length} unreferenced blob(s) from ${services.blobs.location}`);
    };
    await sweepBlobs();
    const sweeper = setInterval(() => {
      sweepBlobs().catch((err: unknown) => log(`sweeping the blob store failed: ${String(err)}`));
    }, config.blobGcIntervalMs);
    sweeper.unref();
    undo.push(async () => clearInterval(sweeper));
    const trimmed = await services.blobCache.trim(config.blobCacheMb * 1024 * 1024);
    if (trimmed.length > 0) log(`dropped ${trimmed.length} least used blob(s) from this node's cache`);
    const { adminKey, startingCredits } = await identity.bootstrap();
    const adminKeyPath = join(dataDir, "admin.key");
    if (adminKey) {
      await writeFile(adminKeyPath, `${adminKey}\n`, { mode: 0o600 });
      await chmod(adminKeyPath, 0o600);
    }

    const reaped = await driver.reapOrphans();
    if (reaped > 0) log(`cleaned up ${reaped} sandbox(es) left by a previous host`);
    const recovered = await engine.reconcile();
    if (recovered > 0) log(`reconciled ${recovered} run(s) left in flight by a previous host`);
    engine.start();
    // Runs queued by other hosts sharing the store wake this one's engine too.
    if (hints.shared) hints.listen(HINT.runQueued, () => engine.notify());
    scheduler.start(config.schedulerTickMs);
    await dispatcher.start();
    approvals.start();
    const lost = await sessions.start();
    if (lost > 0) log(`${lost} environment session(s) ended with the previous host`);
    const server = await new Promise<ReturnType<typeof serve>>((resolve, reject) => {
      const s = serve({ fetch: services.app.fetch, port: config.port, hostname: config.listen }, () => resolve(s));
      s.once("error", reject);
    });
    const detachShells = attachShellSocket(server as Server, { identity, sessions, nodeId: services.nodeId, log });
    const port = (server.address() as AddressInfo).port;
    const host = listenHost;
    if (!config.internalUrl && port !== config.port) await nodes.advertise(nodeId, `http://${host}:${port}`);
    if (!config.publicUrl && !config.internalUrl) approvals.links.base = `http://${host}:${port}`;

    let closing: Promise<void> | null = null;
    return {
      url: `http://${host}:${port}`,
      port,
      adminKey,
      adminKeyPath,
      startingCredits,
      driver,
      runDir,
      bridgeUrl: services.bridgeUrl ?? "",
      openToSandboxes: (port) => network.allowPort(port),
      secrets: services.secrets,
      scheduler,
      tracing: services.tracing,
      get warmCount() {
        return engine.warmCount;
      },
      close: () => {
        closing ??= (async () => {
          detachShells();
          clearInterval(sweeper);
          const closed = new Promise<void>((r) => server.close(() => r()));
          if ("closeAllConnections" in server) server.closeAllConnections();
          await closed;
          await sessions.stop();
          await scheduler.stop();
          await engine.close();
          await dispatcher.close();
          approvals.close();
          await bridge.close();
          gateway.close();
          // The attempts' last spans ended with the engine: they go out now, or are counted as dropped.
          await services.tracing?.close();
          await driver.close();
          await network.close();
          services.blobs.close();
          await leader.release();
          await nodes.stop(nodeId);
          await store.close();
          await unlock();
        })();
        return closing;
      },
    };
  } catch (err) {
    for (const step of undo.reverse()) await step().catch(() => {});
    await store.close().catch(() => {});
    await unlock();
    throw err;
  }
}
