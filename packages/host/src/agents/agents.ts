/**
 * Agents: a definition checked against this host (its caps, the tenant's connections, the command
 * in its real environment image) and stored in versions. An update (a merge patch, or a whole
 * new definition) saves the next version, or changes nothing when it is invalid; archiving
 * (delete) stops new runs and every change while the agent and its runs stay readable. A run
 * freezes the agent's current definition and environment when it is triggered, so a queued or
 * retried run keeps its version, and its budget, whatever happens to the agent.
 */
import { isDeepStrictEqual } from "node:util";
import {
  type Agent,
  type AgentBudget,
  AgentCreate,
  type AgentDefinition,
  type AgentReplace,
  type AgentSpec,
  type AgentUpdate,
  type AgentVersion,
  type AgentVersionDefinition,
  AppError,
  BUILTIN_TOOLS,
  Limits,
  type McpPins,
  type McpPolicyEntry,
  RetryPolicy,
  toMicro,
  validationFailed,
} from "@paddock/protocol";
import { type Kysely, sql } from "kysely";
import { requireConnections } from "../bridge/connections.ts";
import { isDigest } from "../fs/layout.ts";
import type { GatewayBudget } from "../gateway/gateway.ts";
import { requireApprovers } from "../identity/identity.ts";
import type { ImageStore } from "../images/image-store.ts";
import type { LayerStore } from "../images/layer-store.ts";
import { DEFAULT_PATH, resolveCommand } from "../images/resolve-command.ts";
import type { RunnerRegistry } from "../images/runner-registry.ts";
import { readPins, writePins } from "../mcp/pins.ts";
import { requireMcpServers } from "../mcp/servers.ts";
import { RUNNER_NODE_PATH, RUNNER_SDK } from "../sandbox/driver.ts";
import { newId } from "../store/ids.ts";
import type { AgentsTable, Database, SnapshotsTable } from "../store/schema.ts";
import { isoTime, parseAgentDefinition, parseLayerDigests, parseRunSpec } from "../store/stored.ts";
import type { LayerBlobs } from "./layer-blobs.ts";
import { type Snapshot, Snapshots, toSnapshot } from "./snapshots.ts";

/** Pins the MCP tools `entries` allow for a tenant, keeping those pinned in `keep` as they were. */
export type McpPinner = (tenantId: string, entries: readonly McpPolicyEntry[], keep: McpPins) => Promise<McpPins>;

/** An agent row with its current snapshot. */
export interface AgentRecord {
  row: AgentsTable;
  snapshot: SnapshotsTable;
}

const layersOf = (snapshot: SnapshotsTable) => parseLayerDigests(snapshot.layers);

/** A stored definition as the API shows it (an agent's, or one of its versions'). */
function definitionOf(spec: string): AgentVersionDefinition {
  const def = parseAgentDefinition(spec);
  return {
    command: def.command,
    env: def.env,
    files: def.files,
    limits: def.limits,
    policy: {
      connections: def.policy?.connections ?? [],
      agents: def.policy?.agents ?? [],
      ...(def.policy?.mcp?.length ? { mcp: def.policy.mcp } : {}),
    },
    budget: def.budget ?? {},
    retry: RetryPolicy.parse(def.retry ?? {}),
    max_concurrent_runs: def.max_concurrent_runs ?? null,
    queue_ttl_s: def.queue_ttl_s ?? null,
    builtin: def.builtin ?? null,
  };
}

export function toAgent({ row, snapshot }: AgentRecord): Agent {
  return {
    id: row.id,
    name: row.name,
    ...definitionOf(row.spec),
    snapshot: {
      version: snapshot.version,
      base: snapshot.base,
      layers: layersOf(snapshot),
      runner: snapshot.runner,
    },
    version: row.version,
    archived_at: isoTime(row.archived_at),
    created_at: new Date(row.created_at).toISOString(),
  };
}

/** The refusal of anything that would change an archived agent or start its runs. */
export function archived(row: Pick<AgentsTable, "id" | "name" | "archived_at">): AppError {
  return new AppError(
    "agent_archived",
    `The agent '${row.name}' was deleted (archived) at ${isoTime(row.archived_at)}: it starts no new runs and cannot change. Its runs stay readable; create a new agent to run again.`,
    { agent_id: row.id },
  );
}

