import assert from "node:assert/strict";
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { RunnerLayers } from "./runner-layers.ts";
import { digestTree } from "./tree-digest.ts";

const uid = process.getuid?.() ?? 0;
let work: string;
let counter = 0;

before(async () => {
  work = await mkdtemp(join(tmpdir(), "paddock-runner-layers-"));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

async function source(name: string, content: string, mode: number): Promise<string> {
  const path = join(work, "src", `${counter++}-${name}`);
  await mkdir(join(work, "src"), { recursive: true });
  await writeFile(path, content);
  await chmod(path, mode);
  return path;
}

describe("RunnerLayers", () => {
  test("ensure is idempotent and content-addressed", async () => {
    const runners = new RunnerLayers({ runnersDir: join(work, `runners-${counter++}`) });
    const bundlePath = await source("runner.mjs", "console.log('runner v1');\n", 0o644);
    const nodePath = await source("node", "not really node\n", 0o755);
    const first = await runners.ensure({ bundlePath, nodePath });
    assert.match(first.digest, /^sha256-[0-9a-f]{64}$/);
    assert.equal(first.dir, join(runners.runnersDir, first.digest));
    assert.deepEqual(first.version.digest, first.digest);
    const second = await runners.ensure({ bundlePath, nodePath });
    assert.deepEqual(second, first, "the second call reuses the stored layer");
    assert.deepEqual(await readdir(runners.runnersDir), [first.digest], "nothing else is left in the store");
    assert.deepEqual(JSON.parse(await readFile(join(first.dir, "version.json"), "utf8")), first.version);
    assert.equal(await digestTree(first.dir, { exclude: ["version.json"] }), first.digest);
    assert.deepEqual(await runners.get(first.digest), first);

    await writeFile(bundlePath, "console.log('runner v2');\n");
    const third = await runners.ensure({ bundlePath, nodePath });
    assert.notEqual(third.digest, first.digest);
    assert.equal(await readFile(join(third.dir, "runner.mjs"), "utf8"), "console.log('runner v2');\n");
    assert.equal(await readFile(join(first.dir, "runner.mjs"), "utf8"), "console.log('runner v1');\n");
  });

  test("files belong to the host user and nobody else can write them", async () => {
    const runners = new RunnerLayers({ runnersDir: join(work, `runners-${counter++}`) });
    // A group-writable source must be copied, not linked, and the source left as it was.
    const nodePath = await source("node", "binary\n", 0o775);
    const bundlePath = await source("runner.mjs", "export {};\n", 0o666);
    const layer = await runners.ensure({ bundlePath, nodePath });
    const expected: [string, number][] = [
      ["", 0o755],
      ["node", 0o755],
      ["runner.mjs", 0o644],
      ["version.json", 0o644],
    ];
    for (const [rel, mode] of expected) {
      const st = await lstat(join(layer.dir, rel));
      assert.equal((st.mode & 0o7777).toString(8), mode.toString(8), rel || "the layer folder");
      assert.equal(st.mode & 0o022, 0, `${rel} is not writable by group or others`);
      assert.equal(st.uid, uid, rel);
    }
    assert.notEqual((await stat(join(layer.dir, "node"))).ino, (await stat(nodePath)).ino);
    assert.equal((await stat(nodePath)).mode & 0o7777, 0o775);
  });

  test("the real Node binary is copied, never sharing its inode with the sealed layer", async () => {
    const runners = new RunnerLayers({ runnersDir: join(work, `runners-${counter++}`) });
    const bundlePath = await source("runner.mjs", "export {};\n", 0o644);
    const real = await stat(process.execPath);
    const layer = await runners.ensure({ bundlePath, nodePath: process.execPath });
    const node = await stat(join(layer.dir, "node"));
    assert.equal(node.mode & 0o7777, 0o755);
    assert.equal(node.uid, uid);
    assert.equal(node.size, real.size);
    assert.notEqual(node.ino, real.ino, "sealing the layer must never seal the host's own Node");
  });
});
