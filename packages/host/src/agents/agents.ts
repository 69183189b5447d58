/** Agents: validated at creation against their real environment image, then frozen into a spec. */
import { type Agent, type AgentCreate, AppError, BUILTIN_TOOLS, Limits, RetryPolicy } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { requireConnections } from "../bridge/connections.ts";
import type { RunnerRegistry } from "../engine/runner-registry.ts";
import type { AgentDefinition, AgentSpec } from "../engine/runs.ts";
import type { ImageStore } from "../images/image-store.ts";
import type { LayerStore } from "../images/layer-store.ts";
import { DEFAULT_PATH, resolveCommand } from "../images/resolve-command.ts";
import { RUNNER_NODE_PATH, RUNNER_SDK } from "../sandbox/driver.ts";
import { newId } from "../store/ids.ts";
import type { AgentsTable, Database, SnapshotsTable } from "../store/schema.ts";
import { type Snapshot, Snapshots, toSnapshot } from "./snapshots.ts";

/** An agent row with its current snapshot. */
export interface AgentRecord {
  row: AgentsTable;
  snapshot: SnapshotsTable;
}

export function toAgent({ row, snapshot }: AgentRecord): Agent {
  const def = JSON.parse(row.spec) as AgentDefinition;
  return {
    id: row.id,
    name: row.name,
    command: def.command,
    env: def.env,
    files: def.files,
    limits: def.limits,
    policy: { connections: def.policy?.connections ?? [], agents: def.policy?.agents ?? [] },
    budget: def.budget ?? {},
    retry: RetryPolicy.parse(def.retry ?? {}),
    max_concurrent_runs: def.max_concurrent_runs ?? null,
    queue_ttl_s: def.queue_ttl_s ?? null,
    builtin: def.builtin ?? null,
    snapshot: {
      version: snapshot.version,
      base: snapshot.base,
      layers: JSON.parse(snapshot.layers) as string[],
      runner: snapshot.runner,
    },
    created_at: new Date(row.created_at).toISOString(),
  };
}

/** What a run of this agent freezes at trigger time. */
export function runSpec({ row, snapshot }: AgentRecord): AgentSpec {
  return {
    ...(JSON.parse(row.spec) as AgentDefinition),
    image: snapshot.base,
    layers: JSON.parse(snapshot.layers) as string[],
    runner: snapshot.runner,
    snapshot_version: snapshot.version,
  };
}

export class Agents {
  readonly #db: Kysely<Database>;
  readonly #images: ImageStore;
  readonly #layers: LayerStore;
  readonly #runners: RunnerRegistry;
  readonly snapshots: Snapshots;

  readonly #maxLimits: Limits;

  constructor(
    db: Kysely<Database>,
    images: ImageStore,
    layers: LayerStore,
    runners: RunnerRegistry,
    maxLimits: Limits,
  ) {
    this.#maxLimits = maxLimits;
    this.#db = db;
    this.#images = images;
    this.#layers = layers;
    this.#runners = runners;
    this.snapshots = new Snapshots(db);
  }

