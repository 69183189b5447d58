/**
 * Resource limits and killing on the real kernel: OOM, fork bombs, processes that ignore
 * SIGTERM or daemonize, stragglers, the disk quota.
 */
import assert from "node:assert/strict";
import { readFileSync, statfsSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { e2eSkip } from "../../testing/e2e-skip.ts";
import { waitFor } from "../../testing/wait.ts";
import type { SandboxHandle } from "../driver.ts";
import { detectCgroups } from "./cgroups.ts";
import {
  cgroupPids,
  collect,
  isAlive,
  leftovers,
  makeRunnerDir,
  makeTestDriver,
  processesOfInstance,
  runSandbox,
  skipReason,
  type TestDriver,
  testSpec,
} from "./test-support.ts";

/** Resolves with the first stdout line that contains marker. */
async function waitForLine(handle: SandboxHandle, marker: string): Promise<void> {
  let seen = "";
  for await (const chunk of handle.stdout) {
    seen += chunk.toString();
    if (seen.includes(marker)) return;
  }
  throw new Error(`sandbox ended before printing ${marker}: ${seen}`);
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
  } catch {
    return "";
  }
}

/** Whether SIGTERM (signal 15, bit 14) is in the process's ignored-signal mask. */
function ignoresSigterm(pid: number): boolean {
  const mask = /^SigIgn:\s*([0-9a-f]+)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? "0";
  return (BigInt(`0x${mask}`) & (1n << 14n)) !== 0n;
}

