/**
 * Per-sandbox control groups: resource limits, the set of processes a sandbox owns, and killing
 * all of them.
 *
 * Threat model: sandbox code may try to exhaust the host (memory, pids, CPU) or to outlive its
 * sandbox (fork bombs, setsid'd and double-forked daemons, processes ignoring signals). The
 * launcher writes itself into these cgroups before it execs bwrap, so every sandbox process is
 * born inside them and cannot leave: the sandbox sees no cgroup filesystem and has no
 * capabilities. Killing works from cgroup membership, never from the process tree.
 *
 * Layout: <hierarchy>/paddock/<instance>/<id>, on cgroup v1 (memory, pids and cpu hierarchies)
 * or the v2 unified hierarchy. cgroupfs calls never touch a disk and take microseconds, so they
 * are synchronous: a round trip through libuv's thread pool would cost more than the call.
 */
import {
  type Dirent,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  writeFileSync,
} from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Limits } from "@paddock/protocol";
import { readMountInfo } from "./mountinfo.ts";

export type CgroupVersion = "v1" | "v2";

export interface CgroupLayout {
  version: CgroupVersion;
  /** v1: the memory, pids and cpu hierarchy mount points; v2: the unified hierarchy. */
  memory: string;
  pids: string;
  cpu: string;
}

const V1_CONTROLLERS = ["memory", "pids", "cpu"] as const;
const V2_CONTROLLERS = ["memory", "pids", "cpu"] as const;
const CPU_PERIOD_US = 100_000;
/** How long killAll keeps trying before it reports the cgroup as unkillable. */
const KILL_TIMEOUT_MS = 15_000;

/** Finds the cgroup hierarchies: v2 when /sys/fs/cgroup is the unified hierarchy, else v1. */
export async function detectCgroups(): Promise<CgroupLayout> {
  const mounts = await readMountInfo();
  const unified = mounts.find((m) => m.fsType === "cgroup2" && m.mountPoint === "/sys/fs/cgroup");
  if (unified) {
    const available = readFileSync(path.join(unified.mountPoint, "cgroup.controllers"), "utf8").split(/\s+/);
    const missing = V2_CONTROLLERS.filter((c) => !available.includes(c));
    if (missing.length > 0) throw new Error(`cgroup v2 controllers unavailable: ${missing.join(", ")}`);
    return { version: "v2", memory: unified.mountPoint, pids: unified.mountPoint, cpu: unified.mountPoint };
  }
  const found: Partial<Record<(typeof V1_CONTROLLERS)[number], string>> = {};
  for (const controller of V1_CONTROLLERS) {
    const m = mounts.find((e) => e.fsType === "cgroup" && e.superOptions.includes(controller));
    if (m) found[controller] = m.mountPoint;
  }
  if (!found.memory || !found.pids || !found.cpu) {
    const missing = V1_CONTROLLERS.filter((c) => !found[c]);
    throw new Error(`no cgroup v2 at /sys/fs/cgroup and no cgroup v1 hierarchy for: ${missing.join(", ")}`);
  }
  return { version: "v1", memory: found.memory, pids: found.pids, cpu: found.cpu };
}

/** The distinct hierarchy roots of a layout (one on v2, three on v1). */
function hierarchies(layout: CgroupLayout): string[] {
  return [...new Set([layout.memory, layout.pids, layout.cpu])];
}

function instanceDir(root: string, instance: string): string {
  return path.join(root, "paddock", instance);
}

function isErrno(err: unknown, ...codes: string[]): boolean {
  return err instanceof Error && "code" in err && codes.includes(String(err.code));
}

/** Writes one value to a cgroup control file, naming the file in the error. */
function writeControl(file: string, value: string): void {
  try {
    writeFileSync(file, value);
  } catch (err) {
    throw new Error(`cannot write ${JSON.stringify(value)} to ${file}: ${(err as Error).message}`);
  }
}

/** The pids listed in cgroup.procs files; a missing cgroup counts as empty. */
function readProcs(dirs: string[]): number[] {
  const pids = new Set<number>();
  for (const dir of dirs) {
    try {
      for (const line of readFileSync(path.join(dir, "cgroup.procs"), "utf8").split("\n")) {
        const pid = Number(line);
        if (line !== "" && Number.isInteger(pid) && pid > 1) pids.add(pid);
      }
    } catch (err) {
      if (!isErrno(err, "ENOENT", "ENODEV")) throw err;
    }
  }
  return [...pids];
}

