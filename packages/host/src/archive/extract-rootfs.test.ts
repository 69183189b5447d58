import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  chmod,
  chown,
  link,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { constants, gzipSync, zstdCompressSync } from "node:zlib";
import { AppError } from "@paddock/protocol";
import { digestTree } from "../fs/tree-digest.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { detectCompression, type ExtractOptions, extractTarball } from "./extract-rootfs.ts";
import { encodeHeader, endOfArchive, type HeaderFields, padding } from "./tar-format.ts";

const isRoot = process.getuid?.() === 0;
const skip = e2eSkip(!isRoot && "extracting with owners, devices and whiteouts needs root");
let work: string;
let outside: string;
let counter = 0;

type Spec = HeaderFields & { body?: Buffer | string };

/** A plain tar holding `specs` in order (defaults: root-owned, mode 0644/0755, mtime 0). */
function tarOf(specs: Spec[]): Buffer {
  const parts: Buffer[] = [];
  for (const spec of specs) {
    const body = typeof spec.body === "string" ? Buffer.from(spec.body) : (spec.body ?? Buffer.alloc(0));
    const size = spec.type === "file" ? body.length : 0;
    parts.push(encodeHeader({ ...spec, size }), body.subarray(0, size), padding(size));
  }
  parts.push(endOfArchive());
  return Buffer.concat(parts);
}

const file = (path: string | Buffer, body: string | Buffer = "x", extra: Partial<Spec> = {}): Spec => ({
  type: "file",
  path,
  mode: 0o644,
  uid: 0,
  gid: 0,
  body,
  ...extra,
});
const dir = (path: string, extra: Partial<Spec> = {}): Spec => ({
  type: "dir",
  path,
  mode: 0o755,
  uid: 0,
  gid: 0,
  ...extra,
});
const sym = (path: string, target: string): Spec => ({
  type: "symlink",
  path,
  linkpath: target,
  mode: 0o777,
  uid: 0,
  gid: 0,
});
const hard = (path: string, target: string): Spec => ({
  type: "link",
  path,
  linkpath: target,
  mode: 0o644,
  uid: 0,
  gid: 0,
});

/** A header whose type flag is patched to `flag` (for kinds encodeHeader does not write). */
function rawHeader(fields: HeaderFields, flag: string): Buffer {
  const header = encodeHeader(fields);
  assert.equal(header.length, 512);
  header.write(flag, 156, "latin1");
  header.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of header) sum += b;
  header.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
  return header;
}

/** A fresh case folder holding the archive; extraction goes to <case>/rootfs. */
async function newCase(archive: Buffer, name = "archive.tar"): Promise<{ parent: string; file: string; dest: string }> {
  const parent = join(work, "cases", String(counter++));
  await mkdir(parent, { recursive: true });
  const file = join(work, "archives", `${counter}-${name}`);
  await mkdir(join(work, "archives"), { recursive: true });
  await writeFile(file, archive);
  return { parent, file, dest: join(parent, "rootfs") };
}

async function outsideUntouched(): Promise<void> {
  assert.deepEqual((await readdir(outside)).sort(), ["sentinel"]);
  assert.equal(await readFile(join(outside, "sentinel"), "utf8"), "original\n");
}

/** Extraction must fail with validation_failed matching `pattern`, leaving nothing anywhere. */
async function refused(archive: Buffer, pattern: RegExp, opts: ExtractOptions = {}): Promise<void> {
  const c = await newCase(archive);
  await assert.rejects(extractTarball(c.file, c.dest, opts), (err: unknown) => {
    assert.ok(err instanceof AppError, `expected an AppError, got ${String(err)}`);
    assert.equal(err.code, "validation_failed");
    assert.match(err.message, pattern);
    return true;
  });
  assert.deepEqual(await readdir(c.parent), [], "no destination and no temp folder remain");
  await outsideUntouched();
}

async function extracted(archive: Buffer, opts: ExtractOptions = {}): Promise<string> {
  const c = await newCase(archive);
  await extractTarball(c.file, c.dest, opts);
  assert.deepEqual(await readdir(c.parent), ["rootfs"], "only the destination remains");
  return c.dest;
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), "paddock-extract-"));
  outside = join(work, "outside");
  await mkdir(outside);
  await writeFile(join(outside, "sentinel"), "original\n");
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

