/** Agents: validated at creation against their real environment image, then frozen into a spec. */
import { type Agent, type AgentCreate, AppError, Limits } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { DEFAULT_PATH } from "../engine/attempt.ts";
import type { AgentSpec } from "../engine/runs.ts";
import type { ImageStore } from "../images/image-store.ts";
import type { LayerStore } from "../images/layer-store.ts";
import { resolveCommand } from "../images/resolve-command.ts";
import { newId } from "../store/ids.ts";
import type { AgentsTable, Database } from "../store/schema.ts";

export function toAgent(row: AgentsTable): Agent {
  const spec = JSON.parse(row.spec) as AgentSpec;
  return {
    id: row.id,
    name: row.name,
    command: spec.command,
    env: spec.env,
    files: spec.files,
    limits: spec.limits,
    snapshot: { base: spec.image, layers: spec.layers },
    created_at: new Date(row.created_at).toISOString(),
  };
}

export class Agents {
  readonly #db: Kysely<Database>;
  readonly #images: ImageStore;
  readonly #layers: LayerStore;

  constructor(db: Kysely<Database>, images: ImageStore, layers: LayerStore) {
    this.#db = db;
    this.#images = images;
    this.#layers = layers;
  }

  /** Host paths of a spec's layers, top first, base rootfs last. */
  async layerPaths(spec: Pick<AgentSpec, "image" | "layers">): Promise<string[]> {
    const image = await this.#images.resolve(spec.image);
    return [...spec.layers.map((d) => this.#layers.path(d)), image.rootfs];
  }

  async create(tenantId: string, body: AgentCreate): Promise<AgentsTable> {
    const taken = await this.#db
      .selectFrom("agents")
      .select("id")
      .where("tenant_id", "=", tenantId)
      .where("name", "=", body.name)
      .executeTakeFirst();
    if (taken) throw new AppError("conflict", `An agent named '${body.name}' already exists.`);

    const image = await this.#images.resolve(body.image ?? "default");
    const files = body.files ?? {};
    const hasFiles = Object.keys(files).length > 0;
    const layers = hasFiles ? [await this.#layers.putFiles(files)] : [];
    const env = body.env ?? {};
    const spec: AgentSpec = {
      command: body.command,
      env,
      limits: Limits.parse(body.limits ?? {}),
      cwd: hasFiles ? "/app" : "/home/agent",
      image: image.digest,
      layers,
      files: Object.entries(files)
        .map(([path, content]) => ({ path, size: Buffer.byteLength(content) }))
        .sort((a, b) => (a.path < b.path ? -1 : 1)),
    };
    const argv0 = body.command[0] as string;
    const found = await resolveCommand(await this.layerPaths(spec), argv0, {
      path: env.PATH ?? DEFAULT_PATH,
      cwd: spec.cwd,
    });
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
      spec: JSON.stringify(spec),
      created_at: Date.now(),
    };
    await this.#db.insertInto("agents").values(row).execute();
    return row;
  }

  async get(tenantId: string, id: string): Promise<AgentsTable> {
    const row = await this.#db
      .selectFrom("agents")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .where("id", "=", id)
      .executeTakeFirst();
    if (!row) throw new AppError("not_found", `No agent '${id}'.`);
    return row;
  }

  async list(tenantId: string, opts: { name?: string; cursor?: string; limit: number }): Promise<AgentsTable[]> {
    let q = this.#db.selectFrom("agents").selectAll().where("tenant_id", "=", tenantId);
    if (opts.name) q = q.where("name", "=", opts.name);
    if (opts.cursor) q = q.where("id", "<", opts.cursor);
    return q.orderBy("id", "desc").limit(opts.limit).execute();
  }
}
