/**
 * Unpacks root filesystem tarballs (plain, gzip or zstd; e.g. the output of `docker export`) as
 * root, keeping owners, permission bits, symlinks, hard links and timestamps.
 *
 * Threat model: the archive is hostile and this process is root, so one write in the wrong place
 * is a host compromise. Every entry is checked here, whatever wrote the archive: no absolute
 * names, no "..", no device nodes (overlay whiteouts only when asked for), hard links only to
 * entries already extracted. Nothing is ever written through a symlink: the extractor remembers
 * what it created, creates each path itself, refuses a path below anything that is not a folder
 * it made, and opens files with O_EXCL|O_NOFOLLOW. Symlink targets are stored as given and never
 * followed (the sandbox resolves them inside its own root). Sizes and counts are bounded. The work
 * happens in a temp folder beside the destination, renamed into place only when complete, so a
 * refused, truncated or corrupt archive leaves nothing behind.
 *
 * Extended attributes are ignored unless the caller names where they belong (environment layers,
 * ExtractOptions.xattrsAt). There an entry may carry only the attributes a frozen layer keeps
 * (keepXattr in envs/freeze.ts: the opaque marker "y", security.capability, the two POSIX ACLs and
 * user.* but user.overlay.*), within per-entry caps; anything else (trusted.overlay.redirect,
 * security.selinux, trusted.*...) refuses the whole archive rather than being dropped, since no
 * archive this host writes holds one. They are set with setfattr -h (never through a symlink)
 * once every entry and its owner and mode are in place (chown would clear a file capability).
 */
import { execFile } from "node:child_process";
import { constants, createReadStream } from "node:fs";
import {
  chmod,
  chown,
  type FileHandle,
  lchown,
  link,
  lstat,
  lutimes,
  mkdir,
  open,
  rename,
  symlink,
  unlink,
  utimes,
} from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { promisify } from "node:util";
import { createGunzip, createZstdDecompress } from "node:zlib";
import { AppError } from "@paddock/protocol";
import { keepXattr } from "../fs/overlay-marks.ts";
import { isErrno, makeTempDir, removeTree } from "../fs/store-fs.ts";
import { toolEnv } from "../fs/tool-env.ts";
import type { TreeXattr } from "../fs/tree-digest.ts";
import { writeXattrs, type XattrMap } from "../fs/xattrs.ts";
import { type TarEntry, TarFormatError, TarReader } from "./tar-format.ts";

const run = promisify(execFile);

export interface ExtractOptions {
  /** Most entries accepted; default 2,000,000. */
  maxEntries?: number;
  /** Most bytes of file content accepted; default 64 GiB. */
  maxBytes?: number;
  /** Accept overlayfs whiteouts (character devices 0:0). For environment layers. */
  allowWhiteouts?: boolean;
  /**
   * Restore extended attributes on the entries for which this returns true (given the path
   * relative to the archive root, "" for the root): only those a frozen layer keeps
   * (layerXattrProblem), as GNU tar's SCHILY.xattr records; needs setfattr (package attr). An
   * attribute on any other entry refuses the archive. Without it, attributes are ignored (root
   * filesystem imports).
   */
  xattrsAt?: (rel: Buffer) => boolean;
}

export interface ExtractResult {
  /** Entries extracted (folders, files, links, ...). */
  entries: number;
  /** Bytes of file content written. */
  bytes: number;
}

export type Compression = "none" | "gzip" | "zstd";

export const DEFAULT_MAX_ENTRIES = 2_000_000;
export const DEFAULT_MAX_BYTES = 64 * 1024 ** 3;
/** Most extended attributes one entry may carry. */
export const MAX_ENTRY_XATTRS = 32;
/** Most bytes of extended attribute values one entry may carry (Linux's limit for one value). */
export const MAX_ENTRY_XATTR_BYTES = 64 * 1024;
/** Longest attribute name Linux accepts. */
const MAX_XATTR_NAME_BYTES = 255;
/** Most bytes of attribute values one extraction holds (they are set once every entry is in place). */
const MAX_XATTR_TOTAL_BYTES = 64 * 1024 * 1024;
const MAX_PATH_BYTES = 4096;
const MAX_NAME_BYTES = 255;
/** uid/gid 2^32-1 means "leave unchanged" to chown, so it cannot be stored. */
const MAX_ID = 0xfffffffe;
const DECODE_CHUNK = 256 * 1024;
const SLASH = Buffer.from("/");

