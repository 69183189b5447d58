/**
 * Snapshots: the versions of an agent's environment. A snapshot is a manifest (base image digest,
 * environment layer digests, runner digest); versions are append-only, and the agent points at
 * its current one. Every change of the current version is a compare-and-set on it.
 */
import { AppError } from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import { newId } from "../store/ids.ts";
import type { Database, SnapshotsTable } from "../store/schema.ts";
import { parseLayerDigests } from "../store/stored.ts";

export interface Snapshot {
  version: number;
  base: string;
  layers: string[];
  runner: string;
  reason: string;
  parent_version: number | null;
  changes: unknown;
  env_bytes: number;
  created_at: string;
  current: boolean;
}

export interface NewSnapshot {
  tenantId: string;
  agentId: string;
  base: string;
  layers: string[];
  runner: string;
  reason: "create" | "update" | "freeze" | "rollback" | "runner" | "import";
  parentVersion: number | null;
  changes?: unknown;
  envBytes?: number;
}

type Db = Kysely<Database> | Transaction<Database>;

export function toSnapshot(row: SnapshotsTable, currentVersion: number): Snapshot {
  return {
    version: row.version,
    base: row.base,
    layers: parseLayerDigests(row.layers),
    runner: row.runner,
    reason: row.reason,
    parent_version: row.parent_version,
    changes: row.changes === null ? null : JSON.parse(row.changes),
    env_bytes: Number(row.env_bytes),
    created_at: new Date(row.created_at).toISOString(),
    current: row.version === currentVersion,
  };
}

export class Snapshots {
  readonly #db: Kysely<Database>;

  constructor(db: Kysely<Database>) {
    this.#db = db;
  }

  /** Appends the next version; call inside the transaction that also moves the agent to it. */
  async append(trx: Db, s: NewSnapshot): Promise<SnapshotsTable> {
    const last = await trx
      .selectFrom("snapshots")
      .select((eb) => eb.fn.max("version").as("max"))
      .where("agent_id", "=", s.agentId)
      .executeTakeFirst();
    const row: SnapshotsTable = {
      id: newId("snp"),
      tenant_id: s.tenantId,
      agent_id: s.agentId,
      version: Number(last?.max ?? 0) + 1,
      base: s.base,
      layers: JSON.stringify(s.layers),
      runner: s.runner,
      reason: s.reason,
      parent_version: s.parentVersion,
      changes: s.changes === undefined ? null : JSON.stringify(s.changes),
      env_bytes: s.envBytes ?? 0,
      created_at: Date.now(),
    };
    await trx.insertInto("snapshots").values(row).execute();
    return row;
  }

  /**
   * Points the agent at `to` if it is still at `from` and live; false, changing nothing, otherwise
   * (an agent archived meanwhile keeps its environment).
   */
  async moveCurrent(trx: Db, agentId: string, from: number, to: number): Promise<boolean> {
    const res = await trx
      .updateTable("agents")
      .set({ current_version: to })
      .where("id", "=", agentId)
      .where("current_version", "=", from)
      .where("archived_at", "is", null)
      .executeTakeFirst();
    return Number(res.numUpdatedRows) === 1;
  }

  async get(db: Db, agentId: string, version: number): Promise<SnapshotsTable | undefined> {
    return db
      .selectFrom("snapshots")
      .selectAll()
      .where("agent_id", "=", agentId)
      .where("version", "=", version)
      .executeTakeFirst();
  }

  async list(agentId: string): Promise<SnapshotsTable[]> {
    return this.#db
      .selectFrom("snapshots")
      .selectAll()
      .where("agent_id", "=", agentId)
      .orderBy("version", "desc")
      .execute();
  }

  /**
   * Makes a new current version from an older one's environment. The target must exist;
   * a concurrent change of the current version makes this fail with `conflict`.
   */
  async rollback(tenantId: string, agentId: string, currentVersion: number, target: number): Promise<SnapshotsTable> {
    return this.#db.transaction().execute(async (trx) => {
      const old = await this.get(trx, agentId, target);
      if (!old) throw new AppError("not_found", `The agent has no snapshot version ${target}.`);
      const row = await this.append(trx, {
        tenantId,
        agentId,
        base: old.base,
        layers: parseLayerDigests(old.layers),
        runner: old.runner,
        reason: "rollback",
        parentVersion: currentVersion,
        changes: { rolled_back_to: target },
        envBytes: Number(old.env_bytes),
      });
      if (!(await this.moveCurrent(trx, agentId, currentVersion, row.version))) {
        throw new AppError("conflict", "The agent's environment changed meanwhile; look at its history and retry.");
      }
      return row;
    });
  }

  /** Every digest any snapshot names: environment layers, runners, base images. */
  async referenced(): Promise<{ layers: Set<string>; runners: Set<string>; bases: Set<string> }> {
    const rows = await this.#db.selectFrom("snapshots").select(["layers", "runner", "base"]).execute();
    const out = { layers: new Set<string>(), runners: new Set<string>(), bases: new Set<string>() };
    for (const r of rows) {
      for (const l of parseLayerDigests(r.layers)) out.layers.add(l);
      if (r.runner) out.runners.add(r.runner);
      out.bases.add(r.base);
    }
    return out;
  }
}