describe("Linux sandbox limits", { skip: e2eSkip(skipReason()) }, () => {
  let runnerDir: string;
  let t: TestDriver;

  before(async () => {
    runnerDir = await makeRunnerDir();
    t = await makeTestDriver("limits");
  });

  after(async () => {
    await t.cleanup();
    await rm(runnerDir, { recursive: true, force: true });
    assert.deepEqual(await leftovers(t.runDir, t.instance), []);
  });

  test("the OOM killer ends a process exceeding memory_mb, and exit reports it", { timeout: 60_000 }, async () => {
    const spec = testSpec("oom", runnerDir, ["/usr/bin/python3", "-c", "x = b'a' * (200 << 20); print('survived')"], {
      limits: { memory_mb: 64 },
    });
    const result = await runSandbox(t.driver, spec);
    assert.equal(result.exit.oom, true);
    assert.equal(result.exit.signal, "SIGKILL");
    assert.ok(!result.stdout.includes("survived"));
  });

  test("a fork bomb stays within pids and kill() ends it", { timeout: 60_000 }, async () => {
    // Every process forks forever, retrying when the kernel refuses.
    const bomb =
      "import os\nprint('armed', flush=True)\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass";
    const spec = testSpec("forkbomb", runnerDir, ["/usr/bin/python3", "-c", bomb], { limits: { pids: 32 } });
    const handle = await t.driver.boot(spec);
    try {
      handle.stderr.resume();
      await waitForLine(handle, "armed");
      handle.stdout.resume();
      const layout = await detectCgroups();
      const pidsDir = path.join(layout.pids, "paddock", t.instance, "forkbomb");
      // The bomb has filled its cgroup once the kernel has refused a fork.
      await waitFor(
        async () => Number(/^max (\d+)/m.exec(await readFile(path.join(pidsDir, "pids.events"), "utf8"))?.[1]) > 0,
        { what: "a fork refused by the pids limit" },
      );
      const current = Number(await readFile(path.join(pidsDir, "pids.current"), "utf8"));
      assert.ok(current <= 32, `pids.current ${current}`);
      const before = await cgroupPids(t.instance, "forkbomb");
      assert.ok(before.length > 20, `only ${before.length} processes`);
      await handle.kill();
      assert.deepEqual(await cgroupPids(t.instance, "forkbomb"), []);
      assert.deepEqual(await processesOfInstance(t.instance, "forkbomb"), []);
      assert.deepEqual(before.filter(isAlive), []);
      assert.equal((await handle.exited).signal, "SIGKILL");
    } finally {
      await handle.destroy();
    }
  });

  test("kill() ends a process ignoring SIGTERM and a double-forked setsid daemon", { timeout: 60_000 }, async () => {
    const script = [
      "trap '' TERM",
      "(setsid /bin/sh -c 'trap \"\" TERM; while :; do sleep 1; done # daemon' < /dev/null > /dev/null 2>&1 &)",
      "echo started",
      "while :; do sleep 1; done # stubborn",
    ].join("\n");
    const handle = await t.driver.boot(testSpec("stubborn", runnerDir, ["/bin/sh", "-c", script]));
    try {
      handle.stderr.resume();
      await waitForLine(handle, "started");
      handle.stdout.resume();
      // bwrap's command line holds the whole script too; the shells are the /bin/sh processes.
      const shellsOf = (pids: number[]) => pids.filter((pid) => cmdline(pid).startsWith("/bin/sh "));
      const isDaemon = (pid: number) => !cmdline(pid).includes("# stubborn") && cmdline(pid).includes("# daemon");
      const pids = await waitFor(
        async () => {
          const found = await cgroupPids(t.instance, "stubborn");
          // The subshell that starts the daemon runs argv's script too, until it exits.
          const shells = shellsOf(found);
          const settled =
            shells.some(isDaemon) && shells.filter((pid) => cmdline(pid).includes("# stubborn")).length === 1;
          return settled ? found : undefined;
        },
        { what: "the daemon to start and its starter to exit" },
      );
      const shells = shellsOf(pids);
      const stubborn = shells.filter((pid) => cmdline(pid).includes("# stubborn"));
      const daemon = shells.filter(isDaemon);
      assert.equal(stubborn.length, 1, `processes: ${pids.map(cmdline).join(" | ")}`);
      assert.equal(daemon.length, 1, `processes: ${pids.map(cmdline).join(" | ")}`);
      const [daemonPid] = daemon;
      const [stubbornPid] = stubborn;
      assert.ok(daemonPid !== undefined && stubbornPid !== undefined);
      // The daemon left argv's session and process group.
      const sid = (pid: number): string =>
        readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ")[3] ?? "";
      assert.notEqual(sid(daemonPid), sid(stubbornPid));
      // Both ignore SIGTERM: the kernel drops it as it is sent, so there is nothing to wait for.
      assert.ok(ignoresSigterm(stubbornPid) && ignoresSigterm(daemonPid));
      process.kill(stubbornPid, "SIGTERM");
      process.kill(daemonPid, "SIGTERM");
      assert.ok(isAlive(stubbornPid) && isAlive(daemonPid));

      await handle.kill();
      assert.deepEqual(await cgroupPids(t.instance, "stubborn"), []);
      assert.deepEqual(pids.filter(isAlive), []);
      assert.deepEqual(await processesOfInstance(t.instance, "stubborn"), []);
      assert.equal((await handle.exited).signal, "SIGKILL");
    } finally {
      await handle.destroy();
    }
  });

  test("exited waits until no process of the sandbox is left", { timeout: 60_000 }, async () => {
    const script = "(setsid /bin/sh -c 'sleep 600' < /dev/null > /dev/null 2>&1 &); echo bye";
    const handle = await t.driver.boot(testSpec("straggler", runnerDir, ["/bin/sh", "-c", script]));
    try {
      handle.stdin.end();
      const [stdout, , exit] = await Promise.all([collect(handle.stdout), collect(handle.stderr), handle.exited]);
      assert.equal(stdout, "bye\n");
      assert.deepEqual(exit, { code: 0, signal: null, oom: false });
      assert.deepEqual(await cgroupPids(t.instance, "straggler"), []);
      assert.deepEqual(await processesOfInstance(t.instance, "straggler"), []);
    } finally {
      await handle.destroy();
    }
  });

  test("writes past disk_mb fail with ENOSPC inside a tmpfs of that size", { timeout: 60_000 }, async () => {
    const fill = [
      "import errno",
      "n = 0",
      "try:",
      "    with open('/tmp/fill', 'wb') as f:",
      "        while True:",
      "            f.write(b'x' * 65536); f.flush(); n += 65536",
      "except OSError as e:",
      "    print(errno.errorcode[e.errno], n)",
      "try:",
      "    open('/outputs/more', 'wb').write(b'y' * 1048576)",
      "except OSError as e:",
      "    print('outputs', errno.errorcode[e.errno])",
      "print('alive', flush=True)",
      "import sys; sys.stdin.read()",
    ].join("\n");
    const handle = await t.driver.boot(
      testSpec("disk", runnerDir, ["/usr/bin/python3", "-c", fill], { limits: { disk_mb: 16 } }),
    );
    try {
      handle.stderr.resume();
      let stdout = "";
      for await (const chunk of handle.stdout) {
        stdout += chunk.toString();
        if (stdout.includes("alive")) break;
      }
      const [error, written] = stdout.split("\n")[0]?.split(" ") ?? [];
      assert.equal(error, "ENOSPC", stdout);
      assert.ok(Number(written) > 12 * 1024 * 1024 && Number(written) <= 16 * 1024 * 1024, `wrote ${written}`);
      assert.ok(stdout.includes("outputs ENOSPC"), stdout);
      // The writes filled the sandbox's own 16 MB tmpfs, not the host's filesystem.
      const layer = statfsSync(path.dirname(handle.outputsDir));
      assert.equal(layer.type, 0x01021994 /* TMPFS_MAGIC */);
      assert.equal(layer.blocks * layer.bsize, 16 * 1024 * 1024);
      assert.ok(layer.bavail * layer.bsize < 1024 * 1024);
      const host = statfsSync(t.runDir);
      assert.notEqual(host.type, 0x01021994, "runDir itself is not the sandbox's tmpfs");
      assert.ok(host.bavail * host.bsize > 16 * 1024 * 1024, "the host filesystem still has room");
    } finally {
      handle.stdin.end();
      await handle.destroy();
    }
  });
});
