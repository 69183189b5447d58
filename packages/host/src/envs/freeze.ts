/**
 * Freezing: an environment edit session's writable layer (an overlayfs upperdir) becomes an
 * immutable, content-addressed layer `<layersDir>/<digest>/`, mounted later as the top lowerdir
 * above the same stack it was written over.
 *
 * The layer keeps what the sandbox saw: files, directories, symlinks (as links), FIFOs, owners,
 * permission bits including setuid/setgid/sticky, hard links between its own files, timestamps,
 * whiteouts (character devices 0/0) and opaque directories (`trusted.overlay.opaque="y"`), which
 * overlayfs honours in lower layers as it does in an upper one. Of the extended attributes it
 * keeps only those that mean something to a later mount:
 * - `trusted.overlay.opaque` with the value "y";
 * - `security.capability` (file capabilities, e.g. ping's cap_net_raw);
 * - `system.posix_acl_access` and `system.posix_acl_default`;
 * - `user.*` except `user.overlay.*` (which an overlay mounted with userxattr would obey, and
 *   which a sandbox user can write).
 * Everything else is dropped: the overlay's bookkeeping (`trusted.overlay.origin`, `impure`,
 * `uuid`, `nlink`, `protattr`...), which refers to the upper's file system, and security labels
 * of the host (`security.selinux`, `security.ima`...). An upper that holds
 * `trusted.overlay.redirect` or `trusted.overlay.metacopy` (written only when the session's overlay
 * was mounted with redirect_dir or metacopy on, which the sandbox driver does not do) is refused:
 * its content depends on the upper's own layout. Kept attributes are part of the digest, so an
 * opaque directory and a plain one give different digests.
 *
 * Excluded sandbox paths (DEFAULT_FREEZE_EXCLUDE unless the caller passes its own list) are left
 * out with everything below them, whiteouts included, so the layers below show through there.
 *
 * Threat model: the upper was written by a hostile user, who chose every name (newlines,
 * leading dashes, non-UTF-8 bytes), made symlinks pointing anywhere (including at host paths
 * and at excluded paths), hard links, and trees as large as the writable layer's quota allows.
 * Nothing here follows a symlink: the plan walks with lstat and descends only into directories,
 * cp runs with -a (no dereference), getfattr/setfattr with -h and -P. Names reach the tools as
 * raw bytes through xargs. Hard links inside a tmpfs upper can only join files of that tmpfs,
 * and a file whose other links are outside the copied tree is just a file of the layer.
 * Character and block devices other than whiteouts, which a sandbox user cannot create, make the
 * freeze fail before anything is copied, and are looked for again in the copy. The copy is built
 * in a 0700 work folder inside layersDir, so no host user can reach a setuid file or a device
 * node before the checks have passed and the folder is renamed into place. The digest is computed
 * from the copy, so a stored layer always holds the bytes its name promises. The upper must not
 * change while it is frozen: a writer could swap a folder for a symlink between the walk and cp.
 * So the session's sandbox must be stopped first, and an upper still mounted as an overlay's
 * upperdir (in this mount namespace) is refused. Paths longer than PATH_MAX make the freeze fail.
 */
import { execFile, spawn } from "node:child_process";
import { constants, type Stats } from "node:fs";
import { chmod, chown, lstat, lutimes, mkdir, open, rename, stat } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { isWhiteout, keepXattr } from "../fs/overlay-marks.ts";
import { isErrno, makeTempDir, removeStaleTemps, removeTree } from "../fs/store-fs.ts";
import { toolEnv } from "../fs/tool-env.ts";
import { exited, runOverPaths } from "../fs/tools.ts";
import { scanTree } from "../fs/tree-digest.ts";
import { readXattrs, writeXattrs, type XattrMap, xattrKey } from "../fs/xattrs.ts";
import { type Changes, excludeTree, walkChanges } from "./changes.ts";
import { at, CopyCosts, planCopy, splitSources } from "./copy-plan.ts";
import { overlayUsingUpper, withLowerView } from "./overlay.ts";
import { unshiftTree, unshiftXattrs } from "./unshift.ts";

