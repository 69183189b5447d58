/**
 * Reading and writing the extended attributes of whole trees. Node has no xattr API, so this
 * drives getfattr and setfattr (Debian package `attr`): a few processes per tree, never one per
 * file.
 *
 * Threat model: the trees hold names chosen by a hostile user (newlines, backslashes, "=", bytes
 * that are not UTF-8) and symlinks pointing anywhere. Names travel as raw bytes (tools.ts) and in
 * the tools' octal-escaped form, getfattr walks with -P and both tools run with -h, so no symlink
 * is ever followed. The output can be large (one record per file with an attribute): it is parsed
 * as a stream and only the attributes the caller keeps are held in memory.
 */
import { spawn } from "node:child_process";
import { toolEnv } from "./tool-env.ts";
import { dotPath, exited, feed, runOverPaths } from "./tools.ts";
import type { TreeXattr } from "./tree-digest.ts";

/** Extended attributes by entry path (relative to the tree root, as Latin-1; "" is the root). */
export type XattrMap = Map<string, TreeXattr[]>;

/** The map key of a relative path. */
export function xattrKey(rel: Buffer): string {
  return rel.toString("latin1");
}

/**
 * Reads the extended attributes of `paths` (relative to `root`) and, with `recursive`, of
 * everything below them, calling `keep(path, name, value)` for each: attributes for which it
 * returns true are added to `into`. `keep` may throw to reject the tree.
 */
export async function readXattrs(
  root: string,
  paths: readonly Buffer[],
  options: { recursive: boolean; keep: (path: Buffer, name: Buffer, value: Buffer) => boolean; into?: XattrMap },
): Promise<XattrMap> {
  const into = options.into ?? new Map();
  const command = ["getfattr", "-h", "-d", "-m", "-", "-e", "hex"];
  if (options.recursive) command.push("-R", "-P");
  command.push("--");
  const parser = new DumpParser((path, name, value) => {
    if (!options.keep(path, name, value)) return;
    const key = xattrKey(path);
    const list = into.get(key);
    if (list) list.push({ name, value });
    else into.set(key, [{ name, value }]);
  });
  let failure: { error: unknown } | undefined;
  const parse = (step: () => void): void => {
    if (failure) return;
    try {
      step();
    } catch (error) {
      failure = { error };
    }
  };
  try {
    await runOverPaths(root, command, paths, (chunk) => parse(() => parser.push(chunk)));
  } catch (err) {
    if (!failure) throw err;
  }
  parse(() => parser.end());
  if (failure) throw failure.error;
  return into;
}

/** Sets the attributes in `xattrs` on the entries of the tree at `root` (symlinks not followed). */
export async function writeXattrs(root: string, xattrs: XattrMap): Promise<void> {
  if (xattrs.size === 0) return;
  const child = spawn("setfattr", ["-h", "--restore=-"], {
    cwd: root,
    stdio: ["pipe", "ignore", "pipe"],
    env: toolEnv(),
  });
  const done = exited(child, "setfattr");
  await feed(child, records(xattrs));
  await done;
}

function* records(xattrs: XattrMap): Generator<Buffer> {
  for (const [key, list] of xattrs) {
    const parts = [FILE_PREFIX, quote(dotPath(Buffer.from(key, "latin1"))), NEWLINE];
    for (const x of list) {
      parts.push(quote(typeof x.name === "string" ? Buffer.from(x.name) : x.name));
      parts.push(Buffer.from(`=0x${x.value.toString("hex")}\n`));
    }
    parts.push(NEWLINE);
    yield Buffer.concat(parts);
  }
}

const NEWLINE = Buffer.from("\n");
const FILE_PREFIX = Buffer.from("# file: ");
const BACKSLASH = 0x5c;

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
    const d1 = octal(bytes[i + 1]);
    const d2 = octal(bytes[i + 2]);
    const d3 = octal(bytes[i + 3]);
    if (b === BACKSLASH && d1 !== undefined && d2 !== undefined && d3 !== undefined) {
      out.push(((d1 << 6) | (d2 << 3) | d3) & 0xff);
      i += 3;
    } else out.push(b);
  }
  return Buffer.from(out);
}

function octal(c: number | undefined): number | undefined {
  return c !== undefined && c >= 0x30 && c <= 0x37 ? c - 0x30 : undefined;
}

/**
 * Parses getfattr's dump format ("# file: PATH", then "NAME=0xHEX" lines, then a blank line) from
 * a byte stream. Paths given as "./x" come back as "x"; "." is the root.
 */
class DumpParser {
  #path: Buffer | undefined;
  #rest: Buffer = Buffer.alloc(0);
  readonly #onAttr: (path: Buffer, name: Buffer, value: Buffer) => void;

  constructor(onAttr: (path: Buffer, name: Buffer, value: Buffer) => void) {
    this.#onAttr = onAttr;
  }

  push(chunk: Buffer): void {
    let data = this.#rest.length > 0 ? Buffer.concat([this.#rest, chunk]) : chunk;
    let start = 0;
    for (let nl = data.indexOf(0x0a); nl >= 0; nl = data.indexOf(0x0a, start)) {
      this.#line(data.subarray(start, nl));
      start = nl + 1;
    }
    data = data.subarray(start);
    this.#rest = Buffer.from(data);
  }

  end(): void {
    if (this.#rest.length > 0) this.#line(this.#rest);
    this.#rest = Buffer.alloc(0);
  }

  #line(line: Buffer): void {
    if (line.length === 0) {
      this.#path = undefined;
      return;
    }
    if (line.subarray(0, FILE_PREFIX.length).equals(FILE_PREFIX)) {
      const raw = unquote(line.subarray(FILE_PREFIX.length));
      if (raw.length === 1 && raw[0] === 0x2e) this.#path = Buffer.alloc(0);
      else if (raw.length >= 2 && raw[0] === 0x2e && raw[1] === 0x2f) this.#path = Buffer.from(raw.subarray(2));
      else this.#path = Buffer.from(raw);
      return;
    }
    if (line[0] === 0x23) return;
    if (this.#path === undefined) throw new Error("getfattr printed an attribute outside a file record");
    const eq = line.indexOf(0x3d);
    const name = Buffer.from(unquote(eq < 0 ? line : line.subarray(0, eq)));
    const text = eq < 0 ? "" : line.subarray(eq + 1).toString("latin1");
    if (text !== "" && !/^0x([0-9a-f]{2})*$/.test(text))
      throw new Error(`getfattr printed an unexpected value: ${text}`);
    this.#onAttr(this.#path, name, Buffer.from(text.slice(2), "hex"));
  }
}
