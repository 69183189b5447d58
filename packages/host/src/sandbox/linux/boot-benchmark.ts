/**
 * Reports median boot-to-first-stdout-byte through the Linux driver, next to plain bwrap, and
 * the cost of each boot step. Run as root:
 *
 *   PADDOCK_TEST_DATA=... node packages/host/src/sandbox/linux/boot-benchmark.ts [rounds] [perl|bash] [warm launchers]
 */
import { spawn } from "node:child_process";
import { rm } from "node:fs/promises";
import { RUNNER_MOUNT } from "../driver.ts";
import { dropPrivileges } from "./bwrap-args.ts";
import { HELPER_ENV, type HelperKind } from "./launcher.ts";
import { makeRunnerDir, makeTestDriver, skipReason, testRootfs, testSpec } from "./test-support.ts";

const rounds = Number(process.argv[2] ?? 20);
const helper = (process.argv[3] || undefined) as HelperKind | undefined;
const warmLaunchers = process.argv[4] === undefined ? undefined : Number(process.argv[4]);
const UID = 61000;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
}

/**
 * Milliseconds from spawning bwrap (as the sandbox uid, directly or through setpriv) to the first
 * stdout byte, or to the exit when nothing is printed.
 */
function plainBwrap(args: string[], viaSetpriv = false): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const env = { ...HELPER_ENV };
    const stdio: ["ignore", "pipe", "inherit"] = ["ignore", "pipe", "inherit"];
    const child = viaSetpriv
      ? spawn("setpriv", [...dropPrivileges(UID, UID), "bwrap", ...args], { env, stdio })
      : spawn("bwrap", args, { uid: UID, gid: UID, env, stdio });
    let first: number | undefined;
    child.stdout.once("data", () => {
      first ??= performance.now() - start;
    });
    child.stdout.resume();
    child.once("error", reject);
    child.once("close", (code) =>
      code === 0 ? resolve(first ?? performance.now() - start) : reject(new Error(`bwrap exited ${code}`)),
    );
  });
}

async function main(): Promise<void> {
  const reason = skipReason();
  if (reason) {
    console.log(`skipped: ${reason}`);
    return;
  }
  const rootfs = testRootfs();
  const runnerDir = await makeRunnerDir();
  const test = await makeTestDriver("bench", {
    ...(helper ? { helper } : {}),
    ...(warmLaunchers === undefined ? {} : { warmLaunchers }),
  });
  try {
    const base = ["--unshare-all", "--ro-bind", rootfs, "/", "--proc", "/proc", "--dev", "/dev"];
    const results: Record<string, number[]> = {};
    const record = (name: string, ms: number): void => {
      const values = results[name] ?? [];
      values.push(ms);
      results[name] = values;
    };
    // Warm up caches (the image, node's binary, the seccomp file).
    for (const argv of [["/bin/true"], [`${RUNNER_MOUNT}/node`, "-e", "0"]]) {
      const handle = await test.driver.boot(testSpec("warm", runnerDir, argv));
      await handle.exited;
      await handle.destroy();
    }
    for (let i = 0; i < rounds; i++) {
      record("plain bwrap --unshare-all true (to exit)", await plainBwrap([...base, "/bin/true"]));
      record("plain bwrap sh -c 'echo hi'", await plainBwrap([...base, "/bin/sh", "-c", "echo hi"]));
      record("plain setpriv+bwrap sh -c 'echo hi'", await plainBwrap([...base, "/bin/sh", "-c", "echo hi"], true));
      record(
        "plain bwrap node -e 'console.log(1)'",
        await plainBwrap([...base, "--ro-bind", runnerDir, "/mnt", "/mnt/node", "-e", "console.log(1)"]),
      );
      for (const [name, argv] of [
        ["driver sh -c 'echo hi'", ["/bin/sh", "-c", "echo hi"]],
        ["driver node -e 'console.log(1)'", [`${RUNNER_MOUNT}/node`, "-e", "console.log(1)"]],
      ] as const) {
        const start = performance.now();
        const handle = await test.driver.boot(testSpec(`bench-${i}`, runnerDir, [...argv]));
        const booted = performance.now() - start;
        await new Promise<void>((resolve) => handle.stdout.once("data", () => resolve()));
        record(name, performance.now() - start);
        record(`${name}: boot() resolved`, booted);
        handle.stdout.resume();
        await handle.exited;
        const destroyStart = performance.now();
        await handle.destroy();
        record(`${name}: destroy()`, performance.now() - destroyStart);
      }
    }
    console.log(
      `median of ${rounds} rounds, milliseconds (helper: ${helper ?? "default"}, warm launchers: ${warmLaunchers ?? "default"})`,
    );
    for (const [name, values] of Object.entries(results))
      console.log(`${median(values).toFixed(1).padStart(7)}  ${name}`);
  } finally {
    await test.cleanup();
    await rm(runnerDir, { recursive: true, force: true });
  }
}

await main();
