/**
 * The nodes sharing one store. A node registers when it starts, refusing to when another live
 * node has its id or a sandbox range overlapping its own (two nodes under one id would fence
 * each other's runs; overlapping ranges would hand out the same sandbox addresses), heartbeats
 * with its runs' leases renewed in the same beat, and may be drained: it then claims nothing new
 * and lets its runs finish. Every time written here is the database's clock.
 */
import { createHash } from "node:crypto";
import { hostname } from "node:os";
import { ACTIVE_STATUSES, AppError, type NodeInfo } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { parseCidr } from "../sandbox/linux/network.ts";
import { type Dialect, dbNow, lockNames, readDbNow } from "../store/portable.ts";
import type { Database, NodesTable } from "../store/schema.ts";

const ACTIVE = ACTIVE_STATUSES;
/** A node id: what `--node-id` accepts. */
export const NODE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export interface NodeRegistration {
  id: string;
  version: string;
  internalUrl: string;
  sandboxCidr: string;
  /** hostname:pid of the registering process (default this one's). */
  process?: string;
}

export interface NodesConfig {
  dialect?: Dialect;
  /** A node whose heartbeat is older than this is not live (default 30 s). */
  staleMs?: number;
}

/**
 * A node id that stays the same across restarts of one host: the machine's name and a hash of
 * its data directory, so a single-machine host needs no `--node-id`.
 * @example defaultNodeId("/var/lib/paddock") // "build-7-3f2a9c"
 */
export function defaultNodeId(dataDir: string): string {
  const name =
    hostname()
      .replace(/[^A-Za-z0-9._-]/g, "-")
      .slice(0, 48) || "node";
  return `${/^[A-Za-z0-9]/.test(name) ? name : `n${name}`}-${createHash("sha256").update(dataDir).digest("hex").slice(0, 6)}`;
}

/** Whether two IPv4 ranges share an address. */
export function cidrsOverlap(a: string, b: string): boolean {
  const x = parseCidr(a);
  const y = parseCidr(b);
  const end = (r: { base: number; bits: number }) => r.base + 2 ** (32 - r.bits);
  return x.base < end(y) && y.base < end(x);
}

/** The process tag of this process. */
export const thisProcess = (): string => `${hostname()}:${process.pid}`;

/** Whether `tag` names a process on this machine that is gone (a crashed earlier start of a node). */
function goneHere(tag: string): boolean {
  const at = tag.lastIndexOf(":");
  if (tag.slice(0, at) !== hostname()) return false;
  const pid = Number(tag.slice(at + 1));
  if (!Number.isInteger(pid) || pid <= 0) return true;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "ESRCH";
  }
}

export class Nodes {
  readonly #db: Kysely<Database>;
  readonly #dialect: Dialect;
  readonly #staleMs: number;

  constructor(db: Kysely<Database>, config: NodesConfig = {}) {
    this.#db = db;
    this.#dialect = config.dialect ?? "sqlite";
    this.#staleMs = config.staleMs ?? 30_000;
  }

