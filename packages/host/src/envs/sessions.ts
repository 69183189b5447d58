/**
 * Environment edit sessions: how a user shapes an agent's environment before freezing it.
 *
 * A session is a writable layer (a tmpfs of its own, the disk quota) over the agent's snapshot
 * at the time the session opened. Each command (`exec`) or interactive shell boots a fresh
 * sandbox over that layer, one at a time, so what one command installs the next one sees. Inside,
 * the user is root of a user namespace whose 65536 ids map to a host range of the session's own
 * (never host root's ids, never another session's), and the image's layers are mounted through
 * that mapping, so package managers work as on a normal machine: apt drops to _apt, dpkg gives
 * files to service users. Freezing copies the layer with its owners moved back to the ids the
 * sandbox saw (unshift.ts) into a content-addressed layer, and makes a new snapshot version on
 * top of the one the session started from.
 *
 * Network: none but the session's egress proxy, a host HTTP proxy on a Unix socket bound into
 * the sandbox; a small forwarder inside (started before the user's command) offers it as
 * http://127.0.0.1:3128, which apt, npm, curl and pip use through the usual proxy variables. The
 * proxy lets through only the session's allowlisted host names (default: Debian's and npm's
 * registries) and records every request, refused or not, in the session's egress log.
 *
 * Sessions live in memory: a host that stops or restarts ends its sessions (status `lost`).
 * Idle sessions are discarded after their idle timeout. With several nodes on one store, a
 * session's row names the node it lives on; the API of any other node proxies its requests there
 * (api/node-proxy.ts), and a session whose node is down can only be discarded.
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import type { Readable } from "node:stream";
import {
  AppError,
  DEFAULT_EGRESS_ALLOW,
  DEFAULT_LIMITS,
  type EgressEntry,
  type EnvExec,
  type EnvExecResult,
  type EnvFreeze,
  type EnvSession,
  type EnvSessionCreate,
  type Limits,
} from "@paddock/protocol";
import type { Kysely } from "kysely";
import { type Agents, assertLive } from "../agents/agents.ts";
import { type Snapshot, toSnapshot } from "../agents/snapshots.ts";
import { EgressProxy, type EgressProxyTestOverrides, type EgressRecord } from "../egress/egress-proxy.ts";
import { DEFAULT_PATH } from "../images/resolve-command.ts";
import type { RunnerRegistry } from "../images/runner-registry.ts";
import type { Nodes } from "../nodes/nodes.ts";
import {
  RUNNER_MOUNT,
  type SandboxDriver,
  type SandboxHandle,
  type SessionLayer,
  terminalFrame,
} from "../sandbox/driver.ts";
import { newId } from "../store/ids.ts";
import type { Database, EnvSessionsTable } from "../store/schema.ts";
import { freezeUpper } from "./freeze.ts";
import { SHIFT_COUNT } from "./unshift.ts";

/** Where the in-sandbox forwarder listens. */
export const PROXY_PORT = 3128;
const PROXY_URL = `http://127.0.0.1:${PROXY_PORT}`;
/** Host ids of session ranges start here: far from system, user and sandbox ids. */
export const SESSION_ID_FLOOR = 1_000_000_000;
const OUTPUT_CAP = 1024 * 1024;
const EGRESS_LOG_CAP = 10_000;
const DEFAULTS = { disk_mb: 2048, memory_mb: 2048, idle_timeout_s: 3600, timeout_s: 600 };

/**
 * The forwarder, run by the runner layer's Node before the user's command: 127.0.0.1:PORT to the
 * egress socket, then the command with the same stdio; exits with the command's status.
 */
const FORWARDER = `
const net = require("node:net"), os = require("node:os"), { spawn } = require("node:child_process");
const [sock, port, file, ...args] = process.argv.slice(1);
const server = net.createServer((c) => {
  const u = net.connect(sock);
  c.on("error", () => u.destroy()); u.on("error", () => c.destroy());
  c.pipe(u).pipe(c);
});
server.on("error", () => {});
server.listen(Number(port), "127.0.0.1", () => {
  const child = spawn(file, args, { stdio: "inherit" });
  child.on("error", (e) => { process.stderr.write("paddock: cannot run " + file + ": " + e.message + "\\n"); process.exit(127); });
  child.on("exit", (code, sig) => process.exit(code ?? 128 + (os.constants.signals[sig] ?? 0)));
});
`;