describe("extractTarball keeps what a root filesystem needs", { skip }, () => {
  test("owners, special mode bits, symlinks, hard links, FIFOs and mtimes", async () => {
    const dest = await extracted(
      tarOf([
        dir(".", { mode: 0o755, mtime: 1_000_000 }),
        dir("usr", { mtime: 1_100_000 }),
        dir("usr/bin", { mtime: 1_200_000 }),
        file("usr/bin/su", "#!/bin/true\n", { mode: 0o4755, uid: 0, gid: 0, mtime: 1_300_000 }),
        file("usr/bin/wall", "w", { mode: 0o2755, uid: 0, gid: 5, mtime: 1_300_001 }),
        dir("tmp", { mode: 0o1777, mtime: 1_400_000 }),
        dir("srv", { mode: 0o2770, uid: 1000, gid: 1001 }),
        file("srv/data", "hello\n", { mode: 0o600, uid: 1000, gid: 1001, mtime: 1_500_000 }),
        hard("srv/data-link", "srv/data"),
        sym("srv/abs", "/etc/passwd"),
        sym("srv/up", "../../../../../etc"),
        { type: "fifo", path: "srv/pipe", mode: 0o640, uid: 5, gid: 6, mtime: 1_600_000 },
      ]),
    );
    const su = await stat(join(dest, "usr/bin/su"));
    assert.equal(su.mode & 0o7777, 0o4755);
    assert.equal(su.mtimeMs, 1_300_000_000);
    assert.equal((await stat(join(dest, "usr/bin/wall"))).mode & 0o7777, 0o2755);
    assert.equal((await stat(join(dest, "usr/bin/wall"))).gid, 5);
    assert.equal((await stat(join(dest, "tmp"))).mode & 0o7777, 0o1777);
    const srv = await stat(join(dest, "srv"));
    assert.deepEqual([srv.mode & 0o7777, srv.uid, srv.gid], [0o2770, 1000, 1001]);
    const data = await stat(join(dest, "srv/data"));
    assert.deepEqual([data.mode & 0o7777, data.uid, data.gid, data.mtimeMs], [0o600, 1000, 1001, 1_500_000_000]);
    assert.equal((await stat(join(dest, "srv/data-link"))).ino, data.ino);
    assert.equal(data.nlink, 2);
    assert.equal(await readlink(join(dest, "srv/abs")), "/etc/passwd");
    assert.equal(await readlink(join(dest, "srv/up")), "../../../../../etc");
    const pipe = await lstat(join(dest, "srv/pipe"));
    assert.ok(pipe.isFIFO());
    assert.deepEqual([pipe.mode & 0o7777, pipe.uid, pipe.gid, pipe.mtimeMs], [0o640, 5, 6, 1_600_000_000]);
    // Folder times are set after their content is written.
    assert.equal((await stat(join(dest, "usr/bin"))).mtimeMs, 1_200_000_000);
    assert.equal((await stat(join(dest, "usr"))).mtimeMs, 1_100_000_000);
    assert.equal((await stat(dest)).mtimeMs, 1_000_000_000);
    await outsideUntouched();
  });

  test("missing parent folders are created; a later entry for the same name replaces the earlier one", async () => {
    const dest = await extracted(tarOf([file("a/b/c", "deep"), file("a/b/c", "second"), dir("a", { mode: 0o750 })]));
    assert.equal(await readFile(join(dest, "a/b/c"), "utf8"), "second");
    assert.equal((await stat(join(dest, "a/b"))).mode & 0o7777, 0o755);
    assert.equal((await stat(join(dest, "a"))).mode & 0o7777, 0o750);
  });

  test("a file over a symlink replaces the symlink instead of writing through it", async () => {
    const dest = await extracted(tarOf([sym("x", join(outside, "sentinel")), file("x", "inside\n")]));
    assert.equal(await readFile(join(dest, "x"), "utf8"), "inside\n");
    assert.ok((await lstat(join(dest, "x"))).isFile());
    await outsideUntouched();
  });

  test("a folder over a symlink replaces the symlink; entries below it stay inside", async () => {
    const dest = await extracted(tarOf([sym("a", outside), dir("a"), file("a/pwned", "inside\n")]));
    assert.ok((await lstat(join(dest, "a"))).isDirectory());
    assert.equal(await readFile(join(dest, "a/pwned"), "utf8"), "inside\n");
    await outsideUntouched();
  });

  test("names are raw bytes: a non-UTF-8 name survives", async () => {
    const name = Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x74, 0x78, 0x74]);
    const dest = await extracted(tarOf([file(name, "bytes")]));
    const names = await readdir(dest, { encoding: "buffer" });
    assert.deepEqual(names, [name]);
  });

  test("whiteouts are created as character devices 0:0 when allowed", async () => {
    const dest = await extracted(
      tarOf([
        { type: "char", path: "gone", mode: 0, uid: 0, gid: 0 },
        { type: "char", path: "also-gone", mode: 0, uid: 0, gid: 0 },
      ]),
      { allowWhiteouts: true },
    );
    for (const name of ["gone", "also-gone"]) {
      const st = await lstat(join(dest, name));
      assert.ok(st.isCharacterDevice());
      assert.equal(st.rdev, 0);
    }
  });
});