/** `agent_archived` unless the agent is live: what changes an agent or starts its runs checks this. */
export function assertLive({ row }: Pick<AgentRecord, "row">): void {
  if (row.archived_at !== null) throw archived(row);
}

/** What a run of this agent freezes at trigger time; `agent_archived` for an archived agent. */
export function runSpec(agent: AgentRecord): AgentSpec {
  assertLive(agent);
  return frozenSpec(agent);
}

/**
 * What a run of this agent would freeze, archived or not: for a trigger that answers a request
 * it already served (RunRepository.create refuses a new run of an archived agent itself).
 */
export function frozenSpec({ row, snapshot }: AgentRecord): AgentSpec {
  return {
    ...parseAgentDefinition(row.spec),
    image: snapshot.base,
    layers: layersOf(snapshot),
    runner: snapshot.runner,
    snapshot_version: snapshot.version,
    agent_version: row.version,
  };
}

/** A definition checked against this host, with the environment it runs in. */
interface Built {
  def: AgentDefinition;
  /** The MCP tools its policy allows, pinned (null: its policy names no MCP server). */
  pins: McpPins | null;
  base: string;
  layers: string[];
  envBytes: number;
}

/** The agent an update starts from: its definition (naming its files layer) and environment. */
interface Previous {
  def: AgentDefinition;
  snapshot: SnapshotsTable;
}

/** The AgentCreate body that describes a stored definition (its files and image aside). */
function bodyOf(name: string, def: AgentDefinition): Record<string, unknown> {
  return {
    name,
    ...(def.builtin
      ? {
          instructions: def.builtin.instructions,
          model: def.builtin.model,
          tools: def.builtin.tools,
          max_steps: def.builtin.max_steps,
        }
      : { command: def.command }),
    env: def.env,
    limits: def.limits,
    ...(def.policy ? { policy: def.policy } : {}),
    ...(def.budget ? { budget: def.budget } : {}),
    ...(def.retry ? { retry: def.retry } : {}),
    ...(def.max_concurrent_runs ? { max_concurrent_runs: def.max_concurrent_runs } : {}),
    ...(def.queue_ttl_s ? { queue_ttl_s: def.queue_ttl_s } : {}),
  };
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * `patch` applied to `target` as a JSON merge patch (RFC 7396): objects merge key by key, `null`
 * removes a key, anything else (arrays too) replaces.
 */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const out: Record<string, unknown> = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key];
    else if (value !== undefined) out[key] = mergePatch(out[key], value);
  }
  return out;
}

/**
 * The whole definition an update asks for: `patch` merged into the current one; `command` and
 * `instructions` each replace the other kind of agent. Files and the image are only there when
 * the patch gives them (`null`: no files, the default image); otherwise the environment stays.
 */
function merge(current: Record<string, unknown>, patch: AgentUpdate): Record<string, unknown> {
  const { files, image, ...rest } = patch;
  const base = { ...current };
  if (rest.command != null) for (const k of ["instructions", "model", "tools", "max_steps"]) delete base[k];
  if (rest.instructions != null) delete base.command;
  const out = mergePatch(base, rest) as Record<string, unknown>;
  if (files !== undefined) out.files = files ?? {};
  if (image !== undefined) out.image = image ?? "default";
  return out;
}

function requireName(row: AgentsTable, name: string | undefined): void {
  if (name !== undefined && name !== row.name) {
    throw validationFailed([
      { path: ["name"], code: "custom", message: `an agent's name cannot change (this one is '${row.name}')` },
    ]);
  }
}

/** `layers` with the files layer `old` replaced by `next` (or removed), else `next` on top. */
function withFilesLayer(layers: string[], old: string | undefined, next: string | undefined): string[] {
  const at = old === undefined ? -1 : layers.indexOf(old);
  if (at >= 0) return next === undefined ? layers.toSpliced(at, 1) : layers.with(at, next);
  return next === undefined || layers.includes(next) ? layers : [next, ...layers];
}

/** Stands for a files layer not stored yet (no digest looks like this). */
const PENDING_LAYER = "pending-files-layer";
/** Runs whose budgets are kept in memory. */
const MAX_CACHED_BUDGETS = 10_000;

