/**
 * Base images: root filesystems built once (debootstrap, or imported from a folder), tidied for
 * use as the bottom layer of a sandbox, and stored by digest. Builds happen in `.tmp-*` folders
 * inside the store and are renamed into place only when complete, so an interrupted build never
 * looks like an image; one build runs at a time per store, and it first removes what earlier,
 * interrupted builds left.
 */
import { spawn } from "node:child_process";
import { constants } from "node:fs";
import {
  access,
  chmod,
  chown,
  lstat,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  realpath,
  rename,
  rm,
  unlink,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { AppError } from "@paddock/protocol";
import {
  AGENT_USER,
  DEFAULT_IMAGE_POINTER,
  IMAGE_META,
  IMAGE_ROOTFS,
  type ImageMeta,
  isDigest,
  TEMP_PREFIX,
} from "../fs/layout.ts";
import { isErrno, makeTempDir, removeTree, unmountUnder, writeFileAtomic } from "../fs/store-fs.ts";
import { proxySettings, toolEnv } from "../fs/tool-env.ts";
import { scanTree } from "../fs/tree-digest.ts";
import { RUNNER_MOUNT } from "../sandbox/driver.ts";

export interface ImageStoreOptions {
  imagesDir: string;
}

export interface BaseImage {
  digest: string;
  /** Host folder of the image's root filesystem. */
  rootfs: string;
}

export interface ImageInfo extends ImageMeta {
  rootfs: string;
  /** The image the `default` pointer names. */
  default: boolean;
}

export type Log = (line: string) => void;

export interface EnsureBaseOptions {
  /** Debian mirror; defaults to http://deb.debian.org/debian. */
  mirror?: string;
  /** Debian suite; defaults to bookworm. */
  suite?: string;
  log?: Log;
  /** Build a new image even when `default` already names a complete one. */
  force?: boolean;
}

export interface ImportRootfsOptions {
  /** Host folder holding a root filesystem; copied, never modified. */
  from: string;
  /** Recorded in meta.json; defaults to "import". */
  source?: string;
  /** Point `default` at the imported image. */
  setDefault?: boolean;
  log?: Log;
}

export const DEFAULT_SUITE = "bookworm";
export const DEFAULT_MIRROR = "http://deb.debian.org/debian";
const BUILD_LOCK = ".build.lock";
/** A lock older than this is left over from a crashed build, whatever its pid says now. */
const STALE_LOCK_MS = 30 * 60 * 1000;
const LOCK_WAIT_MS = 60 * 60 * 1000;
const NOT_READY = "run 'paddock images build-base' to build it";

export class ImageStore {
  readonly imagesDir: string;

  constructor(options: ImageStoreOptions) {
    this.imagesDir = options.imagesDir;
  }

  /**
   * Returns the default base image, building it with debootstrap when `default` names no complete
   * image. Needs root and network access to the mirror; takes about a minute.
   * @example const { digest, rootfs } = await images.ensureBase({ log: console.log });
   */
  async ensureBase(options: EnsureBaseOptions = {}): Promise<BaseImage> {
    const suite = options.suite ?? DEFAULT_SUITE;
    const mirror = options.mirror ?? DEFAULT_MIRROR;
    const log = options.log ?? (() => {});
    if (!/^[a-z][a-z0-9.-]{0,63}$/.test(suite)) {
      throw new AppError("validation_failed", `not a Debian suite name: ${JSON.stringify(suite)}`);
    }
    if (!/^(https?|file):\/\/[^\s]+$/.test(mirror)) {
      throw new AppError(
        "validation_failed",
        `the mirror must be an http(s):// or file:// URL, not ${JSON.stringify(mirror)}`,
      );
    }
    if (!options.force && !(await canWrite(this.imagesDir))) {
      // A store this process may not write (not root, read-only mount) can still serve its image.
      const current = await this.#current();
      if (current) return current;
    }
    return this.#withBuildLock(log, async () => {
      if (!options.force) {
        const current = await this.#current();
        if (current) {
          log(`images: base image ${current.digest} is ready`);
          return current;
        }
      }
      if (process.getuid?.() !== 0) {
        throw new AppError(
          "internal",
          "Building the base image needs root (debootstrap creates device nodes and chroots).",
        );
      }
      const tmp = await makeTempDir(this.imagesDir);
      try {
        const rootfs = join(tmp, IMAGE_ROOTFS);
        log(`images: debootstrap ${suite} from ${mirror}`);
        await debootstrap(["--variant=minbase", "--include=python3,ca-certificates", suite, rootfs, mirror], log);
        return await this.#finish(tmp, { source: "debootstrap", suite }, true, log);
      } finally {
        await removeTree(tmp);
      }
    });
  }

  /**
   * Stores a copy of a root filesystem folder as an image (tidied like a built one).
   * @example await images.importRootfs({ from: "/srv/rootfs", setDefault: true });
   */
  /**
   * Imports a root filesystem tarball (plain, gzip or zstd; for example `docker export` output):
   * extracted aside with every entry checked (archive/extract-rootfs.ts), then stored like a folder.
   */
  async importTarball(options: Omit<ImportRootfsOptions, "from"> & { file: string }): Promise<BaseImage> {
    const { extractTarball } = await import("../archive/extract-rootfs.ts");
    // Not a ".tmp-" folder: importRootfs clears those as leftovers of interrupted builds.
    await mkdir(this.imagesDir, { recursive: true });
    const scratch = await mkdtemp(join(this.imagesDir, ".import-"));
    try {
      const rootfs = join(scratch, "rootfs");
      (options.log ?? (() => {}))(`images: unpacking ${options.file}`);
      await extractTarball(options.file, rootfs);
      return await this.importRootfs({ ...options, from: rootfs, source: options.source ?? "tarball" });
    } finally {
      await removeTree(scratch);
    }
  }

  async importRootfs(options: ImportRootfsOptions): Promise<BaseImage> {
    const log = options.log ?? (() => {});
    let from: string;
    try {
      from = await realpath(options.from);
      if (!(await lstat(from)).isDirectory()) throw new Error("not a folder");
    } catch {
      throw new AppError("validation_failed", `${options.from} is not a folder`);
    }
    return this.#withBuildLock(log, async () => {
      const tmp = await makeTempDir(this.imagesDir);
      try {
        log(`images: copying ${from}`);
        await runTool("cp", ["-a", "--one-file-system", "-T", "--", from, join(tmp, IMAGE_ROOTFS)], log);
        return await this.#finish(tmp, { source: options.source ?? "import" }, options.setDefault ?? false, log);
      } finally {
        await removeTree(tmp);
      }
    });
  }

  /**
   * The image `ref` names: "default" or a digest. Throws image_not_ready when it is not built.
   * @example const { rootfs } = await images.resolve("default");
   */
  async resolve(ref: string): Promise<BaseImage> {
    if (ref === DEFAULT_IMAGE_POINTER) {
      const digest = await this.#readPointer();
      if (!digest) throw new AppError("image_not_ready", `No base image is built yet; ${NOT_READY}.`);
      const image = await this.#complete(digest);
      if (!image) throw new AppError("image_not_ready", `The default base image ${digest} is missing; ${NOT_READY}.`);
      return image;
    }
    if (!isDigest(ref)) {
      throw new AppError(
        "validation_failed",
        `An image is "default" or a digest "sha256-<64 hex digits>", not ${JSON.stringify(ref)}.`,
      );
    }
    const image = await this.#complete(ref);
    if (!image) throw new AppError("image_not_ready", `Image ${ref} is not built on this host; ${NOT_READY}.`);
    return image;
  }

  /** Every complete image in the store, newest first. */
  async list(): Promise<ImageInfo[]> {
    const pointer = await this.#readPointer();
    const images: ImageInfo[] = [];
    for (const name of await listDir(this.imagesDir)) {
      if (!isDigest(name)) continue;
      const meta = await this.#meta(name);
      if (meta) images.push({ ...meta, rootfs: this.#rootfs(name), default: name === pointer });
    }
    return images.sort((a, b) => b.created_at.localeCompare(a.created_at));
  }

  #rootfs(digest: string): string {
    return join(this.imagesDir, digest, IMAGE_ROOTFS);
  }

  async #current(): Promise<BaseImage | null> {
    const digest = await this.#readPointer();
    return digest ? this.#complete(digest) : null;
  }

  async #readPointer(): Promise<string | null> {
    try {
      const digest = (await readFile(join(this.imagesDir, DEFAULT_IMAGE_POINTER), "utf8")).trim();
      return isDigest(digest) ? digest : null;
    } catch (err) {
      if (isErrno(err, "ENOENT")) return null;
      throw err;
    }
  }

  async #complete(digest: string): Promise<BaseImage | null> {
    return (await this.#meta(digest)) ? { digest, rootfs: this.#rootfs(digest) } : null;
  }

  /** meta.json of a complete image (its rootfs present, its recorded digest its name), else null. */
  async #meta(digest: string): Promise<ImageMeta | null> {
    if (!isDigest(digest)) return null;
    try {
      const meta = JSON.parse(await readFile(join(this.imagesDir, digest, IMAGE_META), "utf8")) as ImageMeta;
      if (meta?.digest !== digest) return null;
      const rootfs = await lstat(this.#rootfs(digest));
      return rootfs.isDirectory() ? meta : null;
    } catch (err) {
      if (isErrno(err, "ENOENT", "ENOTDIR") || err instanceof SyntaxError) return null;
      throw err;
    }
  }

  /** Tidies `<tmp>/rootfs`, names it by digest and moves it into place; optionally makes it the default. */
  async #finish(
    tmp: string,
    meta: { source: string; suite?: string },
    setDefault: boolean,
    log: Log,
  ): Promise<BaseImage> {
    const rootfs = join(tmp, IMAGE_ROOTFS);
    // A build tool can leave /proc or /sys mounted inside its target.
    await unmountUnder(await realpath(tmp));
    log("images: tidying the root filesystem");
    await tidyRootfs(rootfs);
    log("images: computing the digest");
    const scan = await scanTree(rootfs);
    const full: ImageMeta = {
      digest: scan.digest,
      ...meta,
      created_at: new Date().toISOString(),
      size_bytes: scan.bytes,
    };
    await writeFile(join(tmp, IMAGE_META), `${JSON.stringify(full, null, 2)}\n`, { mode: 0o644 });
    const final = join(this.imagesDir, scan.digest);
    if (await this.#meta(scan.digest)) {
      log(`images: image ${scan.digest} already stored`);
    } else {
      await removeTree(final);
      await rename(tmp, final);
    }
    if (setDefault) await writeFileAtomic(join(this.imagesDir, DEFAULT_IMAGE_POINTER), `${scan.digest}\n`);
    log(`images: image ${scan.digest} ready (${Math.round(scan.bytes / 1e6)} MB in ${scan.entries} entries)`);
    return { digest: scan.digest, rootfs: this.#rootfs(scan.digest) };
  }

  /**
   * Runs `fn` holding the store's build lock, after removing what interrupted builds left: `.tmp-*`
   * entries and digest-named folders without meta.json.
   */
  async #withBuildLock<T>(log: Log, fn: () => Promise<T>): Promise<T> {
    await mkdir(this.imagesDir, { recursive: true, mode: 0o755 });
    const lockPath = join(this.imagesDir, BUILD_LOCK);
    const started = Date.now();
    let announced = false;
    for (;;) {
      try {
        await writeFile(lockPath, `${process.pid}\n`, { flag: "wx", mode: 0o644 });
        break;
      } catch (err) {
        if (!isErrno(err, "EEXIST")) throw err;
      }
      const holder = await lockHolder(lockPath);
      if (holder === null) continue;
      if (!holder.alive) {
        log(`images: removing the lock of an interrupted build (pid ${holder.pid})`);
        await rm(lockPath, { force: true });
        continue;
      }
      if (Date.now() - started > LOCK_WAIT_MS) {
        throw new AppError("internal", `Another image build (pid ${holder.pid}) has held ${lockPath} for too long.`);
      }
      if (!announced) log(`images: waiting for another image build (pid ${holder.pid}) to finish`);
      announced = true;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    try {
      for (const name of await listDir(this.imagesDir)) {
        const leftover =
          name.startsWith(TEMP_PREFIX) || (isDigest(name) && !(await exists(join(this.imagesDir, name, IMAGE_META))));
        if (!leftover) continue;
        log(`images: removing ${name}, left by an interrupted build`);
        await removeTree(join(this.imagesDir, name));
      }
      return await fn();
    } finally {
      await unlink(lockPath).catch(() => {});
    }
  }
}

