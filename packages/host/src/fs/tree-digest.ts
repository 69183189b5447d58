/**
 * Content digests of folder trees. The digest covers every entry's relative path, type,
 * permission bits, owner and group, plus the size and SHA-256 of regular files, the target of
 * symlinks and the major/minor numbers of devices. Timestamps are left out, so a copy with the
 * same content and metadata gets the same digest. Symlinks are never followed.
 *
 * Extended attributes are covered only when the caller supplies them (ScanOptions.xattrs,
 * TreeEntry.xattrs): Node cannot read them itself. An entry without extended attributes has the
 * same record as before they were supported, so existing digests do not change.
 */
import { createHash } from "node:crypto";
import { type BigIntStats, constants, type Stats } from "node:fs";
import { lstat, open, readdir, readlink } from "node:fs/promises";

export type TreeEntryType = "dir" | "file" | "symlink" | "char" | "block" | "fifo" | "socket";

/** One extended attribute of an entry; name and value are kept as bytes. */
export interface TreeXattr {
  name: string | Buffer;
  value: Buffer;
}

/** One entry of a tree, as the digest sees it. */
export interface TreeEntry {
  /** Path relative to the tree root, "/"-separated; "" is the root itself. */
  path: string | Buffer;
  type: TreeEntryType;
  /** Permission bits, including setuid, setgid and sticky (st_mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Regular files: size in bytes and SHA-256 of the content (hex). */
  size?: number;
  sha256?: string;
  /** Symlinks: the link text, as stored. */
  target?: string | Buffer;
  /** Character and block devices. */
  major?: number;
  minor?: number;
  /** Extended attributes covered by the digest, in any order; none and empty are the same. */
  xattrs?: readonly TreeXattr[];
}

export interface TreeScan {
  digest: string;
  /** Number of entries, the root included. */
  entries: number;
  /** Sum of the sizes of regular files. */
  bytes: number;
}

export interface ScanOptions {
  /** Relative paths left out of the digest (with everything below them). */
  exclude?: readonly string[];
  /** How many file system operations run at once. */
  concurrency?: number;
  /**
   * The extended attributes to cover for the entry at `path` (relative to the root, as in
   * TreeEntry.path); undefined or empty for none.
   */
  xattrs?: (path: Buffer) => readonly TreeXattr[] | undefined;
}

const FORMAT = "paddock-tree-v1\n";
const TYPE_CODE: Record<TreeEntryType, string> = {
  dir: "d",
  file: "f",
  symlink: "l",
  char: "c",
  block: "b",
  fifo: "p",
  socket: "s",
};
const CHUNK = 1024 * 1024;

/**
 * The digest of the tree rooted at `dir`: "sha256-<hex>".
 * @example const digest = await digestTree("/var/lib/paddock/images/tmp/rootfs");
 */
export async function digestTree(dir: string, options: ScanOptions = {}): Promise<string> {
  return (await scanTree(dir, options)).digest;
}

/** Walks the tree once and returns its digest with its entry count and total file size. */
export async function scanTree(dir: string, options: ScanOptions = {}): Promise<TreeScan> {
  const limit = limiter(options.concurrency ?? 16);
  const exclude = new Set((options.exclude ?? []).map((p) => Buffer.from(p).toString("latin1")));
  const entries: TreeEntry[] = [];
  const root = Buffer.from(dir);

  const visit = async (rel: Buffer, abs: Buffer): Promise<void> => {
    const st = await limit(() => lstat(abs));
    const entry = baseEntry(rel, st);
    if (rel.length === 0 && entry.type !== "dir") throw new Error(`${dir} is not a directory`);
    const xattrs = options.xattrs?.(rel);
    if (xattrs && xattrs.length > 0) entry.xattrs = xattrs;
    entries.push(entry);
    if (entry.type === "file") {
      const { size, sha256 } = await limit(() => hashFile(abs, st));
      entry.size = size;
      entry.sha256 = sha256;
    } else if (entry.type === "symlink") {
      entry.target = await limit(() => readlink(abs, { encoding: "buffer" }));
    } else if (entry.type === "dir") {
      const names = await limit(() => readdir(abs, { encoding: "buffer" }));
      await Promise.all(
        names.map((name) => {
          const childRel = rel.length === 0 ? name : Buffer.concat([rel, SLASH, name]);
          if (exclude.has(childRel.toString("latin1"))) return undefined;
          return visit(childRel, Buffer.concat([abs, SLASH, name]));
        }),
      );
    }
  };
  await visit(Buffer.alloc(0), root);

  let bytes = 0;
  for (const e of entries) bytes += e.size ?? 0;
  return { digest: digestEntries(entries), entries: entries.length, bytes };
}

/**
 * The digest of a tree described entry by entry, equal to what digestTree returns for a folder
 * holding exactly those entries. Lets a caller know a digest before writing the tree.
 */
