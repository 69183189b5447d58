import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  encodeHeader,
  endOfArchive,
  type HeaderFields,
  padding,
  type TarEntry,
  TarFormatError,
  TarReader,
} from "./tar-format.ts";

/** The bytes as a stream of `size`-byte chunks, so reads cross chunk boundaries. */
async function* chunked(data: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

/** Every entry of `data` with its content, read through chunks of several sizes (all must agree). */
async function readAll(data: Buffer): Promise<{ entry: TarEntry; body: Buffer }[]> {
  let first: { entry: TarEntry; body: Buffer }[] | null = null;
  for (const size of [data.length || 1, 7, 512, 4096]) {
    const reader = new TarReader(chunked(data, size));
    const out: { entry: TarEntry; body: Buffer }[] = [];
    for (let entry = await reader.next(); entry !== null; entry = await reader.next()) {
      const parts: Buffer[] = [];
      for (let c = await reader.read(); c !== null; c = await reader.read()) parts.push(Buffer.from(c));
      out.push({ entry, body: Buffer.concat(parts) });
    }
    await reader.finish();
    if (first === null) first = out;
    else assert.deepEqual(out, first, `chunks of ${size} bytes`);
  }
  return first ?? [];
}

function archive(...parts: (HeaderFields & { body?: Buffer })[]): Buffer {
  const out: Buffer[] = [];
  for (const p of parts) {
    const body = p.body ?? Buffer.alloc(0);
    out.push(encodeHeader({ ...p, size: p.type === "file" ? body.length : 0 }), body, padding(body.length));
  }
  out.push(endOfArchive());
  return Buffer.concat(out);
}

/** Recomputes the checksum of a header block changed by a test. */
function reseal(block: Buffer): Buffer {
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of block) sum += b;
  block.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
  return block;
}

const base = { mode: 0o644, uid: 0, gid: 0 };

