/**
 * Reading and writing extended attributes of whole trees. Node has no xattr API, so this drives
 * getfattr and setfattr (Debian package `attr`): one process per batch of paths, never one per
 * file, so a tree with a million entries costs a handful of processes.
 *
 * Threat model: the trees hold names chosen by a hostile user (newlines, backslashes, leading
 * dashes, bytes that are not UTF-8) and symlinks pointing anywhere. Paths are passed as "./name"
 * after "--", read and written in the tools' octal-escaped form as raw bytes, and both tools
 * run with -h and getfattr with -P, so no symlink is ever followed. The output can be large (one
 * record per file with an attribute); it is parsed as a stream and only the attributes the
 * caller keeps are held in memory.
 */
import { spawn } from "node:child_process";
import type { TreeXattr } from "../images/tree-digest.ts";

/** Extended attributes by entry path (relative to the tree root, as Latin-1; "" is the root). */
export type XattrMap = Map<string, TreeXattr[]>;

/** Largest argument list handed to one getfattr run, in bytes; ARG_MAX is usually 2 MiB. */
export const MAX_ARGS_BYTES = 512 * 1024;

/** Splits relative paths into "./path" argument batches that fit in MAX_ARGS_BYTES. */
export function argBatches(paths: readonly Buffer[]): string[][] {
  const batches: string[][] = [];
  let current: string[] = [];
  let size = 0;
  for (const rel of paths) {
    const arg = rel.length === 0 ? "." : `./${rel.toString("latin1")}`;
    const bytes = arg.length + 1;
    if (current.length > 0 && size + bytes > MAX_ARGS_BYTES) {
      batches.push(current);
      current = [];
      size = 0;
    }
    current.push(arg);
    size += bytes;
  }
  if (current.length > 0) batches.push(current);
  return batches;
}

/**
 * Converts a Latin-1 argument back to the bytes of the file name: argv carries bytes, so the
 * child must receive exactly the original ones. Node encodes argv strings as UTF-8, which is
 * why arguments go through this before being spawned.
 */
function argBytes(arg: string): string {
  return Buffer.from(arg, "latin1").toString("utf8");
}

/**
 * Reads the extended attributes of `paths` (relative to `root`) and, with `recursive`, of
 * everything below them, calling `keep(path, name, value)` for each: attributes for which it
 * returns true end up in the map. It may throw to reject a tree.
 */
export async function readXattrs(
  root: string,
  paths: readonly Buffer[],
  recursive: boolean,
  keep: (path: Buffer, name: Buffer, value: Buffer) => boolean,
  into: XattrMap = new Map(),
): Promise<XattrMap> {
  for (const batch of argBatches(paths)) {
    const args = ["-h", "-d", "-m", "-", "-e", "hex"];
    if (recursive) args.push("-R", "-P");
    await runGetfattr(root, [...args, "--", ...batch], (path, name, value) => {
      if (!keep(path, name, value)) return;
      const key = path.toString("latin1");
      const list = into.get(key);
      if (list) list.push({ name, value });
      else into.set(key, [{ name, value }]);
    });
  }
  return into;
}

/** Sets the attributes in `xattrs` on the entries of the tree at `root` (symlinks not followed). */
export async function writeXattrs(root: string, xattrs: XattrMap): Promise<void> {
  if (xattrs.size === 0) return;
  const child = spawn("setfattr", ["-h", "--restore=-"], { cwd: root, stdio: ["pipe", "ignore", "pipe"], env: TOOL_ENV });
  const done = exited(child, "setfattr");
  const stdin = child.stdin;
  let failed: Error | undefined;
  stdin.on("error", (err) => {
    failed = err;
  });
  const chunks: Buffer[] = [];
  let pending = 0;
  const flush = async (): Promise<void> => {
    if (chunks.length === 0) return;
    const data = Buffer.concat(chunks);
    chunks.length = 0;
    pending = 0;
    if (!stdin.write(data)) await new Promise<void>((resolve) => stdin.once("drain", resolve).once("close", resolve));
  };
  for (const [key, list] of xattrs) {
    const rel = Buffer.from(key, "latin1");
    const record = Buffer.concat([
      Buffer.from("# file: "),
      quote(rel.length === 0 ? Buffer.from(".") : Buffer.concat([Buffer.from("./"), rel])),
      NEWLINE,
      ...list.flatMap((x) => [
        quote(typeof x.name === "string" ? Buffer.from(x.name) : x.name),
        Buffer.from(`=0x${x.value.toString("hex")}\n`),
      ]),
      NEWLINE,
    ]);
    chunks.push(record);
    pending += record.length;
    if (pending > 64 * 1024) await flush();
    if (failed) break;
  }
  await flush();
  stdin.end();
  await done;
  if (failed) throw failed;
}

