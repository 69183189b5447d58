/**
 * The runner layer's compile cache, through the real Linux driver: a run uses its layer's cache
 * without writing to the read-only mount, and Node refuses a cache made for another bundle (it
 * checks the source's hash), so even a cache put beside the wrong bundle is never used.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, cp, link, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { RUNNER_BUNDLE, RUNNER_CACHE, RUNNER_NODE } from "../fs/layout.ts";
import { RUNNER_ARGV, RUNNER_ENV } from "../sandbox/driver.ts";
import { makeTestDriver, runSandbox, skipReason, type TestDriver, testSpec } from "../sandbox/linux/test-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { type RunnerLayer, RunnerLayers } from "./runner-layers.ts";

const BUNDLE = new URL("../../../runner/dist/runner.mjs", import.meta.url).pathname;
const skip = e2eSkip(skipReason());

describe("runner compile cache", { skip }, () => {
  let work: string;
  let t: TestDriver;
  let v1: RunnerLayer;
  let v2: RunnerLayer;
  let n = 0;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), "paddock-runner-cache-"));
    await chmod(work, 0o755);
    if (!existsSync(BUNDLE)) await import("../../../runner/build.ts");
    const runner = await readFile(BUNDLE, "utf8");
    const runners = new RunnerLayers({ runnersDir: join(work, "runners") });
    // Two bundles of the same length, one character apart.
    for (const tag of ["v1", "v2"]) await writeFile(join(work, `${tag}.mjs`), `${runner}\n// ${tag}\n`);
    v1 = await runners.ensure({ bundlePath: join(work, "v1.mjs"), nodePath: process.execPath });
    v2 = await runners.ensure({ bundlePath: join(work, "v2.mjs"), nodePath: process.execPath });
    t = await makeTestDriver("rcache");
  });
  after(async () => {
    await t?.cleanup();
    await rm(work, { recursive: true, force: true });
  });

  /** Starts the runner from `runnerDir` as a run does, with Node's compile-cache diagnostics on stderr. */
  const start = async (runnerDir: string) => {
    const spec = testSpec(`rcache-${process.pid}-${n++}`, runnerDir, [...RUNNER_ARGV], {
      env: {
        PATH: "/usr/bin:/bin",
        LANG: "C.UTF-8",
        HOME: "/home/agent",
        ...RUNNER_ENV,
        NODE_DEBUG_NATIVE: "COMPILE_CACHE",
      },
    });
    const runnerSpec = {
      command: ["/bin/sh", "-c", `echo '::paddock::{"type":"ok"}'`],
      env: { PATH: "/usr/bin:/bin" },
      cwd: "/",
      heartbeat_ms: 60_000,
      max_line_bytes: 16_384,
    };
    const r = await runSandbox(t.driver, spec, JSON.stringify(runnerSpec));
    const frames = r.stdout
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { t: string; type?: string; code?: number });
    assert.equal(r.exit.code, 0, r.stderr);
    assert.deepEqual(
      frames.map((f) => f.t),
      ["hello", "started", "event", "exit"],
      r.stdout,
    );
    assert.equal(frames.at(-1)?.code, 0);
    return r.stderr;
  };

  it("has each layer's run use its own cache, read-only, writing nothing", async () => {
    for (const layer of [v1, v2]) {
      const log = await start(layer.dir);
      assert.match(log, /V8 code cache for ESM file:\/\/\/opt\/paddock\/runner\/runner\.mjs was accepted/, log);
      assert.match(log, /skip persisting .* because cache was the same/, log);
      assert.doesNotMatch(log, /mismatch|Creating temporary file|failed/i, log);
    }
  });

  it("never uses a cache made for another bundle: Node checks the source", async () => {
    // v1's Node and cache beside v2's bundle: the very pairing a content-addressed layer rules out.
    const mixed = await mkdtemp(join(work, "mixed-"));
    await chmod(mixed, 0o755);
    await link(join(v1.dir, RUNNER_NODE), join(mixed, RUNNER_NODE));
    await cp(join(v2.dir, RUNNER_BUNDLE), join(mixed, RUNNER_BUNDLE));
    await cp(join(v1.dir, RUNNER_CACHE), join(mixed, RUNNER_CACHE), { recursive: true });
    const log = await start(mixed);
    assert.match(log, /runner\.mjs\.\.\..*hash mismatch/, log);
    assert.doesNotMatch(log, /was accepted/, log);
    // Node then tries to store a fresh cache, which the read-only mount refuses; the run goes on.
    assert.match(log, /failed\. read-only file system/, log);
  });
});