/**
 * Sandbox paths left out of a frozen layer by default: scratch space (/tmp, /var/tmp, /run),
 * apt's downloaded packages (/var/cache/apt/archives), the per-run folders and mount points
 * (/outputs, /inputs, /opt/paddock/runner), the kernel's file systems (/dev, /proc, /sys) and
 * the edit session's shell history.
 * Home caches (/home/agent/.cache) are kept: tools keep wanted data there, such as downloaded
 * models; a caller that wants them out passes [...DEFAULT_FREEZE_EXCLUDE, "/home/agent/.cache"].
 */
export const DEFAULT_FREEZE_EXCLUDE: readonly string[] = [
  "/tmp",
  "/var/tmp",
  "/run",
  "/var/cache/apt/archives",
  "/outputs",
  "/inputs",
  "/opt/paddock/runner",
  "/dev",
  "/proc",
  "/sys",
  "/root/.bash_history",
  "/home/agent/.bash_history",
];

export interface FreezeOptions {
  /** The session's writable layer (overlayfs upperdir); must not change during the freeze. */
  upper: string;
  /** The read-only layers it was mounted over, top first (used for `changes`). */
  lowers: readonly string[];
  /** The layer store: the layer lands in `<layersDir>/<digest>`. */
  layersDir: string;
  /** Sandbox paths to leave out; replaces DEFAULT_FREEZE_EXCLUDE. */
  exclude?: readonly string[];
  /** cp processes copying at once; defaults to one per core, up to 4. */
  copyProcesses?: number;
  /**
   * The first host id of the edit session's id range (see unshift.ts): the upper's owners in
   * that range are moved back by it in the layer. Without it, owners are copied as they are.
   */
  idShift?: number;
}

export interface FrozenLayer {
  digest: string;
  /** `<layersDir>/<digest>` */
  dir: string;
  /** Sum of the sizes of the layer's regular files. */
  bytes: number;
  /** Entries of the layer, its root included. */
  entries: number;
  changes: Changes;
  /** True when the store already held this layer (the copy just made was discarded). */
  reused: boolean;
}

/** Work-in-progress folders older than this are left over from a crash and removed. */
const STALE_TEMP_MS = 60 * 60 * 1000;
const run = promisify(execFile);

const DEFAULT_COPY_PROCESSES = Math.max(1, Math.min(4, availableParallelism()));

/**
 * Copies `upper` into a new content-addressed layer in `layersDir` (or finds the identical layer
 * already there) and counts its changes over `lowers`. Runs as root; needs cp (coreutils), xargs
 * (findutils), getfattr and setfattr (attr) and, with more than one lower layer, overlayfs.
 * @example const frozen = await freezeUpper({ upper: paths.upper, lowers: [envLayer, rootfs], layersDir });
 */
