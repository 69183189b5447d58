import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmod, chown, lchown, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { digestEntries, digestTree, scanTree } from "./tree-digest.ts";

const isRoot = process.getuid?.() === 0;
let work: string;
let counter = 0;

before(async () => {
  work = await mkdtemp(join(tmpdir(), "paddock-tree-digest-"));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

/** A small tree with a nested folder, files, an executable, an empty folder and a symlink. */
async function sampleTree(): Promise<string> {
  const root = join(work, `tree-${counter++}`);
  await mkdir(join(root, "usr/bin"), { recursive: true });
  await mkdir(join(root, "empty"));
  await writeFile(join(root, "usr/bin/tool"), "#!/bin/sh\necho hi\n", { mode: 0o755 });
  await chmod(join(root, "usr/bin/tool"), 0o755);
  await writeFile(join(root, "readme"), "hello\n");
  await chmod(join(root, "readme"), 0o644);
  await symlink("usr/bin", join(root, "bin"));
  return root;
}

describe("digestTree", () => {
  test("equal trees give equal digests, whatever their timestamps", async () => {
    const a = await sampleTree();
    const b = await sampleTree();
    await utimes(join(b, "readme"), new Date(0), new Date(0));
    const digest = await digestTree(a);
    assert.match(digest, /^sha256-[0-9a-f]{64}$/);
    assert.equal(await digestTree(b), digest);
    assert.equal(await digestTree(a), digest);
  });

  test("a changed byte changes the digest", async () => {
    const a = await sampleTree();
    const b = await sampleTree();
    await writeFile(join(b, "readme"), "hellO\n");
    assert.notEqual(await digestTree(b), await digestTree(a));
  });

  test("a changed mode changes the digest", async () => {
    const a = await sampleTree();
    const b = await sampleTree();
    await chmod(join(b, "usr/bin/tool"), 0o750);
    assert.notEqual(await digestTree(b), await digestTree(a));
    const c = await sampleTree();
    await chmod(join(c, "empty"), 0o700);
    assert.notEqual(await digestTree(c), await digestTree(a));
  });

  test("a changed owner or group changes the digest", {
    skip: e2eSkip(!isRoot && "changing owners needs root"),
  }, async () => {
    const a = await sampleTree();
    const b = await sampleTree();
    await chown(join(b, "readme"), 61000, 0);
    const c = await sampleTree();
    await chown(join(c, "readme"), 0, 61000);
    const d = await sampleTree();
    await lchown(join(d, "bin"), 61000, 61000);
    const digests = new Set([await digestTree(a), await digestTree(b), await digestTree(c), await digestTree(d)]);
    assert.equal(digests.size, 4);
  });

  test("a changed symlink target changes the digest", async () => {
    const a = await sampleTree();
    const b = await sampleTree();
    await rm(join(b, "bin"));
    await symlink("usr/bin/", join(b, "bin"));
    assert.notEqual(await digestTree(b), await digestTree(a));
  });

  test("an added empty file or folder changes the digest", async () => {
    const a = await sampleTree();
    const b = await sampleTree();
    await writeFile(join(b, "empty/new"), "");
    const c = await sampleTree();
    await mkdir(join(c, "empty/new"));
    const digests = new Set([await digestTree(a), await digestTree(b), await digestTree(c)]);
    assert.equal(digests.size, 3);
  });

  test("a file and a symlink with the same text differ", async () => {
    const a = join(work, `tree-${counter++}`);
    const b = join(work, `tree-${counter++}`);
    await mkdir(a);
    await mkdir(b);
    await writeFile(join(a, "x"), "target");
    await symlink("target", join(b, "x"));
    assert.notEqual(await digestTree(a), await digestTree(b));
  });

  test("symlinks are not followed: what they point at does not count", async () => {
    const outside = join(work, `outside-${counter++}`);
    await writeFile(outside, "one");
    const a = await sampleTree();
    await symlink(outside, join(a, "link"));
    await mkdir(join(work, `outside-dir-${counter}`));
    await symlink(join(work, `outside-dir-${counter}`), join(a, "dirlink"));
    const first = await digestTree(a);
    await writeFile(outside, "two");
    await writeFile(join(work, `outside-dir-${counter}`, "file"), "x");
    assert.equal(await digestTree(a), first);
    await assert.rejects(digestTree(join(a, "dirlink")), /not a directory/);
  });

  test("device numbers count", { skip: e2eSkip(!isRoot && "creating device nodes needs root") }, async () => {
    const a = join(work, `tree-${counter++}`);
    const b = join(work, `tree-${counter++}`);
    await mkdir(a);
    await mkdir(b);
    execFileSync("mknod", ["-m", "666", join(a, "dev"), "c", "1", "3"]);
    execFileSync("mknod", ["-m", "666", join(b, "dev"), "c", "1", "5"]);
    assert.notEqual(await digestTree(a), await digestTree(b));
  });

  test("scanTree counts entries and file bytes; exclude leaves paths out", async () => {
    const a = await sampleTree();
    const scan = await scanTree(a);
    // root, usr, usr/bin, usr/bin/tool, empty, readme, bin
    assert.equal(scan.entries, 7);
    assert.equal(scan.bytes, "#!/bin/sh\necho hi\n".length + "hello\n".length);
    const b = await sampleTree();
    await writeFile(join(b, "extra"), "x");
    assert.equal(await digestTree(b, { exclude: ["extra"] }), scan.digest);
  });

  test("digestEntries describes a tree without writing it", async () => {
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const root = join(work, `tree-${counter++}`);
    await mkdir(join(root, "d"), { recursive: true });
    await chmod(root, 0o755);
    await chmod(join(root, "d"), 0o700);
    await writeFile(join(root, "d/f"), "abc");
    await chmod(join(root, "d/f"), 0o600);
    const expected = digestEntries([
      { path: "d/f", type: "file", mode: 0o600, uid, gid, size: 3, sha256: sha256("abc") },
      { path: "", type: "dir", mode: 0o755, uid, gid },
      { path: "d", type: "dir", mode: 0o700, uid, gid },
    ]);
    assert.equal(await digestTree(root), expected);
    assert.throws(() =>
      digestEntries([
        { path: "", type: "dir", mode: 0o755, uid, gid },
        { path: "", type: "dir", mode: 0o755, uid, gid },
      ]),
    );
  });
});

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}
