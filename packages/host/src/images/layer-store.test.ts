import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { lstat, mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { AppError } from "@paddock/protocol";
import { digestTree } from "../fs/tree-digest.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { LayerStore } from "./layer-store.ts";

const isRoot = process.getuid?.() === 0;
const UID = isRoot ? 61000 : (process.getuid?.() ?? 0);
const GID = isRoot ? 61000 : (process.getgid?.() ?? 0);
let work: string;
let counter = 0;

before(async () => {
  work = await mkdtemp(join(tmpdir(), "paddock-layer-store-"));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

function newStore(): LayerStore {
  return new LayerStore({ layersDir: join(work, `layers-${counter++}`), uid: UID, gid: GID });
}

async function listStore(store: LayerStore): Promise<string[]> {
  try {
    return await readdir(store.layersDir);
  } catch {
    return [];
  }
}

const FILES = {
  "main.py": "print('hello')\n",
  "run.sh": "#!/bin/sh\nexec python3 main.py\n",
  "lib/util/helpers.py": "X = 1\n",
  "lib/data.json": "{}",
};

describe("LayerStore", () => {
  test("the same files give the same digest and one stored layer", async () => {
    const store = newStore();
    const digest = await store.putFiles(FILES);
    assert.match(digest, /^sha256-[0-9a-f]{64}$/);
    const reordered = Object.fromEntries(Object.entries(FILES).reverse());
    assert.equal(await store.putFiles(reordered), digest);
    assert.deepEqual(await listStore(store), [digest]);
    assert.equal(await digestTree(store.path(digest)), digest);
    assert.equal(await store.has(digest), true);

    const other = newStore();
    assert.equal(await other.putFiles(FILES), digest, "another store writes the same bytes");
    assert.notEqual(await store.putFiles({ ...FILES, "main.py": "print('bye')\n" }), digest);
  });

  test("files land under app/ with the sandbox user as owner and the modes specified", async () => {
    const store = newStore();
    const layer = store.path(await store.putFiles(FILES));
    const root = await lstat(layer);
    assert.equal(root.mode & 0o7777, 0o755);
    assert.equal(root.uid, process.getuid?.() ?? 0);
    assert.deepEqual((await readdir(layer)).sort(), ["app"]);
    const expected: [string, "dir" | "file", number][] = [
      ["app", "dir", 0o755],
      ["app/lib", "dir", 0o755],
      ["app/lib/util", "dir", 0o755],
      ["app/main.py", "file", 0o644],
      ["app/run.sh", "file", 0o755],
      ["app/lib/util/helpers.py", "file", 0o644],
      ["app/lib/data.json", "file", 0o644],
    ];
    for (const [rel, type, mode] of expected) {
      const st = await lstat(join(layer, rel));
      assert.equal(type === "dir" ? st.isDirectory() : st.isFile(), true, rel);
      assert.equal((st.mode & 0o7777).toString(8), mode.toString(8), rel);
      assert.equal(st.uid, UID, rel);
      assert.equal(st.gid, GID, rel);
    }
    assert.equal(await readFile(join(layer, "app/run.sh"), "utf8"), FILES["run.sh"]);
  });

  test("an empty file set is a layer with an empty app folder", async () => {
    const store = newStore();
    const layer = store.path(await store.putFiles({}));
    assert.deepEqual(await readdir(join(layer, "app")), []);
  });

  test("bad paths are rejected with validation_failed and leave nothing behind", async () => {
    const store = newStore();
    const bad = [
      "/etc/passwd",
      "../escape",
      "a/../../escape",
      "./main.py",
      "a/./b",
      "a//b",
      "a/",
      "",
      "nul\0byte",
      "back\\slash",
      "..",
      `${"x".repeat(256)}`,
    ];
    for (const path of bad) {
      await assert.rejects(
        store.putFiles({ "ok.py": "", [path]: "x" }),
        (err: unknown) => err instanceof AppError && err.code === "validation_failed",
        JSON.stringify(path),
      );
    }
    await assert.rejects(
      store.putFiles({ a: "file", "a/b": "below a file" }),
      (err: unknown) => err instanceof AppError && err.code === "validation_failed" && /a is a file/.test(err.message),
    );
    await assert.rejects(
      store.putFiles({ "a.py": 42 as unknown as string }),
      (err: unknown) => err instanceof AppError && err.code === "validation_failed",
    );
    assert.deepEqual(await listStore(store), []);
    assert.throws(
      () => store.path("../x"),
      (err: unknown) => err instanceof AppError,
    );
  });

  test("a write that fails midway leaves nothing behind", {
    skip: e2eSkip(!isRoot && "mounting a small tmpfs needs root"),
  }, async () => {
    const layersDir = join(work, `full-${counter++}`);
    await mkdir(layersDir);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=256k", "tmpfs", layersDir]);
    try {
      const store = new LayerStore({ layersDir, uid: UID, gid: GID });
      await assert.rejects(
        store.putFiles({ "small.txt": "ok", "big.bin": "x".repeat(2 * 1024 * 1024) }),
        (err: unknown) => (err as NodeJS.ErrnoException).code === "ENOSPC",
      );
      assert.deepEqual(await readdir(layersDir), []);
      const digest = await store.putFiles({ "small.txt": "ok" });
      assert.deepEqual(await readdir(layersDir), [digest]);
    } finally {
      execFileSync("umount", [layersDir]);
    }
  });
});