export interface EnvSessionsDeps {
  db: Kysely<Database>;
  /** This node: the owner of the sessions it opens. */
  nodeId: string;
  /** Where the nodes holding other sessions are, and whether they are live. */
  nodes: Pick<Nodes, "locate">;
  driver: SandboxDriver;
  agents: Agents;
  runners: RunnerRegistry;
  layersDir: string;
  maxLimits: Limits;
  log: (msg: string) => void;
  /** Open sessions this host allows at once. */
  maxSessions: number;
  /** Test-only: lets the egress proxy reach stand-in origins on loopback. */
  egressTestOverrides?: EgressProxyTestOverrides;
  /** Non-public addresses the operator trusts as egress targets (an internal mirror); see EgressProxyOptions. */
  egressTrustedAddresses?: readonly string[];
  /** Resolves host names for the egress proxy (default: the system resolver). */
  resolve?: (host: string) => Promise<string[]>;
}

interface Live {
  row: EnvSessionsTable;
  layer: SessionLayer;
  proxy: EgressProxy;
  /** A command, shell or freeze holds the session. */
  busy: boolean;
  egressSeq: number;
  /** Egress records are written in order, one after the other. */
  egressWrites: Promise<void>;
  /** The sandbox of the command or shell now running, killed when the session ends. */
  handle: SandboxHandle | undefined;
}

/** Where an agent's open session lives, when it is not on this node. */
export interface SessionOwner {
  nodeId: string;
  /** That node's API, as other nodes reach it. */
  url: string;
  /** Whether that node heartbeats. */
  live: boolean;
}

/** An interactive shell in a session: bytes in, terminal output out. */
export interface SessionShell {
  readonly output: Readable;
  write(data: Buffer): void;
  resize(rows: number, cols: number): void;
  /** Resolves with the shell's exit once it and its output are done. */
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  /** Kills the shell (the session stays open). */
  close(): Promise<void>;
}

export interface FreezeResult {
  snapshot: Snapshot;
  layer: string;
  bytes: number;
  entries: number;
  reused: boolean;
  session: EnvSession;
}