/**
 * Unpacks the tarball `file` into the new folder `dest` (which must not exist; its parent is
 * created if needed) and returns what it holds. Throws validation_failed, naming the entry, for
 * anything unsafe or malformed; then neither `dest` nor a temp folder remains.
 * @example await extractTarball("/srv/export.tar", "/var/lib/paddock/images/.tmp-x/rootfs");
 */
export async function extractTarball(file: string, dest: string, opts: ExtractOptions = {}): Promise<ExtractResult> {
  const target = resolve(dest);
  if (await exists(target)) throw new AppError("validation_failed", `${dest} already exists`);
  const reader = await openArchive(file);
  let root: string | null = null;
  let x: Extraction | null = null;
  let placed = false;
  try {
    root = await makeTempDir(dirname(target));
    // Private until complete: no other user reaches a half-written tree (or its setuid files).
    await chmod(root, 0o700);
    x = new Extraction(root, opts);
    for (;;) {
      const entry = await reader.next();
      if (entry === null) break;
      await x.add(entry, reader);
    }
    await reader.finish();
    await x.finish();
    if (await exists(target)) throw new AppError("validation_failed", `${dest} already exists`);
    await rename(root, target);
    placed = true;
    return { entries: x.entries, bytes: x.bytes };
  } catch (err) {
    if (err instanceof TarFormatError) {
      throw new AppError("validation_failed", `The archive ${file} is truncated/corrupt: ${err.message}`);
    }
    if (isErrno(err, "ENAMETOOLONG")) {
      // Each name and the archive path are bounded, but below a deep destination the whole can still be too long.
      throw new AppError("validation_failed", `Refusing the archive: a path is too long to create below ${dest}.`);
    }
    throw err;
  } finally {
    await reader.close();
    await x?.removeScratch();
    if (root !== null && !placed) await removeTree(root);
  }
}

/**
 * The compression of `file`, told by its first bytes. xz and bzip2 are recognised only to refuse
 * them by name; anything else is read as plain tar (and refused later if it is not).
 */
export async function detectCompression(file: string): Promise<Compression> {
  const fh = await open(file, "r");
  let head: Buffer;
  try {
    const buf = Buffer.alloc(6);
    const { bytesRead } = await fh.read(buf, 0, 6, 0);
    head = buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
  const starts = (...bytes: number[]) => bytes.every((b, i) => head[i] === b);
  if (starts(0x1f, 0x8b)) return "gzip";
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return "zstd";
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00) || starts(0x42, 0x5a, 0x68)) {
    throw new AppError(
      "validation_failed",
      `The archive ${file} is xz- or bzip2-compressed; use a plain, gzip or zstd tarball.`,
    );
  }
  return "none";
}

/** A reader over the tar stream inside `file`, decompressed as its first bytes say. */
export async function openArchive(file: string): Promise<TarReader> {
  return new TarReader(archiveChunks(file, await detectCompression(file)));
}

async function* archiveChunks(file: string, compression: Compression): AsyncGenerator<Buffer> {
  const input = createReadStream(file, { highWaterMark: 1024 * 1024 });
  if (compression === "none") {
    try {
      for await (const chunk of input) yield chunk as Buffer;
    } finally {
      input.destroy();
    }
    return;
  }
  const decoder =
    compression === "gzip"
      ? createGunzip({ chunkSize: DECODE_CHUNK })
      : createZstdDecompress({ chunkSize: DECODE_CHUNK });
  let readError: unknown = null;
  input.on("error", (err) => {
    readError = err;
    decoder.destroy(err);
  });
  input.pipe(decoder);
  try {
    for await (const chunk of decoder) yield chunk as Buffer;
  } catch (err) {
    if (readError !== null) throw readError;
    // Decoders report truncation and corruption (bad checksum, bad block) as errors.
    throw new TarFormatError(`${compression} data: ${err instanceof Error ? err.message : String(err)}`);
  } finally {
    input.destroy();
    decoder.destroy();
  }
}

type Kind = "dir" | "file" | "symlink" | "fifo" | "whiteout";

interface Node {
  kind: Kind;
  /** A folder created only because an entry lay below it. */
  implicit: boolean;
}

interface Meta {
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
}

/** The state of one extraction: what exists under the temp root, and what is left to apply. */
class Extraction {
  readonly #root: Buffer;
  readonly #rootPath: string;
  readonly #maxEntries: number;
  readonly #maxBytes: number;
  readonly #allowWhiteouts: boolean;
  readonly #xattrsAt: ((rel: Buffer) => boolean) | undefined;
  /** Every path created, by its bytes read as Latin-1 (one character per byte). */
  readonly #nodes = new Map<string, Node>();
  /** Folder metadata, applied at the end (adding entries would change the times). */
  readonly #dirs = new Map<string, Meta>();
  /** Extended attributes to set, by path (as in #nodes); applied at the end. */
  readonly #xattrs: XattrMap = new Map();
  #xattrBytes = 0;
  /** Whiteout inodes by metadata; each whiteout is a hard link to one, as overlayfs does. */
  readonly #whiteouts = new Map<string, string>();
  #scratch: string | null = null;
  #counter = 0;
  entries = 0;
  bytes = 0;

