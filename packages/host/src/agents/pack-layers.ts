/**
 * Moves snapshots between machines as one .tar.zst: the manifest, the environment layers and
 * optionally the base image, each under its digest.
 *
 * Threat model: packing reads trees this host made and never follows a symlink or crosses into
 * another file system; it refuses what an import would refuse (devices other than overlay
 * whiteouts, sockets), so an export that succeeds can be imported. Unpacking treats the archive as
 * hostile: it goes through extractTarball's checks (whiteouts allowed), then every layer's and the
 * base image's digest is recomputed from the extracted files and must equal its name before
 * anything is moved into the stores, so an archive can neither plant content under a digest it
 * does not have nor leave half a layer behind.
 *
 * A layer's extended attributes travel with it: exactly those a frozen layer keeps and its digest
 * covers (keepXattr in envs/freeze.ts: the opaque-folder marker trusted.overlay.opaque="y",
 * security.capability, system.posix_acl_access and _default, user.* but user.overlay.*), as pax
 * SCHILY.xattr records (GNU tar's form) sorted by name, on every entry but hard links (which share
 * their first name's inode). Packing reads them with getfattr (package attr; trusted.* needs root),
 * drops the others and includes the kept ones in the digest it checks; unpacking restores them
 * with setfattr -h, refuses an archive carrying any other attribute or any attribute outside
 * `layers/`, and recomputes each layer's digest from the attributes read back from disk. A base
 * image's digest covers no attributes, so none are packed for it.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { type BigIntStats, constants } from "node:fs";
import { lstat, open, readdir, readFile, readlink, rename, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { promisify } from "node:util";
import { createZstdCompress, constants as zlibConstants } from "node:zlib";
import { AppError } from "@paddock/protocol";
import {
  type ExtractOptions,
  extractTarball,
  MAX_ENTRY_XATTR_BYTES,
  MAX_ENTRY_XATTRS,
  show,
} from "../archive/extract-rootfs.ts";
import { encodeHeader, endOfArchive, padding } from "../archive/tar-format.ts";
import { IMAGE_META, IMAGE_ROOTFS, type ImageMeta, isDigest } from "../fs/layout.ts";
import { keepXattr } from "../fs/overlay-marks.ts";
import { isErrno, makeTempDir, removeTree } from "../fs/store-fs.ts";
import { toolEnv } from "../fs/tool-env.ts";
import {
  deviceNumbers,
  digestEntries,
  entryType,
  scanTree,
  type TreeEntry,
  type TreeXattr,
} from "../fs/tree-digest.ts";
import { readXattrs, type XattrMap, xattrKey } from "../fs/xattrs.ts";
import { ImageStore } from "../images/image-store.ts";

const run = promisify(execFile);

/** The manifest's name at the top of a snapshot archive. */
export const SNAPSHOT_MANIFEST = "manifest.json";
export const SNAPSHOT_LAYERS = "layers";
export const SNAPSHOT_BASE = "base";
const MAX_MANIFEST_BYTES = 1024 * 1024;
const READ_CHUNK = 1024 * 1024;
const WRITE_BATCH = 256 * 1024;
const ZSTD_LEVEL = 3;

export interface PackResult {
  /** Compressed bytes written to `out`. */
  bytes: number;
  /** The packed folder's digest as a layer (its kept extended attributes covered), computed from what was written. */
  digest: string;
  /** Entries written with extended attributes. */
  xattrs: number;
}

/** A layer or base image to pack: its digest and the folder holding it (a base image's rootfs). */
export interface SnapshotTree {
  digest: string;
  dir: string;
}

export interface UnpackTargets {
  layersDir: string;
  imagesDir: string;
}

/** What an archive holds once every digest has been checked: its layers and base image, with their file bytes. */
export interface UnpackedContents {
  layers: { digest: string; bytes: number }[];
  base: { digest: string; bytes: number } | null;
}

export interface UnpackOptions extends Pick<ExtractOptions, "maxEntries" | "maxBytes"> {
  /**
   * Called after every digest has been checked and before anything is installed; whatever it
   * throws stops the import with nothing installed (e.g. a manifest that names other layers).
   */
  check?: (manifest: Record<string, unknown>, contents: UnpackedContents) => void | Promise<void>;
}

/**
 * Writes the layer at `dir` to `out` as a zstd-compressed tar and ends `out` (destroying it on
 * failure). The stream is deterministic: entries in byte order of their names, mtime 0, numeric
 * owners only, hard links as link entries, whiteouts as character devices 0:0, the extended
 * attributes a layer keeps sorted by name.
 * @example await packTree(layers.path(digest), createWriteStream("/tmp/layer.tar.zst"));
 */