const NEWLINE = Buffer.from("\n");
const BACKSLASH = 0x5c;
const TOOL_ENV = { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" };

/** The attr tools' escaping: bytes outside printable ASCII, "\" and "=" become "\ooo". */
export function quote(bytes: Buffer): Buffer {
  const out: number[] = [];
  for (const b of bytes) {
    if (b < 0x21 || b > 0x7e || b === BACKSLASH || b === 0x3d) {
      out.push(BACKSLASH, 0x30 + (b >> 6), 0x30 + ((b >> 3) & 7), 0x30 + (b & 7));
    } else out.push(b);
  }
  return Buffer.from(out);
}

/** Reverses quote(): "\ooo" becomes the byte it names; anything else is kept. */
export function unquote(bytes: Buffer): Buffer {
  if (!bytes.includes(BACKSLASH)) return bytes;
  const out: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i] ?? 0;
    if (b === BACKSLASH && i + 3 < bytes.length + 0 && isOctal(bytes, i + 1)) {
      out.push((((bytes[i + 1] ?? 0) - 0x30) << 6) | (((bytes[i + 2] ?? 0) - 0x30) << 3) | ((bytes[i + 3] ?? 0) - 0x30));
      i += 3;
    } else out.push(b);
  }
  return Buffer.from(out);
}

function isOctal(bytes: Buffer, at: number): boolean {
  for (let i = at; i < at + 3; i++) {
    const c = bytes[i];
    if (c === undefined || c < 0x30 || c > 0x37) return false;
  }
  return true;
}

const FILE_PREFIX = Buffer.from("# file: ");

/** Runs getfattr with `args` in `cwd` and parses its dump format as it streams. */
async function runGetfattr(
  cwd: string,
  args: string[],
  onAttr: (path: Buffer, name: Buffer, value: Buffer) => void,
): Promise<void> {
  const child = spawn("getfattr", args.map(argBytes), { cwd, stdio: ["ignore", "pipe", "pipe"], env: TOOL_ENV });
  const done = exited(child, "getfattr");
  let path: Buffer | undefined;
  let rest = Buffer.alloc(0);
  let failure: unknown;
  const onLine = (line: Buffer): void => {
    if (line.length === 0) {
      path = undefined;
    } else if (line.subarray(0, FILE_PREFIX.length).equals(FILE_PREFIX)) {
      const raw = unquote(line.subarray(FILE_PREFIX.length));
      path = raw.length === 1 && raw[0] === 0x2e ? Buffer.alloc(0) : stripDotSlash(raw);
    } else if (line[0] !== 0x23) {
      if (path === undefined) throw new Error("getfattr printed an attribute outside a file record");
      const eq = line.indexOf(0x3d);
      const name = unquote(eq < 0 ? line : line.subarray(0, eq));
      const text = eq < 0 ? "" : line.subarray(eq + 1).toString("latin1");
      if (text !== "" && !/^0x([0-9a-f]{2})*$/.test(text)) throw new Error(`getfattr printed an unexpected value: ${text}`);
      onAttr(path, name, Buffer.from(text.slice(2), "hex"));
    }
  };
  child.stdout.on("data", (chunk: Buffer) => {
    if (failure) return;
    let data = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk;
    try {
      for (let nl = data.indexOf(0x0a); nl >= 0; nl = data.indexOf(0x0a)) {
        onLine(data.subarray(0, nl));
        data = data.subarray(nl + 1);
      }
    } catch (err) {
      failure = err;
      child.kill();
    }
    rest = Buffer.from(data);
  });
  try {
    await done;
  } catch (err) {
    throw failure ?? err;
  }
  if (failure) throw failure;
  if (rest.length > 0) onLine(rest);
}

/** getfattr prints paths given as "./x" without the "./". */
function stripDotSlash(path: Buffer): Buffer {
  return path.length >= 2 && path[0] === 0x2e && path[1] === 0x2f ? path.subarray(2) : path;
}

/** Resolves when the child exits 0; rejects with its stderr otherwise. */
function exited(child: ReturnType<typeof spawn>, tool: string): Promise<void> {
  const stderr: Buffer[] = [];
  child.stderr?.on("data", (chunk: Buffer) => {
    if (stderr.length < 64) stderr.push(chunk);
  });
  return new Promise((resolve, reject) => {
    child.on("error", (err) => {
      const code = (err as NodeJS.ErrnoException).code;
      reject(code === "ENOENT" ? new Error(`${tool} not found: install the Debian package "attr"`) : err);
    });
    child.on("close", (code, signal) => {
      if (code === 0) resolve();
      else {
        const text = Buffer.concat(stderr).toString("utf8").trim().slice(0, 2000);
        reject(new Error(`${tool} failed (${signal ?? `exit ${code}`}): ${text}`));
      }
    });
  });
}