describe("extractTarball refuses unsafe entries and leaves nothing behind", { skip }, () => {
  test("absolute paths", async () => {
    await refused(tarOf([file(join(outside, "pwned"))]), /entry ".*outside\/pwned" has an absolute path/);
    await refused(tarOf([file("/etc/passwd")]), /absolute path/);
  });

  test('".." components', async () => {
    await refused(tarOf([file("../../../outside/pwned")]), /entry "..\/..\/..\/outside\/pwned" has a ".." component/);
    await refused(tarOf([dir("a"), file("a/../../../../outside/pwned")]), /has a ".." component/);
    await refused(tarOf([file("a/.."), file("x")]), /".." component/);
  });

  test("entries below a symlink", async () => {
    await refused(
      tarOf([sym("a", outside), file("a/pwned", "evil")]),
      /entry "a\/pwned" would be written through the symlink "a"/,
    );
    await refused(tarOf([sym("b", "../../../outside"), file("b/sentinel", "evil")]), /through the symlink "b"/);
    await refused(tarOf([dir("c"), sym("c/d", "/"), dir("c/d/tmp")]), /through the symlink "c\/d"/);
    await refused(tarOf([file("f"), file("f/g")]), /lies below "f", which is not a folder/);
    await refused(tarOf([dir("d"), sym("d", outside)]), /would replace the folder/);
  });

  test("hard links outside the archive, to folders, or to entries not yet extracted", async () => {
    await refused(
      tarOf([hard("h", join(outside, "sentinel"))]),
      /entry "h" \(a hard link to ".*sentinel"\) has an absolute path/,
    );
    await refused(tarOf([hard("h", "../../../outside/sentinel")]), /hard link to .* has a ".." component/);
    await refused(tarOf([hard("h", "later"), file("later")]), /points to an entry not extracted before it/);
    await refused(tarOf([dir("d"), hard("h", "d")]), /points to a folder/);
    await refused(tarOf([file("x/y"), hard("h", "x")]), /not extracted before it/);
    await refused(tarOf([sym("a", outside), hard("h", "a/sentinel")]), /not extracted before it/);
  });

  test("device nodes, and whiteouts unless allowed", async () => {
    const dev = (type: "char" | "block", devmajor: number, devminor: number): Spec => ({
      type,
      path: "dev/node",
      mode: 0o600,
      uid: 0,
      gid: 0,
      devmajor,
      devminor,
    });
    await refused(tarOf([dev("block", 8, 0)]), /entry "dev\/node" is a block device \(8:0\)/);
    await refused(tarOf([dev("char", 1, 3)]), /is a character device \(1:3\)/);
    await refused(tarOf([dev("char", 1, 3)]), /is a character device \(1:3\)/, { allowWhiteouts: true });
    await refused(tarOf([dev("block", 0, 0)]), /block device/, { allowWhiteouts: true });
    await refused(tarOf([dev("char", 0, 0)]), /is an overlay whiteout .* not allowed here/);
  });

  test("names with NUL, in pax records and GNU long names", async () => {
    // Long enough for a pax path record (a NUL in the ustar name field just ends the name).
    await refused(tarOf([file(Buffer.from(`a\0${"b".repeat(120)}`))]), /entry "a\\u0000b+" has a name containing NUL/);
    const longName = Buffer.from("evil\0/../../outside/pwned\0");
    const gnu = Buffer.concat([
      rawHeader({ type: "file", path: "././@LongLink", mode: 0, uid: 0, gid: 0, size: longName.length }, "L"),
      longName,
      padding(longName.length),
      encodeHeader({ type: "file", path: "short", mode: 0o644, uid: 0, gid: 0, size: 0 }),
      endOfArchive(),
    ]);
    await refused(gnu, /containing NUL/);
    await refused(tarOf([sym("s", `a\0${"b".repeat(120)}`)]), /symlink whose target contains NUL/);
  });

  test("paths longer than 4096 bytes", async () => {
    const long = `${"d".repeat(200)}/`.repeat(21);
    await refused(tarOf([file(`${long}f`)]), /has a path longer than 4096 bytes/);
    await refused(tarOf([file("x"), hard("h", `${long}x`)]), /path longer than 4096 bytes/);
    await refused(tarOf([file(`${"n".repeat(256)}`)]), /name longer than 255 bytes/);
  });

  test("kinds tar can carry but a root filesystem must not", async () => {
    const header = rawHeader({ type: "file", path: "sparse", mode: 0o644, uid: 0, gid: 0, size: 0 }, "S");
    await refused(Buffer.concat([header, endOfArchive()]), /entry "sparse" is a sparse file, which is not supported/);
    const label = rawHeader({ type: "file", path: "label", mode: 0o644, uid: 0, gid: 0, size: 0 }, "V");
    await refused(Buffer.concat([label, endOfArchive()]), /of unsupported type "V"/);
    await refused(tarOf([file(".", "root as a file")]), /names the archive's root folder but is not a folder/);
  });

  test("too many entries or too many bytes", async () => {
    const five = tarOf(["a", "b", "c", "d", "e"].map((n) => file(n)));
    await refused(five, /more than 4 entries/, { maxEntries: 4 });
    await extracted(five, { maxEntries: 5 });
    const big = tarOf([file("small", "x".repeat(600)), file("big", "y".repeat(600))]);
    await refused(big, /more than 1000 bytes of content \(at entry "big"\)/, { maxBytes: 1000 });
    await extracted(big, { maxBytes: 1200 });
  });

  test("a destination that already exists", async () => {
    const c = await newCase(tarOf([file("a")]));
    await mkdir(c.dest);
    await writeFile(join(c.dest, "keep"), "mine");
    await assert.rejects(extractTarball(c.file, c.dest), /already exists/);
    assert.deepEqual(await readdir(c.parent), ["rootfs"]);
    assert.deepEqual(await readdir(c.dest), ["keep"]);
  });
});

describe("extractTarball reads plain, gzip and zstd tarballs by their bytes", { skip }, () => {
  test("the same tree comes out of each, whatever the file is called", async () => {
    const tar = tarOf([
      dir("etc"),
      file("etc/hostname", "box\n"),
      sym("bin", "usr/bin"),
      hard("etc/name", "etc/hostname"),
    ]);
    const variants: [Buffer, string, string][] = [
      [tar, "rootfs.tar.gz", "none"],
      [gzipSync(tar), "rootfs.tar.zst", "gzip"],
      [zstdCompressSync(tar), "rootfs.tar", "zstd"],
    ];
    const digests = new Set<string>();
    for (const [bytes, name, kind] of variants) {
      const c = await newCase(bytes, name);
      assert.equal(await detectCompression(c.file), kind);
      await extractTarball(c.file, c.dest);
      digests.add(await digestTree(c.dest));
    }
    assert.equal(digests.size, 1);
  });

  test("xz and bzip2 are refused by name", async () => {
    await refused(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1, 2, 3]), /xz- or bzip2-compressed/);
    await refused(Buffer.from("BZh91AY&SY"), /xz- or bzip2-compressed/);
  });
});