export async function packTree(dir: string, out: Writable): Promise<PackResult> {
  const entries: TreeEntry[] = [];
  const counter = { xattrs: 0 };
  async function* chunks(): AsyncGenerator<Buffer> {
    yield* treeChunks(dir, "", entries, counter, await readLayerXattrs(dir));
    yield endOfArchive();
  }
  const bytes = await compressTo(chunks(), out);
  return { bytes, digest: digestEntries(entries), xattrs: counter.xattrs };
}

/**
 * Writes one snapshot archive to `out` (ended when done, destroyed on failure): manifest.json, then
 * `base/<digest>/...` when `base` is given, then `layers/<digest>/...` for each layer. Each tree's
 * digest is computed while it is written and must equal the digest given for it.
 * @example await packSnapshot({ base, layers, runner }, layerTrees, null, createWriteStream(file));
 */
export async function packSnapshot(
  manifest: object,
  layers: SnapshotTree[],
  base: SnapshotTree | null,
  out: Writable,
): Promise<{ bytes: number; xattrs: number }> {
  const json = JSON.stringify(manifest, null, 2);
  if (typeof manifest !== "object" || manifest === null || Array.isArray(manifest) || json === undefined) {
    throw new AppError("validation_failed", "A snapshot manifest must be a JSON object.");
  }
  for (const t of [...layers, ...(base ? [base] : [])]) {
    if (!isDigest(t.digest)) throw new AppError("validation_failed", `not a digest: ${JSON.stringify(t.digest)}`);
  }
  const unique = [...new Map(layers.map((l) => [l.digest, l])).values()];
  const counter = { xattrs: 0 };
  async function* chunks(): AsyncGenerator<Buffer> {
    const body = Buffer.from(`${json}\n`);
    yield encodeHeader({ type: "file", path: SNAPSHOT_MANIFEST, mode: 0o644, uid: 0, gid: 0, size: body.length });
    yield body;
    yield padding(body.length);
    const groups: [string, SnapshotTree[]][] = [
      [SNAPSHOT_BASE, base ? [base] : []],
      [SNAPSHOT_LAYERS, unique],
    ];
    for (const [folder, trees] of groups) {
      if (trees.length === 0) continue;
      yield encodeHeader({ type: "dir", path: folder, mode: 0o755, uid: 0, gid: 0 });
      for (const tree of trees) {
        const entries: TreeEntry[] = [];
        // A layer's digest covers its kept attributes; a base image's covers none.
        const xattrs = folder === SNAPSHOT_LAYERS ? await readLayerXattrs(tree.dir) : new Map();
        yield* treeChunks(tree.dir, `${folder}/${tree.digest}`, entries, counter, xattrs);
        const digest = digestEntries(entries);
        if (digest !== tree.digest) {
          throw new AppError(
            "validation_failed",
            `${tree.dir} does not hold ${tree.digest}: its content has digest ${digest}`,
          );
        }
      }
    }
    yield endOfArchive();
  }
  return { bytes: await compressTo(chunks(), out), xattrs: counter.xattrs };
}

/**
 * Imports a snapshot archive written by packSnapshot: extracts it with extractTarball's checks
 * (whiteouts allowed) beside the layer store, checks every layer's and the base image's digest,
 * then moves each one into place (write aside, then rename); layers and images already present
 * are kept as they are. Returns the manifest. Throws validation_failed and installs nothing when
 * the archive is unsafe, malformed or a digest does not match.
 * @example const manifest = await unpackSnapshot(file, { layersDir, imagesDir });
 */