  constructor(root: string, opts: ExtractOptions) {
    this.#rootPath = root;
    this.#root = Buffer.from(root);
    this.#maxEntries = opts.maxEntries ?? DEFAULT_MAX_ENTRIES;
    this.#maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
    this.#allowWhiteouts = opts.allowWhiteouts ?? false;
    this.#xattrsAt = opts.xattrsAt;
    this.#nodes.set("", { kind: "dir", implicit: true });
  }

  async add(e: TarEntry, reader: TarReader): Promise<void> {
    const name = show(e.path);
    if (++this.entries > this.#maxEntries) refuse(`the archive has more than ${this.#maxEntries} entries`);
    if (e.unsupported !== undefined) refuse(`entry ${name} is ${e.unsupported}, which is not supported`);
    const rel = checkPath(e.path, `entry ${name}`);
    if (this.bytes + e.size > this.#maxBytes) {
      refuse(`the archive holds more than ${this.#maxBytes} bytes of content (at entry ${name})`);
    }
    this.bytes += e.size;
    if (e.uid > MAX_ID || e.gid > MAX_ID) refuse(`entry ${name} has an out-of-range owner ${e.uid}:${e.gid}`);
    this.#checkType(e, name);
    const meta: Meta = { mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime };
    const xattrs = this.#entryXattrs(e, rel, name);
    const key = rel.toString("latin1");

    if (rel.length === 0) {
      if (e.type !== "dir") refuse(`entry ${name} names the archive's root folder but is not a folder`);
      this.#dirs.set(key, meta);
      this.#setXattrs(key, xattrs);
      return;
    }
    await this.#makeParents(rel, name);
    const path = this.#abs(rel);
    const existing = this.#nodes.get(key);
    if (existing?.kind === "dir") {
      if (e.type !== "dir") refuse(`entry ${name} would replace the folder extracted before it`);
      existing.implicit = false;
      this.#dirs.set(key, meta);
      this.#setXattrs(key, xattrs);
      return;
    }
    if (existing) {
      // A later entry for the same name replaces the earlier one (unlink never follows a symlink).
      await unlink(path);
      this.#nodes.delete(key);
    }
    this.#setXattrs(key, xattrs);

    switch (e.type) {
      case "dir":
        await mkdir(path, { mode: 0o700 });
        this.#dirs.set(key, meta);
        break;
      case "file":
        await writeContent(path, reader, meta);
        break;
      case "symlink":
        await symlink(e.linkpath, path);
        await lchown(path, meta.uid, meta.gid);
        await lutimes(path, meta.mtime, meta.mtime);
        break;
      case "link": {
        const target = this.#linkTarget(e, name);
        await link(this.#abs(target.rel), path);
        this.#nodes.set(key, { kind: target.kind, implicit: false });
        return;
      }
      case "fifo": {
        // Node has no mkfifo(); make it aside under a plain name, then move it into place.
        const tmp = await this.#scratchPath();
        await run("mkfifo", ["-m", "600", "--", tmp], { env: toolEnv() });
        await setMeta(tmp, meta);
        await rename(tmp, path);
        break;
      }
      case "char":
        await link(await this.#whiteout(meta, xattrs), path);
        this.#nodes.set(key, { kind: "whiteout", implicit: false });
        return;
      case "block":
        refuse(`entry ${name} is a block device`);
    }
    this.#nodes.set(key, { kind: e.type, implicit: false });
  }

  /**
   * Applies the folders' metadata, then the extended attributes (after every chown, which would
   * clear a file capability, and chmod); call once every entry is in place.
   */
  async finish(): Promise<void> {
    if (!this.#dirs.has("")) await chmod(this.#root, 0o755);
    for (const [key, meta] of this.#dirs) {
      const path = key === "" ? this.#root : this.#abs(Buffer.from(key, "latin1"));
      await setMeta(path, meta);
    }
    await writeXattrs(this.#rootPath, this.#xattrs);
  }

  async removeScratch(): Promise<void> {
    if (this.#scratch !== null) await removeTree(this.#scratch);
    this.#scratch = null;
  }

  #checkType(e: TarEntry, name: string): void {
    if (e.type === "block")
      refuse(`entry ${name} is a block device (${e.devmajor}:${e.devminor}); devices are not allowed`);
    if (e.type === "char") {
      if (e.devmajor !== 0 || e.devminor !== 0) {
        refuse(`entry ${name} is a character device (${e.devmajor}:${e.devminor}); devices are not allowed`);
      }
      if (!this.#allowWhiteouts) {
        refuse(`entry ${name} is an overlay whiteout (character device 0:0), which is not allowed here`);
      }
    }
    if (e.type === "symlink") {
      if (e.linkpath.length === 0) refuse(`entry ${name} is a symlink without a target`);
      if (e.linkpath.includes(0)) refuse(`entry ${name} is a symlink whose target contains NUL`);
      if (e.linkpath.length >= MAX_PATH_BYTES) refuse(`entry ${name} is a symlink with a target of 4096 bytes or more`);
    }
  }

  /**
   * The extended attributes of `e` to restore, checked against the layer allowlist and the caps;
   * none when the caller did not ask for them.
   */
  #entryXattrs(e: TarEntry, rel: Buffer, name: string): TreeXattr[] {
    if (e.xattrs.size === 0 || this.#xattrsAt === undefined) return [];
    if (!this.#xattrsAt(rel)) refuse(`entry ${name} carries extended attributes, which are not allowed there`);
    if (e.type === "link") {
      refuse(`entry ${name} is a hard link carrying extended attributes (they belong to the entry it links to)`);
    }
    if (e.xattrs.size > MAX_ENTRY_XATTRS) {
      refuse(`entry ${name} carries more than ${MAX_ENTRY_XATTRS} extended attributes`);
    }
    const list: TreeXattr[] = [];
    let bytes = 0;
    for (const [text, value] of e.xattrs) {
      const attr = Buffer.from(text, "latin1");
      const problem = layerXattrProblem(rel, attr, value);
      if (problem !== null) refuse(`entry ${name} carries ${problem}`);
      bytes += value.length;
      list.push({ name: attr, value });
    }
    if (bytes > MAX_ENTRY_XATTR_BYTES) {
      refuse(`entry ${name} carries more than ${MAX_ENTRY_XATTR_BYTES} bytes of extended attributes`);
    }
    this.#xattrBytes += bytes;
    if (this.#xattrBytes > MAX_XATTR_TOTAL_BYTES) {
      refuse(`the archive holds more than ${MAX_XATTR_TOTAL_BYTES} bytes of extended attributes`);
    }
    return list;
  }

  #setXattrs(key: string, xattrs: TreeXattr[]): void {
    if (xattrs.length > 0) this.#xattrs.set(key, xattrs);
    else this.#xattrs.delete(key);
  }

  /** The already-extracted entry a hard link names; refuses anything else. */
  #linkTarget(e: TarEntry, name: string): { rel: Buffer; kind: Kind } {
    const shown = show(e.linkpath);
    if (e.linkpath.length === 0) refuse(`entry ${name} is a hard link without a target`);
    const what = `entry ${name} (a hard link to ${shown})`;
    const rel = checkPath(e.linkpath, what);
    const node = this.#nodes.get(rel.toString("latin1"));
    if (node === undefined || node.implicit) refuse(`${what} points to an entry not extracted before it`);
    if (node.kind === "dir") refuse(`${what} points to a folder`);
    return { rel, kind: node.kind };
  }

  /** Creates the missing folders above `rel`; refuses when one of them is anything but a folder. */
  async #makeParents(rel: Buffer, name: string): Promise<void> {
    for (let i = rel.indexOf(0x2f); i !== -1; i = rel.indexOf(0x2f, i + 1)) {
      const parent = rel.subarray(0, i);
      const key = parent.toString("latin1");
      const node = this.#nodes.get(key);
      if (node === undefined) {
        const path = this.#abs(parent);
        await mkdir(path, { mode: 0o755 });
        await chmod(path, 0o755);
        this.#nodes.set(key, { kind: "dir", implicit: true });
      } else if (node.kind === "symlink") {
        refuse(`entry ${name} would be written through the symlink ${show(parent)}`);
      } else if (node.kind !== "dir") {
        refuse(`entry ${name} lies below ${show(parent)}, which is not a folder`);
      }
    }
  }

  #abs(rel: Buffer): Buffer {
    return Buffer.concat([this.#root, SLASH, rel]);
  }

  /** A fresh name in a scratch folder beside the root (same file system, so rename and link work). */
  async #scratchPath(): Promise<string> {
    this.#scratch ??= await makeTempDir(dirname(this.#rootPath));
    return join(this.#scratch, `n${this.#counter++}`);
  }

  /** A whiteout inode with `meta`; whiteouts with attributes share one only with the same ones. */
  async #whiteout(meta: Meta, xattrs: readonly TreeXattr[]): Promise<string> {
    const attrs = xattrs.map((x) => `${Buffer.from(x.name).toString("hex")}=${x.value.toString("hex")}`).sort();
    const key = `${meta.mode}:${meta.uid}:${meta.gid}:${meta.mtime}:${attrs.join(",")}`;
    let path = this.#whiteouts.get(key);
    if (path === undefined) {
      path = await this.#scratchPath();
      await run("mknod", ["-m", "000", "--", path, "c", "0", "0"], { env: toolEnv() });
      await setMeta(path, meta);
      this.#whiteouts.set(key, path);
    }
    return path;
  }
}

/**
 * Why an environment layer may not hold the extended attribute `name` = `value` on the entry at
 * `rel`, or null when it may: exactly the attributes freezing keeps (keepXattr), with a name Linux
 * accepts. The packer drops the attributes keepXattr drops; an archive holding one is refused.
 */
export function layerXattrProblem(rel: Buffer, name: Buffer, value: Buffer): string | null {
  const shown = JSON.stringify(name.toString("latin1"));
  if (name.length === 0 || name.length > MAX_XATTR_NAME_BYTES || name.includes(0)) {
    return `an extended attribute with a malformed name ${shown}`;
  }
  if (value.length > MAX_ENTRY_XATTR_BYTES) return `the extended attribute ${shown} with an over-long value`;
  try {
    if (keepXattr(rel, name, value)) return null;
  } catch {
    // keepXattr throws for attributes that make a tree impossible to use as a layer (redirects).
  }
  return `the extended attribute ${shown}, which an environment layer does not keep`;
}

/**
 * `raw` as a path relative to the archive root ("" for the root itself), with "." and empty parts
 * dropped. Refuses NUL, absolute paths, ".." parts and over-long paths or names.
 */
function checkPath(raw: Buffer, what: string): Buffer {
  if (raw.includes(0)) refuse(`${what} has a name containing NUL`);
  if (raw.length > MAX_PATH_BYTES) refuse(`${what} has a path longer than ${MAX_PATH_BYTES} bytes`);
  if (raw[0] === 0x2f) refuse(`${what} has an absolute path`);
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= raw.length; i++) {
    if (i < raw.length && raw[i] !== 0x2f) continue;
    const part = raw.subarray(start, i);
    start = i + 1;
    if (part.length === 0 || (part.length === 1 && part[0] === 0x2e)) continue;
    if (part.length === 2 && part[0] === 0x2e && part[1] === 0x2e) refuse(`${what} has a ".." component`);
    if (part.length > MAX_NAME_BYTES) refuse(`${what} has a name longer than ${MAX_NAME_BYTES} bytes`);
    parts.push(part);
  }
  const out: Buffer[] = [];
  for (const [i, part] of parts.entries()) {
    if (i > 0) out.push(SLASH);
    out.push(part);
  }
  return Buffer.concat(out);
}

async function writeContent(path: Buffer, reader: TarReader, meta: Meta): Promise<void> {
  const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    for (;;) {
      const chunk = await reader.read();
      if (chunk === null) break;
      await writeAll(fh, chunk);
    }
    // chown clears setuid/setgid, so it goes first.
    await fh.chown(meta.uid, meta.gid);
    await fh.chmod(meta.mode);
    await fh.utimes(meta.mtime, meta.mtime);
  } finally {
    await fh.close();
  }
}

async function writeAll(fh: FileHandle, chunk: Buffer): Promise<void> {
  let at = 0;
  while (at < chunk.length) {
    const { bytesWritten } = await fh.write(chunk, at, chunk.length - at, null);
    at += bytesWritten;
  }
}

/** Owner, then mode (chown clears setuid/setgid), then times, of a path that is not a symlink. */
async function setMeta(path: string | Buffer, meta: Meta): Promise<void> {
  await chown(path, meta.uid, meta.gid);
  await chmod(path, meta.mode);
  await utimes(path, meta.mtime, meta.mtime);
}

/** A name for messages: UTF-8 with control characters escaped, shortened when long. */
export function show(raw: Buffer): string {
  const text = raw.toString("utf8");
  return JSON.stringify(text.length > 200 ? `${text.slice(0, 200)}…` : text);
}

function refuse(message: string): never {
  throw new AppError("validation_failed", `Refusing the archive: ${message}.`);
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if (isErrno(err, "ENOENT")) return false;
    throw err;
  }
}