  /** The stores and host caps behind agents' environments (snapshot export and import use them too). */
  get stores(): { images: ImageStore; layers: LayerStore; runners: RunnerRegistry; maxLimits: Limits } {
    return { images: this.#images, layers: this.#layers, runners: this.#runners, maxLimits: this.#maxLimits };
  }

  /** Host paths of a spec's layers, top first, base rootfs last. */
  async layerPaths(spec: Pick<AgentSpec, "image" | "layers">): Promise<string[]> {
    const image = await this.#images.resolve(spec.image);
    return [...spec.layers.map((d) => this.#layers.path(d)), image.rootfs];
  }

  async create(tenantId: string, body: AgentCreate): Promise<AgentRecord> {
    const taken = await this.#db
      .selectFrom("agents")
      .select("id")
      .where("tenant_id", "=", tenantId)
      .where("name", "=", body.name)
      .executeTakeFirst();
    if (taken) throw new AppError("conflict", `An agent named '${body.name}' already exists.`);
    const policy = {
      connections: body.policy?.connections ?? [],
      ...(body.policy?.agents?.length ? { agents: body.policy.agents } : {}),
    };
    await requireConnections(this.#db, tenantId, policy.connections);

    const limits = Limits.parse(body.limits ?? {});
    const over = (Object.keys(limits) as (keyof Limits)[])
      .filter((k) => limits[k] > this.#maxLimits[k])
      .map((k) => ({ path: `limits.${k}`, code: "too_big", message: `at most ${this.#maxLimits[k]} on this host` }));
    if (over.length > 0) {
      throw new AppError("validation_failed", `Invalid request: ${over[0]?.path}: ${over[0]?.message}.`, over);
    }
    const image = await this.#images.resolve(body.image ?? "default");
    const files = body.files ?? {};
    const hasFiles = Object.keys(files).length > 0;
    const layers = hasFiles ? [await this.#layers.putFiles(files)] : [];
    const env = body.env ?? {};
    // The built-in agent is the runner bundle started in agent mode, on the runner's own Node.
    const command = body.command ?? [RUNNER_NODE_PATH, RUNNER_SDK, "agent"];
    const def: AgentDefinition = {
      command,
      env,
      limits,
      cwd: hasFiles ? "/app" : "/home/agent",
      files: Object.entries(files)
        .map(([path, content]) => ({ path, size: Buffer.byteLength(content) }))
        .sort((a, b) => (a.path < b.path ? -1 : 1)),
      policy,
      ...(body.budget ? { budget: body.budget } : {}),
      ...(body.retry ? { retry: RetryPolicy.parse(body.retry) } : {}),
      ...(body.max_concurrent_runs ? { max_concurrent_runs: body.max_concurrent_runs } : {}),
      ...(body.queue_ttl_s ? { queue_ttl_s: body.queue_ttl_s } : {}),
      ...(body.instructions !== undefined
        ? {
            builtin: {
              instructions: body.instructions,
              model: body.model ?? "",
              tools: body.tools ?? [...BUILTIN_TOOLS],
              max_steps: body.max_steps ?? 20,
            },
          }
        : {}),
    };
    const spec = { ...def, image: image.digest, layers };
    const argv0 = command[0] as string;
    // The runner's Node is in every sandbox (read-only, current runner): agents written for Node may use it.
    const found =
      argv0 === RUNNER_NODE_PATH ||
      (await resolveCommand(await this.layerPaths(spec), argv0, {
        path: env.PATH ?? DEFAULT_PATH,
        cwd: spec.cwd,
      }));
    if (!found) {
      throw new AppError(
        "command_not_found",
        `The command '${argv0}' does not exist in the agent's image (searched PATH and ${spec.cwd}).`,
        { command: argv0 },
      );
    }
    const row: AgentsTable = {
      id: newId("agt"),
      tenant_id: tenantId,
      name: body.name,
      spec: JSON.stringify(def),
      current_version: 1,
      created_at: Date.now(),
    };
    const runner = await this.#runners.current();
    const snapshot = await this.#db.transaction().execute(async (trx) => {
      // Again inside the transaction: a connection deleted meanwhile is not named.
      await requireConnections(trx, tenantId, policy.connections);
      await trx.insertInto("agents").values(row).execute();
      return this.snapshots.append(trx, {
        tenantId,
        agentId: row.id,
        base: image.digest,
        layers,
        runner: runner.digest,
        reason: "create",
        parentVersion: null,
        envBytes: Object.values(files).reduce((n, c) => n + Buffer.byteLength(c), 0),
      });
    });
    return { row, snapshot };
  }

  async get(tenantId: string, id: string): Promise<AgentRecord> {
    const row = await this.#db
      .selectFrom("agents")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .where("id", "=", id)
      .executeTakeFirst();
    if (!row) throw new AppError("not_found", `No agent '${id}'.`);
    return { row, snapshot: await this.#snapshotOf(row) };
  }

  /** An agent by id, else by name; not_found otherwise. */
  async resolve(tenantId: string, ref: string): Promise<AgentRecord> {
    const row = await this.#db
      .selectFrom("agents")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .where((eb) => eb.or([eb("id", "=", ref), eb("name", "=", ref)]))
      .executeTakeFirst();
    if (!row) throw new AppError("not_found", `No agent '${ref.slice(0, 64)}'.`);
    return { row, snapshot: await this.#snapshotOf(row) };
  }

  async list(tenantId: string, opts: { name?: string; cursor?: string; limit: number }): Promise<AgentRecord[]> {
    let q = this.#db.selectFrom("agents").selectAll().where("tenant_id", "=", tenantId);
    if (opts.name) q = q.where("name", "=", opts.name);
    if (opts.cursor) q = q.where("id", "<", opts.cursor);
    const rows = await q.orderBy("id", "desc").limit(opts.limit).execute();
    return Promise.all(rows.map(async (row) => ({ row, snapshot: await this.#snapshotOf(row) })));
  }

  async #snapshotOf(row: AgentsTable): Promise<SnapshotsTable> {
    const snapshot = await this.snapshots.get(this.#db, row.id, row.current_version);
    if (!snapshot) throw new Error(`agent ${row.id} has no snapshot version ${row.current_version}`);
    return snapshot;
  }

  /** The agent's environment versions, newest first. */
  async history(tenantId: string, id: string): Promise<Snapshot[]> {
    const { row } = await this.get(tenantId, id);
    return (await this.snapshots.list(row.id)).map((s) => toSnapshot(s, row.current_version));
  }

  async rollback(tenantId: string, id: string, version: number): Promise<Snapshot> {
    const { row } = await this.get(tenantId, id);
    const created = await this.snapshots.rollback(tenantId, row.id, row.current_version, version);
    return toSnapshot(created, created.version);
  }
}