export function digestEntries(entries: Iterable<TreeEntry>): string {
  const rows = [...entries].map((e) => ({ key: toBuffer(e.path), entry: e }));
  rows.sort((a, b) => Buffer.compare(a.key, b.key));
  const hash = createHash("sha256");
  hash.update(FORMAT);
  let previous: Buffer | undefined;
  for (const { key, entry } of rows) {
    if (previous?.equals(key)) throw new Error(`duplicate tree entry ${key.toString()}`);
    previous = key;
    hash.update(`${JSON.stringify(record(key, entry))}\n`);
  }
  return `sha256-${hash.digest("hex")}`;
}

/**
 * Size and SHA-256 of a regular file, streamed in chunks. With `expected` (the lstat of the same
 * path) the file is opened without following a symlink and must still be that inode.
 */
export async function hashFile(path: string | Buffer, expected?: Stats): Promise<{ size: number; sha256: string }> {
  const flags = constants.O_RDONLY | constants.O_NONBLOCK | (expected ? constants.O_NOFOLLOW : 0);
  const fh = await open(path, flags);
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Error(`${path.toString()} is not a regular file`);
    if (expected && (st.ino !== expected.ino || st.dev !== expected.dev)) {
      throw new Error(`${path.toString()} changed while it was being read`);
    }
    const hash = createHash("sha256");
    const buffer = Buffer.allocUnsafe(Math.min(CHUNK, st.size + 1));
    let size = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
      size += bytesRead;
    }
    if (size !== st.size) throw new Error(`${path.toString()} changed while it was being read`);
    return { size, sha256: hash.digest("hex") };
  } finally {
    await fh.close();
  }
}

const SLASH = Buffer.from("/");

function toBuffer(value: string | Buffer): Buffer {
  return typeof value === "string" ? Buffer.from(value) : value;
}

function baseEntry(rel: Buffer, st: Stats): TreeEntry {
  const entry: TreeEntry = {
    path: rel,
    type: entryType(st),
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
  };
  if (entry.type === "char" || entry.type === "block") {
    const { major, minor } = deviceNumbers(BigInt(st.rdev));
    entry.major = major;
    entry.minor = minor;
  }
  return entry;
}

/** Linux's encoding of st_rdev into a device's major and minor numbers. */
export function deviceNumbers(rdev: bigint): { major: number; minor: number } {
  return {
    major: Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)),
    minor: Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)),
  };
}

export function entryType(st: Stats | BigIntStats): TreeEntryType {
  if (st.isDirectory()) return "dir";
  if (st.isFile()) return "file";
  if (st.isSymbolicLink()) return "symlink";
  if (st.isCharacterDevice()) return "char";
  if (st.isBlockDevice()) return "block";
  if (st.isFIFO()) return "fifo";
  return "socket";
}

// Latin-1 maps bytes to characters one to one, so any file name has one unambiguous JSON form.
// Extended attributes, when an entry has any, are one trailing array of [name, hex value] pairs
// sorted by name: no record without them holds an array, so the two forms never collide.
function record(key: Buffer, e: TreeEntry): (string | number | string[][])[] {
  const row: (string | number | string[][])[] = [key.toString("latin1"), TYPE_CODE[e.type], e.mode, e.uid, e.gid];
  switch (e.type) {
    case "file":
      if (e.size === undefined || e.sha256 === undefined) throw new Error("file entry without content hash");
      row.push(e.size, e.sha256);
      break;
    case "symlink":
      if (e.target === undefined) throw new Error("symlink entry without target");
      row.push(toBuffer(e.target).toString("latin1"));
      break;
    case "char":
    case "block":
      row.push(e.major ?? 0, e.minor ?? 0);
      break;
  }
  if (e.xattrs && e.xattrs.length > 0) row.push(xattrRecord(key, e.xattrs));
  return row;
}

function xattrRecord(key: Buffer, xattrs: readonly TreeXattr[]): string[][] {
  const pairs = xattrs.map((x) => ({ name: toBuffer(x.name), value: x.value }));
  pairs.sort((a, b) => Buffer.compare(a.name, b.name));
  for (let i = 1; i < pairs.length; i++) {
    if (pairs[i]?.name.equals(pairs[i - 1]?.name ?? Buffer.alloc(0))) {
      throw new Error(`duplicate extended attribute on ${key.toString()}`);
    }
  }
  return pairs.map((p) => [p.name.toString("latin1"), p.value.toString("hex")]);
}

/** Runs at most `max` of the given tasks at a time, in the order they were queued. */
function limiter(max: number): <T>(task: () => Promise<T>) => Promise<T> {
  let running = 0;
  const waiting: (() => void)[] = [];
  return async (task) => {
    if (running >= max) await new Promise<void>((resolve) => waiting.push(resolve));
    else running++;
    try {
      return await task();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else running--;
    }
  };
}