export async function unpackSnapshot(
  file: string,
  into: UnpackTargets,
  opts: UnpackOptions = {},
): Promise<Record<string, unknown>> {
  const { check, ...limits } = opts;
  const layersDir = resolve(into.layersDir);
  const imagesDir = resolve(into.imagesDir);
  const work = await makeTempDir(layersDir);
  try {
    const tree = join(work, "snapshot");
    await extractTarball(file, tree, { ...limits, allowWhiteouts: true, xattrsAt: inLayer });
    const manifest = await readManifest(join(tree, SNAPSHOT_MANIFEST));
    const layers = await digestFolders(tree, SNAPSHOT_LAYERS);
    const bases = await digestFolders(tree, SNAPSHOT_BASE);
    if (bases.length > 1) refuse(`it holds ${bases.length} base images; a snapshot has at most one`);
    for (const name of await readdir(tree)) {
      if (name !== SNAPSHOT_MANIFEST && name !== SNAPSHOT_LAYERS && name !== SNAPSHOT_BASE) {
        refuse(`unexpected ${JSON.stringify(name)} at the top of the archive`);
      }
    }
    const contents: UnpackedContents = { layers: [], base: null };
    for (const digest of layers) {
      // The digest covers the attributes as read back from disk, not as the archive claims them.
      const dir = join(tree, SNAPSHOT_LAYERS, digest);
      const xattrs = await readLayerXattrs(dir);
      const scan = await scanTree(dir, { xattrs: (rel) => xattrs.get(xattrKey(rel)) });
      if (scan.digest !== digest) refuse(`layer ${digest} holds content with digest ${scan.digest}`);
      contents.layers.push({ digest, bytes: scan.bytes });
    }
    let baseBytes = 0;
    for (const digest of bases) {
      const scan = await scanTree(join(tree, SNAPSHOT_BASE, digest));
      if (scan.digest !== digest) refuse(`base image ${digest} holds content with digest ${scan.digest}`);
      baseBytes = scan.bytes;
      contents.base = { digest, bytes: scan.bytes };
    }
    await check?.(manifest, contents);
    for (const digest of layers) await installLayer(join(tree, SNAPSHOT_LAYERS, digest), layersDir, digest);
    for (const digest of bases) await installImage(join(tree, SNAPSHOT_BASE, digest), imagesDir, digest, baseBytes);
    return manifest;
  } finally {
    await removeTree(work);
  }
}

async function readManifest(path: string): Promise<Record<string, unknown>> {
  let st: Awaited<ReturnType<typeof lstat>>;
  try {
    st = await lstat(path);
  } catch (err) {
    if (isErrno(err, "ENOENT")) refuse(`it has no ${SNAPSHOT_MANIFEST}`);
    throw err;
  }
  if (!st.isFile() || st.size > MAX_MANIFEST_BYTES) {
    refuse(`${SNAPSHOT_MANIFEST} must be a regular file of at most ${MAX_MANIFEST_BYTES} bytes`);
  }
  let manifest: unknown;
  try {
    manifest = JSON.parse(await readFile(path, "utf8"));
  } catch {
    refuse(`${SNAPSHOT_MANIFEST} is not valid JSON`);
  }
  if (typeof manifest !== "object" || manifest === null || Array.isArray(manifest)) {
    refuse(`${SNAPSHOT_MANIFEST} must hold a JSON object`);
  }
  return manifest as Record<string, unknown>;
}

/** The digest-named folders inside `tree/<folder>` (none when it is absent). */
async function digestFolders(tree: string, folder: string): Promise<string[]> {
  const dir = join(tree, folder);
  try {
    if (!(await lstat(dir)).isDirectory()) refuse(`${folder} is not a folder`);
  } catch (err) {
    if (isErrno(err, "ENOENT")) return [];
    throw err;
  }
  const names = await readdir(dir);
  for (const name of names) {
    if (!isDigest(name)) refuse(`${folder}/${JSON.stringify(name)} is not named by a digest`);
    if (!(await lstat(join(dir, name))).isDirectory()) refuse(`${folder}/${name} is not a folder`);
  }
  return names.sort();
}

async function installLayer(from: string, layersDir: string, digest: string): Promise<void> {
  const final = join(layersDir, digest);
  if (await isDir(final)) return;
  try {
    await rename(from, final);
  } catch (err) {
    // Another writer stored the same layer first.
    if (!isErrno(err, "ENOTEMPTY", "EEXIST") || !(await isDir(final))) throw err;
  }
}

async function installImage(from: string, imagesDir: string, digest: string, bytes: number): Promise<void> {
  const store = new ImageStore({ imagesDir });
  if (await hasImage(store, digest)) return;
  const tmp = await makeTempDir(imagesDir);
  let moved = false;
  try {
    const rootfs = join(tmp, IMAGE_ROOTFS);
    try {
      await rename(from, rootfs);
    } catch (err) {
      if (!isErrno(err, "EXDEV")) throw err;
      await run("cp", ["-a", "--one-file-system", "-T", "--", from, rootfs], { env: toolEnv() });
    }
    const meta: ImageMeta = { digest, source: "snapshot", created_at: new Date().toISOString(), size_bytes: bytes };
    await writeFile(join(tmp, IMAGE_META), `${JSON.stringify(meta, null, 2)}\n`, { mode: 0o644 });
    if (await hasImage(store, digest)) return;
    // A digest-named folder without meta.json is what an interrupted build left.
    await removeTree(join(imagesDir, digest));
    await rename(tmp, join(imagesDir, digest));
    moved = true;
  } finally {
    if (!moved) await removeTree(tmp);
  }
}