describe("tar format", () => {
  test("fields that fit ustar, and those that need pax records, read back unchanged", async () => {
    const split = Buffer.from(`${"a".repeat(120)}/${"b".repeat(90)}`);
    const long = Buffer.from(`${"c/".repeat(200)}file`);
    const binary = Buffer.from([0x6e, 0xe9, 0xff, 0x2f, 0x78]);
    const target = Buffer.from("t".repeat(300));
    const entries = await readAll(
      archive(
        { type: "dir", path: ".", mode: 0o755, uid: 0, gid: 0 },
        { type: "file", path: split, ...base, body: Buffer.from("split") },
        { type: "file", path: long, ...base, uid: 3_000_000, gid: 4_000_000, body: Buffer.from("long") },
        { type: "file", path: binary, ...base, mode: 0o4755 },
        { type: "symlink", path: "s", linkpath: target, ...base },
        { type: "link", path: "h", linkpath: long, ...base },
        { type: "char", path: "w", ...base, devmajor: 0, devminor: 0 },
        { type: "block", path: "b", ...base, devmajor: 8, devminor: 3_000_000 },
        { type: "fifo", path: "p", ...base, mtime: 1_700_000_000 },
        { type: "dir", path: "x", ...base, xattrs: [["trusted.overlay.opaque", Buffer.from("y")]] },
      ),
    );
    const summary = entries.map(({ entry, body }) => [entry.type, entry.path.toString("latin1"), body.toString()]);
    assert.deepEqual(summary, [
      ["dir", "./", ""],
      ["file", split.toString("latin1"), "split"],
      ["file", long.toString("latin1"), "long"],
      ["file", binary.toString("latin1"), ""],
      ["symlink", "s", ""],
      ["link", "h", ""],
      ["char", "w", ""],
      ["block", "b", ""],
      ["fifo", "p", ""],
      ["dir", "x/", ""],
    ]);
    const [, , big, bin, sym, hard, , blk, fifo, opaque] = entries.map((e) => e.entry);
    assert.deepEqual([big?.uid, big?.gid], [3_000_000, 4_000_000]);
    assert.equal(bin?.mode, 0o4755);
    assert.deepEqual(sym?.linkpath, target);
    assert.deepEqual(hard?.linkpath, long);
    assert.deepEqual([blk?.devmajor, blk?.devminor], [8, 3_000_000]);
    assert.equal(fifo?.mtime, 1_700_000_000);
    assert.deepEqual(opaque?.xattrs.get("trusted.overlay.opaque"), Buffer.from("y"));
  });

  test("attribute names are raw bytes, with GNU tar's escaping of = and % in the keyword", async () => {
    const name = Buffer.from("user.a=b%3D\u00e9\u00ff", "latin1");
    const value = Buffer.from("v=1\nline two \u0000", "latin1");
    const data = archive({ type: "file", path: "f", ...base, xattrs: [[name, value]] });
    const pax = data.subarray(512, 1024).toString("latin1");
    const record = "SCHILY.xattr.user.a%3Db%253D\u00e9\u00ff=v=1\nline two \u0000\n";
    assert.equal(pax.slice(pax.indexOf(" ") + 1, pax.indexOf(" ") + 1 + record.length), record);
    // The record length counts bytes.
    assert.equal(Number(pax.slice(0, pax.indexOf(" "))), pax.indexOf("\n", pax.indexOf("two")) + 1);
    const [entry] = (await readAll(data)).map((e) => e.entry);
    assert.deepEqual([...(entry?.xattrs ?? [])], [[name.toString("latin1"), value]]);
  });

  test("a size beyond the octal field travels in a pax record", async () => {
    const size = 9 * 1024 ** 3;
    const reader = new TarReader(chunked(encodeHeader({ type: "file", path: "huge", ...base, size }), 512));
    const entry = await reader.next();
    assert.equal(entry?.size, size);
    await reader.close();
  });

  test("GNU base-256 numbers, a negative mtime, and refusing a negative owner", async () => {
    const header = encodeHeader({ type: "file", path: "n", ...base });
    header.fill(0, 108, 116);
    header[108] = 0x80;
    header.writeUInt32BE(5_000_000, 112);
    header.fill(0xff, 136, 148);
    header[147] = 0xfe;
    const [only] = await readAll(Buffer.concat([reseal(header), endOfArchive()]));
    assert.equal(only?.entry.uid, 5_000_000);
    assert.equal(only?.entry.mtime, -2);
    const negative = Buffer.from(header);
    negative.fill(0xff, 108, 116);
    await assert.rejects(readAll(Buffer.concat([reseal(negative), endOfArchive()])), /negative uid/);
  });

  test("old archives: a '\\0' type flag with a trailing slash is a folder", async () => {
    const header = encodeHeader({ type: "file", path: "old/", ...base });
    header[156] = 0;
    const [only] = await readAll(Buffer.concat([reseal(header), endOfArchive()]));
    assert.equal(only?.entry.type, "dir");
  });

  test("pax records: libarchive xattrs, global defaults, sparse files", async () => {
    const pax = (key: string, value: string, flag = "x"): Buffer => {
      const record = ` ${key}=${value}\n`;
      let length = record.length + 2;
      while (String(length).length + record.length !== length) length++;
      const body = Buffer.from(`${length}${record}`);
      const header = encodeHeader({ type: "file", path: "pax", ...base, size: body.length });
      header[156] = flag.charCodeAt(0);
      return Buffer.concat([reseal(header), body, padding(body.length)]);
    };
    const plain = encodeHeader({ type: "file", path: "f", ...base });
    const entries = await readAll(
      Buffer.concat([
        pax("uid", "4242", "g"),
        pax("LIBARCHIVE.xattr.user.t%C3%A9st", Buffer.from([0, 1, 2]).toString("base64")),
        plain,
        plain,
        pax("GNU.sparse.major", "1"),
        plain,
        endOfArchive(),
      ]),
    );
    // Attribute names are raw bytes, held as Latin-1.
    const name = Buffer.from("user.tést").toString("latin1");
    assert.deepEqual(entries[0]?.entry.xattrs.get(name), Buffer.from([0, 1, 2]));
    assert.deepEqual(
      entries.map((e) => e.entry.uid),
      [4242, 4242, 4242],
    );
    assert.equal(entries[1]?.entry.xattrs.size, 0);
    assert.equal(entries[2]?.entry.unsupported, "a sparse file");
  });

  test("malformed streams are TarFormatErrors", async () => {
    const good = archive({ type: "file", path: "f", ...base, body: Buffer.from("data") });
    const cases: [string, Buffer, RegExp][] = [
      ["cut inside the content", good.subarray(0, 600), /ends inside an entry's content/],
      ["no end marker", good.subarray(0, 1024), /ends inside a header/],
      [
        "bad checksum",
        Buffer.concat([Buffer.from(good.subarray(0, 512)).fill(0x41, 0, 1), good.subarray(512)]),
        /checksum/,
      ],
    ];
    const badMode = Buffer.from(good.subarray(0, 512));
    badMode.write("09", 100, "latin1");
    cases.push(["a non-octal digit", Buffer.concat([reseal(badMode), good.subarray(512)]), /malformed mode/]);
    const badPax = encodeHeader({ type: "file", path: "p", ...base, size: 10 });
    badPax[156] = 0x78;
    cases.push([
      "a pax record with a wrong length",
      Buffer.concat([reseal(badPax), Buffer.from("99 path=x\n"), padding(10), good]),
      /malformed pax record/,
    ]);
    const meta = reseal(Buffer.from(badPax).fill(0x30, 124, 135));
    cases.push(["a meta header at the end", Buffer.concat([meta, endOfArchive()]), /not followed by an entry/]);
    cases.push(["endless meta headers", Buffer.concat([...Array(20).fill(meta), good]), /too many meta headers/]);
    for (const [name, data, pattern] of cases) {
      await assert.rejects(readAll(data), (err: unknown) => {
        assert.ok(err instanceof TarFormatError, `${name}: ${String(err)}`);
        assert.match(err.message, pattern, name);
        return true;
      });
    }
  });
});
