import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { AppError } from "@paddock/protocol";
import { digestTree } from "../fs/tree-digest.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { waitFor } from "../testing/wait.ts";
import { ImageStore } from "./image-store.ts";
import { resolveCommand } from "./resolve-command.ts";

const isRoot = process.getuid?.() === 0;
const OTHER_DIGEST = `sha256-${"ab".repeat(32)}`;
let work: string;
let counter = 0;

before(async () => {
  work = await mkdtemp(join(tmpdir(), "paddock-image-store-"));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

function isAppError(code: string, message?: RegExp) {
  return (err: unknown) => err instanceof AppError && err.code === code && (!message || message.test(err.message));
}

/** A tiny root filesystem with what tidying touches: devices, apt indexes, host network files. */
async function tinyRootfs(): Promise<string> {
  const root = join(work, `src-${counter++}`);
  for (const dir of ["etc", "dev/pts", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "usr/bin"]) {
    await mkdir(join(root, dir), { recursive: true });
  }
  await writeFile(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  await writeFile(join(root, "etc/group"), "root:x:0:");
  await writeFile(join(root, "etc/resolv.conf"), "nameserver 10.1.2.3\n");
  await writeFile(join(root, "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease"), "index");
  await writeFile(join(root, "var/cache/apt/pkgcache.bin"), "cache");
  await writeFile(join(root, "var/cache/apt/archives/python3_3.11_amd64.deb"), "deb");
  await writeFile(join(root, "usr/bin/python3.11"), "#!/bin/sh\n");
  await chmod(join(root, "usr/bin/python3.11"), 0o755);
  await symlink("python3.11", join(root, "usr/bin/python3"));
  await symlink("usr/bin", join(root, "bin"));
  execFileSync("mknod", ["-m", "666", join(root, "dev/null"), "c", "1", "3"]);
  await symlink("/proc/self/fd", join(root, "dev/fd"));
  return root;
}

describe("ImageStore without an image", () => {
  test("resolve explains how to build the image", async () => {
    const store = new ImageStore({ imagesDir: join(work, `empty-${counter++}`) });
    await assert.rejects(store.resolve("default"), isAppError("image_not_ready", /paddock images build-base/));
    await assert.rejects(store.resolve(OTHER_DIGEST), isAppError("image_not_ready", /paddock images build-base/));
    await assert.rejects(store.resolve("../../etc"), isAppError("validation_failed"));
    await assert.rejects(store.resolve(`${OTHER_DIGEST}/..`), isAppError("validation_failed"));
    assert.deepEqual(await store.list(), []);
  });

  test("bad suite or mirror names are refused before anything runs", async () => {
    const store = new ImageStore({ imagesDir: join(work, `empty-${counter++}`) });
    await assert.rejects(store.ensureBase({ suite: "--foreign" }), isAppError("validation_failed"));
    await assert.rejects(store.ensureBase({ mirror: "-x http://evil" }), isAppError("validation_failed"));
  });
});

describe("ImageStore with imported images", {
  skip: e2eSkip(!isRoot && "copying a root filesystem with its owners needs root"),
}, () => {
  test("an import is tidied, content-addressed and listed", async () => {
    const store = new ImageStore({ imagesDir: join(work, `store-${counter++}`) });
    const from = await tinyRootfs();
    const lines: string[] = [];
    const image = await store.importRootfs({ from, setDefault: true, log: (l) => lines.push(l) });
    assert.ok(lines.some((l) => l.includes(image.digest)));
    assert.equal(image.rootfs, join(store.imagesDir, image.digest, "rootfs"));
    assert.equal(await digestTree(image.rootfs), image.digest);
    assert.deepEqual(await store.resolve("default"), image);
    assert.deepEqual(await store.resolve(image.digest), image);

    const rootfs = image.rootfs;
    assert.deepEqual(await readdir(join(rootfs, "dev")), []);
    assert.deepEqual(await readdir(join(rootfs, "var/lib/apt/lists")), ["partial"]);
    assert.deepEqual(await readdir(join(rootfs, "var/cache/apt")), ["archives"]);
    assert.deepEqual(await readdir(join(rootfs, "var/cache/apt/archives")), ["partial"]);
    assert.equal(await readFile(join(rootfs, "etc/resolv.conf"), "utf8"), "");
    const passwd = await readFile(join(rootfs, "etc/passwd"), "utf8");
    assert.match(passwd, /^root:x:0:0:/);
    assert.match(passwd, /^agent:x:61000:61000:[^:]*:\/home\/agent:/m);
    assert.equal(await readFile(join(rootfs, "etc/group"), "utf8"), "root:x:0:\nagent:x:61000:\n");
    const home = await lstat(join(rootfs, "home/agent"));
    assert.equal(home.uid, 61000);
    assert.equal(home.gid, 61000);
    assert.ok((await lstat(join(rootfs, "opt/paddock/runner"))).isDirectory());
    assert.equal(await resolveCommand([rootfs], "python3"), "/usr/bin/python3");
    // The source folder is left as it was.
    assert.deepEqual((await readdir(join(from, "dev"))).sort(), ["fd", "null", "pts"]);

    const meta = JSON.parse(await readFile(join(store.imagesDir, image.digest, "meta.json"), "utf8"));
    assert.equal(meta.digest, image.digest);
    assert.equal(meta.source, "import");
    assert.equal(typeof meta.size_bytes, "number");
    assert.ok(!Number.isNaN(Date.parse(meta.created_at)));

    const again = await store.importRootfs({ from: await tinyRootfs() });
    assert.deepEqual(again, image, "the same tree is the same image");
    const listed = await store.list();
    assert.equal(listed.length, 1);
    assert.equal(listed[0]?.digest, image.digest);
    assert.equal(listed[0]?.default, true);
  });

  test("an interrupted build is not mistaken for an image and is cleaned by the next build", async () => {
    const store = new ImageStore({ imagesDir: join(work, `store-${counter++}`) });
    const image = await store.importRootfs({ from: await tinyRootfs(), setDefault: true });

    // What a build killed midway leaves: a temp folder (even with a meta.json naming a digest)
    // and a digest-named folder without meta.json.
    const tmp = join(store.imagesDir, ".tmp-interrupted");
    await mkdir(join(tmp, "rootfs/usr/bin"), { recursive: true });
    await writeFile(join(tmp, "meta.json"), JSON.stringify({ digest: OTHER_DIGEST, source: "debootstrap" }));
    const partialDigest = `sha256-${"cd".repeat(32)}`;
    await mkdir(join(store.imagesDir, partialDigest, "rootfs/usr"), { recursive: true });
    // debootstrap killed midway leaves host folders mounted inside its target; removing the
    // leftover must detach them, never empty them.
    const hostDir = join(work, `host-dev-${counter++}`);
    await mkdir(hostDir);
    await writeFile(join(hostDir, "canary"), "host file");
    await mkdir(join(tmp, "rootfs/dev"), { recursive: true });
    await mkdir(join(tmp, "rootfs/proc"), { recursive: true });
    execFileSync("mount", ["--bind", hostDir, join(tmp, "rootfs/dev")]);
    execFileSync("mount", ["-t", "tmpfs", "tmpfs", join(tmp, "rootfs/proc")]);
    // A lock left by a build process that no longer runs.
    const dead = spawnSync(process.execPath, ["-e", "0"]).pid;
    await writeFile(join(store.imagesDir, ".build.lock"), `${dead}\n`);

    await assert.rejects(store.resolve(OTHER_DIGEST), isAppError("image_not_ready"));
    await assert.rejects(store.resolve(partialDigest), isAppError("image_not_ready"));
    assert.deepEqual(
      (await store.list()).map((i) => i.digest),
      [image.digest],
    );

    const lines: string[] = [];
    assert.deepEqual(await store.ensureBase({ log: (l) => lines.push(l) }), image, "a ready default is reused");
    assert.deepEqual((await readdir(store.imagesDir)).sort(), [image.digest, "default"].sort());
    assert.ok(lines.some((l) => l.includes(".tmp-interrupted")));
    assert.equal(await readFile(join(hostDir, "canary"), "utf8"), "host file");
    assert.equal((await readFile("/proc/self/mountinfo", "utf8")).includes(tmp), false);
  });

  test("a build waits for a running build to finish", async () => {
    const store = new ImageStore({ imagesDir: join(work, `store-${counter++}`) });
    const image = await store.importRootfs({ from: await tinyRootfs(), setDefault: true });
    const lock = join(store.imagesDir, ".build.lock");
    await writeFile(lock, `${process.pid}\n`);
    const lines: string[] = [];
    let done = false;
    const pending = store.ensureBase({ log: (l) => lines.push(l) }).finally(() => {
      done = true;
    });
    await waitFor(() => lines.some((l) => l.includes(`pid ${process.pid}`)), { what: "the build to see the lock" });
    assert.equal(done, false);
    await rm(lock);
    assert.deepEqual(await pending, image);
  });

  test("an imported tree's symlinks never lead the host to change host folders", async () => {
    const store = new ImageStore({ imagesDir: join(work, `store-${counter++}`) });
    const hostDir = await mkdtemp(join(work, "host-owned-"));
    await chmod(hostDir, 0o1777);
    const from = await tinyRootfs();
    await mkdir(join(from, "home"), { recursive: true });
    await symlink(hostDir, join(from, "home/agent"));
    await mkdir(join(from, "opt/paddock"), { recursive: true });
    await symlink(hostDir, join(from, "opt/paddock/runner"));
    const image = await store.importRootfs({ from });
    const host = await lstat(hostDir);
    assert.deepEqual([host.uid, host.mode & 0o7777], [0, 0o1777], "the host folder kept its owner and mode");
    const home = await lstat(join(image.rootfs, "home/agent"));
    assert.ok(home.isDirectory() && !home.isSymbolicLink());
    assert.equal(home.uid, 61000);
    assert.ok((await lstat(join(image.rootfs, "opt/paddock/runner"))).isDirectory());
  });

  test("a tarball is imported like its folder, and a hostile one is refused with nothing left", async () => {
    const store = new ImageStore({ imagesDir: join(work, `store-${counter++}`) });
    const from = await tinyRootfs();
    const tarball = join(work, `rootfs-${counter++}.tar.gz`);
    execFileSync("tar", ["-C", from, "--numeric-owner", "--exclude=./dev/null", "-czf", tarball, "."]);
    const fromFolder = await new ImageStore({ imagesDir: join(work, `store-${counter++}`) }).importRootfs({ from });
    const fromTarball = await store.importTarball({ file: tarball, setDefault: true });
    assert.equal(fromTarball.digest, fromFolder.digest, "same tree, same digest");
    assert.equal((await store.resolve("default")).digest, fromTarball.digest);

    const evil = join(work, `evil-${counter++}.tar`);
    execFileSync("tar", ["-C", from, "-cf", evil, "--absolute-names", "--transform", "s,^etc,/tmp/escape-etc,", "etc"]);
    const before = (await readdir(store.imagesDir)).sort();
    await assert.rejects(store.importTarball({ file: evil }), isAppError("validation_failed"));
    assert.deepEqual((await readdir(store.imagesDir)).sort(), before, "nothing half-written");
  });

  test("a missing source folder is a validation error", async () => {
    const store = new ImageStore({ imagesDir: join(work, `store-${counter++}`) });
    await assert.rejects(store.importRootfs({ from: join(work, "no-such-folder") }), isAppError("validation_failed"));
  });
});

const dataDir = process.env.PADDOCK_TEST_DATA;
async function realStore(): Promise<ImageStore | null> {
  if (!dataDir) return null;
  const store = new ImageStore({ imagesDir: join(dataDir, "images") });
  try {
    await readFile(join(store.imagesDir, "default"), "utf8");
    return store;
  } catch {
    return null;
  }
}
const real = await realStore();
const noImage = real
  ? false
  : "no base image: set PADDOCK_TEST_DATA to a data folder where 'make base-image' built one";

describe("the real base image", { skip: e2eSkip(noImage) }, () => {
  test("resolves, and its rootfs has python3 and the agent user", async () => {
    const store = real as ImageStore;
    const image = await store.resolve("default");
    assert.deepEqual(await store.resolve(image.digest), image);
    assert.ok((await lstat(join(image.rootfs, "usr/bin/python3"))).isSymbolicLink());
    assert.equal(await resolveCommand([image.rootfs], "python3"), "/usr/bin/python3");
    const passwd = await readFile(join(image.rootfs, "etc/passwd"), "utf8");
    assert.match(passwd, /^agent:x:61000:61000:[^:]*:\/home\/agent:/m);
    assert.match(await readFile(join(image.rootfs, "etc/group"), "utf8"), /^agent:x:61000:/m);
    assert.equal((await lstat(join(image.rootfs, "home/agent"))).uid, 61000);
    assert.deepEqual(await readdir(join(image.rootfs, "dev")), []);
    assert.deepEqual(await readdir(join(image.rootfs, "var/lib/apt/lists")), ["partial"]);
    const listed = (await store.list()).find((i) => i.digest === image.digest);
    assert.equal(listed?.default, true);
  });

  test("meta.json names the digest of the rootfs", {
    skip: e2eSkip(!isRoot && "reading every file of the image needs root"),
  }, async () => {
    const store = real as ImageStore;
    const image = await store.resolve("default");
    const meta = JSON.parse(await readFile(join(store.imagesDir, image.digest, "meta.json"), "utf8"));
    assert.equal(meta.digest, image.digest);
    assert.equal(meta.source, "debootstrap");
    assert.equal(await digestTree(image.rootfs), image.digest);
  });
});
