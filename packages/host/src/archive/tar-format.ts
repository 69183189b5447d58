/**
 * The tar format, read and written byte for byte (ustar, POSIX pax and the GNU long-name records).
 *
 * Threat model: the bytes come from anyone (an uploaded root filesystem, a snapshot from another
 * machine). The reader trusts no field: numbers are parsed strictly, every header checksum is
 * checked, names and link targets stay raw bytes (no text decoding that could hide a NUL or merge
 * two names), meta records are bounded in size and count, and data that ends early is an error,
 * never a short entry. It does no file system work: callers validate each entry and decide what to
 * create. The writer emits only what the reader accepts.
 */

export const BLOCK = 512;
/** Largest pax or GNU long-name record accepted; real ones are a few hundred bytes. */
const MAX_META_BYTES = 1024 * 1024;
/** Meta headers allowed in a row before an entry; more means a malformed or hostile stream. */
const MAX_META_RUN = 16;
const MAX_OCTAL_7 = 0o7777777;
const MAX_OCTAL_11 = 0o77777777777;
const ZERO_BLOCK = Buffer.alloc(BLOCK);
const USTAR_MAGIC = Buffer.from("ustar\u000000", "latin1");
const USTAR_MAGIC_ONLY = USTAR_MAGIC.subarray(0, 6);

export type EntryType = "file" | "link" | "symlink" | "char" | "block" | "dir" | "fifo";

/** One entry of an archive, with its pax and GNU long-name records applied. */
export interface TarEntry {
  type: EntryType;
  /** The name as stored; may be anything, including absolute or with "..". */
  path: Buffer;
  /** Target of a hard link or symlink; empty for other types. */
  linkpath: Buffer;
  mode: number;
  uid: number;
  gid: number;
  /** Bytes of content that follow (regular files only; other types carry none). */
  size: number;
  /** Seconds since the epoch, possibly fractional. */
  mtime: number;
  devmajor: number;
  devminor: number;
  /**
   * Extended attributes from SCHILY.xattr.* or LIBARCHIVE.xattr.* records: names as Latin-1 (one
   * character per byte of the name), values as raw bytes.
   */
  xattrs: Map<string, Buffer>;
  /** Set when the entry is of a kind this module does not extract (sparse files, tape labels...). */
  unsupported?: string;
}

/** The data is not a well-formed tar stream, or ends early. */
export class TarFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TarFormatError";
  }
}

/** Exact-size reads over a stream of chunks. */
class ByteSource {
  readonly #it: AsyncIterator<Buffer>;
  #chunks: Buffer[] = [];
  #available = 0;
  #done = false;
  /** Bytes handed out so far, for error messages. */
  offset = 0;

  constructor(chunks: AsyncIterable<Buffer>) {
    this.#it = chunks[Symbol.asyncIterator]();
  }

