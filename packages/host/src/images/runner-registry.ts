/**
 * Runner versions: the platform's fast-changing code, one immutable layer per version, of which
 * the one published last is current. Every boot mounts the current runner, whatever runner the
 * agent's snapshot names (the swap). Threat model: the runner is trusted by every later run, so
 * its files are sealed immutable (chattr +i) on top of the read-only mount the sandbox sees; a
 * sandbox has no CAP_LINUX_IMMUTABLE over host files and cannot remount.
 */
import { execFile } from "node:child_process";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Kysely } from "kysely";
import { removeTree } from "../fs/store-fs.ts";
import { toolEnv } from "../fs/tool-env.ts";
import type { Database } from "../store/schema.ts";
import type { RunnerLayers } from "./runner-layers.ts";

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
  #cached: { at: number; runner: CurrentRunner } | null = null;

  constructor(db: Kysely<Database>, layers: RunnerLayers, runnersDir: string, log: (msg: string) => void) {
    this.#db = db;
    this.#layers = layers;
    this.#runnersDir = runnersDir;
    this.#log = log;
  }

  /** Stores the runner built from these files as a sealed layer and makes it current. */
  async publish(files: { bundlePath: string; nodePath: string }): Promise<CurrentRunner> {
    const layer = await this.#layers.ensure(files);
    await this.#seal(layer.dir);
    const now = Date.now();
    // One statement, so hosts sharing a store that publish the same runner at once both succeed.
    await this.#db
      .insertInto("runners")
      .values({ digest: layer.digest, created_at: now, published_at: now })
      .onConflict((oc) => oc.column("digest").doUpdateSet({ published_at: now }))
      .execute();
    this.#cached = null;
    return { digest: layer.digest, dir: layer.dir };
  }

  /** Publishes these files unless they already are the current runner (a host upgrade deploys its runner). */
  async ensureCurrent(files: { bundlePath: string; nodePath: string }): Promise<CurrentRunner> {
    const layer = await this.#layers.ensure(files);
    const current = await this.current().catch(() => null);
    if (current?.digest === layer.digest) return current;
    return this.publish(files);
  }

  /** The current runner; looked up at most every 500 ms, so a publish by another process lands fast. */
  async current(): Promise<CurrentRunner> {
    if (this.#cached && Date.now() - this.#cached.at < 500) return this.#cached.runner;
    const row = await this.#db
      .selectFrom("runners")
      .select("digest")
      .where("published_at", "is not", null)
      .orderBy("published_at", "desc")
      .orderBy("digest")
      .executeTakeFirst();
    if (!row) throw new Error("no runner is published");
    const layer = await this.#layers.get(row.digest);
    if (!layer) throw new Error(`the current runner ${row.digest} is missing from ${this.#runnersDir}`);
    const runner = { digest: layer.digest, dir: layer.dir };
    this.#cached = { at: Date.now(), runner };
    return runner;
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

  /** Removes runner layers that are not current and that no snapshot names; returns their digests. */
  async gc(referenced: Set<string>): Promise<string[]> {
    const current = await this.current().catch(() => null);
    const removed: string[] = [];
    for (const name of await readdir(this.#runnersDir).catch(() => [] as string[])) {
      if (!name.startsWith("sha256-") || name === current?.digest || referenced.has(name)) continue;
      const dir = join(this.#runnersDir, name);
      await this.#unseal(dir);
      await removeTree(dir);
      await this.#db.deleteFrom("runners").where("digest", "=", name).execute();
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
