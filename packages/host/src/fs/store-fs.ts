/**
 * File system steps shared by the stores: work-in-progress folders beside the store's entries,
 * atomic small-file writes, and removal that never reaches outside the tree being removed (a
 * build tool killed midway can leave /proc, /sys or host /dev mounted inside its target).
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, lstat, mkdir, mkdtemp, open, readdir, readFile, realpath, rename, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { TEMP_PREFIX } from "./layout.ts";
import { toolEnv } from "./tool-env.ts";

const run = promisify(execFile);

export function isErrno(err: unknown, ...codes: string[]): boolean {
  return err instanceof Error && codes.includes((err as NodeJS.ErrnoException).code ?? "");
}

/** Creates a fresh `.tmp-*` folder (mode 0755) inside `storeDir`, creating the store if needed. */
export async function makeTempDir(storeDir: string): Promise<string> {
  await mkdir(storeDir, { recursive: true, mode: 0o755 });
  const dir = await mkdtemp(join(storeDir, TEMP_PREFIX));
  await chmod(dir, 0o755);
  return dir;
}

/** Writes `content` to a temp file beside `path`, flushes it, then renames it over `path`. */
export async function writeFileAtomic(path: string, content: string, mode = 0o644): Promise<void> {
  const dir = resolve(path, "..");
  const tmp = join(dir, `${TEMP_PREFIX}${randomBytes(6).toString("hex")}`);
  const fh = await open(tmp, "wx", mode);
  try {
    await fh.writeFile(content);
    await fh.chmod(mode);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Mount points at or below `dir`, deepest first, read from /proc/self/mountinfo. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const root = resolve(dir);
  let text: string;
  try {
    text = await readFile("/proc/self/mountinfo", "utf8");
  } catch (err) {
    if (isErrno(err, "ENOENT")) return [];
    throw err;
  }
  const found: string[] = [];
  for (const line of text.split("\n")) {
    const field = line.split(" ")[4];
    if (field === undefined) continue;
    const mountPoint = field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
    if (mountPoint === root || mountPoint.startsWith(`${root}/`)) found.push(mountPoint);
  }
  return found.sort((a, b) => b.length - a.length);
}

/**
 * Removes `path` and everything below it. Mounts inside it are detached first, and the removal
 * does not cross into another file system, so a leftover bind mount of a host folder is never
 * emptied.
 */
export async function removeTree(path: string): Promise<void> {
  let real: string;
  try {
    real = (await lstat(path)).isSymbolicLink() ? path : await realpath(path);
  } catch (err) {
    if (isErrno(err, "ENOENT")) return;
    throw err;
  }
  await unmountUnder(real);
  await run("rm", ["-rf", "--one-file-system", "--", path], { env: toolEnv() });
}

/** Detaches every mount at or below `dir` (a path without symlinks); throws if any remains. */
export async function unmountUnder(dir: string): Promise<void> {
  for (const mountPoint of await mountsUnder(dir)) {
    await run("umount", ["--lazy", mountPoint], { env: toolEnv() });
  }
  if ((await mountsUnder(dir)).length > 0) throw new Error(`${dir} still has file systems mounted inside`);
}

/** Removes the `.tmp-*` entries of `storeDir` last modified more than `olderThanMs` ago. */
export async function removeStaleTemps(storeDir: string, olderThanMs: number): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(storeDir);
  } catch (err) {
    if (isErrno(err, "ENOENT")) return [];
    throw err;
  }
  const removed: string[] = [];
  const cutoff = Date.now() - olderThanMs;
  for (const name of names) {
    if (!name.startsWith(TEMP_PREFIX)) continue;
    const path = join(storeDir, name);
    try {
      if ((await lstat(path)).mtimeMs > cutoff) continue;
    } catch (err) {
      if (isErrno(err, "ENOENT")) continue;
      throw err;
    }
    await removeTree(path);
    removed.push(path);
  }
  return removed;
}
