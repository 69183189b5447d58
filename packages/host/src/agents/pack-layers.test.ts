import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import {
  chmod,
  chown,
  lchown,
  link,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  utimes,
  writeFile,
} from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { zstdCompressSync, zstdDecompressSync } from "node:zlib";
import { AppError } from "@paddock/protocol";
import { extractTarball, openArchive } from "../archive/extract-rootfs.ts";
import { encodeHeader, endOfArchive, type HeaderFields, padding } from "../archive/tar-format.ts";
import { freezeUpper } from "../envs/freeze.ts";
import { keepXattr } from "../fs/overlay-marks.ts";
import { digestTree } from "../fs/tree-digest.ts";
import { readXattrs, writeXattrs, xattrKey } from "../fs/xattrs.ts";
import { ImageStore } from "../images/image-store.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { assertOrder } from "../testing/order.ts";
import { packSnapshot, packTree, unpackSnapshot } from "./pack-layers.ts";

const isRoot = process.getuid?.() === 0;
const skip = e2eSkip(!isRoot && "packing and unpacking trees with owners, whiteouts and xattrs needs root");
const OPAQUE_DIR = "opa\\que\nfolder";
let work: string;
let counter = 0;

/** Whether trusted.overlay.opaque can be written and read here (root, the attr tools, the file system). */
function canUseOverlayXattrs(): boolean {
  if (!isRoot) return false;
  const probe = mkdtempSync(join(tmpdir(), "paddock-xattr-probe-"));
  try {
    const set = spawnSync("setfattr", ["-n", "trusted.overlay.opaque", "-v", "y", probe]);
    return set.status === 0 && spawnSync("getfattr", ["--version"]).status === 0;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
}
const xattrs = canUseOverlayXattrs();

before(async () => {
  work = await mkdtemp(join(tmpdir(), "paddock-pack-"));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

function fresh(name: string): string {
  return join(work, `${name}-${counter++}`);
}

/** Makes a file with the given content, mode and owner. */
async function put(path: string | Buffer, content: string | Buffer, mode = 0o644, uid = 0, gid = 0): Promise<void> {
  await writeFile(path, content);
  await chown(path, uid, gid);
  await chmod(path, mode);
}

/**
 * A layer-like tree: folders with special bits and owners, a setuid file and its hard link, a
 * 3 MB file, symlinks (one with a long target), a FIFO, whiteouts (one hard-linked), an opaque
 * folder, long and non-UTF-8 names, and an owner too large for ustar.
 */
async function richTree(order: "forward" | "reverse" = "forward"): Promise<string> {
  const root = fresh("tree");
  await mkdir(root);
  await chmod(root, 0o755);
  const dirs: [string, number, number][] = [
    ["etc", 0o755, 0],
    ["usr", 0o755, 0],
    ["usr/bin", 0o755, 0],
    ["tmp", 0o1777, 0],
    ["srv", 0o2775, 1000],
    ["empty", 0o700, 0],
    [OPAQUE_DIR, 0o755, 0],
    ["run", 0o755, 0],
  ];
  for (const [path, mode, owner] of order === "forward" ? dirs : dirs.toReversed()) {
    await mkdir(join(root, path), { recursive: true });
    await chown(join(root, path), owner, owner);
    await chmod(join(root, path), mode);
  }
  const files: [string, string | Buffer, number, number][] = [
    ["etc/hostname", "sandbox\n", 0o644, 0],
    ["usr/bin/su", "#!/bin/true\n", 0o4755, 0],
    ["usr/bin/wall", "w", 0o2755, 0],
    ["empty-file", "", 0o600, 0],
    ["srv/big", Buffer.alloc(3 * 1024 * 1024 + 7, "paddock"), 0o640, 1000],
    [`${OPAQUE_DIR}/inside`, "only this\n", 0o644, 0],
    ["srv/huge-owner", "big uid\n", 0o644, 3_000_000],
  ];
  for (const [path, content, mode, owner] of order === "forward" ? files : files.toReversed()) {
    await put(join(root, path), content, mode, owner, owner);
  }
  await link(join(root, "usr/bin/su"), join(root, "usr/bin/su-again"));
  const deep = join(root, `${"long-folder-".repeat(9)}`, `${"deeper-".repeat(20)}`);
  await mkdir(deep, { recursive: true });
  await put(join(deep, `${"n".repeat(200)}.txt`), "long path\n");
  await put(Buffer.from([...Buffer.from(`${root}/`), 0x6c, 0xe9, 0xff]), "latin-1 name\n");
  await symlink("usr/bin", join(root, "bin"));
  await symlink("/etc/passwd", join(root, "etc/abs-link"));
  await symlink(`../${"x".repeat(180)}`, join(root, "etc/long-link"));
  await lchown(join(root, "etc/long-link"), 1000, 1000);
  execFileSync("mkfifo", ["-m", "0620", join(root, "run/initctl")]);
  execFileSync("mknod", ["-m", "000", join(root, "gone"), "c", "0", "0"]);
  execFileSync("mknod", ["-m", "000", join(root, "srv/gone-too"), "c", "0", "0"]);
  await link(join(root, "gone"), join(root, "etc/gone-linked"));
  if (xattrs) execFileSync("setfattr", ["-n", "trusted.overlay.opaque", "-v", "y", join(root, OPAQUE_DIR)]);
  return root;
}

/** A layer's digest as freezing computes it: the extended attributes keepXattr keeps are covered. */
async function layerDigest(dir: string): Promise<string> {
  const found = await readXattrs(dir, [Buffer.alloc(0)], { recursive: true, keep: keepXattr });
  return digestTree(dir, { xattrs: (rel) => found.get(xattrKey(rel)) });
}

/** Extracts as a layer: whiteouts allowed, the extended attributes a layer keeps restored. */
const asLayer = { allowWhiteouts: true, xattrsAt: () => true };

async function packToFile(dir: string): Promise<{ file: string; result: Awaited<ReturnType<typeof packTree>> }> {
  const file = `${fresh("archive")}.tar.zst`;
  const result = await packTree(dir, createWriteStream(file));
  return { file, result };
}

function opaqueValue(path: string): string | null {
  const r = spawnSync("getfattr", ["--only-values", "-h", "-n", "trusted.overlay.opaque", path], { encoding: "utf8" });
  return r.status === 0 ? r.stdout : null;
}

describe("packTree", { skip }, () => {
  test("round trip: pack, extract with whiteouts allowed, same digest and same hard links", async () => {
    const tree = await richTree();
    const expected = await layerDigest(tree);
    const { file, result } = await packToFile(tree);
    assert.equal(result.digest, expected);
    assert.equal(result.bytes, (await stat(file)).size);
    assert.equal(result.xattrs, xattrs ? 1 : 0);
    const dest = fresh("out");
    await extractTarball(file, dest, asLayer);
    assert.equal(await layerDigest(dest), expected);
    const su = await stat(join(dest, "usr/bin/su"));
    assert.equal((await stat(join(dest, "usr/bin/su-again"))).ino, su.ino);
    assert.equal(su.mode & 0o7777, 0o4755);
    assert.equal((await lstat(join(dest, "srv/huge-owner"))).uid, 3_000_000);
    assert.ok((await lstat(join(dest, "gone"))).isCharacterDevice());
    if (xattrs) assert.equal(opaqueValue(join(dest, OPAQUE_DIR)), "y");
  });

  test("an opaque folder is kept", {
    skip: e2eSkip(!xattrs && "needs getfattr/setfattr and trusted xattrs"),
  }, async () => {
    const tree = fresh("opaque");
    await mkdir(join(tree, "a/b"), { recursive: true });
    execFileSync("setfattr", ["-n", "trusted.overlay.opaque", "-v", "y", join(tree, "a/b")]);
    // Only "y" makes a folder opaque; a layer keeps no other value, so neither does the archive.
    execFileSync("setfattr", ["-n", "trusted.overlay.opaque", "-v", "x", tree]);
    const { file, result } = await packToFile(tree);
    assert.equal(result.xattrs, 1);
    assert.equal(result.digest, await layerDigest(tree));
    assert.notEqual(result.digest, await digestTree(tree));
    const dest = fresh("out");
    await extractTarball(file, dest, asLayer);
    assert.equal(opaqueValue(join(dest, "a/b")), "y");
    assert.equal(opaqueValue(dest), null);
    assert.equal(opaqueValue(join(dest, "a")), null);
    assert.equal(await layerDigest(dest), result.digest);
    // A root filesystem import ignores extended attributes.
    const plain = fresh("out");
    await extractTarball(file, plain);
    assert.equal(opaqueValue(join(plain, "a/b")), null);
  });

  test("the stream is deterministic: no timestamps, byte order, whatever the creation order", async () => {
    const a = await richTree("forward");
    const b = await richTree("reverse");
    await utimes(join(b, "etc/hostname"), new Date(5_000_000), new Date(5_000_000));
    await utimes(join(b, "usr"), new Date(7_000_000), new Date(7_000_000));
    const packedA = await packToFile(a);
    const packedB = await packToFile(b);
    const again = await packToFile(a);
    assert.deepEqual(await readFile(packedA.file), await readFile(again.file));
    // The same content made in another order and with other times packs to the same bytes.
    assert.equal(packedA.result.digest, packedB.result.digest);
    assert.deepEqual(await readFile(packedA.file), await readFile(packedB.file));

    const reader = await openArchive(packedA.file);
    const names: string[] = [];
    try {
      for (let e = await reader.next(); e !== null; e = await reader.next()) {
        assert.equal(e.mtime, 0, e.path.toString());
        names.push(e.path.toString("latin1"));
      }
    } finally {
      await reader.close();
    }
    assert.equal(names[0], "./");
    assertOrder(names, ["usr/", "usr/bin/", "usr/bin/su"]);
    assertOrder(names, ["etc/", "etc/abs-link", "etc/gone-linked"]);
  });

  test("GNU tar reads the archive back to the same tree", async () => {
    const tree = await richTree();
    const { file, result } = await packToFile(tree);
    const plain = `${fresh("plain")}.tar`;
    await writeFile(plain, zstdDecompressSync(await readFile(file)));
    const dest = fresh("gnu-out");
    await mkdir(dest);
    const xattrArgs = xattrs ? ["--xattrs", "--xattrs-include=trusted.*"] : [];
    execFileSync("tar", ["-x", "--numeric-owner", "--same-permissions", ...xattrArgs, "-f", plain, "-C", dest]);
    assert.equal(await layerDigest(dest), result.digest);
    if (xattrs) assert.equal(opaqueValue(join(dest, OPAQUE_DIR)), "y");
  });

  test("sockets and device nodes are refused by name", async () => {
    const withSocket = fresh("socket");
    await mkdir(withSocket);
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(join(withSocket, "agent.sock"), resolve));
    try {
      await assert.rejects(packToFile(withSocket), (err: unknown) => {
        assert.ok(err instanceof AppError && err.code === "validation_failed");
        assert.match(err.message, /"agent.sock" .* is a socket/);
        return true;
      });
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    const withDevice = fresh("device");
    await mkdir(withDevice);
    execFileSync("mknod", [join(withDevice, "null"), "c", "1", "3"]);
    await assert.rejects(packToFile(withDevice), /"null" .* is a device node \(1:3\)/);
  });
});

/** A zstd tar holding `specs` in order, for hand-made snapshot archives. */
function snapshotOf(specs: (HeaderFields & { body?: string })[]): Buffer {
  const parts: Buffer[] = [];
  for (const spec of specs) {
    const body = Buffer.from(spec.body ?? "");
    parts.push(encodeHeader({ ...spec, size: body.length }), body, padding(body.length));
  }
  parts.push(endOfArchive());
  return zstdCompressSync(Buffer.concat(parts));
}

function stores(): { layersDir: string; imagesDir: string } {
  const root = fresh("stores");
  return { layersDir: join(root, "layers"), imagesDir: join(root, "images") };
}

async function list(dir: string): Promise<string[]> {
  return existsSync(dir) ? (await readdir(dir)).sort() : [];
}

/** Imports `archive` into fresh stores: refused as validation_failed matching `pattern`, nothing written. */
async function refusedImport(archive: Buffer, pattern: RegExp): Promise<void> {
  const file = `${fresh("hostile")}.tar.zst`;
  await writeFile(file, archive);
  const into = stores();
  await assert.rejects(unpackSnapshot(file, into), (err: unknown) => {
    assert.ok(err instanceof AppError, String(err));
    assert.equal(err.code, "validation_failed");
    assert.match(err.message, pattern);
    return true;
  });
  assert.deepEqual(await list(into.layersDir), [], "nothing installed, no temp folder left");
  assert.deepEqual(await list(into.imagesDir), []);
}

describe("packSnapshot and unpackSnapshot", { skip }, () => {
  let base: string;
  let layerA: string;
  let layerB: string;
  let digests: { base: string; a: string; b: string };

  before(async () => {
    if (!isRoot) return;
    base = fresh("base");
    await mkdir(join(base, "etc"), { recursive: true });
    await put(join(base, "etc/os-release"), "ID=debian\n");
    await symlink("usr/bin", join(base, "bin"));
    layerA = await richTree();
    layerB = fresh("layer");
    await mkdir(join(layerB, "app"), { recursive: true });
    await put(join(layerB, "app/main.py"), "print('hi')\n", 0o644, 61000, 61000);
    digests = { base: await digestTree(base), a: await layerDigest(layerA), b: await layerDigest(layerB) };
  });

  async function pack(): Promise<{ file: string; manifest: Record<string, unknown> }> {
    const manifest = { base: digests.base, layers: [digests.a, digests.b], runner: "sha256-runner", note: "ü" };
    const file = `${fresh("snapshot")}.tar.zst`;
    await packSnapshot(
      manifest,
      [
        { digest: digests.a, dir: layerA },
        { digest: digests.b, dir: layerB },
      ],
      { digest: digests.base, dir: base },
      createWriteStream(file),
    );
    return { file, manifest };
  }

  test("a snapshot moves to empty stores and comes out under the same digests", async () => {
    const { file, manifest } = await pack();
    const into = stores();
    assert.deepEqual(await unpackSnapshot(file, into), manifest);
    assert.deepEqual(await list(into.layersDir), [digests.a, digests.b].sort());
    assert.equal(await layerDigest(join(into.layersDir, digests.a)), digests.a);
    assert.equal(await layerDigest(join(into.layersDir, digests.b)), digests.b);
    assert.deepEqual(await list(into.imagesDir), [digests.base]);
    const image = await new ImageStore({ imagesDir: into.imagesDir }).resolve(digests.base);
    assert.equal(await digestTree(image.rootfs), digests.base);
    const meta = JSON.parse(await readFile(join(into.imagesDir, digests.base, "meta.json"), "utf8"));
    assert.equal(meta.digest, digests.base);
    assert.equal(meta.size_bytes, "ID=debian\n".length);
    if (xattrs) assert.equal(opaqueValue(join(into.layersDir, digests.a, OPAQUE_DIR)), "y");

    // A second import keeps what is already there.
    const before = (await stat(join(into.layersDir, digests.a))).ino;
    const imageBefore = (await stat(join(into.imagesDir, digests.base))).ino;
    assert.deepEqual(await unpackSnapshot(file, into), manifest);
    assert.equal((await stat(join(into.layersDir, digests.a))).ino, before);
    assert.equal((await stat(join(into.imagesDir, digests.base))).ino, imageBefore);
    assert.deepEqual(await list(into.layersDir), [digests.a, digests.b].sort());
  });

  test("packing refuses a folder that does not hold the digest given for it", async () => {
    const file = `${fresh("snapshot")}.tar.zst`;
    await assert.rejects(
      packSnapshot({}, [{ digest: digests.a, dir: layerB }], null, createWriteStream(file)),
      (err: unknown) => {
        assert.ok(err instanceof AppError && err.code === "validation_failed");
        assert.match(err.message, new RegExp(`does not hold ${digests.a}: its content has digest ${digests.b}`));
        return true;
      },
    );
  });

  const d = (n: string) => `sha256-${n.repeat(64)}`;
  const manifestFile = { type: "file" as const, path: "manifest.json", mode: 0o644, uid: 0, gid: 0, body: "{}\n" };

  test("hostile or damaged snapshot archives install nothing", async () => {
    await refusedImport(
      snapshotOf([
        manifestFile,
        { type: "dir", path: `layers/${d("a")}`, mode: 0o755, uid: 0, gid: 0 },
        { type: "file", path: `layers/${d("a")}/x`, mode: 0o644, uid: 0, gid: 0, body: "not what a names" },
      ]),
      new RegExp(`layer ${d("a")} holds content with digest sha256-`),
    );
    await refusedImport(
      snapshotOf([manifestFile, { type: "file", path: `layers/${d("b")}/../../../../x`, mode: 0o644, uid: 0, gid: 0 }]),
      /".." component/,
    );
    await refusedImport(
      snapshotOf([manifestFile, { type: "file", path: "evil", mode: 0o644, uid: 0, gid: 0 }]),
      /unexpected "evil"/,
    );
    await refusedImport(
      snapshotOf([{ type: "dir", path: `layers/${d("c")}`, mode: 0o755, uid: 0, gid: 0 }]),
      /no manifest.json/,
    );
    await refusedImport(snapshotOf([{ ...manifestFile, body: "[1, 2]" }]), /manifest.json must hold a JSON object/);
    await refusedImport(
      snapshotOf([manifestFile, { type: "dir", path: "layers/not-a-digest", mode: 0o755, uid: 0, gid: 0 }]),
      /"not-a-digest" is not named by a digest/,
    );
    await refusedImport(
      snapshotOf([
        manifestFile,
        { type: "symlink", path: `layers/${d("e")}`, linkpath: "/etc", mode: 0o777, uid: 0, gid: 0 },
      ]),
      /is not a folder/,
    );
    const { file } = await pack();
    const whole = await readFile(file);
    await refusedImport(whole.subarray(0, whole.length >> 1), /truncated\/corrupt/);
  });
});

const testData = process.env.PADDOCK_TEST_DATA;
const defaultDigest = (() => {
  if (!testData) return null;
  try {
    return readFileSync(join(testData, "images/default"), "utf8").trim();
  } catch {
    return null;
  }
})();
const realRootfs = defaultDigest && testData ? join(testData, "images", defaultDigest, "rootfs") : null;
const realSkip =
  skip ||
  e2eSkip(
    (!testData && "PADDOCK_TEST_DATA is not set") ||
      ((realRootfs === null || !existsSync(realRootfs)) && `no base image at ${testData}/images/<default>/rootfs`),
  );

describe("a real base image", { skip: realSkip }, () => {
  test("its digest survives packSnapshot → unpackSnapshot", async () => {
    const digest = defaultDigest as string;
    const file = `${fresh("real")}.tar.zst`;
    await packSnapshot(
      { base: digest, layers: [] },
      [],
      { digest, dir: realRootfs as string },
      createWriteStream(file),
    );
    const into = stores();
    assert.deepEqual(await unpackSnapshot(file, into), { base: digest, layers: [] });
    const image = await new ImageStore({ imagesDir: into.imagesDir }).resolve(digest);
    assert.equal(await digestTree(image.rootfs), digest);
  });
});

/** cap_net_raw+ep as the kernel stores it (VFS_CAP_REVISION_2), for hosts without setcap. */
const CAP_NET_RAW = "0x0100000200200000000000000000000000000000";
/** user::rw- user:1000:r-- group::r-- mask::rw- other::r-- (the kernel's xattr form). */
const ACL_ACCESS = "0x0200000001000600ffffffff02000400e803000004000400ffffffff10000600ffffffff20000400ffffffff";
/** default: user::rwx group::r-x other::r-x */
const ACL_DEFAULT = "0x0200000001000700ffffffff04000500ffffffff20000500ffffffff";

function hasTool(name: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${name}`], { env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" } }).status === 0;
}

/** One attribute as getfattr prints it in hex ("0x..."), or null when the entry has none by that name. */
function attrHex(path: string, name: string): string | null {
  const r = spawnSync("getfattr", ["-h", "-e", "hex", "-n", name, "--", path], { encoding: "utf8" });
  if (r.status !== 0) return null;
  const line = r.stdout.split("\n").find((l) => l.startsWith(`${name}=`));
  return line === undefined ? null : line.slice(name.length + 1);
}

/** getfattr's dump of every attribute in `dir`, as text, with the entries in a stable order. */
function dumpAll(dir: string): string {
  const out = execFileSync("getfattr", ["-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "."], { cwd: dir });
  return out.toString("latin1").split("\n\n").filter(Boolean).sort().join("\n\n");
}

describe("extended attributes of a layer", {
  skip: skip || e2eSkip(!xattrs && "needs getfattr/setfattr and trusted xattrs"),
}, () => {
  const userValue = Buffer.from("hello=paddock\nsecond line \u0000\u00ff", "latin1");
  let layer: string;
  let digest: string;

  before(async () => {
    if (skip || !xattrs) return;
    layer = fresh("xattr-layer");
    await mkdir(join(layer, "usr/bin"), { recursive: true });
    await mkdir(join(layer, "etc/opaque"), { recursive: true });
    await mkdir(join(layer, "srv/shared"), { recursive: true });
    await put(join(layer, "usr/bin/ping"), "#!/bin/true\n", 0o755);
    await link(join(layer, "usr/bin/ping"), join(layer, "usr/bin/ping-again"));
    await put(join(layer, "srv/acl-file"), "acl\n", 0o644);
    await put(join(layer, "srv/notes"), "notes\n", 0o644);
    await put(join(layer, "etc/opaque/only"), "only\n", 0o644);
    await symlink("../usr/bin/ping", join(layer, "etc/ping-link"));
    if (hasTool("setcap")) execFileSync("setcap", ["cap_net_raw+ep", join(layer, "usr/bin/ping")]);
    else execFileSync("setfattr", ["-h", "-n", "security.capability", "-v", CAP_NET_RAW, join(layer, "usr/bin/ping")]);
    // Raw ACL values, so that the acl package (setfacl) is not needed.
    execFileSync("setfattr", ["-h", "-n", "system.posix_acl_access", "-v", ACL_ACCESS, join(layer, "srv/acl-file")]);
    execFileSync("setfattr", ["-h", "-n", "system.posix_acl_default", "-v", ACL_DEFAULT, join(layer, "srv/shared")]);
    execFileSync("setfattr", ["-h", "-n", "trusted.overlay.opaque", "-v", "y", join(layer, "etc/opaque")]);
    // user.* names and values are any bytes: "=" and "%" need GNU tar's escaping in a pax keyword.
    await writeXattrs(
      layer,
      new Map([
        [
          "srv/notes",
          [
            { name: "user.origin", value: userValue },
            { name: Buffer.from("user.a=b%3Dc\u00e9", "latin1"), value: Buffer.from("odd name") },
            // Attributes a layer does not keep: left out of the archive and of the digest.
            { name: "user.overlay.origin", value: Buffer.from("x") },
            { name: "trusted.foo", value: Buffer.from("bar") },
          ],
        ],
        ["srv/shared", [{ name: "user.dir", value: Buffer.from("on a folder") }]],
      ]),
    );
    digest = await layerDigest(layer);
  });

  async function packLayer(): Promise<string> {
    const file = `${fresh("xattr-snapshot")}.tar.zst`;
    await packSnapshot({ layers: [digest] }, [{ digest, dir: layer }], null, createWriteStream(file));
    return file;
  }

  test("they survive pack → unpack: same digest, same attributes, deterministic archive", async () => {
    assert.notEqual(digest, await digestTree(layer), "the digest covers the attributes");
    const file = await packLayer();
    assert.deepEqual(await readFile(await packLayer()), await readFile(file));

    const reader = await openArchive(file);
    const carried = new Map<string, string[]>();
    try {
      for (let e = await reader.next(); e !== null; e = await reader.next()) {
        if (e.xattrs.size > 0) carried.set(e.path.toString("latin1"), [...e.xattrs.keys()]);
      }
    } finally {
      await reader.close();
    }
    const at = (rel: string) => `layers/${digest}/${rel}`;
    assert.deepEqual(
      carried,
      new Map([
        [`${at("etc/opaque")}/`, ["trusted.overlay.opaque"]],
        [`${at("srv/acl-file")}`, ["system.posix_acl_access"]],
        [`${at("srv/notes")}`, ["user.a=b%3Dc\u00e9", "user.origin"]],
        [`${at("srv/shared")}/`, ["system.posix_acl_default", "user.dir"]],
        // The hard link usr/bin/ping-again shares the inode and carries nothing itself.
        [`${at("usr/bin/ping")}`, ["security.capability"]],
      ]),
    );

    const into = stores();
    assert.deepEqual(await unpackSnapshot(file, into), { layers: [digest] });
    const out = join(into.layersDir, digest);
    assert.equal(await layerDigest(out), digest);
    assert.equal(attrHex(join(out, "usr/bin/ping"), "security.capability"), CAP_NET_RAW);
    assert.equal(attrHex(join(out, "usr/bin/ping-again"), "security.capability"), CAP_NET_RAW);
    assert.equal(attrHex(join(out, "srv/acl-file"), "system.posix_acl_access"), ACL_ACCESS);
    assert.equal(attrHex(join(out, "srv/shared"), "system.posix_acl_default"), ACL_DEFAULT);
    assert.equal(attrHex(join(out, "srv/notes"), "user.origin"), `0x${userValue.toString("hex")}`);
    assert.equal(attrHex(join(out, "etc/opaque"), "trusted.overlay.opaque"), "0x79");
    assert.equal(attrHex(join(out, "srv/notes"), "user.overlay.origin"), null);
    assert.equal(attrHex(join(out, "srv/notes"), "trusted.foo"), null);
    // Everything getfattr sees matches, but for the two attributes a layer does not keep.
    const expected = dumpAll(layer).replace(/^(user\.overlay\.origin|trusted\.foo)=.*\n/gm, "");
    assert.equal(dumpAll(out), expected);
    assert.equal(
      (await stat(join(out, "srv/acl-file"))).mode & 0o7777,
      (await stat(join(layer, "srv/acl-file"))).mode & 0o7777,
    );
  });

  test("a layer made by freezing exports and imports under its digest", async () => {
    const upper = fresh("upper");
    await mkdir(join(upper, "usr/bin"), { recursive: true });
    await mkdir(join(upper, "var/opaque"), { recursive: true });
    await put(join(upper, "usr/bin/ping"), "#!/bin/true\n", 0o755);
    execFileSync("setfattr", ["-h", "-n", "security.capability", "-v", CAP_NET_RAW, join(upper, "usr/bin/ping")]);
    execFileSync("setfattr", ["-h", "-n", "system.posix_acl_default", "-v", ACL_DEFAULT, join(upper, "var")]);
    execFileSync("setfattr", ["-h", "-n", "trusted.overlay.opaque", "-v", "y", join(upper, "var/opaque")]);
    execFileSync("setfattr", ["-h", "-n", "user.note", "-v", "kept", join(upper, "usr/bin/ping")]);
    const frozen = await freezeUpper({ upper, lowers: [], layersDir: fresh("frozen-layers") });
    const file = `${fresh("frozen")}.tar.zst`;
    await packSnapshot({}, [{ digest: frozen.digest, dir: frozen.dir }], null, createWriteStream(file));
    const into = stores();
    await unpackSnapshot(file, into);
    const out = join(into.layersDir, frozen.digest);
    assert.equal(await layerDigest(out), frozen.digest);
    assert.equal(dumpAll(out), dumpAll(frozen.dir));
    assert.equal(attrHex(join(out, "usr/bin/ping"), "security.capability"), CAP_NET_RAW);
  });

  test("an archive carrying an attribute a layer does not keep is refused, with nothing written", async () => {
    const d = `sha256-${"a".repeat(64)}`;
    const owner = { mode: 0o644, uid: 0, gid: 0 };
    const withAttr = (path: string, attrs: [string, Buffer][]) =>
      snapshotOf([
        { type: "file", path: "manifest.json", ...owner, body: "{}\n" },
        { type: "dir", path: `layers/${d}`, ...owner, mode: 0o755 },
        { type: "file", path, ...owner, body: "x", xattrs: attrs },
      ]);
    const inLayer = `layers/${d}/f`;
    for (const name of [
      "trusted.overlay.redirect",
      "trusted.overlay.metacopy",
      "trusted.foo",
      "security.selinux",
      "security.ima",
      "user.overlay.opaque",
      "system.nfs4_acl",
    ]) {
      await refusedImport(
        withAttr(inLayer, [[name, Buffer.from("y")]]),
        new RegExp(`"${name.replaceAll(".", "\\.")}", which an environment layer does not keep`),
      );
    }
    await refusedImport(withAttr(inLayer, [["trusted.overlay.opaque", Buffer.from("x")]]), /does not keep/);
    // Attributes are for layers only: not on a base image, not on the manifest.
    await refusedImport(
      snapshotOf([
        { type: "file", path: "manifest.json", ...owner, body: "{}\n" },
        { type: "dir", path: "base", ...owner },
        { type: "file", path: `base/${d}/f`, ...owner, xattrs: [["user.x", Buffer.from("1")]] },
      ]),
      /carries extended attributes, which are not allowed there/,
    );
    await refusedImport(
      snapshotOf([
        { type: "file", path: "manifest.json", ...owner, body: "{}\n", xattrs: [["user.x", Buffer.from("1")]] },
      ]),
      /not allowed there/,
    );
    const many: [string, Buffer][] = Array.from({ length: 33 }, (_, i) => [`user.n${i}`, Buffer.from("v")]);
    await refusedImport(withAttr(inLayer, many), /more than 32 extended attributes/);
    await refusedImport(withAttr(inLayer, [["user.big", Buffer.alloc(64 * 1024 + 1)]]), /over-long value/);
    await refusedImport(
      withAttr(inLayer, [
        ["user.a", Buffer.alloc(40 * 1024)],
        ["user.b", Buffer.alloc(40 * 1024)],
      ]),
      /more than 65536 bytes of extended attributes/,
    );
  });

  test("a tampered attribute value fails the digest check", async () => {
    const file = await packLayer();
    const tar = zstdDecompressSync(await readFile(file));
    const at = tar.indexOf(userValue);
    assert.ok(at > 0);
    const tampered = Buffer.from(tar);
    tampered[at] = "H".charCodeAt(0);
    await refusedImport(zstdCompressSync(tampered), new RegExp(`layer ${digest} holds content with digest sha256-`));
    // The capability too: cap_net_raw becomes cap_net_admin (bit 12 instead of 13).
    const cap = Buffer.from(CAP_NET_RAW.slice(2), "hex");
    const capAt = tar.indexOf(cap);
    assert.ok(capAt > 0);
    const raised = Buffer.from(tar);
    raised[capAt + 5] = 0x10;
    await refusedImport(zstdCompressSync(raised), new RegExp(`layer ${digest} holds content with digest sha256-`));
  });
});
