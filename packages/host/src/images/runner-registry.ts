/**
 * Runner versions: the platform's fast-changing code, one immutable layer per version, of which
 * the one published last is current. Every boot mounts the current runner, whatever runner the
 * agent's snapshot names (the swap).
 *
 * Nodes sharing a store share runners by their sources: a published runner's Node binary and
 * bundle go to the blob store, and its row names their sha256. Each node builds its own layer from
 * them (the compile cache is V8's output on that node, so its bytes and the layer's digest differ
 * from node to node); the row's digest, the publishing node's, names the runner everywhere. A
 * node missing the current runner's layer fetches its sources, verified, and builds it once.
 *
 * Threat model: the runner is trusted by every later run, so
 * its files are sealed immutable (chattr +i) on top of the read-only mount the sandbox sees; a
 * sandbox has no CAP_LINUX_IMMUTABLE over host files and cannot remount.
 */
import { execFile } from "node:child_process";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Kysely } from "kysely";
import type { BlobCache } from "../blobs/cache.ts";
import { removeTree } from "../fs/store-fs.ts";
import { toolEnv } from "../fs/tool-env.ts";
import type { Database } from "../store/schema.ts";
import type { RunnerLayer, RunnerLayers } from "./runner-layers.ts";

const run = promisify(execFile);

/**
 * Clears the immutable flag from every runner layer under a data directory, so that the
 * directory can be deleted (`rm -rf` alone fails on sealed files). Missing folders are fine.
 */
export async function unsealRunners(dataDir: string): Promise<void> {
  const dir = join(dataDir, "runners");
  if (!(await readdir(dir).catch(() => null))) return;
  await run("chattr", ["-R", "-i", dir], { env: toolEnv() }).catch(() => {});
}

export interface CurrentRunner {
  digest: string;
  dir: string;
}

export class RunnerRegistry {
  readonly #db: Kysely<Database>;
  readonly #layers: RunnerLayers;
  readonly #runnersDir: string;
  readonly #log: (msg: string) => void;
  readonly #blobs: BlobCache | null;
  #cached: { at: number; runner: CurrentRunner } | null = null;
  /** Layers being built from fetched sources, by runner digest, so concurrent callers share one. */
  readonly #building = new Map<string, Promise<RunnerLayer>>();

  /** `blobs` shares runners' sources with the other nodes; without it a runner is this node's alone. */
  constructor(
    db: Kysely<Database>,
    layers: RunnerLayers,
    runnersDir: string,
    log: (msg: string) => void,
    blobs: BlobCache | null = null,
  ) {
    this.#db = db;
    this.#layers = layers;
    this.#runnersDir = runnersDir;
    this.#log = log;
    this.#blobs = blobs;
  }