async function hasImage(store: ImageStore, digest: string): Promise<boolean> {
  try {
    await store.resolve(digest);
    return true;
  } catch (err) {
    if (err instanceof AppError && err.code === "image_not_ready") return false;
    throw err;
  }
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await lstat(path)).isDirectory();
  } catch (err) {
    if (isErrno(err, "ENOENT")) return false;
    throw err;
  }
}

/** Whether an archive entry (path relative to the archive root) lies in a layer, its root included. */
function inLayer(rel: Buffer): boolean {
  const layers = Buffer.from(`${SNAPSHOT_LAYERS}/`);
  return rel.length > layers.length && rel.subarray(0, layers.length).equals(layers);
}

/**
 * The extended attributes of the layer at `dir` that its digest covers (keepXattr), read with
 * getfattr without following symlinks; throws validation_failed for one that a layer may not hold.
 */
async function readLayerXattrs(dir: string): Promise<XattrMap> {
  return readXattrs(resolve(dir), [Buffer.alloc(0)], {
    recursive: true,
    keep: (rel, name, value) => {
      try {
        return keepXattr(rel, name, value);
      } catch {
        const attr = JSON.stringify(name.toString("latin1"));
        throw new AppError("validation_failed", `${show(rel)} in ${dir} carries ${attr}, which a layer may not hold`);
      }
    },
  });
}

/**
 * The tar entries of the tree at `dir`, named below `prefix` ("" for the archive root), with the
 * extended attributes `xattrs` gives by path. Pushes each entry as the digest sees it onto
 * `entries`, and counts entries written with attributes in `counter`.
 */
async function* treeChunks(
  dir: string,
  prefix: string,
  entries: TreeEntry[],
  counter: { xattrs: number },
  xattrs: XattrMap,
): AsyncGenerator<Buffer> {
  const root = Buffer.from(resolve(dir));
  const rootStat = await lstat(root, { bigint: true });
  if (!rootStat.isDirectory()) throw new AppError("validation_failed", `${dir} is not a folder`);
  const prefixBytes = Buffer.from(prefix);
  const links = new Map<string, { name: Buffer; entry: TreeEntry }>();

  async function* visit(rel: Buffer): AsyncGenerator<Buffer> {
    const abs = rel.length === 0 ? root : Buffer.concat([root, SLASH, rel]);
    const st = await lstat(abs, { bigint: true });
    const where = `${show(rel)} in ${dir}`;
    if (st.dev !== rootStat.dev) throw new AppError("validation_failed", `${where} is on another file system`);
    const type = entryType(st);
    const entry: TreeEntry = {
      path: rel,
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
    };
    const name = archiveName(prefixBytes, rel);
    const attrs = entryXattrs(xattrs.get(xattrKey(rel)), where);
    if (attrs.length > 0) entry.xattrs = attrs;
    const records = attrs.map((x): [Buffer, Buffer] => [Buffer.from(x.name), x.value]);
    const fields = { path: name, mode: entry.mode, uid: entry.uid, gid: entry.gid, xattrs: records };
    if (type === "dir") {
      entries.push(entry);
      if (attrs.length > 0) counter.xattrs++;
      yield encodeHeader({ ...fields, type: "dir" });
      const names = await readdir(abs, { encoding: "buffer" });
      names.sort(Buffer.compare);
      for (const child of names) yield* visit(rel.length === 0 ? child : Buffer.concat([rel, SLASH, child]));
      return;
    }
    if (type === "socket")
      throw new AppError("validation_failed", `${where} is a socket, which an archive cannot hold`);
    if (type === "char" || type === "block") {
      const { major, minor } = deviceNumbers(st.rdev);
      if (type === "block" || major !== 0 || minor !== 0) {
        throw new AppError(
          "validation_failed",
          `${where} is a device node (${major}:${minor}); only overlay whiteouts (character devices 0:0) can be packed`,
        );
      }
      entry.major = 0;
      entry.minor = 0;
    }
    entries.push(entry);
    if (st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      const first = links.get(key);
      if (first) {
        // The attributes belong to the inode: the digest sees them on every name, the archive on the first.
        const { size, sha256, target, major, minor, xattrs: shared } = first.entry;
        Object.assign(entry, { size, sha256, target, major, minor, xattrs: shared });
        yield encodeHeader({ ...fields, type: "link", linkpath: first.name, xattrs: [] });
        return;
      }
      links.set(key, { name, entry });
    }
    if (attrs.length > 0) counter.xattrs++;
    switch (type) {
      case "file": {
        yield encodeHeader({ ...fields, type: "file", size: Number(st.size) });
        const { size, sha256 } = yield* fileChunks(abs, st);
        entry.size = size;
        entry.sha256 = sha256;
        yield padding(size);
        break;
      }
      case "symlink": {
        entry.target = await readlink(abs, { encoding: "buffer" });
        yield encodeHeader({ ...fields, type: "symlink", linkpath: entry.target });
        break;
      }
      case "fifo":
        yield encodeHeader({ ...fields, type: "fifo" });
        break;
      case "char":
        yield encodeHeader({ ...fields, type: "char", devmajor: 0, devminor: 0 });
        break;
    }
  }
  yield* visit(Buffer.alloc(0));
}