/** Removes a cgroup directory and any child cgroups, deepest first; absent is fine. */
async function removeCgroupTree(dir: string): Promise<void> {
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if (isErrno(err, "ENOENT")) return;
    throw err;
  }
  for (const entry of entries) if (entry.isDirectory()) await removeCgroupTree(path.join(dir, entry.name));
  // A cgroup whose last process just exited can report EBUSY for a moment while it goes offline.
  for (let attempt = 0; ; attempt++) {
    try {
      rmdirSync(dir);
      return;
    } catch (err) {
      if (isErrno(err, "ENOENT")) return;
      if (!isErrno(err, "EBUSY") || attempt >= 50)
        throw new Error(`cannot remove cgroup ${dir}: ${(err as Error).message}`);
      await sleep(10);
    }
  }
}

/** The cgroups of one sandbox. */
export class SandboxCgroup {
  readonly layout: CgroupLayout;
  readonly instance: string;
  readonly id: string;
  /** One directory per hierarchy. */
  readonly dirs: string[];

  constructor(layout: CgroupLayout, instance: string, id: string) {
    this.layout = layout;
    this.instance = instance;
    this.id = id;
    this.dirs = hierarchies(layout).map((root) => path.join(instanceDir(root, instance), id));
  }

  /** The cgroup.procs files the launcher writes its own pid into before it execs bwrap. */
  get procsFiles(): string[] {
    return this.dirs.map((dir) => path.join(dir, "cgroup.procs"));
  }

  private dir(root: string): string {
    return path.join(instanceDir(root, this.instance), this.id);
  }

  /**
   * Creates the cgroups, limited when limits are given (a warm launcher's slot gets them once it
   * becomes a sandbox); fails if they already exist.
   */
  create(limits?: Limits): void {
    const { layout } = this;
    for (const root of hierarchies(layout)) {
      // A sandbox of the same instance being destroyed may remove the (then empty) instance
      // cgroup between the two mkdirs; start again when that happens.
      for (let attempt = 0; ; attempt++) {
        try {
          if (layout.version === "v2") this.enableV2Controllers();
          else mkdirSync(instanceDir(root, this.instance), { recursive: true });
          mkdirSync(this.dir(root));
          break;
        } catch (err) {
          if (!isErrno(err, "ENOENT") || attempt >= 10) throw err;
        }
      }
    }
    if (limits) this.limit(limits);
  }

  /** Whether adopt() works: cgroup v1 can rename a cgroup with processes in it, v2 cannot. */
  get canAdopt(): boolean {
    return this.layout.version === "v1";
  }

  /**
   * Takes over another cgroup of the same instance (a warm launcher's slot, which its process
   * already joined) by renaming it to this one, then limits it.
   */
  adopt(slot: SandboxCgroup, limits: Limits): void {
    if (!this.canAdopt) throw new Error("cgroup v2 cannot rename cgroups");
    this.dirs.forEach((dir, i) => {
      const from = slot.dirs[i];
      if (from === undefined) throw new Error("cgroup layouts differ");
      renameSync(from, dir);
    });
    this.limit(limits);
  }

  private limit(limits: Limits): void {
    const { layout } = this;
    const memory = this.dir(layout.memory);
    const pids = this.dir(layout.pids);
    const cpu = this.dir(layout.cpu);
    const memoryBytes = String(limits.memory_mb * 1024 * 1024);
    const quota = Math.max(1000, Math.round(limits.cpus * CPU_PERIOD_US));
    writeControl(path.join(pids, "pids.max"), String(limits.pids));
    if (layout.version === "v1") {
      writeControl(path.join(memory, "memory.limit_in_bytes"), memoryBytes);
      // With swap accounting, cap memory+swap too; without it, keep the cgroup from swapping.
      const memsw = path.join(memory, "memory.memsw.limit_in_bytes");
      if (existsSync(memsw)) writeControl(memsw, memoryBytes);
      else writeControl(path.join(memory, "memory.swappiness"), "0");
      writeControl(path.join(cpu, "cpu.cfs_period_us"), String(CPU_PERIOD_US));
      writeControl(path.join(cpu, "cpu.cfs_quota_us"), String(quota));
      writeControl(path.join(cpu, "cpu.shares"), String(Math.max(2, Math.round(1024 * limits.cpus))));
    } else {
      writeControl(path.join(memory, "memory.max"), memoryBytes);
      const swap = path.join(memory, "memory.swap.max");
      if (existsSync(swap)) writeControl(swap, "0");
      writeControl(path.join(cpu, "cpu.max"), `${quota} ${CPU_PERIOD_US}`);
      const weight = Math.min(10_000, Math.max(1, Math.round(100 * limits.cpus)));
      writeControl(path.join(cpu, "cpu.weight"), String(weight));
    }
  }