  async #fill(n: number): Promise<boolean> {
    while (this.#available < n && !this.#done) {
      const r = await this.#it.next();
      if (r.done) this.#done = true;
      else if (r.value.length > 0) {
        this.#chunks.push(r.value);
        this.#available += r.value.length;
      }
    }
    return this.#available >= n;
  }

  #take(n: number): Buffer {
    this.#available -= n;
    this.offset += n;
    const first = this.#chunks[0] as Buffer;
    if (first.length > n) {
      this.#chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    if (first.length === n) {
      this.#chunks.shift();
      return first;
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const chunk = this.#chunks[0] as Buffer;
      const use = Math.min(chunk.length, n - at);
      chunk.copy(out, at, 0, use);
      at += use;
      if (use === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(use);
    }
    return out;
  }

  /** Exactly `n` bytes; throws when the data ends first. */
  async exact(n: number, what: string): Promise<Buffer> {
    if (!(await this.#fill(n))) throw new TarFormatError(`the data ends inside ${what} (at byte ${this.offset})`);
    return this.#take(n);
  }

  /** Between 1 and `max` bytes (whatever is at hand); throws when the data ends first. */
  async some(max: number, what: string): Promise<Buffer> {
    if (!(await this.#fill(1))) throw new TarFormatError(`the data ends inside ${what} (at byte ${this.offset})`);
    return this.#take(Math.min(max, (this.#chunks[0] as Buffer).length));
  }

  async skip(n: number, what: string): Promise<void> {
    let left = n;
    while (left > 0) left -= (await this.some(left, what)).length;
  }

  async atEnd(): Promise<boolean> {
    return !(await this.#fill(1));
  }

  /** Reads to the end, at most `limit` bytes; returns false when more remained. */
  async drain(limit: number): Promise<boolean> {
    let left = limit;
    while (await this.#fill(1)) {
      const n = Math.min(left, (this.#chunks[0] as Buffer).length);
      if (n === 0) return false;
      this.#take(n);
      left -= n;
    }
    return true;
  }

  async close(): Promise<void> {
    await this.#it.return?.();
  }
}

interface RawHeader {
  name: Buffer;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  typeflag: string;
  linkname: Buffer;
  devmajor: number;
  devminor: number;
}

/**
 * Reads entries one at a time from a tar stream. After `next()` returns a file entry, its content
 * is read with `read()`; whatever is left unread is skipped by the following `next()`.
 */
export class TarReader {
  readonly #src: ByteSource;
  #bodyLeft = 0;
  #padLeft = 0;
  #globals = new Map<string, Buffer>();
  #ended = false;

  constructor(chunks: AsyncIterable<Buffer>) {
    this.#src = new ByteSource(chunks);
  }

  /** The next entry, or null at the end-of-archive marker. */
  async next(): Promise<TarEntry | null> {
    if (this.#ended) return null;
    await this.#src.skip(this.#bodyLeft + this.#padLeft, "an entry's content");
    this.#bodyLeft = 0;
    this.#padLeft = 0;
    let pax: Map<string, Buffer> | null = null;
    let longName: Buffer | null = null;
    let longLink: Buffer | null = null;
    for (let metaRun = 0; ; metaRun++) {
      if (metaRun > MAX_META_RUN) throw new TarFormatError("too many meta headers in a row");
      const at = this.#src.offset;
      const block = await this.#src.exact(BLOCK, "a header (no end-of-archive marker)");
      if (block.equals(ZERO_BLOCK)) {
        if (metaRun > 0) throw new TarFormatError(`meta header at byte ${at} is not followed by an entry`);
        // Two zero blocks end the archive; some writers stop after one.
        if (!(await this.#src.atEnd())) {
          const second = await this.#src.exact(BLOCK, "the end-of-archive marker");
          if (!second.equals(ZERO_BLOCK)) throw new TarFormatError(`a lone zero block at byte ${at}`);
        }
        this.#ended = true;
        return null;
      }
      const h = parseHeader(block, at);
      switch (h.typeflag) {
        case "x":
          pax = parsePax(await this.#meta(h.size, at), pax ?? new Map());
          continue;
        case "g":
          this.#globals = parsePax(await this.#meta(h.size, at), this.#globals);
          continue;
        case "L":
          longName = stripTrailingNuls(await this.#meta(h.size, at));
          continue;
        case "K":
          longLink = stripTrailingNuls(await this.#meta(h.size, at));
          continue;
      }
      const entry = this.#entry(h, pax, longName, longLink);
      this.#bodyLeft = entry.size;
      this.#padLeft = padLength(entry.size);
      return entry;
    }
  }

  /** The next piece (at most `max` bytes) of the current file's content, or null when done. */
  async read(max = 1024 * 1024): Promise<Buffer | null> {
    if (this.#bodyLeft === 0) return null;
    const chunk = await this.#src.some(Math.min(max, this.#bodyLeft), "an entry's content");
    this.#bodyLeft -= chunk.length;
    return chunk;
  }

  /**
   * Reads what follows the end-of-archive marker (block padding, and with it the checks that
   * compressed formats make at the end of their stream). Throws when more than `limit` bytes follow.
   */
  async finish(limit = 64 * 1024 * 1024): Promise<void> {
    if (!this.#ended) throw new TarFormatError("finish() before the end of the archive");
    if (!(await this.#src.drain(limit)))
      throw new TarFormatError("more than 64 MiB of data after the end of the archive");
  }

  /** Stops reading and releases the underlying stream. */
  async close(): Promise<void> {
    await this.#src.close();
  }

  async #meta(size: number, at: number): Promise<Buffer> {
    if (size > MAX_META_BYTES) throw new TarFormatError(`meta header at byte ${at} holds ${size} bytes`);
    const body = await this.#src.exact(size, "a meta header");
    await this.#src.skip(padLength(size), "a meta header");
    return body;
  }

  #entry(h: RawHeader, pax: Map<string, Buffer> | null, longName: Buffer | null, longLink: Buffer | null): TarEntry {
    const rec = new Map([...this.#globals].filter(([key]) => key !== "path" && key !== "linkpath" && key !== "size"));
    for (const [key, value] of pax ?? []) rec.set(key, value);
    const value = (key: string): Buffer | undefined => {
      const v = rec.get(key);
      return v && v.length > 0 ? v : undefined;
    };
    const path = value("path") ?? longName ?? h.name;
    const entry: TarEntry = {
      type: "file",
      path,
      linkpath: value("linkpath") ?? longLink ?? h.linkname,
      mode: h.mode & 0o7777,
      uid: paxInteger(value("uid"), "uid") ?? h.uid,
      gid: paxInteger(value("gid"), "gid") ?? h.gid,
      size: paxInteger(value("size"), "size") ?? h.size,
      mtime: paxTime(value("mtime")) ?? h.mtime,
      devmajor: paxInteger(value("SCHILY.devmajor"), "devmajor") ?? h.devmajor,
      devminor: paxInteger(value("SCHILY.devminor"), "devminor") ?? h.devminor,
      xattrs: new Map(),
    };
    for (const [key, v] of rec) {
      if (key.startsWith(SCHILY_XATTR)) entry.xattrs.set(decodeXattrKeyword(key.slice(SCHILY_XATTR.length)), v);
      else if (key.startsWith(LIBARCHIVE_XATTR)) {
        const name = percentDecode(key.slice(LIBARCHIVE_XATTR.length));
        if (name === null) throw new TarFormatError(`malformed pax record ${JSON.stringify(key)}`);
        entry.xattrs.set(name, Buffer.from(v.toString("latin1"), "base64"));
      } else if (key.startsWith("GNU.sparse.")) entry.unsupported = "a sparse file";
    }
    switch (h.typeflag) {
      case "0":
      case "7":
        break;
      case "\0":
        // Pre-POSIX archives mark folders with a trailing slash only.
        if (path[path.length - 1] === 0x2f) entry.type = "dir";
        break;
      case "1":
        entry.type = "link";
        break;
      case "2":
        entry.type = "symlink";
        break;
      case "3":
        entry.type = "char";
        break;
      case "4":
        entry.type = "block";
        break;
      case "5":
        entry.type = "dir";
        break;
      case "6":
        entry.type = "fifo";
        break;
      case "S":
        entry.unsupported = "a sparse file";
        break;
      default:
        entry.unsupported = `of unsupported type ${JSON.stringify(h.typeflag)}`;
    }
    if (entry.type !== "file") entry.size = 0;
    if (entry.type !== "link" && entry.type !== "symlink") entry.linkpath = Buffer.alloc(0);
    return entry;
  }
}

function parseHeader(block: Buffer, at: number): RawHeader {
  const stored = parseNumber(block, 148, 8, at, "checksum");
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : (block[i] as number);
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  if (stored !== unsigned && stored !== signed) {
    throw new TarFormatError(`header at byte ${at} fails its checksum`);
  }
  const isUstar = block.subarray(257, 263).equals(USTAR_MAGIC_ONLY);
  let name = cString(block, 0, 100);
  if (isUstar && block[345] !== 0) name = Buffer.concat([cString(block, 345, 155), Buffer.from("/"), name]);
  return {
    name,
    mode: parseNumber(block, 100, 8, at, "mode"),
    uid: parseNumber(block, 108, 8, at, "uid"),
    gid: parseNumber(block, 116, 8, at, "gid"),
    size: parseNumber(block, 124, 12, at, "size"),
    mtime: parseNumber(block, 136, 12, at, "mtime", true),
    typeflag: String.fromCharCode(block[156] as number),
    linkname: cString(block, 157, 100),
    devmajor: parseNumber(block, 329, 8, at, "devmajor"),
    devminor: parseNumber(block, 337, 8, at, "devminor"),
  };
}

/** An octal or base-256 numeric field. */
function parseNumber(block: Buffer, start: number, length: number, at: number, what: string, signed = false): number {
  const field = block.subarray(start, start + length);
  const first = field[0] as number;
  if (first & 0x80) {
    // GNU base-256: the first byte's top bit is the marker; 0xff starts a negative number.
    const negative = first === 0xff;
    if (negative && !signed) throw new TarFormatError(`header at byte ${at} has a negative ${what}`);
    let n = BigInt(first & 0x7f) - (negative ? 128n : 0n);
    for (let i = 1; i < field.length; i++) n = n * 256n + BigInt(field[i] as number);
    if (n > BigInt(Number.MAX_SAFE_INTEGER) || n < -BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new TarFormatError(`header at byte ${at} has an out-of-range ${what}`);
    }
    return Number(n);
  }
  let i = 0;
  while (i < field.length && (field[i] === 0x20 || field[i] === 0)) i++;
  let n = 0;
  let digits = 0;
  for (; i < field.length; i++) {
    const c = field[i] as number;
    if (c === 0x20 || c === 0) break;
    if (c < 0x30 || c > 0x37) throw new TarFormatError(`header at byte ${at} has a malformed ${what} field`);
    n = n * 8 + (c - 0x30);
    digits++;
  }
  for (; i < field.length; i++) {
    if (field[i] !== 0x20 && field[i] !== 0) {
      throw new TarFormatError(`header at byte ${at} has a malformed ${what} field`);
    }
  }
  return digits === 0 ? 0 : n;
}

function cString(block: Buffer, start: number, length: number): Buffer {
  const field = block.subarray(start, start + length);
  const nul = field.indexOf(0);
  return Buffer.from(nul === -1 ? field : field.subarray(0, nul));
}

function stripTrailingNuls(value: Buffer): Buffer {
  let end = value.length;
  while (end > 0 && value[end - 1] === 0) end--;
  return value.subarray(0, end);
}

/**
 * Records of a pax header ("<length> <key>=<value>\n"), added to `into`. Values stay raw bytes;
 * keys are read as Latin-1, so an attribute name in a key keeps every byte.
 */
function parsePax(body: Buffer, into: Map<string, Buffer>): Map<string, Buffer> {
  let i = 0;
  while (i < body.length) {
    if (body[i] === 0) break;
    const space = body.indexOf(0x20, i);
    const lengthText = space === -1 ? "" : body.toString("latin1", i, space);
    if (!/^[1-9][0-9]{0,7}$/.test(lengthText)) throw new TarFormatError("malformed pax record length");
    const end = i + Number(lengthText);
    const eq = body.indexOf(0x3d, space + 1);
    if (end > body.length || body[end - 1] !== 0x0a || eq === -1 || eq >= end) {
      throw new TarFormatError("malformed pax record");
    }
    into.set(body.toString("latin1", space + 1, eq), Buffer.from(body.subarray(eq + 1, end - 1)));
    i = end;
  }
  return into;
}

const SCHILY_XATTR = "SCHILY.xattr.";
const LIBARCHIVE_XATTR = "LIBARCHIVE.xattr.";

/**
 * GNU tar's escaping of an attribute name in a pax keyword: "%" and "=" (which would end the
 * keyword) become "%25" and "%3D"; every other byte is kept. Works on Latin-1 text (one byte each).
 */
function encodeXattrKeyword(name: string): string {
  return name.replaceAll("%", "%25").replaceAll("=", "%3D");
}

/** Reverses encodeXattrKeyword, as GNU tar does: only "%3D" and "%25" are escapes. */
function decodeXattrKeyword(keyword: string): string {
  return keyword.replace(/%(3D|25)/g, (code) => (code === "%3D" ? "=" : "%"));
}

/** libarchive's URL-style escaping, undone byte by byte (as Latin-1); null when malformed. */
function percentDecode(text: string): string | null {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (c !== "%") {
      out += c;
      continue;
    }
    const hex = text.slice(i + 1, i + 3);
    if (!/^[0-9a-fA-F]{2}$/.test(hex)) return null;
    out += String.fromCharCode(Number.parseInt(hex, 16));
    i += 2;
  }
  return out;
}

function paxInteger(value: Buffer | undefined, what: string): number | undefined {
  if (value === undefined) return undefined;
  const text = value.toString("latin1");
  if (!/^[0-9]{1,16}$/.test(text) || Number(text) > Number.MAX_SAFE_INTEGER) {
    throw new TarFormatError(`malformed pax ${what} ${JSON.stringify(text)}`);
  }
  return Number(text);
}

function paxTime(value: Buffer | undefined): number | undefined {
  if (value === undefined) return undefined;
  const text = value.toString("latin1");
  if (!/^-?[0-9]{1,15}(\.[0-9]{1,9})?$/.test(text))
    throw new TarFormatError(`malformed pax mtime ${JSON.stringify(text)}`);
  return Number(text);
}

/** Zero bytes after `size` bytes of content, up to the next block boundary. */
export function padLength(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

export function padding(size: number): Buffer {
  return Buffer.alloc(padLength(size));
}

/** Two zero blocks: the end of an archive. */
export function endOfArchive(): Buffer {
  return Buffer.alloc(2 * BLOCK);
}

/** What `encodeHeader` writes: one entry's metadata. */
export interface HeaderFields {
  type: EntryType;
  /** Raw name; a "/" is added to folders. */
  path: Buffer | string;
  linkpath?: Buffer | string;
  mode: number;
  uid: number;
  gid: number;
  /** Content bytes that follow (files only). */
  size?: number;
  /** Seconds since the epoch; whole seconds only. */
  mtime?: number;
  devmajor?: number;
  devminor?: number;
  /**
   * Extended attributes, written in the given order as SCHILY.xattr records (GNU tar's form):
   * names as raw bytes or as Latin-1 text (as TarEntry.xattrs holds them), values as raw bytes.
   */
  xattrs?: Iterable<[string | Buffer, Buffer]>;
}

const TYPEFLAG: Record<EntryType, string> = {
  file: "0",
  link: "1",
  symlink: "2",
  char: "3",
  block: "4",
  dir: "5",
  fifo: "6",
};

/**
 * The header block of one entry, preceded by a pax header when a field does not fit ustar (long
 * names and link targets, large owners or sizes, extended attributes). Names are written as given,
 * without checks, so tests can build hostile archives with it too.
 */
export function encodeHeader(f: HeaderFields): Buffer {
  let path = typeof f.path === "string" ? Buffer.from(f.path) : f.path;
  if (f.type === "dir" && path[path.length - 1] !== 0x2f) path = Buffer.concat([path, Buffer.from("/")]);
  const linkpath = typeof f.linkpath === "string" ? Buffer.from(f.linkpath) : (f.linkpath ?? Buffer.alloc(0));
  const size = f.size ?? 0;
  const mtime = f.mtime ?? 0;
  const records: [string, Buffer][] = [];
  const split = splitUstarName(path);
  if (split === null) records.push(["path", path]);
  if (linkpath.length > 100) records.push(["linkpath", linkpath]);
  if (f.uid > MAX_OCTAL_7) records.push(["uid", Buffer.from(String(f.uid))]);
  if (f.gid > MAX_OCTAL_7) records.push(["gid", Buffer.from(String(f.gid))]);
  if (size > MAX_OCTAL_11) records.push(["size", Buffer.from(String(size))]);
  if (mtime < 0 || mtime > MAX_OCTAL_11) records.push(["mtime", Buffer.from(String(Math.trunc(mtime)))]);
  const devmajor = f.devmajor ?? 0;
  const devminor = f.devminor ?? 0;
  if (devmajor > MAX_OCTAL_7) records.push(["SCHILY.devmajor", Buffer.from(String(devmajor))]);
  if (devminor > MAX_OCTAL_7) records.push(["SCHILY.devminor", Buffer.from(String(devminor))]);
  const textual = (b: Buffer) => Buffer.from(b.toString("utf8")).equals(b);
  if (records.some(([key, value]) => (key === "path" || key === "linkpath") && !textual(value))) {
    records.push(["hdrcharset", Buffer.from("BINARY")]);
  }
  for (const [name, value] of f.xattrs ?? []) {
    const text = typeof name === "string" ? name : name.toString("latin1");
    records.push([`${SCHILY_XATTR}${encodeXattrKeyword(text)}`, value]);
  }

  const header = Buffer.alloc(BLOCK);
  if (split === null) path.copy(header, 0, 0, 100);
  else {
    split.name.copy(header, 0);
    split.prefix.copy(header, 345);
  }
  writeOctal(header, 100, 8, f.mode & 0o7777);
  writeOctal(header, 108, 8, f.uid > MAX_OCTAL_7 ? 0 : f.uid);
  writeOctal(header, 116, 8, f.gid > MAX_OCTAL_7 ? 0 : f.gid);
  writeOctal(header, 124, 12, size > MAX_OCTAL_11 ? 0 : size);
  writeOctal(header, 136, 12, mtime < 0 || mtime > MAX_OCTAL_11 ? 0 : Math.trunc(mtime));
  header.write(TYPEFLAG[f.type], 156, "latin1");
  linkpath.copy(header, 157, 0, 100);
  USTAR_MAGIC.copy(header, 257);
  writeOctal(header, 329, 8, devmajor > MAX_OCTAL_7 ? 0 : devmajor);
  writeOctal(header, 337, 8, devminor > MAX_OCTAL_7 ? 0 : devminor);
  writeChecksum(header);
  if (records.length === 0) return header;

  const body = Buffer.concat(records.map(([key, value]) => paxRecord(key, value)));
  const paxHeader = Buffer.alloc(BLOCK);
  paxHeader.write("././@PaxHeader", 0, "latin1");
  writeOctal(paxHeader, 100, 8, 0o644);
  writeOctal(paxHeader, 108, 8, 0);
  writeOctal(paxHeader, 116, 8, 0);
  writeOctal(paxHeader, 124, 12, body.length);
  writeOctal(paxHeader, 136, 12, 0);
  paxHeader.write("x", 156, "latin1");
  USTAR_MAGIC.copy(paxHeader, 257);
  writeChecksum(paxHeader);
  return Buffer.concat([paxHeader, body, padding(body.length), header]);
}

/** ustar's name and prefix fields for `path`, or null when it needs a pax record. */
function splitUstarName(path: Buffer): { name: Buffer; prefix: Buffer } | null {
  if (path.length <= 100) return { name: path, prefix: Buffer.alloc(0) };
  // The slash between prefix and name is implied; a folder's trailing slash belongs to the name.
  const last = path[path.length - 1] === 0x2f ? path.length - 2 : path.length - 1;
  for (let i = path.indexOf(0x2f); i !== -1 && i <= 155 && i < last; i = path.indexOf(0x2f, i + 1)) {
    if (path.length - i - 1 <= 100) return { name: path.subarray(i + 1), prefix: path.subarray(0, i) };
  }
  return null;
}

/** One pax record; the length counts bytes. Keys are Latin-1 text (attribute names are raw bytes). */
function paxRecord(key: string, value: Buffer): Buffer {
  const rest = Buffer.concat([Buffer.from(` ${key}=`, "latin1"), value, Buffer.from("\n")]);
  let length = rest.length + 1;
  while (String(length).length + rest.length !== length) length = String(length).length + rest.length;
  return Buffer.concat([Buffer.from(String(length)), rest]);
}

function writeOctal(block: Buffer, start: number, length: number, value: number): void {
  block.write(`${value.toString(8).padStart(length - 1, "0")}\0`, start, length, "latin1");
}

function writeChecksum(block: Buffer): void {
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of block) sum += b;
  block.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
}