/** The pid holding a build lock and whether it still runs; null when the lock vanished meanwhile. */
async function lockHolder(lockPath: string): Promise<{ pid: number; alive: boolean } | null> {
  let text: string;
  let ageMs: number;
  try {
    text = await readFile(lockPath, "utf8");
    ageMs = Date.now() - (await lstat(lockPath)).mtimeMs;
  } catch (err) {
    if (isErrno(err, "ENOENT")) return null;
    throw err;
  }
  const pid = Number.parseInt(text.trim(), 10);
  // A lock file still empty was just created by its holder.
  if (text === "" && ageMs < 5000) return { pid: 0, alive: true };
  if (!Number.isInteger(pid) || pid <= 0 || ageMs > STALE_LOCK_MS) return { pid, alive: false };
  try {
    process.kill(pid, 0);
    return { pid, alive: true };
  } catch (err) {
    return { pid, alive: isErrno(err, "EPERM") };
  }
}

async function canWrite(dir: string): Promise<boolean> {
  try {
    await access(dir, constants.W_OK);
    return true;
  } catch (err) {
    if (isErrno(err, "EACCES", "EPERM", "EROFS")) return false;
    if (isErrno(err, "ENOENT")) return true;
    throw err;
  }
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (isErrno(err, "ENOENT")) return [];
    throw err;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if (isErrno(err, "ENOENT", "ENOTDIR")) return false;
    throw err;
  }
}

