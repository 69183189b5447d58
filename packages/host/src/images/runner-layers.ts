/**
 * Content-addressed runner layers: the Node binary, the runner bundle and Node's compile cache for
 * that bundle, mounted read-only in every sandbox. The sandbox must never be able to change the
 * runner, so every file belongs to the host user (root in production) and nobody else may write
 * it. The compile cache is built by starting the runner as it starts in a sandbox (see
 * runner-compile-cache.ts) before the layer is digested, so the digest covers it: a layer's cache
 * belongs to the bundle and Node beside it, and a changed bundle makes another layer.
 *
 * V8's cache bytes differ from build to build, so a layer is found again by what it was built
 * from (version.json records the hashes of the Node binary and the bundle, and the sandbox uid),
 * not by recomputing its digest.
 */
import { constants } from "node:fs";
import { chmod, chown, copyFile, lstat, mkdir, readdir, readFile, realpath, rename, rmdir } from "node:fs/promises";
import { join } from "node:path";
import {
  AGENT_USER,
  isDigest,
  RUNNER_BUNDLE,
  RUNNER_CACHE,
  RUNNER_NODE,
  RUNNER_VERSION_FILE,
  type RunnerSources,
  type RunnerVersion,
} from "../fs/layout.ts";
import { isErrno, makeTempDir, removeStaleTemps, removeTree, writeFileAtomic } from "../fs/store-fs.ts";
import { digestEntries, digestTree, entryType, hashFile, type TreeEntry } from "../fs/tree-digest.ts";
import { buildCompileCache } from "./runner-compile-cache.ts";

export interface RunnerLayersOptions {
  runnersDir: string;
  /** The uid and gid sandboxes run as, which the compile cache is built for; default AGENT_USER. */
  sandboxUid?: number;
  sandboxGid?: number;
  /** Where the compile-cache build stages its mounts (see CompileCacheOptions.stagingDir). */
  stagingDir?: string;
}

export interface EnsureRunnerOptions {
  /** The bundled runner (one ES module file). */
  bundlePath: string;
  /** The Node binary the runner runs on inside the sandbox. */
  nodePath: string;
}

export interface RunnerLayer {
  digest: string;
  /** Host folder holding node, runner.mjs, compile-cache/ and version.json. */
  dir: string;
  version: RunnerVersion;
}

const STALE_TEMP_MS = 60 * 60 * 1000;

export class RunnerLayers {
  readonly runnersDir: string;
  readonly #sandbox: { uid: number; gid: number };
  readonly #stagingDir: string | undefined;

  constructor(options: RunnerLayersOptions) {
    this.runnersDir = options.runnersDir;
    this.#sandbox = { uid: options.sandboxUid ?? AGENT_USER.uid, gid: options.sandboxGid ?? AGENT_USER.gid };
    this.#stagingDir = options.stagingDir;
  }

  /**
   * Returns the runner layer for this bundle and Node binary, writing it (compile cache included)
   * if none was built from them. Throws AppError runner_invalid, leaving nothing behind, when the
   * bundle and Node do not start as a runner in a sandbox.
   * @example const runner = await runners.ensure({ bundlePath: "dist/runner.mjs", nodePath: process.execPath });
   */
  async ensure(options: EnsureRunnerOptions): Promise<RunnerLayer> {
    const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
    const [node, bundle] = await Promise.all([hashFile(options.nodePath), hashFile(options.bundlePath)]);
    const sources: RunnerSources = { node: node.sha256, bundle: bundle.sha256, uid: this.#sandbox.uid };
    const existing = await this.find(sources);
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
      const cacheDir = join(tmp, RUNNER_CACHE);
      await mkdir(cacheDir, { mode: 0o755 });
      await chown(cacheDir, owner.uid, owner.gid);
      await chmod(cacheDir, 0o755);
      const cache = await buildCompileCache(tmp, { ...this.#sandbox, stagingDir: this.#stagingDir });
      if (cache.tag === null) await rmdir(cacheDir);
      // The digest covers the cache: a layer's cache can only ever be used with its own bundle and
      // Node. The sources may have changed since they were hashed; the layer must hold what was.
      const digest = digestEntries([
        { path: "", type: "dir", mode: 0o755, ...owner },
        { path: RUNNER_NODE, type: "file", mode: 0o755, ...owner, ...node },
        { path: RUNNER_BUNDLE, type: "file", mode: 0o644, ...owner, ...bundle },
        ...(await subtreeEntries(tmp, RUNNER_CACHE)),
      ]);
      if ((await digestTree(tmp)) !== digest)
        throw new Error("the runner bundle or Node binary changed while the layer was written");
      const version: RunnerVersion = {
        digest,
        created_at: new Date().toISOString(),
        sources,
        compile_cache: cache.tag,
      };
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

  /**
   * The stored layer built from these sources (the oldest, should two builds have raced), or null.
   * @example const layer = await runners.find({ node: nodeSha256, bundle: bundleSha256, uid: 61000 });
   */
  async find(sources: RunnerSources): Promise<RunnerLayer | null> {
    let names: string[];
    try {
      names = await readdir(this.runnersDir);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return null;
      throw err;
    }
    let found: RunnerLayer | null = null;
    for (const name of names.sort()) {
      const layer = await this.get(name);
      const s = layer?.version.sources;
      if (!layer || s?.node !== sources.node || s.bundle !== sources.bundle || s.uid !== sources.uid) continue;
      if (!found || layer.version.created_at < found.version.created_at) found = layer;
    }
    return found;
  }

  /** The stored layer built here from this Node binary and bundle (their sha256) for this node's sandbox user, or null. */
  findBuilt(node: string, bundle: string): Promise<RunnerLayer | null> {
    return this.find({ node, bundle, uid: this.#sandbox.uid });
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

/** The entries of `root/rel` and below, as the digest sees them (missing: none). */
async function subtreeEntries(root: string, rel: string): Promise<TreeEntry[]> {
  const st = await lstat(join(root, rel)).catch((err: unknown) => {
    if (isErrno(err, "ENOENT")) return null;
    throw err;
  });
  if (!st) return [];
  const entry: TreeEntry = { path: rel, type: entryType(st), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
  if (entry.type === "file") return [{ ...entry, ...(await hashFile(join(root, rel), st)) }];
  if (entry.type !== "dir") return [entry];
  const below = await Promise.all(
    (await readdir(join(root, rel))).map((name) => subtreeEntries(root, `${rel}/${name}`)),
  );
  return [entry, ...below.flat()];
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
