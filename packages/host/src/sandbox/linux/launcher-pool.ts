/**
 * Warm launchers: launcher processes started ahead of boots, so a boot skips spawning the helper
 * and, on cgroup v1, joining a cgroup (a launcher sits in a slot cgroup, named .warm-<hex>, that
 * the boot renames to the sandbox's). Idle launchers do not keep the host's event loop alive and
 * exit when the host goes away; their slots are reaped like sandboxes.
 */
import { randomBytes } from "node:crypto";
import { closeSync } from "node:fs";
import { type CgroupLayout, SandboxCgroup } from "./cgroups.ts";
import { Launcher, type Tools } from "./launcher.ts";
import { openSeccompFilter } from "./seccomp.ts";

/** Slot cgroup names start with a dot, which sandbox ids cannot. */
export const SLOT_PREFIX = ".warm-";

export interface Lease {
  launcher: Launcher;
  /** The slot cgroup the launcher already joined (cgroup v1 only). */
  slot?: SandboxCgroup;
}

export class LauncherPool {
  private readonly tools: Tools;
  private readonly layout: CgroupLayout;
  private readonly instance: string;
  private readonly seccompFile: string;
  private readonly size: number;
  private readonly idle: Lease[] = [];
  private filling = false;
  private closed = false;

  constructor(tools: Tools, layout: CgroupLayout, instance: string, seccompFile: string, size: number) {
    this.tools = tools;
    this.layout = layout;
    this.instance = instance;
    this.seccompFile = seccompFile;
    this.size = size;
  }

  /** A launcher for one boot: a warm one when there is one, else a new one. */
  take(): Lease {
    this.closed = false;
    let lease = this.idle.shift();
    while (lease && !lease.launcher.alive) {
      void discard(lease);
      lease = this.idle.shift();
    }
    return lease ?? this.fresh();
  }

  /**
   * Starts launchers until the pool is full again. The driver calls it once a boot is done: a
   * spawn blocks the event loop for milliseconds, which must not delay the boot itself.
   */
  refill(): void {
    this.scheduleFill();
  }

  /** A launcher started now, in no cgroup yet. */
  fresh(): Lease {
    return { launcher: this.spawn([]) };
  }

  /** Stops every idle launcher and removes its slot. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.idle.splice(0).map(discard));
  }

  private spawn(slotProcs: string[]): Launcher {
    const fd = openSeccompFilter(this.seccompFile, this.tools.arch);
    try {
      return new Launcher(this.tools, fd, slotProcs);
    } finally {
      closeSync(fd);
    }
  }

  /** Starts one launcher per event-loop turn (a spawn blocks the loop for a few milliseconds). */
  private scheduleFill(): void {
    if (this.filling || this.closed || this.idle.length >= this.size) return;
    this.filling = true;
    setImmediate(() => {
      this.filling = false;
      if (this.closed || this.idle.length >= this.size) return;
      let slot: SandboxCgroup | undefined;
      try {
        slot = this.layout.version === "v1" ? this.newSlot() : undefined;
        const launcher = this.spawn(slot?.procsFiles ?? []);
        launcher.ref(false);
        this.idle.push({ launcher, slot });
      } catch {
        // A boot without a warm launcher starts its own; the next boot tries again.
        slot?.remove().catch(() => {});
        return;
      }
      this.scheduleFill();
    });
  }

  private newSlot(): SandboxCgroup {
    const slot = new SandboxCgroup(this.layout, this.instance, `${SLOT_PREFIX}${randomBytes(6).toString("hex")}`);
    slot.create();
    return slot;
  }
}

/** Kills a lease's launcher and removes its slot cgroup (whatever part still carries its name). */
export async function discard(lease: Lease): Promise<void> {
  try {
    await lease.launcher.kill();
    if (lease.slot) {
      await lease.slot.killAll();
      await lease.slot.remove();
    }
  } catch {
    // Left for reapOrphans.
  }
}