async function debootstrap(args: string[], log: Log): Promise<void> {
  try {
    await runTool("debootstrap", args, log);
  } catch (err) {
    if (isErrno(err, "ENOENT")) {
      throw new AppError(
        "internal",
        "debootstrap is not installed; run 'make setup' or 'apt-get install debootstrap'.",
      );
    }
    throw err;
  }
}

/** Runs a tool, passing each output line to `log`; rejects with its last lines when it fails. */
function runTool(command: string, args: string[], log: Log): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: toolEnv({ DEBIAN_FRONTEND: "noninteractive", ...proxySettings(process.env) }),
    });
    const tail: string[] = [];
    const onLine = (line: string): void => {
      tail.push(line);
      if (tail.length > 20) tail.shift();
      log(line);
    };
    createInterface({ input: child.stdout }).on("line", onLine);
    createInterface({ input: child.stderr }).on("line", onLine);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      if (code === 0) resolve();
      else {
        const how = signal ? `was killed by ${signal}` : `exited with ${code}`;
        reject(new AppError("internal", `${command} ${how}:\n${tail.join("\n")}`));
      }
    });
  });
}

/**
 * Prepares a root filesystem for sandboxes: no apt indexes or package caches (the image stays
 * small, and an edit session fetches fresh ones), an empty /dev (the sandbox mounts its own), no
 * copy of the host's resolv.conf or hostname, a passwd/group entry and home for the sandbox user,
 * and the runner's mount point.
 */
