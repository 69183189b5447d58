import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmod, lchown, link, lstat, mkdir, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { digestTree, scanTree } from "../fs/tree-digest.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { DEFAULT_FREEZE_EXCLUDE, freezeUpper } from "./freeze.ts";
import { describeTree, getXattr, listXattrNames, Scratch, sh, skipReason } from "./test-support.ts";

const skip = e2eSkip(skipReason());
const CAP_NET_RAW = "0x0100000200200000000000000000000000000000";
const AGENT = 61000;

/** The base layer: a small root filesystem on disk. */
async function makeLower(dir: string): Promise<void> {
  const file = async (rel: string, content: string, mode = 0o644, uid = 0, gid = 0): Promise<void> => {
    await mkdir(join(dir, rel, ".."), { recursive: true });
    await writeFile(join(dir, rel), content);
    await chmod(join(dir, rel), mode);
    await lchown(join(dir, rel), uid, gid);
  };
  await file("etc/config", "v1\n");
  await file("etc/keep", "keep\n");
  await file("etc/gone", "gone\n");
  await file("data/dir/a", "a\n");
  await file("data/dir/b", "b\n");
  await file("data/dir/sub/c", "c\n");
  await file("bigdir/one", "1\n");
  await file("bigdir/deep/two", "2\n");
  await file("usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755);
  await symlink("tool", join(dir, "usr/bin/tool-link"));
  await mkdir(join(dir, "chmoddir"));
  await chmod(join(dir, "chmoddir"), 0o755);
  for (const sticky of ["tmp", "var/tmp"]) {
    await mkdir(join(dir, sticky), { recursive: true });
    await chmod(join(dir, sticky), 0o1777);
  }
  await mkdir(join(dir, "opt/paddock/runner"), { recursive: true });
  await mkdir(join(dir, "run"));
  await mkdir(join(dir, "home/agent"), { recursive: true });
  await chmod(join(dir, "home/agent"), 0o700);
  await lchown(join(dir, "home/agent"), AGENT, AGENT);
}

const WEIRD_NAME = Buffer.from([0x77, 0xff, 0xfe, 0x0a, 0x5c, 0x3d]); // "w", non-UTF-8, newline, "\", "="

/** Changes made through the session's merged view, as a user would. */
async function editSession(root: string): Promise<void> {
  const p = (rel: string): string => join(root, rel);
  const write = async (rel: string, content: string | Buffer, mode = 0o644, uid = 0, gid = 0): Promise<void> => {
    await mkdir(join(root, rel, ".."), { recursive: true });
    await writeFile(p(rel), content);
    await lchown(p(rel), uid, gid);
    await chmod(p(rel), mode);
  };
  // Added, with several owners.
  await write("usr/bin/newtool", "#!/bin/sh\necho new\n", 0o755);
  await write("home/agent/file", "mine\n", 0o600, AGENT, AGENT);
  await write("home/agent/proj/x", "x\n", 0o644, 1001, 1002);
  await write("home/agent/proj/y", "y\n", 0o640, 1003, 1004);
  await lchown(p("home/agent/proj"), 1001, 1002);
  await write("usr/bin/suid", "#!/bin/sh\n", 0o4755);
  await chmod(p("usr/bin/suid"), 0o4755);
  await link(p("usr/bin/newtool"), p("usr/bin/newtool-hl"));
  await symlink("newtool", p("usr/bin/nt"));
  await symlink("/etc/shadow", p("etc/evil"));
  await lchown(p("etc/evil"), 1001, 1001);
  await write("data/big.bin", randomBytes(24 * 1024 * 1024));
  sh("mkfifo", ["-m", "0620", p("data/fifo")]);
  await write("data/-rf", "dash\n");
  await write("etc/new\nline", "nl\n");
  await writeFile(Buffer.concat([Buffer.from(`${root}/etc/`), WEIRD_NAME]), "weird\n");
  await writeFile(Buffer.concat([Buffer.from(`${root}/`), Buffer.from([0xff, 0x2d])]), "top-level odd name\n");
  // File capabilities, set after the last chown (which clears them).
  sh("setfattr", ["-h", "-n", "security.capability", "-v", CAP_NET_RAW, p("usr/bin/newtool")]);
  // Modified.
  await writeFile(p("etc/config"), "v2\n");
  sh("setfattr", ["-h", "-n", "user.note", "-v", "hello", p("etc/config")]);
  sh("setfattr", ["-h", "-n", "user.overlay.redirect", "-v", "/etc", p("etc/config")]);
  await lchown(p("etc/keep"), 5, 5);
  await chmod(p("chmoddir"), 0o700);
  // Removed: a file (whiteout), a whole folder (whiteout), and a folder replaced (opaque).
  await rm(p("etc/gone"));
  await rm(p("bigdir"), { recursive: true });
  await rm(p("data/dir"), { recursive: true });
  await mkdir(p("data/dir"));
  await writeFile(p("data/dir/a"), "new a\n");
  await writeFile(p("data/dir/new"), "new\n");
  // Excluded paths.
  await writeFile(p("tmp/junk"), "junk\n");
  await writeFile(p("var/tmp/junk"), "junk\n");
  await writeFile(p("run/pid"), "1\n");
  await write("outputs/result.txt", "result\n");
  await writeFile(p("opt/paddock/runner/planted"), "x\n");
}

/** Paths under which the two merged views may differ: the excluded ones. */
const EXCLUDED_REL = ["tmp", "var/tmp", "run", "outputs", "opt/paddock/runner"];

describe("freezeUpper", { skip }, () => {
  test("the frozen layer over the same lower shows exactly what the session showed", async () => {
    const s = await Scratch.create("paddock-freeze-");
    try {
      const lower = s.path("lower");
      await makeLower(lower);
      await s.tmpfs(s.path("rw"), "256m");
      const merged = await s.overlay([lower], s.path("rw/upper"), s.path("rw/work"), s.path("merged"));
      await editSession(merged);
      const before = await describeTree(merged, EXCLUDED_REL);

      const layersDir = s.path("layers");
      await assert.rejects(
        freezeUpper({ upper: s.path("rw/upper"), lowers: [lower], layersDir }),
        /still the writable layer of the overlay at .*merged: stop the session's sandbox first/,
      );
      await s.unmount(merged);
      const frozen = await freezeUpper({ upper: s.path("rw/upper"), lowers: [lower], layersDir });
      assert.match(frozen.digest, /^sha256-[0-9a-f]{64}$/);
      assert.equal(frozen.dir, join(layersDir, frozen.digest));
      assert.equal(frozen.reused, false);
      assert.deepEqual(await readdir(layersDir), [frozen.digest], "no work folder is left in the store");

      const view = await s.readOnlyOverlay([frozen.dir, lower], s.path("view"));
      const after = await describeTree(view, EXCLUDED_REL);
      assert.deepEqual(after, before, "same entries, types, modes, owners, contents and link targets");

      // Deleted entries stay deleted; the recreated folder shows only its new contents.
      await assert.rejects(lstat(join(view, "etc/gone")), { code: "ENOENT" });
      await assert.rejects(lstat(join(view, "bigdir")), { code: "ENOENT" });
      assert.deepEqual((await readdir(join(view, "data/dir"))).sort(), ["a", "new"]);
      assert.equal(await readFile(join(view, "data/dir/a"), "utf8"), "new a\n");
      // Excluded paths show the lower layer again.
      assert.deepEqual(await readdir(join(view, "tmp")), []);
      assert.deepEqual(await readdir(join(view, "var/tmp")), []);
      assert.deepEqual(await readdir(join(view, "opt/paddock/runner")), []);
      await assert.rejects(lstat(join(view, "outputs")), { code: "ENOENT" });
      // Kept attributes: capabilities, user.* (not user.overlay.*); setuid and hard links.
      assert.equal(getXattr(join(view, "usr/bin/newtool"), "security.capability"), CAP_NET_RAW);
      assert.equal(getXattr(join(view, "etc/config"), "user.note"), "0x68656c6c6f");
      assert.equal(getXattr(join(view, "etc/config"), "user.overlay.redirect"), undefined);
      assert.equal((await lstat(join(view, "usr/bin/suid"))).mode & 0o7777, 0o4755);
      const a = await lstat(join(frozen.dir, "usr/bin/newtool"));
      const b = await lstat(join(frozen.dir, "usr/bin/newtool-hl"));
      assert.equal(a.ino, b.ino, "hard link kept inside the layer");
      assert.equal(a.nlink, 2);

      // The layer itself: whiteouts, one opaque mark, no overlay bookkeeping, nothing excluded.
      const gone = await lstat(join(frozen.dir, "etc/gone"));
      assert.ok(gone.isCharacterDevice() && gone.rdev === 0, "etc/gone is a whiteout");
      assert.ok((await lstat(join(frozen.dir, "bigdir"))).isCharacterDevice(), "bigdir is a whiteout");
      assert.equal((await lstat(join(frozen.dir, "etc/evil"))).isSymbolicLink(), true);
      assert.deepEqual(
        listXattrNames(frozen.dir),
        [
          "data/dir trusted.overlay.opaque",
          "etc/config user.note",
          "usr/bin/newtool security.capability",
          "usr/bin/newtool-hl security.capability",
        ].sort(),
      );
      for (const rel of ["tmp", "var/tmp", "run", "outputs", "opt/paddock/runner"]) {
        await assert.rejects(lstat(join(frozen.dir, rel)), { code: "ENOENT" }, rel);
      }
      assert.equal((await lstat(join(frozen.dir, "opt/paddock"))).isDirectory(), true);

      // Sizes and counts.
      const scan = await scanTree(frozen.dir, {
        xattrs: (rel) => {
          const key = rel.toString();
          if (key === "data/dir") return [{ name: "trusted.overlay.opaque", value: Buffer.from("y") }];
          if (key === "etc/config") return [{ name: "user.note", value: Buffer.from("hello") }];
          if (key === "usr/bin/newtool" || key === "usr/bin/newtool-hl")
            return [{ name: "security.capability", value: Buffer.from(CAP_NET_RAW.slice(2), "hex") }];
          return undefined;
        },
      });
      assert.equal(scan.digest, frozen.digest, "the digest is the tree digest with the kept attributes");
      assert.notEqual(await digestTree(frozen.dir), frozen.digest, "the attributes are part of the digest");
      assert.equal(frozen.bytes, scan.bytes);
      assert.equal(frozen.entries, scan.entries);

      const c = frozen.changes;
      const added = [
        "/data/-rf",
        "/data/big.bin",
        "/data/dir/new",
        "/data/fifo",
        "/etc/evil",
        "/etc/new\nline",
        `/etc/${WEIRD_NAME.toString("utf8")}`,
        "/home/agent/file",
        "/home/agent/proj",
        "/home/agent/proj/x",
        "/home/agent/proj/y",
        "/usr/bin/newtool",
        "/usr/bin/newtool-hl",
        "/usr/bin/nt",
        "/usr/bin/suid",
        `/${Buffer.from([0xff, 0x2d]).toString("utf8")}`,
      ];
      const modified = ["/chmoddir", "/data/dir", "/data/dir/a", "/etc/config", "/etc/keep"];
      const removed = ["/bigdir", "/data/dir/b", "/data/dir/sub", "/etc/gone"];
      const byBytes = (list: string[]): string[] => list.sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
      assert.deepEqual(
        c.sample.added,
        c.sample.added.slice().sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))),
      );
      assert.deepEqual(new Set(c.sample.added), new Set(added));
      assert.deepEqual(c.sample.modified, byBytes(modified));
      assert.deepEqual(c.sample.removed, byBytes(removed));
      assert.equal(c.added, added.length);
      assert.equal(c.modified, modified.length);
      assert.equal(c.removed, removed.length);
      const addedBytes =
        24 * 1024 * 1024 +
        ["dash\n", "new\n", "nl\n", "weird\n", "mine\n", "x\n", "y\n", "#!/bin/sh\necho new\n", "#!/bin/sh\n"]
          .concat("top-level odd name\n")
          .reduce((n, text) => n + Buffer.byteLength(text), 0);
      assert.equal(c.bytes_added, addedBytes, "the hard-linked file counts once");

      // Freezing the same upper again finds the stored layer.
      const again = await freezeUpper({ upper: s.path("rw/upper"), lowers: [lower], layersDir });
      assert.equal(again.digest, frozen.digest);
      assert.equal(again.reused, true);
      assert.deepEqual(again.changes, frozen.changes);
      assert.deepEqual(await readdir(layersDir), [frozen.digest]);
      assert.equal((await lstat(frozen.dir)).ino, (await lstat(again.dir)).ino);
    } finally {
      await s.close();
    }
  });

  test("opaque-ness changes the digest; without attributes the digest is the plain tree digest", async () => {
    const s = await Scratch.create("paddock-freeze-");
    try {
      const digests: string[] = [];
      for (const opaque of [false, true]) {
        const upper = s.path(`upper-${opaque}`);
        await mkdir(join(upper, "d"), { recursive: true });
        await writeFile(join(upper, "d/f"), "f\n");
        if (opaque) sh("setfattr", ["-h", "-n", "trusted.overlay.opaque", "-v", "y", join(upper, "d")]);
        const frozen = await freezeUpper({ upper, lowers: [], layersDir: s.path("layers") });
        if (!opaque) assert.equal(frozen.digest, await digestTree(frozen.dir));
        digests.push(frozen.digest);
      }
      assert.notEqual(digests[0], digests[1]);
    } finally {
      await s.close();
    }
  });

  test("device nodes other than whiteouts are refused and leave nothing behind", async () => {
    const s = await Scratch.create("paddock-freeze-");
    try {
      const upper = s.path("upper");
      await mkdir(join(upper, "usr"), { recursive: true });
      sh("mknod", ["-m", "0666", join(upper, "usr/disk"), "b", "8", "0"]);
      const layersDir = s.path("layers");
      await assert.rejects(freezeUpper({ upper, lowers: [], layersDir }), /device nodes.*usr\/disk/);
      assert.deepEqual(await readdir(layersDir), []);
    } finally {
      await s.close();
    }
  });

  test("an upper written with redirect_dir or metacopy on is refused", async () => {
    const s = await Scratch.create("paddock-freeze-");
    try {
      const upper = s.path("upper");
      await mkdir(join(upper, "moved"), { recursive: true });
      sh("setfattr", ["-h", "-n", "trusted.overlay.redirect", "-v", "/orig", join(upper, "moved")]);
      const layersDir = s.path("layers");
      await assert.rejects(freezeUpper({ upper, lowers: [], layersDir }), /trusted\.overlay\.redirect/);
      assert.deepEqual(await readdir(layersDir), []);
    } finally {
      await s.close();
    }
  });

  test("symlinks on the way to excluded paths are kept as links, never followed", async () => {
    const s = await Scratch.create("paddock-freeze-");
    try {
      const outside = s.path("outside");
      await mkdir(join(outside, "paddock/runner"), { recursive: true });
      await writeFile(join(outside, "paddock/secret"), "host file\n");
      const upper = s.path("upper");
      await mkdir(join(upper, "var"), { recursive: true });
      await symlink(outside, join(upper, "opt"));
      await symlink(outside, join(upper, "var/tmp-link"));
      await symlink("/", join(upper, "tmp"));
      const frozen = await freezeUpper({ upper, lowers: [], layersDir: s.path("layers") });
      assert.equal((await lstat(join(frozen.dir, "opt"))).isSymbolicLink(), true);
      assert.equal((await lstat(join(frozen.dir, "var/tmp-link"))).isSymbolicLink(), true);
      await assert.rejects(lstat(join(frozen.dir, "tmp")), { code: "ENOENT" });
      assert.equal(frozen.entries, 4, "root, opt, var, var/tmp-link");
      assert.equal(frozen.changes.added, 3);
    } finally {
      await s.close();
    }
  });

  test("the default exclusions are absolute sandbox paths", () => {
    for (const path of DEFAULT_FREEZE_EXCLUDE) assert.match(path, /^\/[a-z]/);
    assert.ok(!DEFAULT_FREEZE_EXCLUDE.includes("/home/agent/.cache"));
  });
});