/** A file's content in chunks; returns its size and SHA-256. The file must not change meanwhile. */
async function* fileChunks(path: Buffer, st: BigIntStats): AsyncGenerator<Buffer, { size: number; sha256: string }> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const now = await fh.stat({ bigint: true });
    const expected = Number(st.size);
    if (!now.isFile() || now.ino !== st.ino || now.dev !== st.dev || Number(now.size) !== expected) {
      throw new Error(`${path.toString()} changed while it was being packed`);
    }
    const hash = createHash("sha256");
    let size = 0;
    while (size < expected) {
      const buffer = Buffer.allocUnsafe(Math.min(READ_CHUNK, expected - size));
      const { bytesRead } = await fh.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      const chunk = buffer.subarray(0, bytesRead);
      hash.update(chunk);
      size += bytesRead;
      yield chunk;
    }
    if (size !== expected) throw new Error(`${path.toString()} changed while it was being packed`);
    return { size, sha256: hash.digest("hex") };
  } finally {
    await fh.close();
  }
}

/**
 * `found` (an entry's kept attributes) sorted by name, so that the archive is deterministic;
 * refuses more than an import accepts.
 */
function entryXattrs(found: readonly TreeXattr[] | undefined, where: string): TreeXattr[] {
  if (found === undefined || found.length === 0) return [];
  const list = found.map((x) => ({ name: Buffer.from(x.name), value: x.value }));
  list.sort((a, b) => Buffer.compare(a.name, b.name));
  let bytes = 0;
  for (const x of list) bytes += x.value.length;
  if (list.length > MAX_ENTRY_XATTRS || bytes > MAX_ENTRY_XATTR_BYTES) {
    throw new AppError(
      "validation_failed",
      `${where} carries ${list.length} extended attributes of ${bytes} bytes; an archive holds at most ` +
        `${MAX_ENTRY_XATTRS} of ${MAX_ENTRY_XATTR_BYTES} bytes per entry`,
    );
  }
  return list;
}

/** Compresses `source` with zstd (content checksum on) into `out`; returns the bytes written. */
async function compressTo(source: AsyncIterable<Buffer>, out: Writable): Promise<number> {
  let bytes = 0;
  const zstd = createZstdCompress({
    params: { [zlibConstants.ZSTD_c_compressionLevel]: ZSTD_LEVEL, [zlibConstants.ZSTD_c_checksumFlag]: 1 },
  });
  async function* counted(compressed: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    for await (const chunk of compressed) {
      bytes += chunk.length;
      yield chunk;
    }
  }
  await pipeline(batched(source), zstd, counted, out);
  return bytes;
}

/** Joins small buffers (headers, padding) into larger writes. */
async function* batched(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let length = 0;
  for await (const buffer of source) {
    if (buffer.length >= WRITE_BATCH) {
      if (length > 0) yield Buffer.concat(parts, length);
      parts = [];
      length = 0;
      yield buffer;
      continue;
    }
    parts.push(buffer);
    length += buffer.length;
    if (length >= WRITE_BATCH) {
      yield Buffer.concat(parts, length);
      parts = [];
      length = 0;
    }
  }
  if (length > 0) yield Buffer.concat(parts, length);
}

const SLASH = Buffer.from("/");

function archiveName(prefix: Buffer, rel: Buffer): Buffer {
  if (prefix.length === 0) return rel.length === 0 ? Buffer.from(".") : rel;
  return rel.length === 0 ? prefix : Buffer.concat([prefix, SLASH, rel]);
}

function refuse(message: string): never {
  throw new AppError("validation_failed", `Refusing the snapshot archive: ${message}.`);
}
