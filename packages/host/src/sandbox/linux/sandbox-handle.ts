/** A booted Linux sandbox: its streams, its exit, killing it and tearing it down. */
import type { ChildProcess } from "node:child_process";
import { rm, rmdir } from "node:fs/promises";
import { constants } from "node:os";
import type { Readable, Writable } from "node:stream";
import type { SandboxExit, SandboxHandle } from "../driver.ts";
import { removeInstanceCgroups, type SandboxCgroup } from "./cgroups.ts";
import { type Tools, unmountAll } from "./launcher.ts";
import { mountPointsUnder } from "./mountinfo.ts";
import type { NetworkLease } from "./network.ts";
import type { SandboxPaths } from "./paths.ts";

/** Signal numbers to names; the first name wins for aliases (SIGABRT over SIGIOT). */
const SIGNAL_NAMES = new Map<number, string>();
for (const [name, n] of Object.entries(constants.signals)) if (!SIGNAL_NAMES.has(n)) SIGNAL_NAMES.set(n, name);

/**
 * bwrap's init exits with 128+N when argv dies of signal N; report that as the signal. When
 * bwrap itself was killed, Node reports the signal directly.
 */
export function toSandboxExit(code: number | null, signal: NodeJS.Signals | null, oom: boolean): SandboxExit {
  if (signal !== null) return { code: null, signal, oom };
  const name = code !== null && code > 128 ? SIGNAL_NAMES.get(code - 128) : undefined;
  if (name !== undefined) return { code: null, signal: name, oom };
  return { code, signal: null, oom };
}

/**
 * Removes a sandbox folder once nothing is mounted in it. Normally it is empty (everything lived
 * in the tmpfs); a leftover from an interrupted boot is removed recursively.
 */
export async function removeSandboxDir(dir: string): Promise<void> {
  const mounted = await mountPointsUnder(dir);
  if (mounted.length > 0) throw new Error(`refusing to remove ${dir}: still mounted: ${mounted.join(", ")}`);
  try {
    await rmdir(dir);
  } catch (err) {
    const code = err instanceof Error && "code" in err ? err.code : undefined;
    if (code === "ENOENT") return;
    if (code !== "ENOTEMPTY") throw err;
    await rm(dir, { recursive: true, force: true });
  }
}

/** Kills, unmounts and removes whatever exists of a sandbox; safe on any partial state. */
export async function teardownSandbox(tools: Tools, paths: SandboxPaths, cgroup: SandboxCgroup): Promise<void> {
  await cgroup.killAll();
  await unmountAll(tools, paths.dir);
  await removeSandboxDir(paths.dir);
  await cgroup.remove();
  removeInstanceCgroups(cgroup.layout, cgroup.instance);
}

export class LinuxSandboxHandle implements SandboxHandle {
  readonly id: string;
  readonly outputsDir: string;
  readonly inputsDir: string;
  readonly runtimeDir: string;
  readonly address: string | null;
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly exited: Promise<SandboxExit>;
  private readonly paths: SandboxPaths;
  private readonly cgroup: SandboxCgroup;
  private readonly tools: Tools;
  private readonly child: ChildProcess;
  private readonly network: { lease: NetworkLease; release: (lease: NetworkLease) => void } | undefined;
  private destroying: Promise<void> | undefined;

  /**
   * child is the launched process, which is bwrap after its exec; network, when given, is the
   * sandbox's network, released once the sandbox is torn down.
   */
  constructor(
    id: string,
    paths: SandboxPaths,
    cgroup: SandboxCgroup,
    tools: Tools,
    child: ChildProcess,
    network?: { lease: NetworkLease; release: (lease: NetworkLease) => void },
  ) {
    if (!child.stdin || !child.stdout || !child.stderr) throw new Error("sandbox process has no stdio pipes");
    this.id = id;
    this.paths = paths;
    this.outputsDir = paths.outputs;
    this.inputsDir = paths.inputs;
    this.runtimeDir = paths.runtime;
    this.network = network;
    this.address = network?.lease.address ?? null;
    this.cgroup = cgroup;
    this.tools = tools;
    this.child = child;
    this.stdin = child.stdin;
    this.stdout = child.stdout;
    this.stderr = child.stderr;
    // Writing to a sandbox that has exited is not worth crashing the host for.
    this.stdin.on("error", () => {});
    const childExit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        resolve({ code: child.exitCode, signal: child.signalCode });
      } else {
        child.once("exit", (code, signal) => resolve({ code, signal }));
      }
    });
    // Once bwrap is gone, whatever is left in the cgroups is a straggler: kill it before reporting.
    this.exited = childExit.then(async ({ code, signal }) => {
      await this.cgroup.killAll();
      return toSandboxExit(code, signal, this.cgroup.oomKilled());
    });
    this.exited.catch(() => {});
  }

  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.cgroup.killAll();
  }

  destroy(): Promise<void> {
    // Concurrent calls share one teardown; a failed one can be retried.
    this.destroying ??= this.teardown().catch((err: unknown) => {
      this.destroying = undefined;
      throw err;
    });
    return this.destroying;
  }

  private async teardown(): Promise<void> {
    await this.kill();
    await this.exited.catch(() => {});
    await teardownSandbox(this.tools, this.paths, this.cgroup);
    // Only now: no process of the sandbox is left to use the namespace's address.
    if (this.network) this.network.release(this.network.lease);
  }
}