  /**
   * Records this node as started. Refuses (node_refused, nothing written) when another live node
   * has the same id, or a live node's sandbox range overlaps this one's. A row of the same id
   * whose heartbeat lapsed, that stopped, or whose process on this machine is gone is taken over.
   */
  async register(node: NodeRegistration): Promise<void> {
    if (!NODE_ID.test(node.id)) {
      throw new AppError("validation_failed", `Node id '${node.id.slice(0, 80)}': letters, digits, '.', '_' and '-'.`);
    }
    parseCidr(node.sandboxCidr);
    const tag = node.process ?? thisProcess();
    await this.#db.transaction().execute(async (trx) => {
      await lockNames(trx, this.#dialect, ["paddock:nodes"]);
      const now = await readDbNow(trx, this.#dialect);
      const live = await trx
        .selectFrom("nodes")
        .selectAll()
        .where("stopped_at", "is", null)
        .where("heartbeat_at", ">=", now - this.#staleMs)
        .execute();
      const same = live.find((n) => n.id === node.id);
      if (same && !goneHere(same.process)) {
        throw new AppError(
          "node_refused",
          `Node '${node.id}' is already running (${same.process}, last heartbeat ${now - Number(same.heartbeat_at)} ms ago); give this one another --node-id, or stop that one first.`,
        );
      }
      const clash = live.find((n) => n.id !== node.id && cidrsOverlap(n.sandbox_cidr, node.sandboxCidr));
      if (clash) {
        throw new AppError(
          "node_refused",
          `The sandbox range ${node.sandboxCidr} overlaps ${clash.sandbox_cidr} of live node '${clash.id}'; give this node another --sandbox-cidr.`,
        );
      }
      const row = {
        version: node.version,
        internal_url: node.internalUrl,
        sandbox_cidr: node.sandboxCidr,
        process: tag,
        heartbeat_at: dbNow(this.#dialect),
        started_at: dbNow(this.#dialect),
        draining: 0,
        stopped_at: null,
      };
      await trx
        .insertInto("nodes")
        .values({ id: node.id, ...row })
        .onConflict((oc) => oc.column("id").doUpdateSet(row))
        .execute();
    });
  }

  /**
   * One heartbeat of `nodeId`: its own row, and the leases of the runs it holds (`held`, by run
   * id and attempt) renewed to `leaseMs` from now in one statement. Returns the runs whose lease
   * was renewed (a held run missing from it is no longer this node's: its attempt must stop), those
   * of them whose cancel was asked for (through any node), and whether the node is draining.
   */
  async heartbeat(
    nodeId: string,
    held: { runId: string; attempt: number }[],
    leaseMs: number,
  ): Promise<{ renewed: Set<string>; canceled: Set<string>; draining: boolean }> {
    return this.#db.transaction().execute(async (trx) => {
      const node = await trx
        .updateTable("nodes")
        .set({ heartbeat_at: dbNow(this.#dialect) })
        .where("id", "=", nodeId)
        .returning("draining")
        .executeTakeFirst();
      const renewed = new Set<string>();
      const canceled = new Set<string>();
      if (held.length > 0) {
        const rows = await trx
          .updateTable("runs")
          .set((eb) => ({ lease_until: eb(dbNow(this.#dialect), "+", leaseMs) }))
          .where("worker_id", "=", nodeId)
          .where("status", "in", ACTIVE)
          .where(
            "id",
            "in",
            held.map((h) => h.runId),
          )
          .returning(["id", "attempt", "cancel_requested"])
          .execute();
        const attempts = new Map(held.map((h) => [h.runId, h.attempt]));
        for (const r of rows) {
          if (attempts.get(r.id) !== r.attempt) continue;
          renewed.add(r.id);
          if (r.cancel_requested === 1) canceled.add(r.id);
        }
      }
      return { renewed, canceled, draining: node?.draining === 1 };
    });
  }

  /** Where another node reaches `nodeId`'s API, and whether that node is live; null for an unknown node. */
  async locate(nodeId: string): Promise<{ url: string; live: boolean } | null> {
    const now = await readDbNow(this.#db, this.#dialect);
    const row = await this.#db
      .selectFrom("nodes")
      .select(["internal_url", "heartbeat_at", "stopped_at"])
      .where("id", "=", nodeId)
      .executeTakeFirst();
    if (!row) return null;
    return {
      url: row.internal_url,
      live: row.stopped_at === null && Number(row.heartbeat_at) >= now - this.#staleMs,
    };
  }

  /** Records the API URL other nodes reach this node at (known once it listens). */
  async advertise(nodeId: string, internalUrl: string): Promise<void> {
    await this.#db.updateTable("nodes").set({ internal_url: internalUrl }).where("id", "=", nodeId).execute();
  }

  /** Marks the node stopped (a clean shutdown): it is no longer live, and its id is free at once. */
  async stop(nodeId: string, process: string = thisProcess()): Promise<void> {
    await this.#db
      .updateTable("nodes")
      .set({ stopped_at: dbNow(this.#dialect) })
      .where("id", "=", nodeId)
      .where("process", "=", process)
      .execute();
  }

  /** Whether the node is draining (it claims no new runs). */
  async draining(nodeId: string): Promise<boolean> {
    const row = await this.#db.selectFrom("nodes").select("draining").where("id", "=", nodeId).executeTakeFirst();
    return row?.draining === 1;
  }

  /** Every node the store knows, live ones first, each with the runs it holds. */
  async list(): Promise<NodeInfo[]> {
    const now = await readDbNow(this.#db, this.#dialect);
    const rows = await this.#db.selectFrom("nodes").selectAll().orderBy("id").execute();
    const counts = await this.#db
      .selectFrom("runs")
      .select((eb) => ["worker_id", eb.fn.countAll<number>().as("n")])
      .where("status", "in", ACTIVE)
      .groupBy("worker_id")
      .execute();
    const active = new Map(counts.map((c) => [c.worker_id, Number(c.n)]));
    const out = rows.map((row) => this.#info(row, now, active.get(row.id) ?? 0));
    return out.sort((a, b) => Number(b.live) - Number(a.live));
  }

  /** Drains a node: it stops claiming runs and lets those going finish. not_found for an unknown id. */
  async drain(nodeId: string): Promise<NodeInfo> {
    const res = await this.#db.updateTable("nodes").set({ draining: 1 }).where("id", "=", nodeId).executeTakeFirst();
    if (Number(res.numUpdatedRows) !== 1) throw new AppError("not_found", `No node '${nodeId.slice(0, 80)}'.`);
    const info = (await this.list()).find((n) => n.id === nodeId);
    if (!info) throw new AppError("not_found", `No node '${nodeId.slice(0, 80)}'.`);
    return info;
  }

  #info(row: NodesTable, now: number, activeRuns: number): NodeInfo {
    const iso = (ms: number) => new Date(Number(ms)).toISOString();
    return {
      id: row.id,
      version: row.version,
      internal_url: row.internal_url,
      sandbox_cidr: row.sandbox_cidr,
      started_at: iso(row.started_at),
      heartbeat_at: iso(row.heartbeat_at),
      stopped_at: row.stopped_at === null ? null : iso(row.stopped_at),
      live: row.stopped_at === null && Number(row.heartbeat_at) >= now - this.#staleMs,
      draining: row.draining === 1,
      active_runs: activeRuns,
    };
  }
}
