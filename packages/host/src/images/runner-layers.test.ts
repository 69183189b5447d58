import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, copyFile, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { AppError } from "@paddock/protocol";
import { digestTree } from "../fs/tree-digest.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { RunnerLayers } from "./runner-layers.ts";

const uid = process.getuid?.() ?? 0;
const BUNDLE = new URL("../../../runner/dist/runner.mjs", import.meta.url).pathname;
let work: string;
let runner: string;
let counter = 0;

/** Building a layer starts its runner in a sandbox (for the compile cache): Linux, root, bwrap. */
function skipReason(): string | false {
  if (process.platform !== "linux") return "runner layers are built in a Linux sandbox";
  if (process.getuid?.() !== 0) return "building a runner layer needs root (mounts, the sandbox uid)";
  for (const tool of ["bwrap", "setpriv", "unshare"]) {
    if (!["/usr/bin", "/bin"].some((d) => existsSync(join(d, tool)))) return `${tool} is not installed`;
  }
  return false;
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), "paddock-runner-layers-"));
  if (!existsSync(BUNDLE)) await import("../../../runner/build.ts");
  runner = await readFile(BUNDLE, "utf8");
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

const isRunnerInvalid = (pattern: RegExp) => (err: unknown) =>
  err instanceof AppError && err.code === "runner_invalid" && pattern.test(JSON.stringify([err.message, err.details]));

async function source(name: string, content: string, mode: number): Promise<string> {
  const path = join(work, "src", `${counter++}-${name}`);
  await mkdir(join(work, "src"), { recursive: true });
  await writeFile(path, content);
  await chmod(path, mode);
  return path;
}

describe("RunnerLayers", { skip: e2eSkip(skipReason()) }, () => {
  test("ensure is idempotent and content-addressed, compile cache included", async () => {
    const runners = new RunnerLayers({ runnersDir: join(work, `runners-${counter++}`) });
    const bundlePath = await source("runner.mjs", `${runner}\n// v1\n`, 0o644);
    const nodePath = process.execPath;
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
    assert.deepEqual((await readdir(first.dir)).sort(), ["compile-cache", "node", "runner.mjs", "version.json"]);
    const tag = first.version.compile_cache;
    assert.match(tag ?? "", new RegExp(`^v${process.versions.node}-.*-61000$`), "Node's folder for the sandbox uid");
    const entries = await readdir(join(first.dir, "compile-cache", tag ?? ""));
    assert.equal(entries.length, 1, "one cache entry: the bundle");

    // Same length, one character apart: a cache for one can never be taken for the other's.
    await writeFile(bundlePath, `${runner}\n// v2\n`);
    const third = await runners.ensure({ bundlePath, nodePath });
    assert.notEqual(third.digest, first.digest);
    assert.equal(await readFile(join(third.dir, "runner.mjs"), "utf8"), `${runner}\n// v2\n`);
    assert.equal(await readFile(join(first.dir, "runner.mjs"), "utf8"), `${runner}\n// v1\n`);
    assert.deepEqual(await readdir(join(third.dir, "compile-cache", tag ?? "")), entries, "same module path, same key");
    const cacheOf = (dir: string) => readFile(join(dir, "compile-cache", tag ?? "", entries[0] ?? ""));
    assert.notDeepEqual(await cacheOf(third.dir), await cacheOf(first.dir), "each layer has its own bundle's cache");
    assert.equal(await digestTree(third.dir, { exclude: ["version.json"] }), third.digest);
  });

  test("files belong to the host user and nobody else can write them", async () => {
    const runners = new RunnerLayers({ runnersDir: join(work, `runners-${counter++}`) });
    // A group-writable source must be copied, not linked, and the source left as it was.
    const nodePath = join(work, `node-${counter++}`);
    await copyFile(process.execPath, nodePath);
    await chmod(nodePath, 0o775);
    const bundlePath = await source("runner.mjs", runner, 0o666);
    const layer = await runners.ensure({ bundlePath, nodePath });
    const tag = layer.version.compile_cache ?? "";
    const [entry] = await readdir(join(layer.dir, "compile-cache", tag));
    const expected: [string, number][] = [
      ["", 0o755],
      ["node", 0o755],
      ["runner.mjs", 0o644],
      ["version.json", 0o644],
      ["compile-cache", 0o755],
      [`compile-cache/${tag}`, 0o755],
      [`compile-cache/${tag}/${entry}`, 0o644],
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
    const bundlePath = await source("runner.mjs", runner, 0o644);
    const real = await stat(process.execPath);
    const layer = await runners.ensure({ bundlePath, nodePath: process.execPath });
    const node = await stat(join(layer.dir, "node"));
    assert.equal(node.mode & 0o7777, 0o755);
    assert.equal(node.uid, uid);
    assert.equal(node.size, real.size);
    assert.notEqual(node.ino, real.ino, "sealing the layer must never seal the host's own Node");
  });

  test("refuses what does not start as a runner, leaving nothing behind", async () => {
    const runnersDir = join(work, `runners-${counter++}`);
    const stagingDir = `/run/paddock/t-runner-layers-${process.pid}`;
    const runners = new RunnerLayers({ runnersDir, stagingDir });
    try {
      const cases: [string, string, string, RegExp][] = [
        ["a syntax error", "export const = ;\n", process.execPath, /no hello frame.*SyntaxError/s],
        ["CommonJS", "module.exports = {};\n", process.execPath, /no hello frame.*module is not defined/s],
        ["an ES module that is not a runner", "export {};\n", process.execPath, /no hello frame/],
        [
          "a runner whose Node is not a program",
          runner,
          await source("node", "not node\n", 0o755),
          /no hello frame.*not found/s,
        ],
      ];
      for (const [what, content, nodePath, pattern] of cases) {
        const bundlePath = await source("runner.mjs", content, 0o644);
        await assert.rejects(runners.ensure({ bundlePath, nodePath }), isRunnerInvalid(pattern), what);
      }
      assert.deepEqual(await readdir(runnersDir), [], "no layer and no work in progress");
      assert.deepEqual(await readdir(stagingDir), [], "no staging folder");
    } finally {
      await rm(stagingDir, { recursive: true, force: true });
    }
  });
});