const filesBytes = (files: Record<string, string>) =>
  Object.values(files).reduce((n, c) => n + Buffer.byteLength(c), 0);

export class Agents {
  readonly #db: Kysely<Database>;
  readonly #images: ImageStore;
  readonly #layers: LayerStore;
  readonly #runners: RunnerRegistry;
  readonly #layerBlobs: LayerBlobs | null;
  readonly #pinMcp: McpPinner | null;
  readonly snapshots: Snapshots;

  readonly #maxLimits: Limits;
  /** Budgets by run id, read once: a run's frozen spec never changes. */
  readonly #budgets = new Map<string, GatewayBudget>();

  constructor(
    db: Kysely<Database>,
    images: ImageStore,
    layers: LayerStore,
    runners: RunnerRegistry,
    maxLimits: Limits,
    /** Layers in a blob store shared with other nodes; null when this node is alone. */
    layerBlobs: LayerBlobs | null = null,
    /** Pins the MCP tools a policy allows (see mcp/service.ts); without it a policy may name no MCP server. */
    pinMcp: McpPinner | null = null,
  ) {
    this.#pinMcp = pinMcp;
    this.#maxLimits = maxLimits;
    this.#layerBlobs = layerBlobs;
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

  /**
   * Host paths of a spec's layers, top first, base rootfs last. Layers this node lacks are
   * fetched from the shared blob store first.
   */
  async layerPaths(spec: Pick<AgentSpec, "image" | "layers">): Promise<string[]> {
    if (isDigest(spec.image)) await this.#layerBlobs?.ensure("image", [spec.image]);
    await this.#layerBlobs?.ensure("layer", spec.layers);
    const image = await this.#images.resolve(spec.image);
    return [...spec.layers.map((d) => this.#layers.path(d)), image.rootfs];
  }

  /**
   * Puts an environment's base image and layers in the shared blob store unless they are there
   * already, for other nodes to boot from.
   */
  async publishEnvironment(env: { image: string; layers: readonly string[] }): Promise<void> {
    await this.#layerBlobs?.publish("image", [env.image]);
    await this.#layerBlobs?.publish("layer", env.layers);
  }

  async create(tenantId: string, body: AgentCreate): Promise<AgentRecord> {
    const taken = await this.#db
      .selectFrom("agents")
      .select("id")
      .where("tenant_id", "=", tenantId)
      .where("name", "=", body.name)
      .where("archived_at", "is", null)
      .executeTakeFirst();
    if (taken) throw new AppError("conflict", `An agent named '${body.name}' already exists.`);
    const built = await this.#build(tenantId, body, null);
    const row: AgentsTable = {
      id: newId("agt"),
      tenant_id: tenantId,
      name: body.name,
      spec: JSON.stringify(built.def),
      current_version: 1,
      version: 1,
      archived_at: null,
      created_at: Date.now(),
    };
    const runner = await this.#runners.current();
    const snapshot = await this.#db.transaction().execute(async (trx) => {
      // Again inside the transaction: a connection deleted meanwhile is not named.
      await requireConnections(trx, tenantId, built.def.policy?.connections ?? []);
      await requireMcpServers(
        trx,
        tenantId,
        (built.def.policy?.mcp ?? []).map((e) => e.server),
      );
      await trx.insertInto("agents").values(row).execute();
      await trx
        .insertInto("agent_versions")
        .values({ agent_id: row.id, version: 1, tenant_id: tenantId, spec: row.spec, created_at: row.created_at })
        .execute();
      if (built.pins) await writePins(trx, { agentId: row.id, version: 1, tenantId }, built.pins);
      return this.snapshots.append(trx, {
        tenantId,
        agentId: row.id,
        base: built.base,
        layers: built.layers,
        runner: runner.digest,
        reason: "create",
        parentVersion: null,
        envBytes: built.envBytes,
      });
    });
    return { row, snapshot };
  }

  /**
   * Saves the next version of the agent's definition: `patch` merged into the current one (a
   * JSON merge patch, see AgentUpdate) and checked as a whole, as create checks it. Files or an
   * image make a new environment version too. An invalid update, or one that would change
   * nothing, saves nothing.
   */
  async update(tenantId: string, id: string, patch: AgentUpdate): Promise<AgentRecord> {
    const current = await this.get(tenantId, id);
    assertLive(current);
    requireName(current.row, patch.name);
    const merged = merge(bodyOf(current.row.name, parseAgentDefinition(current.row.spec)), patch);
    const parsed = AgentCreate.safeParse(merged);
    if (!parsed.success) throw validationFailed(parsed.error.issues);
    return this.#save(tenantId, current, parsed.data);
  }

  /**
   * Saves `body` as the agent's whole next definition, as a create would make it: what it leaves
   * out takes its default (no files, the default image). Checked and saved as an update is.
   */
  async replace(tenantId: string, id: string, body: AgentReplace): Promise<AgentRecord> {
    const current = await this.get(tenantId, id);
    assertLive(current);
    requireName(current.row, body.name);
    const whole = { ...body, name: current.row.name, files: body.files ?? {}, image: body.image ?? "default" };
    return this.#save(tenantId, current, whole);
  }

  async #save(tenantId: string, current: AgentRecord, body: AgentCreate): Promise<AgentRecord> {
    const { row, snapshot } = current;
    const def = parseAgentDefinition(row.spec);
    const filesLayer = def.files_layer ?? (await this.#createdFilesLayer(row.id, def));
    const before = { ...def, ...(filesLayer ? { files_layer: filesLayer } : {}) };
    const built = await this.#build(
      tenantId,
      body,
      { def: before, snapshot },
      await readPins(this.#db, row.id, row.version),
    );
    const envChanged = built.base !== snapshot.base || !isDeepStrictEqual(built.layers, layersOf(snapshot));
    if (!envChanged && isDeepStrictEqual(built.def, before)) return current;

    const runner = envChanged ? await this.#runners.current() : null;
    const spec = JSON.stringify(built.def);
    const version = row.version + 1;
    const now = Date.now();
    const next = await this.#db.transaction().execute(async (trx) => {
      await requireConnections(trx, tenantId, built.def.policy?.connections ?? []);
      await requireMcpServers(
        trx,
        tenantId,
        (built.def.policy?.mcp ?? []).map((e) => e.server),
      );
      const res = await trx
        .updateTable("agents")
        .set({ spec, version })
        .where("id", "=", row.id)
        .where("version", "=", row.version)
        .where("archived_at", "is", null)
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) !== 1) {
        throw new AppError("conflict", "The agent was changed or deleted meanwhile; look at it again and retry.");
      }
      await trx
        .insertInto("agent_versions")
        .values({ agent_id: row.id, version, tenant_id: tenantId, spec, created_at: now })
        .execute();
      if (built.pins) await writePins(trx, { agentId: row.id, version, tenantId }, built.pins);
      if (!runner) return { row: { ...row, spec, version }, snapshot };
      const snap = await this.snapshots.append(trx, {
        tenantId,
        agentId: row.id,
        base: built.base,
        layers: built.layers,
        runner: runner.digest,
        reason: "update",
        parentVersion: snapshot.version,
        changes: { agent_version: version },
        envBytes: built.envBytes,
      });
      if (!(await this.snapshots.moveCurrent(trx, row.id, snapshot.version, snap.version))) {
        throw new AppError("conflict", "The agent's environment changed meanwhile; look at it again and retry.");
      }
      return { row: { ...row, spec, version, current_version: snap.version }, snapshot: snap };
    });
    return next;
  }

  /**
   * Archives (deletes) the agent: it starts no new runs (API, webhook, agent call), its schedules
   * are paused, and its name is free again. Runs already queued or running go on and finish; the
   * agent, its versions and its runs stay readable. Archiving an archived agent changes nothing.
   */
  async archive(tenantId: string, id: string): Promise<AgentRecord> {
    const current = await this.get(tenantId, id);
    if (current.row.archived_at !== null) return current;
    const now = Date.now();
    const done = await this.#db.transaction().execute(async (trx) => {
      const res = await trx
        .updateTable("agents")
        .set({ archived_at: now })
        .where("id", "=", current.row.id)
        .where("archived_at", "is", null)
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) !== 1) return false;
      await trx.updateTable("schedules").set({ paused: 1 }).where("agent_id", "=", current.row.id).execute();
      return true;
    });
    // Archived meanwhile by another request: that archive stands.
    return done ? { ...current, row: { ...current.row, archived_at: now } } : this.get(tenantId, id);
  }

  /** An agent by id, archived or not; not_found otherwise. */
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

  /** The MCP tools an agent's current version is pinned to ({} when its policy names no MCP server). */
  pins(agent: Pick<Agent, "id" | "version">): Promise<McpPins> {
    return readPins(this.#db, agent.id, agent.version);
  }

  /**
   * An agent by id, else by name (the live agent of that name, else the one archived last);
   * not_found otherwise.
   */
  async resolve(tenantId: string, ref: string): Promise<AgentRecord> {
    return this.#find(tenantId, ref, true);
  }

  /** An agent by name only (the live one, else the one archived last); not_found otherwise. */
  async byName(tenantId: string, name: string): Promise<AgentRecord> {
    return this.#find(tenantId, name, false);
  }

  /** Like resolve, for what only a live agent may get (a schedule, a webhook): `agent_archived` otherwise. */
  async resolveLive(tenantId: string, ref: string): Promise<AgentRecord> {
    const agent = await this.resolve(tenantId, ref);
    assertLive(agent);
    return agent;
  }

  /** Like get, for what changes the agent (its environment, its definition): `agent_archived` otherwise. */
  async getLive(tenantId: string, id: string): Promise<AgentRecord> {
    const agent = await this.get(tenantId, id);
    assertLive(agent);
    return agent;
  }

  async #find(tenantId: string, ref: string, byId: boolean): Promise<AgentRecord> {
    const row = await this.#db
      .selectFrom("agents")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .where((eb) => (byId ? eb.or([eb("id", "=", ref), eb("name", "=", ref)]) : eb("name", "=", ref)))
      .orderBy(sql`case when archived_at is null then 0 else 1 end`)
      .orderBy("archived_at", "desc")
      .executeTakeFirst();
    if (!row) throw new AppError("not_found", `No agent '${ref.slice(0, 64)}'.`);
    return { row, snapshot: await this.#snapshotOf(row) };
  }

  /** The tenant's agents, newest first; archived ones only when asked for. */
  async list(
    tenantId: string,
    opts: { name?: string; cursor?: string; limit: number; archived?: boolean },
  ): Promise<AgentRecord[]> {
    let q = this.#db.selectFrom("agents").selectAll().where("tenant_id", "=", tenantId);
    if (!opts.archived) q = q.where("archived_at", "is", null);
    if (opts.name) q = q.where("name", "=", opts.name);
    if (opts.cursor) q = q.where("id", "<", opts.cursor);
    const rows = await q.orderBy("id", "desc").limit(opts.limit).execute();
    return Promise.all(rows.map(async (row) => ({ row, snapshot: await this.#snapshotOf(row) })));
  }

  /**
   * The budget and LLM rate limits of a run as the gateway enforces them (micro-credits): those
   * of the agent version it froze when it was triggered; none for an unknown run. A run's spec
   * never changes, so it is read once.
   */
  async budgetOfRun(runId: string): Promise<GatewayBudget> {
    const known = this.#budgets.get(runId);
    if (known) return known;
    const row = await this.#db.selectFrom("runs").select("spec").where("id", "=", runId).executeTakeFirst();
    const budget = row ? parseRunSpec(row.spec).budget : undefined;
    const limits: GatewayBudget = {
      ...(budget?.per_run !== undefined ? { perRun: toMicro(budget.per_run) } : {}),
      ...(budget?.total !== undefined ? { agentTotal: toMicro(budget.total) } : {}),
      ...(budget?.requests_per_minute ? { requestsPerMinute: budget.requests_per_minute } : {}),
      ...(budget?.tokens_per_minute ? { tokensPerMinute: budget.tokens_per_minute } : {}),
      ...(budget?.approve_above !== undefined ? { approveAbove: toMicro(budget.approve_above) } : {}),
      ...(budget?.approval ? { approval: budget.approval } : {}),
    };
    if (row) {
      // Bounded: the oldest entry goes first (a Map keeps insertion order).
      if (this.#budgets.size >= MAX_CACHED_BUDGETS) this.#budgets.delete(this.#budgets.keys().next().value as string);
      this.#budgets.set(runId, limits);
    }
    return limits;
  }

  /** Every agent of the tenant (archived ones too: their spending stays on the books) with its budget, by name. */
  async budgets(tenantId: string): Promise<{ id: string; name: string; budget: AgentBudget }[]> {
    const rows = await this.#db
      .selectFrom("agents")
      .select(["id", "name", "spec"])
      .where("tenant_id", "=", tenantId)
      .orderBy("name")
      .orderBy("id")
      .execute();
    return rows.map((r) => ({ id: r.id, name: r.name, budget: parseAgentDefinition(r.spec).budget ?? {} }));
  }

  async #snapshotOf(row: AgentsTable): Promise<SnapshotsTable> {
    const snapshot = await this.snapshots.get(this.#db, row.id, row.current_version);
    if (!snapshot) throw new Error(`agent ${row.id} has no snapshot version ${row.current_version}`);
    return snapshot;
  }

  /**
   * The layer of the files a definition stored before definitions named their files layer came
   * with: the only layer its agent was created with.
   */
  async #createdFilesLayer(agentId: string, def: AgentDefinition): Promise<string | undefined> {
    if (def.files.length === 0) return undefined;
    const first = await this.snapshots.get(this.#db, agentId, 1);
    const layers = first?.reason === "create" ? layersOf(first) : [];
    return layers.length === 1 ? layers[0] : undefined;
  }

  /**
   * Checks a whole definition against this host (its limit caps, the tenant's connections, the
   * command in the environment) and makes its environment: for a new agent the image and a layer
   * of its files; for an update the current environment with a new image or files layer if given.
   */
  async #build(tenantId: string, body: AgentCreate, previous: Previous | null, pinned: McpPins = {}): Promise<Built> {
    const policy = {
      connections: body.policy?.connections ?? [],
      ...(body.policy?.agents?.length ? { agents: body.policy.agents } : {}),
      ...(body.policy?.mcp?.length ? { mcp: body.policy.mcp } : {}),
    };
    await requireConnections(this.#db, tenantId, policy.connections);
    const mcp = policy.mcp ?? [];
    await requireMcpServers(
      this.#db,
      tenantId,
      mcp.map((e) => e.server),
    );
    // Approvals its agent calls and its spending ask for must name approvers that exist.
    await requireApprovers(this.#db, tenantId, [
      ...(body.policy?.agents ?? []).flatMap((entry, i) =>
        typeof entry === "string"
          ? []
          : [{ path: ["policy", "agents", i, "approval"], approvers: entry.approval.approvers }],
      ),
      ...(body.budget?.approval ? [{ path: ["budget", "approval"], approvers: body.budget.approval.approvers }] : []),
      ...mcp.flatMap((entry, i) =>
        entry.approval ? [{ path: ["policy", "mcp", i, "approval"], approvers: entry.approval.approvers }] : [],
      ),
    ]);
    if (mcp.length > 0 && !this.#pinMcp) {
      throw new AppError("unknown_mcp_server", "This host has no MCP gateway: a policy may name no MCP server.");
    }
    // The tools pinned before stay pinned as they were: only re-pinning takes a changed definition.
    const pins = mcp.length > 0 && this.#pinMcp ? await this.#pinMcp(tenantId, mcp, pinned) : null;
    const limits = Limits.parse(body.limits ?? {});
    const over = (Object.keys(limits) as (keyof Limits)[])
      .filter((k) => limits[k] > this.#maxLimits[k])
      .map((k) => ({ path: ["limits", k], code: "too_big", message: `at most ${this.#maxLimits[k]} on this host` }));
    if (over.length > 0) throw validationFailed(over);
    const base =
      previous && body.image === undefined
        ? previous.snapshot.base
        : (await this.#images.resolve(body.image ?? "default")).digest;

    const env = body.env ?? {};
    // The built-in agent is the runner bundle started in agent mode, on the runner's own Node.
    const command = body.command ?? [RUNNER_NODE_PATH, RUNNER_SDK, "agent"];
    let placed: Pick<AgentDefinition, "cwd" | "files" | "files_layer">;
    let layers: string[];
    let envBytes: number;
    if (previous && body.files === undefined) {
      const { cwd, files, files_layer } = previous.def;
      placed = { cwd, files, ...(files_layer ? { files_layer } : {}) };
      layers = layersOf(previous.snapshot);
      envBytes = Number(previous.snapshot.env_bytes);
      await this.#requireCommand(command, env, cwd, await this.layerPaths({ image: base, layers }));
    } else {
      const files = body.files ?? {};
      const hasFiles = Object.keys(files).length > 0;
      const bytes = filesBytes(files);
      // The new files layer's place among the layers, until it is stored and has its digest.
      const pending = hasFiles ? PENDING_LAYER : undefined;
      layers = pending === undefined ? [] : [pending];
      envBytes = bytes;
      if (previous) {
        const before = layersOf(previous.snapshot);
        const old = previous.def.files_layer;
        layers = withFilesLayer(before, old, pending);
        const replaced = old !== undefined && before.includes(old);
        const oldBytes = replaced ? previous.def.files.reduce((n, f) => n + f.size, 0) : 0;
        envBytes = Math.max(0, Number(previous.snapshot.env_bytes) - oldBytes + bytes);
      }
      const cwd = hasFiles ? "/app" : "/home/agent";
      // The command is looked for with the files in place before their layer is stored.
      // The layers it keeps are fetched first, as a boot's would be (from the shared store if need be).
      const kept = await this.layerPaths({ image: base, layers: layers.filter((d) => d !== PENDING_LAYER) });
      const rootfs = kept[kept.length - 1] as string;
      const check = (filesDir: string) =>
        this.#requireCommand(command, env, cwd, [
          ...layers.map((d) => (d === PENDING_LAYER ? filesDir : this.#layers.path(d))),
          rootfs,
        ]);
      let filesLayer: string | undefined;
      if (hasFiles) {
        const stored = await this.#layers.putFiles(files, check);
        filesLayer = stored;
        layers = layers.map((d) => (d === PENDING_LAYER ? stored : d));
      } else await check("");
      placed = {
        cwd,
        files: Object.entries(files)
          .map(([path, content]) => ({ path, size: Buffer.byteLength(content) }))
          .sort((a, b) => (a.path < b.path ? -1 : 1)),
        ...(filesLayer ? { files_layer: filesLayer } : {}),
      };
    }
    const budget = body.budget && Object.keys(body.budget).length > 0 ? body.budget : undefined;
    const def: AgentDefinition = {
      command,
      env,
      limits,
      ...placed,
      policy,
      ...(budget ? { budget } : {}),
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
    await this.publishEnvironment({ image: base, layers });
    return { def, pins, base, layers, envBytes };
  }

  /** `command_not_found` unless the command's argv[0] is an executable of these layers (top first). */
  async #requireCommand(command: string[], env: Record<string, string>, cwd: string, paths: string[]): Promise<void> {
    const argv0 = command[0] as string;
    // The runner's Node is in every sandbox (read-only, current runner): agents written for Node may use it.
    if (argv0 === RUNNER_NODE_PATH) return;
    if (await resolveCommand(paths, argv0, { path: env.PATH ?? DEFAULT_PATH, cwd })) return;
    throw new AppError(
      "command_not_found",
      `The command '${argv0}' does not exist in the agent's image (searched PATH and ${cwd}).`,
      { command: argv0 },
    );
  }

  /** Every version of the agent's definition, newest first. */
  async versions(tenantId: string, id: string): Promise<AgentVersion[]> {
    const { row } = await this.get(tenantId, id);
    const rows = await this.#db
      .selectFrom("agent_versions")
      .selectAll()
      .where("agent_id", "=", row.id)
      .orderBy("version", "desc")
      .execute();
    return rows.map((v) => ({
      version: v.version,
      created_at: new Date(v.created_at).toISOString(),
      definition: definitionOf(v.spec),
    }));
  }

  /** The agent's environment versions, newest first. */
  async history(tenantId: string, id: string): Promise<Snapshot[]> {
    const { row } = await this.get(tenantId, id);
    return (await this.snapshots.list(row.id)).map((s) => toSnapshot(s, row.current_version));
  }

  async rollback(tenantId: string, id: string, version: number): Promise<Snapshot> {
    const { row } = await this.getLive(tenantId, id);
    const created = await this.snapshots.rollback(tenantId, row.id, row.current_version, version);
    return toSnapshot(created, created.version);
  }
}