  /** v2: a controller works in a cgroup only if every ancestor enables it for its children. */
  private enableV2Controllers(): void {
    const root = this.layout.memory;
    const chain = [root, path.join(root, "paddock"), instanceDir(root, this.instance)];
    for (const [i, dir] of chain.entries()) {
      if (i > 0) mkdirSync(dir, { recursive: true });
      const control = path.join(dir, "cgroup.subtree_control");
      const enabled = readFileSync(control, "utf8").split(/\s+/);
      const missing = V2_CONTROLLERS.filter((c) => !enabled.includes(c));
      if (missing.length > 0) writeControl(control, missing.map((c) => `+${c}`).join(" "));
    }
  }

  /** The host pids of every process in the sandbox's cgroups. */
  pids(): number[] {
    return readProcs(this.dirs);
  }

  /**
   * SIGKILLs every process in the cgroups until none is left: on v2 through cgroup.kill, else
   * by pid in rounds, since a fork bomb adds processes between reading the list and killing.
   */
  async killAll(): Promise<void> {
    const deadline = Date.now() + KILL_TIMEOUT_MS;
    for (let round = 0; ; round++) {
      if (this.layout.version === "v2") {
        try {
          writeFileSync(path.join(this.dir(this.layout.pids), "cgroup.kill"), "1");
        } catch (err) {
          if (!isErrno(err, "ENOENT")) throw err;
        }
      }
      const pids = this.pids();
      if (pids.length === 0) return;
      for (const pid of pids) {
        try {
          process.kill(pid, "SIGKILL");
        } catch (err) {
          if (!isErrno(err, "ESRCH")) throw err;
        }
      }
      if (Date.now() > deadline) {
        throw new Error(`sandbox ${this.id}: processes ${pids.join(", ")} survive SIGKILL`);
      }
      await sleep(round < 10 ? 1 : 10);
    }
  }

  /** Whether the kernel's OOM killer killed a process of this sandbox. */
  oomKilled(): boolean {
    const file =
      this.layout.version === "v1"
        ? path.join(this.dir(this.layout.memory), "memory.oom_control")
        : path.join(this.dir(this.layout.memory), "memory.events");
    try {
      const match = /^oom_kill (\d+)$/m.exec(readFileSync(file, "utf8"));
      return match !== null && Number(match[1]) > 0;
    } catch (err) {
      if (isErrno(err, "ENOENT")) return false;
      throw err;
    }
  }

  /** Removes the cgroups (they must hold no process). */
  async remove(): Promise<void> {
    for (const dir of this.dirs) await removeCgroupTree(dir);
  }
}

/** Names of the cgroups under this instance (sandbox ids and warm-launcher slots), in any hierarchy. */
export function listInstanceCgroups(layout: CgroupLayout, instance: string): string[] {
  const ids = new Set<string>();
  for (const root of hierarchies(layout)) {
    try {
      for (const entry of readdirSync(instanceDir(root, instance), { withFileTypes: true })) {
        if (entry.isDirectory()) ids.add(entry.name);
      }
    } catch (err) {
      if (!isErrno(err, "ENOENT")) throw err;
    }
  }
  return [...ids];
}

/** Removes the instance's cgroup and the shared paddock one when they are empty. */
export function removeInstanceCgroups(layout: CgroupLayout, instance: string): void {
  for (const root of hierarchies(layout)) {
    for (const dir of [instanceDir(root, instance), path.join(root, "paddock")]) {
      try {
        rmdirSync(dir);
      } catch (err) {
        if (!isErrno(err, "ENOENT", "ENOTEMPTY", "EBUSY")) throw err;
      }
    }
  }
}