async function tidyRootfs(rootfs: string): Promise<void> {
  const at = (rel: string) => inside(rootfs, rel, true);
  const existing = (rel: string) => inside(rootfs, rel, false);
  await emptyDir(await existing("dev"));
  await emptyDir(await existing("var/lib/apt/lists"), ["partial"]);
  await emptyDir(await existing("var/cache/apt"), ["archives"]);
  await emptyDir(await existing("var/cache/apt/archives"), ["partial"]);
  await emptyDir(await existing("var/cache/apt/archives/partial"));
  await replaceFile(await at("etc/resolv.conf"), "");
  await replaceFile(await at("etc/hostname"), "sandbox\n");

  const { name, uid, gid, home } = AGENT_USER;
  await addEntry(await at("etc/passwd"), name, `${name}:x:${uid}:${gid}:Paddock agent:${home}:/bin/sh`, 0o644, true);
  await addEntry(await at("etc/group"), name, `${name}:x:${gid}:`, 0o644, true);
  await addEntry(await at("etc/shadow"), name, `${name}:!:::::::`, 0o640, false);
  await addEntry(await at("etc/gshadow"), name, `${name}:!::`, 0o640, false);
  const homeDir = await realDir(await at(home.slice(1)));
  await chown(homeDir, uid, gid);
  await chmod(homeDir, 0o755);
  await realDir(await at(RUNNER_MOUNT.slice(1)));
}