export class EnvSessions {
  readonly #deps: EnvSessionsDeps;
  readonly #live = new Map<string, Live>();
  #sweeper: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(deps: EnvSessionsDeps) {
    this.#deps = deps;
  }

  /**
   * Ends sessions a previous start of this node left open (their layers were in its memory; other
   * nodes' sessions are theirs); starts the idle sweep.
   */
  async start(): Promise<number> {
    const now = Date.now();
    const res = await this.#deps.db
      .updateTable("env_sessions")
      .set({
        status: "lost",
        ended_at: now,
        end_reason: "the host restarted; a session's writable layer lives in memory",
      })
      .where("status", "=", "active")
      .where((eb) => eb.or([eb("node_id", "=", this.#deps.nodeId), eb("node_id", "is", null)]))
      .executeTakeFirst();
    this.#sweeper = setInterval(() => void this.#sweep().catch((e) => this.#deps.log(`session sweep: ${e}`)), 30_000);
    this.#sweeper.unref();
    return Number(res.numUpdatedRows);
  }

  /** Ends every open session (the host is stopping). */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#sweeper) clearInterval(this.#sweeper);
    await Promise.all([...this.#live.values()].map((l) => this.#end(l, "lost", "the host stopped")));
  }

  async open(tenantId: string, agentId: string, body: EnvSessionCreate): Promise<EnvSession> {
    const { driver, maxLimits } = this.#deps;
    if (!driver.createSessionLayer || !driver.removeSessionLayer) {
      throw new AppError("conflict", `The ${driver.name} sandbox driver does not offer environment sessions.`);
    }
    if (this.#stopped) throw new AppError("session_limit", "The host is stopping.");
    const agent = await this.#deps.agents.getLive(tenantId, agentId);
    const disk = body.disk_mb ?? Math.min(DEFAULTS.disk_mb, maxLimits.disk_mb);
    const memory = body.memory_mb ?? Math.min(DEFAULTS.memory_mb, maxLimits.memory_mb);
    if (disk > maxLimits.disk_mb || memory > maxLimits.memory_mb) {
      throw new AppError(
        "validation_failed",
        `This host allows sessions of at most ${maxLimits.disk_mb} MB of disk and ${maxLimits.memory_mb} MB of memory.`,
      );
    }
    const idBase = this.#allocateIdBase();
    const now = Date.now();
    const row: EnvSessionsTable = {
      id: newId("ses"),
      tenant_id: tenantId,
      agent_id: agent.row.id,
      status: "active",
      base_version: agent.row.current_version,
      allow: JSON.stringify(body.allow ?? DEFAULT_EGRESS_ALLOW),
      disk_mb: disk,
      memory_mb: memory,
      idle_timeout_s: body.idle_timeout_s ?? DEFAULTS.idle_timeout_s,
      id_base: idBase,
      commands: 0,
      egress_allowed: 0,
      egress_refused: 0,
      created_at: now,
      last_used_at: now,
      ended_at: null,
      end_reason: null,
      frozen_version: null,
      node_id: this.#deps.nodeId,
    };
    try {
      await this.#deps.db.insertInto("env_sessions").values(row).execute();
    } catch (err) {
      if (/UNIQUE|unique/.test(String(err))) {
        throw new AppError("session_exists", `Agent '${agent.row.name}' already has an open environment session.`);
      }
      throw err;
    }
    let layer: SessionLayer | undefined;
    try {
      layer = await driver.createSessionLayer(layerName(row.id), disk, idBase);
      const live: Live = {
        row,
        layer,
        proxy: this.#proxy(row, layer),
        busy: false,
        egressSeq: 0,
        egressWrites: Promise.resolve(),
        handle: undefined,
      };
      await live.proxy.start();
      this.#live.set(row.id, live);
      return this.#view(live);
    } catch (err) {
      if (layer) await driver.removeSessionLayer(layerName(row.id)).catch(() => {});
      await this.#deps.db
        .updateTable("env_sessions")
        .set({ status: "lost", ended_at: Date.now(), end_reason: `could not start: ${(err as Error).message}` })
        .where("id", "=", row.id)
        .execute();
      throw err;
    }
  }

  /** The agent's open session. */
  async get(tenantId: string, agentId: string): Promise<EnvSession> {
    return this.#view(await this.#open(tenantId, agentId));
  }

  /** Runs one command in a fresh sandbox over the session's layer and returns its output. */
  async exec(tenantId: string, agentId: string, body: EnvExec): Promise<EnvExecResult> {
    const live = await this.#open(tenantId, agentId, { changes: true });
    this.#hold(live);
    const started = performance.now();
    try {
      const handle = await this.#boot(live, body.argv, { cwd: body.cwd, env: { DEBIAN_FRONTEND: "noninteractive" } });
      const timeoutS = body.timeout_s ?? DEFAULTS.timeout_s;
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        void handle.kill();
      }, timeoutS * 1000);
      try {
        handle.stdin.end(body.stdin ?? "");
        const [stdout, stderr, exit] = await Promise.all([capped(handle.stdout), capped(handle.stderr), handle.exited]);
        return {
          exit_code: exit.code,
          signal: exit.signal,
          timed_out: timedOut,
          oom: exit.oom,
          stdout: stdout.text,
          stderr: stderr.text,
          stdout_truncated: stdout.truncated,
          stderr_truncated: stderr.truncated,
          ms: Math.round((performance.now() - started) * 10) / 10,
          disk_full: await this.#diskFull(live),
        };
      } finally {
        clearTimeout(timer);
        await this.#release(live, handle);
      }
    } catch (err) {
      if (live.busy) await this.#release(live, undefined);
      throw err;
    }
  }

  /** Starts an interactive login shell on a terminal of this size. */
  async shell(
    tenantId: string,
    agentId: string,
    options: { rows: number; cols: number; term?: string },
  ): Promise<SessionShell> {
    const live = await this.#open(tenantId, agentId, { changes: true });
    this.#hold(live);
    let handle: SandboxHandle;
    try {
      const term = options.term && /^[A-Za-z0-9._+-]{1,64}$/.test(options.term) ? options.term : "xterm-256color";
      handle = await this.#boot(live, ["/bin/sh", "-c", 'exec "$(command -v bash || echo /bin/sh)" -l'], {
        cwd: "/root",
        env: { TERM: term },
        terminal: { rows: options.rows, cols: options.cols },
      });
    } catch (err) {
      await this.#release(live, undefined);
      throw err;
    }
    const outputDone = new Promise<void>((resolve) => {
      handle.stdout.once("end", resolve);
      handle.stdout.once("close", resolve);
    });
    const exited = (async () => {
      const exit = await handle.exited;
      // The relay drains the terminal after the shell is gone; give it a moment, not forever.
      await Promise.race([outputDone, new Promise((r) => setTimeout(r, 2000))]);
      await this.#release(live, handle);
      return { code: exit.code, signal: exit.signal };
    })();
    exited.catch(() => {});
    return {
      output: handle.stdout,
      write: (data) => {
        if (data.length > 0) handle.stdin.write(terminalFrame({ data }));
      },
      resize: (rows, cols) => {
        if (validSize(rows) && validSize(cols)) handle.stdin.write(terminalFrame({ rows, cols }));
      },
      exited,
      close: async () => {
        await handle.kill();
        await exited.catch(() => {});
      },
    };
  }

  /** Freezes the session's layer into a new snapshot version; the session ends. */
  async freeze(tenantId: string, agentId: string, body: EnvFreeze): Promise<FreezeResult> {
    const live = await this.#open(tenantId, agentId, { changes: true });
    this.#hold(live);
    const { db, agents, runners, layersDir } = this.#deps;
    try {
      const agent = await agents.getLive(tenantId, agentId);
      if (agent.row.current_version !== live.row.base_version) {
        throw new AppError(
          "environment_changed",
          `The session started from version ${live.row.base_version}, but version ${agent.row.current_version} is current now; discard the session and start again.`,
        );
      }
      const base = await this.#baseSnapshot(live);
      const lowerDigests = JSON.parse(base.layers) as string[];
      const lowers = await agents.layerPaths({ image: base.base, layers: lowerDigests });
      const frozen = await freezeUpper({
        upper: live.layer.upper,
        lowers,
        layersDir,
        exclude: body.exclude,
        idShift: live.row.id_base,
      });
      const { added, modified, removed } = frozen.changes;
      if (added + modified + removed === 0) throw new AppError("nothing_to_freeze");
      await agents.publishEnvironment({ image: base.base, layers: [frozen.digest, ...lowerDigests] });
      const runner = await runners.current();
      const now = Date.now();
      const snapshot = await db.transaction().execute(async (trx) => {
        const made = await agents.snapshots.append(trx, {
          tenantId,
          agentId: live.row.agent_id,
          base: base.base,
          layers: [frozen.digest, ...lowerDigests],
          runner: runner.digest,
          reason: "freeze",
          parentVersion: live.row.base_version,
          changes: { ...frozen.changes, layer: frozen.digest, session: live.row.id },
          envBytes: Number(base.env_bytes) + frozen.bytes,
        });
        if (!(await agents.snapshots.moveCurrent(trx, live.row.agent_id, live.row.base_version, made.version))) {
          throw new AppError("environment_changed");
        }
        await trx
          .updateTable("env_sessions")
          .set({ status: "frozen", frozen_version: made.version, ended_at: now, end_reason: "frozen" })
          .where("id", "=", live.row.id)
          .where("status", "=", "active")
          .execute();
        return made;
      });
      live.row = {
        ...live.row,
        status: "frozen",
        frozen_version: snapshot.version,
        ended_at: now,
        end_reason: "frozen",
      };
      await this.#teardown(live);
      this.#deps.log(`session ${live.row.id}: froze layer ${frozen.digest} as version ${snapshot.version}`);
      return {
        snapshot: toSnapshot(snapshot, snapshot.version),
        layer: frozen.digest,
        bytes: frozen.bytes,
        entries: frozen.entries,
        reused: frozen.reused,
        session: await this.#view(live),
      };
    } catch (err) {
      if (this.#live.has(live.row.id)) await this.#release(live, undefined);
      throw err;
    }
  }

  /**
   * The node holding the agent's open session when that is another node; null when the session is
   * this node's, or there is none (this node then answers as usual).
   */
  async owner(tenantId: string, agentId: string): Promise<SessionOwner | null> {
    const row = await this.#activeRow(tenantId, agentId);
    if (!row?.node_id || row.node_id === this.#deps.nodeId) return null;
    const node = await this.#deps.nodes.locate(row.node_id);
    return { nodeId: row.node_id, url: node?.url ?? "", live: node?.live === true };
  }

  /**
   * Ends the session without freezing it; its layer is dropped. A session whose node is down ends
   * here as `lost` (its layer went with that node), so the agent can have a new one.
   */
  async discard(tenantId: string, agentId: string): Promise<EnvSession> {
    const owner = await this.owner(tenantId, agentId);
    if (owner && !owner.live) {
      const row = await this.#activeRow(tenantId, agentId);
      if (row) {
        const ended = {
          ...row,
          status: "lost",
          ended_at: Date.now(),
          end_reason: `its node '${owner.nodeId}' is down`,
        };
        await this.#deps.db
          .updateTable("env_sessions")
          .set({ status: ended.status, ended_at: ended.ended_at, end_reason: ended.end_reason })
          .where("id", "=", row.id)
          .where("status", "=", "active")
          .execute();
        return this.#view({ row: ended, busy: false });
      }
    }
    const live = await this.#open(tenantId, agentId);
    await this.#end(live, "discarded", "discarded");
    return this.#view(live);
  }

  async #activeRow(tenantId: string, agentId: string): Promise<EnvSessionsTable | undefined> {
    return this.#deps.db
      .selectFrom("env_sessions")
      .selectAll()
      .where("agent_id", "=", agentId)
      .where("tenant_id", "=", tenantId)
      .where("status", "=", "active")
      .executeTakeFirst();
  }

  /** The session's egress log, oldest first, after sequence number `after`. */
  async egress(tenantId: string, agentId: string, after: number, limit: number): Promise<EgressEntry[]> {
    const live = await this.#open(tenantId, agentId);
    await live.egressWrites;
    const rows = await this.#deps.db
      .selectFrom("env_session_egress")
      .selectAll()
      .where("session_id", "=", live.row.id)
      .where("seq", ">", after)
      .orderBy("seq")
      .limit(limit)
      .execute();
    return rows.map((r) => ({
      seq: r.seq,
      time: new Date(Number(r.time)).toISOString(),
      method: r.method,
      host: r.host,
      port: r.port,
      decision: r.decision as EgressEntry["decision"],
      reason: r.reason,
      status: r.status,
      bytes_in: Number(r.bytes_in),
      bytes_out: Number(r.bytes_out),
      ms: r.ms,
    }));
  }

  /**
   * The agent's open session. One opened before the agent was archived can still be read and
   * discarded, but what `changes` the agent's environment (exec, shell, freeze) is refused.
   */
  async #open(tenantId: string, agentId: string, opts: { changes?: boolean } = {}): Promise<Live> {
    const agent = await this.#deps.agents.get(tenantId, agentId);
    if (opts.changes) assertLive(agent);
    for (const live of this.#live.values()) {
      if (live.row.agent_id === agent.row.id && live.row.tenant_id === tenantId) return live;
    }
    throw new AppError("no_session", `Agent '${agent.row.name}' has no open environment session.`);
  }

  #hold(live: Live): void {
    if (live.busy) throw new AppError("session_busy");
    live.busy = true;
  }

  async #release(live: Live, handle: SandboxHandle | undefined): Promise<void> {
    if (handle) await handle.destroy().catch((e) => this.#deps.log(`session ${live.row.id}: teardown: ${e}`));
    if (live.handle === handle) live.handle = undefined;
    live.busy = false;
    live.row.last_used_at = Date.now();
    await this.#deps.db
      .updateTable("env_sessions")
      .set({ last_used_at: live.row.last_used_at, commands: live.row.commands })
      .where("id", "=", live.row.id)
      .execute();
  }

  async #boot(
    live: Live,
    argv: string[],
    options: { cwd?: string; env: Record<string, string>; terminal?: { rows: number; cols: number } },
  ): Promise<SandboxHandle> {
    const { agents, runners, maxLimits, driver } = this.#deps;
    const base = await this.#baseSnapshot(live);
    const layers = await agents.layerPaths({ image: base.base, layers: JSON.parse(base.layers) as string[] });
    const runner = await runners.current();
    live.row.commands += 1;
    const limits: Limits = {
      ...DEFAULT_LIMITS,
      memory_mb: live.row.memory_mb,
      pids: Math.min(4096, maxLimits.pids),
      cpus: maxLimits.cpus,
      disk_mb: live.row.disk_mb,
    };
    const proxyEnv = {
      http_proxy: PROXY_URL,
      https_proxy: PROXY_URL,
      HTTP_PROXY: PROXY_URL,
      HTTPS_PROXY: PROXY_URL,
      no_proxy: "localhost,127.0.0.1",
    };
    const handle = await driver.boot({
      id: `${layerName(live.row.id)}-${live.row.commands}`,
      layers,
      runnerDir: runner.dir,
      limits,
      files: [],
      argv: [`${RUNNER_MOUNT}/node`, "-e", FORWARDER, "/run/paddock/egress.sock", String(PROXY_PORT), ...argv],
      env: { PATH: DEFAULT_PATH, HOME: "/root", LANG: "C.UTF-8", USER: "root", ...proxyEnv, ...options.env },
      cwd: options.cwd ?? "/root",
      session: {
        layerDir: live.layer.dir,
        idBase: live.row.id_base,
        terminal: options.terminal,
        egressSocket: join(live.layer.egressDir, "egress.sock"),
      },
    });
    live.handle = handle;
    return handle;
  }

  async #baseSnapshot(live: Live) {
    const base = await this.#deps.agents.snapshots.get(this.#deps.db, live.row.agent_id, live.row.base_version);
    if (!base) throw new Error(`agent ${live.row.agent_id} lost snapshot version ${live.row.base_version}`);
    return base;
  }

  #proxy(row: EnvSessionsTable, layer: SessionLayer): EgressProxy {
    return new EgressProxy(
      {
        socketPath: join(layer.egressDir, "egress.sock"),
        allow: JSON.parse(row.allow) as string[],
        resolve: this.#deps.resolve,
        trustedAddresses: this.#deps.egressTrustedAddresses,
        onRecord: (record) => this.#record(row.id, record),
      },
      this.#deps.egressTestOverrides,
    );
  }

  #record(sessionId: string, record: EgressRecord): void {
    const live = this.#live.get(sessionId);
    if (!live) return;
    const refused = record.decision === "refused";
    if (refused) live.row.egress_refused += 1;
    else live.row.egress_allowed += 1;
    const seq = ++live.egressSeq;
    const { db, log } = this.#deps;
    live.egressWrites = live.egressWrites
      .then(async () => {
        await db
          .updateTable("env_sessions")
          .set({ egress_allowed: live.row.egress_allowed, egress_refused: live.row.egress_refused })
          .where("id", "=", sessionId)
          .execute();
        if (seq > EGRESS_LOG_CAP) return;
        await db
          .insertInto("env_session_egress")
          .values({
            session_id: sessionId,
            seq,
            time: Date.parse(record.time),
            method: record.method,
            host: record.host,
            port: record.port,
            decision: record.decision,
            reason: record.reason ?? null,
            status: record.status ?? null,
            bytes_in: record.bytesIn,
            bytes_out: record.bytesOut,
            ms: record.ms,
          })
          .execute();
      })
      .catch((err) => log(`session ${sessionId}: egress record: ${err}`));
  }

  async #diskFull(live: Pick<Live, "row">): Promise<boolean> {
    const usage = await this.#deps.driver.sessionLayerUsage?.(layerName(live.row.id)).catch(() => undefined);
    if (!usage) return false;
    const freeBytes = usage.sizeBytes - usage.usedBytes;
    return freeBytes < Math.max(1 << 20, usage.sizeBytes / 100) || usage.inodes - usage.usedInodes < 16;
  }

  async #view(live: Pick<Live, "row" | "busy">): Promise<EnvSession> {
    const r = live.row;
    const active = this.#live.has(r.id);
    const usage = active
      ? await this.#deps.driver.sessionLayerUsage?.(layerName(r.id)).catch(() => undefined)
      : undefined;
    return {
      id: r.id,
      agent_id: r.agent_id,
      status: r.status as EnvSession["status"],
      base_version: r.base_version,
      allow: JSON.parse(r.allow) as string[],
      disk_mb: r.disk_mb,
      memory_mb: r.memory_mb,
      idle_timeout_s: r.idle_timeout_s,
      commands: r.commands,
      busy: live.busy && active,
      disk: usage
        ? { used_bytes: usage.usedBytes, size_bytes: usage.sizeBytes, full: await this.#diskFull(live) }
        : null,
      egress: { allowed: r.egress_allowed, refused: r.egress_refused },
      created_at: new Date(r.created_at).toISOString(),
      last_used_at: new Date(r.last_used_at).toISOString(),
      ended_at: r.ended_at === null ? null : new Date(r.ended_at).toISOString(),
      end_reason: r.end_reason,
      frozen_version: r.frozen_version,
    };
  }

  /** Ends a session: kills what runs in it, records why, drops its layer. */
  async #end(live: Live, status: "discarded" | "expired" | "lost", reason: string): Promise<void> {
    const now = Date.now();
    live.row = { ...live.row, status, ended_at: now, end_reason: reason };
    this.#live.delete(live.row.id);
    await live.handle?.destroy().catch(() => {});
    await this.#deps.db
      .updateTable("env_sessions")
      .set({ status, ended_at: now, end_reason: reason })
      .where("id", "=", live.row.id)
      .where("status", "=", "active")
      .execute();
    await this.#teardown(live);
  }

  async #teardown(live: Live): Promise<void> {
    this.#live.delete(live.row.id);
    await live.proxy.close().catch(() => {});
    await live.egressWrites;
    await this.#deps.driver.removeSessionLayer?.(layerName(live.row.id));
  }

  async #sweep(): Promise<void> {
    const now = Date.now();
    for (const live of [...this.#live.values()]) {
      if (!live.busy && now - live.row.last_used_at > live.row.idle_timeout_s * 1000) {
        this.#deps.log(`session ${live.row.id}: idle for ${live.row.idle_timeout_s} s, discarded`);
        await this.#end(live, "expired", `idle for more than ${live.row.idle_timeout_s} s`);
      }
    }
  }

  /** The lowest free id range (one per open session), as a host id. */
  #allocateIdBase(): number {
    const max = this.#deps.maxSessions;
    if (this.#live.size >= max) throw new AppError("session_limit");
    const used = new Set([...this.#live.values()].map((l) => l.row.id_base));
    // A random start keeps ranges of consecutive sessions apart on the host; any free slot will do.
    const slots = 4096;
    const start = randomBytes(2).readUInt16BE(0) % slots;
    for (let i = 0; i < slots; i++) {
      const base = SESSION_ID_FLOOR + ((start + i) % slots) * SHIFT_COUNT;
      if (!used.has(base)) return base;
    }
    throw new AppError("session_limit");
  }
}

/** The driver's name for a session's layer and the prefix of its sandboxes. */
function layerName(sessionId: string): string {
  return `ses-${sessionId.slice(sessionId.indexOf("_") + 1)}`;
}

function validSize(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= 1000;
}

/** Reads a stream to its end, keeping the first OUTPUT_CAP bytes. */
async function capped(stream: Readable): Promise<{ text: string; truncated: boolean }> {
  const chunks: Buffer[] = [];
  let kept = 0;
  let total = 0;
  for await (const chunk of stream) {
    const buf = chunk as Buffer;
    total += buf.length;
    if (kept < OUTPUT_CAP) {
      const take = buf.subarray(0, OUTPUT_CAP - kept);
      chunks.push(take);
      kept += take.length;
    }
  }
  return { text: Buffer.concat(chunks).toString("utf8"), truncated: total > OUTPUT_CAP };
}