export async function freezeUpper(options: FreezeOptions): Promise<FrozenLayer> {
  const upper = resolve(options.upper);
  const layersDir = resolve(options.layersDir);
  const rootStats = await lstat(upper);
  if (!rootStats.isDirectory()) throw new Error(`${upper} is not a directory`);
  const mounted = await overlayUsingUpper(upper);
  if (mounted !== undefined) {
    throw new Error(
      `${upper} is still the writable layer of the overlay at ${mounted}: stop the session's sandbox first`,
    );
  }
  const exclude = excludeTree(options.exclude ?? DEFAULT_FREEZE_EXCLUDE);

  await removeStaleTemps(layersDir, STALE_TEMP_MS);
  const work = await makeTempDir(layersDir);
  try {
    await chmod(work, 0o700);
    const plan = await planCopy(upper, rootStats, exclude);

    const xattrs: XattrMap = new Map();
    await readXattrs(
      upper,
      plan.dirs.map((d) => d.rel),
      { recursive: false, keep: keepXattr, into: xattrs },
    );
    await readXattrs(upper, plan.sources, { recursive: true, keep: keepXattr, into: xattrs });

    const costs = new CopyCosts();
    const { changes, devices } = await withLowerView(options.lowers, join(work, "lowers"), (view) =>
      walkChanges(upper, view, { exclude, xattrs, idShift: options.idShift, onEntry: (rel, st) => costs.add(rel, st) }),
    );
    if (devices.length > 0) {
      const list = devices.map((d) => JSON.stringify(d)).join(", ");
      throw new Error(`the writable layer holds device nodes, which a layer may not: ${list}`);
    }

    const runs = await splitSources(upper, plan, costs, options.copyProcesses ?? DEFAULT_COPY_PROCESSES);
    const layer = join(work, "layer");
    for (const dir of plan.dirs) await makeDir(at(layer, dir.rel), dir.stats);
    const cp = ["cp", "-a", "--no-preserve=xattr", "--parents", "--target-directory", layer, "--"];
    const copies = await Promise.allSettled(runs.map((sources) => runOverPaths(upper, cp, sources)));
    for (const copy of copies) if (copy.status === "rejected") throw copy.reason;
    await refuseDevices(layer);
    if (options.idShift !== undefined) {
      await unshiftTree(layer, options.idShift);
      unshiftXattrs(xattrs, options.idShift);
    }
    await writeXattrs(layer, xattrs);
    for (const dir of plan.dirs) await lutimes(at(layer, dir.rel), dir.stats.atime, dir.stats.mtime);

    const scan = await scanTree(layer, { xattrs: (rel) => xattrs.get(xattrKey(rel)) });
    const dir = join(layersDir, scan.digest);
    let reused = await isDir(dir);
    if (!reused) {
      // A layer is found by its digest forever after: its bytes reach the disk before its name.
      await run("sync", ["--file-system", "--", layer], { env: toolEnv() });
      try {
        await rename(layer, dir);
      } catch (err) {
        // Another freeze stored the same layer first.
        if (!isErrno(err, "ENOTEMPTY", "EEXIST") || !(await isDir(dir))) throw err;
        reused = true;
      }
      if (!reused) await syncDir(layersDir);
    }
    return { digest: scan.digest, dir, bytes: scan.bytes, entries: scan.entries, changes, reused };
  } finally {
    await removeTree(work);
  }
}

/**
 * Throws if the copy holds a block device or a character device other than a whiteout. The walk
 * of the upper has checked this already; this check covers the copy itself.
 */
async function refuseDevices(layer: string): Promise<void> {
  const found: Buffer[] = [];
  const child = spawn("find", [".", "-xdev", "(", "-type", "b", "-o", "-type", "c", ")", "-print0"], {
    cwd: layer,
    stdio: ["ignore", "pipe", "pipe"],
    env: toolEnv(),
  });
  const done = exited(child, "find");
  const chunks: Buffer[] = [];
  child.stdout?.on("data", (chunk: Buffer) => chunks.push(chunk));
  await done;
  const out = Buffer.concat(chunks);
  for (let start = 0, end = out.indexOf(0); end >= 0; start = end + 1, end = out.indexOf(0, start)) {
    const rel = out.subarray(start + 2, end);
    if (!isWhiteout(await lstat(at(layer, rel)))) found.push(rel);
  }
  if (found.length > 0) {
    const list = found.slice(0, 50).map((rel) => JSON.stringify(`/${rel.toString()}`));
    throw new Error(`the copy holds device nodes, which a layer may not: ${list.join(", ")}`);
  }
}

/** Creates a directory with the owner and permission bits of `stats` (chmod after chown keeps setgid). */
async function makeDir(path: Buffer, stats: Stats): Promise<void> {
  await mkdir(path, { mode: 0o700 });
  await chown(path, stats.uid, stats.gid);
  await chmod(path, stats.mode & 0o7777);
}

async function syncDir(path: string): Promise<void> {
  const fh = await open(path, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (err) {
    if (isErrno(err, "ENOENT")) return false;
    throw err;
  }
}
