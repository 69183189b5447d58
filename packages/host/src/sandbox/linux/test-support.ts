/**
 * Helpers shared by the Linux driver's tests and boot benchmark: whether the machine can run
 * them, the test rootfs, a runner folder, a driver with its own run folder and cgroup instance,
 * and checks that nothing outlives a test.
 */
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { chmod, copyFile, link, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";
import { DEFAULT_LIMITS, type Limits } from "@paddock/protocol";
import type { SandboxDriver, SandboxExit, SandboxSpec } from "../driver.ts";
import { detectCgroups } from "./cgroups.ts";
import { LinuxSandboxDriver, type LinuxSandboxDriverConfig } from "./linux-driver.ts";
import { mountPointsUnder } from "./mountinfo.ts";

/** The node binary copied into test runner folders. */
const NODE_BINARY = process.execPath;

/** PADDOCK_TEST_DATA/images/default names a digest; its rootfs is the test image. */
export function findTestRootfs(): string | undefined {
  const data = process.env.PADDOCK_TEST_DATA;
  if (!data) return undefined;
  try {
    const digest = readFileSync(path.join(data, "images", "default"), "utf8").trim();
    const rootfs = path.join(data, "images", digest, "rootfs");
    return existsSync(path.join(rootfs, "bin")) || existsSync(path.join(rootfs, "usr")) ? rootfs : undefined;
  } catch {
    return undefined;
  }
}

function hasExecutable(name: string): boolean {
  for (const dir of ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]) {
    try {
      accessSync(path.join(dir, name), constants.X_OK);
      return true;
    } catch {}
  }
  return false;
}

/** Why the real-kernel tests cannot run here, or undefined when they can. */
export function skipReason(): string | undefined {
  if (process.platform !== "linux") return "the Linux sandbox driver needs Linux";
  if (process.getuid?.() !== 0) return "the Linux sandbox driver needs root (mounts and cgroups)";
  if (!hasExecutable("bwrap")) return "bubblewrap (bwrap) is not installed";
  if (!hasExecutable("setpriv")) return "setpriv (util-linux) is not installed";
  if (!findTestRootfs()) {
    return "no test image: set PADDOCK_TEST_DATA to a folder with images/default naming images/<digest>/rootfs";
  }
  return undefined;
}

/** The test rootfs; only call after skipReason() returned undefined. */
export function testRootfs(): string {
  const rootfs = findTestRootfs();
  if (!rootfs) throw new Error("no test rootfs");
  return rootfs;
}

/** A world-readable temporary folder holding `node` (a hard link, or a copy across filesystems). */
export async function makeRunnerDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "paddock-runner-"));
  await chmod(dir, 0o755);
  try {
    await link(NODE_BINARY, path.join(dir, "node"));
  } catch {
    await copyFile(NODE_BINARY, path.join(dir, "node"));
    await chmod(path.join(dir, "node"), 0o755);
  }
  return dir;
}

export interface TestDriver {
  driver: LinuxSandboxDriver;
  config: LinuxSandboxDriverConfig;
  runDir: string;
  instance: string;
  /** Reaps whatever the tests left and removes the run folder. */
  cleanup(): Promise<void>;
}

/** A driver with a fresh run folder and an instance name unique to this process. */
export async function makeTestDriver(name: string, extra: Partial<LinuxSandboxDriverConfig> = {}): Promise<TestDriver> {
  const base = await mkdtemp(path.join(os.tmpdir(), "paddock-run-"));
  await chmod(base, 0o711);
  const runDir = path.join(base, "run");
  const instance = `t-${name}-${process.pid}`;
  const config: LinuxSandboxDriverConfig = { runDir, instance, ...extra };
  const driver = new LinuxSandboxDriver(config);
  return {
    driver,
    config,
    runDir,
    instance,
    async cleanup() {
      try {
        await driver.reapOrphans();
      } finally {
        if ((await mountPointsUnder(base)).length === 0) await rm(base, { recursive: true, force: true });
      }
    },
  };
}

/** A spec running argv over the test rootfs with default limits and a plain PATH. */
export function testSpec(
  id: string,
  runnerDir: string,
  argv: string[],
  overrides: Partial<Omit<SandboxSpec, "limits">> & { limits?: Partial<Limits> } = {},
): SandboxSpec {
  const { limits, ...rest } = overrides;
  return {
    id,
    layers: [testRootfs()],
    runnerDir,
    files: [],
    argv,
    env: { PATH: "/usr/local/bin:/usr/bin:/bin", HOME: "/home/agent" },
    cwd: "/",
    ...rest,
    limits: { ...DEFAULT_LIMITS, ...limits },
  };
}

/** Reads a stream to its end as UTF-8. */
export async function collect(stream: Readable): Promise<string> {
  let text = "";
  for await (const chunk of stream) text += chunk.toString();
  return text;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exit: SandboxExit;
}

/** Boots, waits for the exit and the output, and destroys the sandbox. */
export async function runSandbox(driver: SandboxDriver, spec: SandboxSpec, stdin?: string): Promise<RunResult> {
  const handle = await driver.boot(spec);
  try {
    handle.stdin.end(stdin);
    const [stdout, stderr, exit] = await Promise.all([collect(handle.stdout), collect(handle.stderr), handle.exited]);
    return { stdout, stderr, exit };
  } finally {
    await handle.destroy();
  }
}

/**
 * Host pids, found by scanning /proc, whose cgroup (in any hierarchy) lies under
 * paddock/<instance>, or under paddock/<instance>/<id> when id is given.
 */
export async function processesOfInstance(instance: string, id?: string): Promise<number[]> {
  const marker = id === undefined ? `/paddock/${instance}/` : `/paddock/${instance}/${id}\n`;
  const found: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if ((await readFile(`/proc/${entry}/cgroup`, "utf8")).includes(marker)) found.push(Number(entry));
    } catch {}
  }
  return found;
}

/** Everything of an instance still present: mounts under runDir, cgroup folders, processes. */
export async function leftovers(runDir: string, instance: string): Promise<string[]> {
  const found = (await mountPointsUnder(runDir)).map((m) => `mount ${m}`);
  const layout = await detectCgroups();
  for (const root of new Set([layout.memory, layout.pids, layout.cpu])) {
    const dir = path.join(root, "paddock", instance);
    if (existsSync(dir)) found.push(`cgroup ${dir}`);
  }
  for (const pid of await processesOfInstance(instance)) found.push(`process ${pid}`);
  return found;
}

/** Host pids of processes running inside a sandbox's cgroups. */
export async function cgroupPids(instance: string, id: string): Promise<number[]> {
  const layout = await detectCgroups();
  const pids = new Set<number>();
  for (const root of new Set([layout.memory, layout.pids, layout.cpu])) {
    try {
      const text = await readFile(path.join(root, "paddock", instance, id, "cgroup.procs"), "utf8");
      for (const line of text.split("\n")) if (line) pids.add(Number(line));
    } catch {}
  }
  return [...pids];
}

/** True while a process exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^\d+ \(.*\) Z /s.test(stat);
  } catch {
    return false;
  }
}
