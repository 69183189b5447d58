/**
 * reapOrphans after a host crash, simulated by a second driver with the same configuration
 * while the first driver's sandboxes still run and are mounted.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync } from "node:fs";
import { rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { e2eSkip } from "../../testing/e2e-skip.ts";
import { waitFor } from "../../testing/wait.ts";
import type { SandboxHandle } from "../driver.ts";
import { detectCgroups, SandboxCgroup } from "./cgroups.ts";
import { LinuxSandboxDriver } from "./linux-driver.ts";
import { mountPointsUnder } from "./mountinfo.ts";
import {
  cgroupPids,
  isAlive,
  leftovers,
  makeRunnerDir,
  makeTestDriver,
  processesOfInstance,
  skipReason,
  type TestDriver,
  testRootfs,
  testSpec,
} from "./test-support.ts";

async function waitForOutput(handle: SandboxHandle, marker: string): Promise<void> {
  let seen = "";
  for await (const chunk of handle.stdout) {
    seen += chunk.toString();
    if (seen.includes(marker)) return;
  }
  throw new Error(`sandbox ended before printing ${marker}`);
}

/** Mounts of sandboxes under runDir, leaving out the runner layers the driver exposes there. */
async function sandboxMounts(runDir: string): Promise<string[]> {
  return (await mountPointsUnder(runDir)).filter((p) => !p.includes("/.runners/"));
}

describe("Linux sandbox reapOrphans", { skip: e2eSkip(skipReason()) }, () => {
  let runnerDir: string;
  let t: TestDriver;

  before(async () => {
    runnerDir = await makeRunnerDir();
    t = await makeTestDriver("reap");
  });

  after(async () => {
    await t.cleanup();
    await rm(runnerDir, { recursive: true, force: true });
    assert.deepEqual(await leftovers(t.runDir, t.instance), []);
  });

  test("cleans up after a host process killed with SIGKILL", { timeout: 60_000 }, async () => {
    // A separate host process boots a sandbox, lets its warm launchers start, and dies.
    const host = [
      `import { LinuxSandboxDriver } from ${JSON.stringify(path.join(import.meta.dirname, "linux-driver.ts"))};`,
      "import { DEFAULT_LIMITS } from '@paddock/protocol';",
      "const [runDir, instance, layer, runnerDir] = process.argv.slice(1);",
      "const driver = new LinuxSandboxDriver({ runDir, instance });",
      "const h = await driver.boot({ id: 'crashed', layers: [layer], runnerDir, limits: DEFAULT_LIMITS, files: [],",
      "  argv: ['/bin/sh', '-c', 'echo up; sleep 600'], env: {}, cwd: '/' });",
      "h.stdout.once('data', () => console.log('booted'));",
    ].join("\n");
    const child = spawn(
      process.execPath,
      ["--input-type=module", "-e", host, t.runDir, t.instance, testRootfs(), runnerDir],
      { stdio: ["ignore", "pipe", "inherit"], cwd: import.meta.dirname },
    );
    const exited = new Promise((resolve) => child.once("exit", resolve));
    try {
      let out = "";
      for await (const chunk of child.stdout) {
        out += chunk.toString();
        if (out.includes("booted")) break;
      }
      assert.ok(out.includes("booted"), out);
      const layout = await detectCgroups();
      const instanceDir = path.join(layout.pids, "paddock", t.instance);
      await waitFor(() => readdirSync(instanceDir).some((name) => name.startsWith(".warm-")), {
        what: "the host's warm launchers",
      });
      assert.ok((await cgroupPids(t.instance, "crashed")).length > 0);
    } finally {
      child.kill("SIGKILL");
      await exited;
    }
    // bwrap dies with its parent; idle launchers see the host gone and remove their slots.
    await waitFor(async () => (await processesOfInstance(t.instance)).length === 0, {
      what: "the dead host's processes to end",
    });
    const layout = await detectCgroups();
    const instanceDir = path.join(layout.pids, "paddock", t.instance);
    assert.deepEqual(
      readdirSync(instanceDir).filter((name) => name.startsWith(".warm-")),
      [],
    );
    // What remains is the crashed sandbox's mounts, folder and cgroup.
    assert.equal((await sandboxMounts(t.runDir)).length, 2);
    assert.equal(await new LinuxSandboxDriver(t.config).reapOrphans(), 1);
    assert.deepEqual(await mountPointsUnder(t.runDir), []);
    assert.ok(!existsSync(path.join(t.runDir, "crashed")));
    assert.ok(!existsSync(instanceDir));
  });

  test("finds nothing to reap on a clean host", async () => {
    assert.equal(await new LinuxSandboxDriver(t.config).reapOrphans(), 0);
  });

  test("kills, unmounts and removes what a dead host left behind", { timeout: 60_000 }, async () => {
    const script = "(setsid /bin/sh -c 'sleep 600' < /dev/null > /dev/null 2>&1 &); echo up; sleep 600";
    const handles = [
      await t.driver.boot(testSpec("orphan-a", runnerDir, ["/bin/sh", "-c", script])),
      await t.driver.boot(
        testSpec("orphan-b", runnerDir, ["/bin/sh", "-c", script], { files: [{ path: "/data/x", content: "x" }] }),
      ),
    ];
    for (const handle of handles) await waitForOutput(handle, "up");
    // A boot interrupted before its tmpfs was mounted: a bare folder and a cgroup.
    const layout = await detectCgroups();
    new SandboxCgroup(layout, t.instance, "orphan-c").create();
    mkdirSync(path.join(t.runDir, "orphan-c"));

    const pids = [...(await cgroupPids(t.instance, "orphan-a")), ...(await cgroupPids(t.instance, "orphan-b"))];
    assert.ok(pids.length >= 6, `sandbox processes: ${pids.length}`);
    assert.equal((await sandboxMounts(t.runDir)).length, 4, "a tmpfs and an overlay per sandbox");
    // Let the first driver start its warm launchers: they are leftovers too (in slot cgroups on v1).
    const slots = () => readdirSync(path.join(layout.pids, "paddock", t.instance)).some((n) => n.startsWith(".warm-"));
    if (layout.version === "v1") await waitFor(slots, { what: "the first driver's warm launchers" });

    const restarted = new LinuxSandboxDriver(t.config);
    assert.equal(await restarted.reapOrphans(), 3);

    assert.deepEqual(await mountPointsUnder(t.runDir), []);
    assert.deepEqual(
      readdirSync(t.runDir).filter((name) => !name.startsWith(".")),
      [],
    );
    for (const root of new Set([layout.memory, layout.pids, layout.cpu])) {
      assert.ok(!existsSync(path.join(root, "paddock", t.instance)), `${root}/paddock/${t.instance} remains`);
    }
    assert.deepEqual(await processesOfInstance(t.instance), []);
    assert.deepEqual(pids.filter(isAlive), []);

    // The first driver's handles see their sandboxes gone and still tear down cleanly.
    for (const handle of handles) {
      assert.equal((await handle.exited).signal, "SIGKILL");
      await handle.destroy();
    }
    await t.driver.close();
  });
});