describe("extractTarball refuses truncated and corrupt archives", { skip }, () => {
  const content = Buffer.alloc(300_000);
  for (let i = 0; i < content.length; i++) content[i] = (i * 7919) % 251;
  const tar = tarOf([dir("data"), file("data/blob", content), file("data/after", "tail\n")]);

  test("a .tar.zst cut in half or with flipped bytes", async () => {
    const zst = zstdCompressSync(tar, { params: { [constants.ZSTD_c_checksumFlag]: 1 } });
    await refused(zst.subarray(0, zst.length >> 1), /truncated\/corrupt/);
    for (const at of [0.3, 0.6, 0.99]) {
      const flipped = Buffer.from(zst);
      const i = Math.floor(flipped.length * at);
      flipped[i] = (flipped[i] as number) ^ 0xff;
      await refused(flipped, /truncated\/corrupt/);
    }
  });

  test("a .tar.gz cut short or with a flipped byte", async () => {
    const gz = gzipSync(tar);
    await refused(gz.subarray(0, gz.length - 100), /truncated\/corrupt/);
    const flipped = Buffer.from(gz);
    flipped[flipped.length - 6] = (flipped[flipped.length - 6] as number) ^ 0x01;
    await refused(flipped, /truncated\/corrupt/);
  });

  test("a plain tar cut inside content, cut between entries, or with a damaged header", async () => {
    await refused(tar.subarray(0, 512 * 10), /truncated\/corrupt: the data ends inside an entry's content/);
    const firstTwo = 512 + 512 + 300_000 + padding(300_000).length;
    await refused(tar.subarray(0, firstTwo), /truncated\/corrupt: the data ends inside a header/);
    const damaged = Buffer.from(tar);
    damaged[512 + 3] = 0x41;
    await refused(damaged, /truncated\/corrupt: header at byte 512 fails its checksum/);
  });

  test("data that is not a tarball at all", async () => {
    await refused(Buffer.alloc(0), /truncated\/corrupt/);
    await refused(Buffer.from("just some text, not an archive\n".repeat(40)), /truncated\/corrupt/);
    const lone = Buffer.concat([tarOf([file("a")]).subarray(0, 1024 + 512), Buffer.from(tar.subarray(0, 512))]);
    await refused(lone, /truncated\/corrupt: a lone zero block/);
  });
});

describe("extractTarball reads what GNU tar writes", { skip }, () => {
  test("gnu, posix and ustar formats give back the original tree", async () => {
    const src = join(work, "gnu-src");
    // A path over 100 bytes that ustar can still split into prefix and name.
    const split = `${"folder-".repeat(8)}/${"more-".repeat(10)}/${"name-".repeat(8)}`;
    // Paths and link targets only pax and GNU long-name records can carry.
    const long = `very-long/${"long-folder-name-".repeat(10)}/${"file-".repeat(30)}.txt`;
    await mkdir(join(src, split), { recursive: true });
    await writeFile(join(src, split, "f"), "split name\n");
    await mkdir(join(src, long, ".."), { recursive: true });
    await writeFile(join(src, long), "long name\n");
    await writeFile(join(src, "plain"), "plain\n");
    await chown(join(src, "plain"), 1234, 5678);
    await chmod(join(src, "plain"), 0o4750);
    await link(join(src, "plain"), join(src, "plain-link"));
    await symlink(`${"t".repeat(150)}/target`, join(src, "long-symlink"));
    execFileSync("mkfifo", ["-m", "0620", join(src, "fifo")]);
    await chmod(src, 0o755);
    await mkdir(join(work, "archives"), { recursive: true });
    for (const format of ["gnu", "posix", "ustar"]) {
      const archive = join(work, "archives", `gnu-${format}.tar`);
      const exclude = format === "ustar" ? ["very-long", "long-symlink"] : [];
      const args = [`--format=${format}`, "--numeric-owner", ...exclude.map((e) => `--exclude=./${e}`)];
      execFileSync("tar", [...args, "-C", src, "-cf", archive, "."]);
      const c = await newCase(await readFile(archive));
      await extractTarball(c.file, c.dest);
      assert.equal(await digestTree(c.dest), await digestTree(src, { exclude }), `format ${format}`);
    }
  });
});