/**
 * Makes `path` a real folder: whatever else is there (an imported tree's symlink to a host
 * folder, say) is removed first, so later chown/chmod never reach outside the tree.
 */
async function realDir(path: string): Promise<string> {
  const st = await lstat(path).catch((err: unknown) => {
    if (isErrno(err, "ENOENT")) return null;
    throw err;
  });
  if (st?.isDirectory()) return path;
  if (st) await rm(path, { force: true });
  await mkdir(path, { mode: 0o755 });
  return path;
}

/**
 * The host path of `rel` inside `root`, after checking that every folder on the way is a real
 * folder of the tree (not a symlink that could lead out of it); missing folders are created when
 * `create` is set. The last part may be anything.
 */
async function inside(root: string, rel: string, create: boolean): Promise<string> {
  const parts = rel.split("/");
  let path = root;
  let missing = false;
  for (const [i, part] of parts.entries()) {
    path = join(path, part);
    if (i === parts.length - 1 || missing) continue;
    try {
      const st = await lstat(path);
      if (!st.isDirectory()) throw new Error(`${path} is not a folder of the root filesystem`);
    } catch (err) {
      if (!isErrno(err, "ENOENT")) throw err;
      if (create) await mkdir(path, { mode: 0o755 });
      else missing = true;
    }
  }
  return path;
}

/** Removes everything in `dir` except the names in `keep`; a missing or non-folder `dir` is left alone. */
async function emptyDir(dir: string, keep: string[] = []): Promise<void> {
  try {
    if (!(await lstat(dir)).isDirectory()) return;
  } catch (err) {
    if (isErrno(err, "ENOENT")) return;
    throw err;
  }
  for (const name of await readdir(dir)) {
    if (!keep.includes(name)) await rm(join(dir, name), { recursive: true, force: true });
  }
}

/** Replaces whatever is at `path` (a symlink included) with a regular file. */
async function replaceFile(path: string, content: string): Promise<void> {
  await rm(path, { force: true, recursive: true });
  await writeFile(path, content, { mode: 0o644, flag: "wx" });
}

/** Appends `line` to a colon-separated database unless it has an entry for `name`. */
async function addEntry(path: string, name: string, line: string, mode: number, create: boolean): Promise<void> {
  let text = "";
  try {
    const st = await lstat(path);
    if (!st.isFile()) throw new Error(`${path} is not a regular file`);
    text = await readFile(path, "utf8");
  } catch (err) {
    if (!isErrno(err, "ENOENT")) throw err;
    if (!create) return;
  }
  if (text.split("\n").some((l) => l.split(":")[0] === name)) return;
  const prefix = text === "" || text.endsWith("\n") ? "" : "\n";
  const fh = await open(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, mode);
  try {
    await fh.writeFile(`${prefix}${line}\n`);
  } finally {
    await fh.close();
  }
}
