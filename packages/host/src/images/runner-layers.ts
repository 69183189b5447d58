/**
 * Content-addressed runner layers: the Node binary and the runner bundle, mounted read-only in
 * every sandbox. The sandbox must never be able to change the runner, so every file belongs to
 * the host user (root in production) and nobody else may write it. The Node binary is hard-linked
 * when that keeps those guarantees (same file system, already owned by that user with mode 0755),
 * since a hard link shares its inode with the source; otherwise it is copied.
 */
import { constants } from "node:fs";
import { chmod, chown, copyFile, readFile, realpath, rename } from "node:fs/promises";
import { join } from "node:path";
import { isDigest, RUNNER_BUNDLE, RUNNER_NODE, RUNNER_VERSION_FILE, type RunnerVersion } from "./layout.ts";
import { isErrno, makeTempDir, removeStaleTemps, removeTree, writeFileAtomic } from "./store-fs.ts";
import { digestEntries, digestTree, hashFile } from "./tree-digest.ts";

export interface RunnerLayersOptions {
  runnersDir: string;
}

export interface EnsureRunnerOptions {
  /** The bundled runner (one ES module file). */
  bundlePath: string;
  /** The Node binary the runner runs on inside the sandbox. */
  nodePath: string;
}

export interface RunnerLayer {
  digest: string;
  /** Host folder holding node, runner.mjs and version.json. */
  dir: string;
  version: RunnerVersion;
}

const STALE_TEMP_MS = 60 * 60 * 1000;

export class RunnerLayers {
  readonly runnersDir: string;

  constructor(options: RunnerLayersOptions) {
    this.runnersDir = options.runnersDir;
  }

  /**
   * Returns the runner layer for this bundle and Node binary, writing it if it does not exist.
   * @example const runner = await runners.ensure({ bundlePath: "dist/runner.mjs", nodePath: process.execPath });
   */
  async ensure(options: EnsureRunnerOptions): Promise<RunnerLayer> {
    const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
    const [node, bundle] = await Promise.all([hashFile(options.nodePath), hashFile(options.bundlePath)]);
    const digest = digestEntries([
      { path: "", type: "dir", mode: 0o755, ...owner },
      { path: RUNNER_NODE, type: "file", mode: 0o755, ...owner, ...node },
      { path: RUNNER_BUNDLE, type: "file", mode: 0o644, ...owner, ...bundle },
    ]);
    const existing = await this.get(digest);
    if (existing) return existing;

    await removeStaleTemps(this.runnersDir, STALE_TEMP_MS);
    const tmp = await makeTempDir(this.runnersDir);
    let moved = false;
    try {
      await chown(tmp, owner.uid, owner.gid);
      await placeNode(options.nodePath, join(tmp, RUNNER_NODE), owner);
      const bundleCopy = join(tmp, RUNNER_BUNDLE);
      await copyFile(options.bundlePath, bundleCopy);
      await chown(bundleCopy, owner.uid, owner.gid);
      await chmod(bundleCopy, 0o644);
      // The sources may have changed since they were hashed; the layer must match its name.
      const written = await digestTree(tmp);
      if (written !== digest) throw new Error("the runner bundle or Node binary changed while the layer was written");
      const version: RunnerVersion = { digest, created_at: new Date().toISOString() };
      await writeFileAtomic(join(tmp, RUNNER_VERSION_FILE), `${JSON.stringify(version, null, 2)}\n`);
      const final = join(this.runnersDir, digest);
      try {
        await rename(tmp, final);
        moved = true;
      } catch (err) {
        if (!isErrno(err, "ENOTEMPTY", "EEXIST")) throw err;
        // A folder by that name without a valid version.json is a damaged leftover: replace it.
        if (!(await this.get(digest))) {
          await removeTree(final);
          await rename(tmp, final);
          moved = true;
        }
      }
      const stored = await this.get(digest);
      if (!stored) throw new Error(`runner layer ${digest} is missing after it was written`);
      return stored;
    } finally {
      if (!moved) await removeTree(tmp);
    }
  }

  /** The stored runner layer with this digest, or null when there is none (or it is incomplete). */
  async get(digest: string): Promise<RunnerLayer | null> {
    if (!isDigest(digest)) return null;
    const dir = join(this.runnersDir, digest);
    let version: RunnerVersion;
    try {
      version = JSON.parse(await readFile(join(dir, RUNNER_VERSION_FILE), "utf8")) as RunnerVersion;
    } catch (err) {
      if (isErrno(err, "ENOENT", "ENOTDIR") || err instanceof SyntaxError) return null;
      throw err;
    }
    if (version.digest !== digest) return null;
    return { digest, dir, version };
  }
}

/**
 * The layer gets its own copy of the Node binary (a reflink where the filesystem can): never a
 * hard link, since the layer is sealed immutable and a shared inode would seal the host's own
 * Node with it.
 */
async function placeNode(path: string, target: string, owner: { uid: number; gid: number }): Promise<void> {
  const source = await realpath(path);
  await copyFile(source, target, constants.COPYFILE_FICLONE);
  await chown(target, owner.uid, owner.gid);
  await chmod(target, 0o755);
}