  /** Stores the runner built from these files as a sealed layer, shares its sources, and makes it current. */
  async publish(files: { bundlePath: string; nodePath: string }): Promise<CurrentRunner> {
    const layer = await this.#layers.ensure(files);
    await this.#seal(layer.dir);
    const sources = this.#blobs
      ? {
          node_sha256: (await this.#blobs.store.put({ file: files.nodePath })).sha256,
          bundle_sha256: (await this.#blobs.store.put({ file: files.bundlePath })).sha256,
        }
      : { node_sha256: null, bundle_sha256: null };
    const now = Date.now();
    // One statement, so hosts sharing a store that publish the same runner at once both succeed.
    await this.#db
      .insertInto("runners")
      .values({ digest: layer.digest, created_at: now, published_at: now, ...sources })
      .onConflict((oc) => oc.column("digest").doUpdateSet({ published_at: now, ...sources }))
      .execute();
    this.#cached = null;
    return { digest: layer.digest, dir: layer.dir };
  }

  /**
   * Publishes these files unless the current runner was built from the same ones (a host upgrade
   * deploys its runner; another node of the same version finds it current already).
   */
  async ensureCurrent(files: { bundlePath: string; nodePath: string }): Promise<CurrentRunner> {
    // The layer of these files (found by their hashes, or built now): the files are hashed once.
    const layer = await this.#layers.ensure(files);
    const row = await this.#currentRow();
    if (row?.digest === layer.digest) return { digest: layer.digest, dir: layer.dir };
    const sources = layer.version.sources;
    if (row && sources && row.node_sha256 === sources.node && row.bundle_sha256 === sources.bundle) {
      // Another node published these files: this node's own layer of them stands for that runner.
      await this.#seal(layer.dir);
      return { digest: row.digest, dir: layer.dir };
    }
    return this.publish(files);
  }

  /** The current runner; looked up at most every 500 ms, so a publish by another process lands fast. */
  async current(): Promise<CurrentRunner> {
    if (this.#cached && Date.now() - this.#cached.at < 500) return this.#cached.runner;
    const row = await this.#currentRow();
    if (!row) throw new Error("no runner is published");
    const layer = await this.#local(row);
    const runner = { digest: row.digest, dir: layer.dir };
    this.#cached = { at: Date.now(), runner };
    return runner;
  }

  #currentRow() {
    return this.#db
      .selectFrom("runners")
      .select(["digest", "node_sha256", "bundle_sha256"])
      .where("published_at", "is not", null)
      .orderBy("published_at", "desc")
      .orderBy("digest")
      .executeTakeFirst();
  }

  /** This node's layer of the runner: the published one, one built here from its sources, or one built now from its shared sources. */
  async #local(row: {
    digest: string;
    node_sha256: string | null;
    bundle_sha256: string | null;
  }): Promise<RunnerLayer> {
    const here = await this.#layers.get(row.digest);
    if (here) return here;
    const { node_sha256: node, bundle_sha256: bundle } = row;
    const built = node && bundle ? await this.#layers.findBuilt(node, bundle) : null;
    if (built) return built;
    if (!node || !bundle || !this.#blobs) {
      throw new Error(`the current runner ${row.digest} is missing from ${this.#runnersDir}`);
    }
    const blobs = this.#blobs;
    let building = this.#building.get(row.digest);
    if (!building) {
      building = (async () => {
        const [nodePath, bundlePath] = await Promise.all([blobs.file(node), blobs.file(bundle)]);
        const layer = await this.#layers.ensure({ nodePath, bundlePath });
        await this.#seal(layer.dir);
        this.#log(`built runner ${row.digest} here from its shared sources (layer ${layer.digest})`);
        return layer;
      })().finally(() => this.#building.delete(row.digest));
      this.#building.set(row.digest, building);
    }
    return building;
  }

  async list(): Promise<{ digest: string; created_at: string; published_at: string | null; current: boolean }[]> {
    const current = await this.current().catch(() => null);
    const rows = await this.#db.selectFrom("runners").selectAll().orderBy("created_at", "desc").execute();
    return rows.map((r) => ({
      digest: r.digest,
      created_at: new Date(r.created_at).toISOString(),
      published_at: r.published_at === null ? null : new Date(r.published_at).toISOString(),
      current: r.digest === current?.digest,
    }));
  }

  /**
   * Forgets runners that are not current and that no snapshot names, and removes this node's
   * layers of them (a layer built here from a kept runner's sources is kept); returns the digests
   * of the layers removed.
   */
  async gc(referenced: Set<string>): Promise<string[]> {
    const current = await this.#currentRow();
    const rows = await this.#db.selectFrom("runners").select(["digest", "node_sha256", "bundle_sha256"]).execute();
    const kept = rows.filter((r) => r.digest === current?.digest || referenced.has(r.digest));
    const gone = rows.filter((r) => !kept.includes(r)).map((r) => r.digest);
    if (gone.length > 0) await this.#db.deleteFrom("runners").where("digest", "in", gone).execute();
    const keptSources = new Set(kept.map((r) => `${r.node_sha256}/${r.bundle_sha256}`));
    const removed: string[] = [];
    for (const name of await readdir(this.#runnersDir).catch(() => [] as string[])) {
      if (!name.startsWith("sha256-") || kept.some((r) => r.digest === name)) continue;
      const sources = (await this.#layers.get(name))?.version.sources;
      if (sources && keptSources.has(`${sources.node}/${sources.bundle}`)) continue;
      const dir = join(this.#runnersDir, name);
      await this.#unseal(dir);
      await removeTree(dir);
      removed.push(name);
    }
    return removed;
  }

  async #seal(dir: string): Promise<void> {
    await this.#chattr("+i", dir);
  }

  async #unseal(dir: string): Promise<void> {
    await this.#chattr("-i", dir);
  }

  /**
   * The folder and everything in it (the compile cache's folders included); chattr -R does not
   * follow symlinks, and a layer holds none. Filesystems without the flag (tmpfs) are noted.
   */
  async #chattr(flag: "+i" | "-i", dir: string): Promise<void> {
    try {
      await run("chattr", ["-R", flag, dir], { env: toolEnv() });
    } catch (err) {
      this.#log(
        `runner layer ${dir}: chattr ${flag} failed (${(err as Error).message.trim()}); relying on the read-only mount`,
      );
    }
  }
}
