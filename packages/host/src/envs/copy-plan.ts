/**
 * How freezing copies an upper: which directories are recreated one by one (the root, the folders
 * on the way to excluded paths, and big folders split for parallel copying) and which subtrees
 * each of the parallel `cp -a` runs copies whole.
 *
 * Copying one large tree from a tmpfs into the page cache of a disk file system is bound by page
 * allocation in one process; two processes on two cores copy about 1.6 times as fast. cp keeps
 * hard links only between files one run copies, so subtrees that share a multiply-linked inode
 * always go to the same run.
 *
 * Threat model: names and shapes are the hostile user's. The plan walks with lstat and readdir
 * only, descends only into directories and keys names by their raw bytes. Opening folders stops
 * before the argument lists outgrow one cp command line, so a tree of any shape costs a bounded
 * number of arguments. Only a root or excluded path's parent holding more names than one command
 * line fits makes xargs split a run; hard links across that split become copies.
 */
import type { Stats } from "node:fs";
import { lstat, readdir } from "node:fs/promises";
import { XARGS_SIZE } from "../fs/tools.ts";
import type { ExcludeNode } from "./changes.ts";

/** A directory the freeze creates itself, with the owner, mode and times of `stats`. */
export interface PlannedDir {
  rel: Buffer;
  stats: Stats;
}

export interface CopyPlan {
  /** Parents before children; the root ("") first. */
  dirs: PlannedDir[];
  /** Subtrees copied whole, relative to the upper. */
  sources: Buffer[];
}

/** Bytes of cp arguments the split may produce in all: one xargs command line, less some room. */
const ARG_BUDGET = XARGS_SIZE - 64 * 1024;
/** Bytes an argument takes beyond its path: "./" and the terminating NUL. */
const ARG_OVERHEAD = 3;
/** Copy cost counted per entry on top of its bytes (inode creation, metadata). */
const ENTRY_COST = 4096;
const SLASH = Buffer.from("/");

export function at(root: string, rel: Buffer): Buffer {
  return rel.length === 0 ? Buffer.from(root) : Buffer.concat([Buffer.from(root), SLASH, rel]);
}

function child(rel: Buffer, name: Buffer): Buffer {
  return rel.length === 0 ? name : Buffer.concat([rel, SLASH, name]);
}

/**
 * Splits the upper into whole subtrees and the directories on the way to excluded paths, which
 * are recreated so their other children can be copied without the excluded ones.
 */
export async function planCopy(upper: string, rootStats: Stats, exclude: ExcludeNode): Promise<CopyPlan> {
  const plan: CopyPlan = { dirs: [{ rel: Buffer.alloc(0), stats: rootStats }], sources: [] };
  const visit = async (rel: Buffer, node: ExcludeNode): Promise<void> => {
    const names = await readdir(at(upper, rel), { encoding: "buffer" });
    names.sort(Buffer.compare);
    for (const name of names) {
      const next = node.children.get(name.toString("latin1"));
      const childRel = child(rel, name);
      if (!next) {
        plan.sources.push(childRel);
        continue;
      }
      if (next.excluded) continue;
      const stats = await lstat(at(upper, childRel));
      if (!stats.isDirectory()) {
        plan.sources.push(childRel);
        continue;
      }
      plan.dirs.push({ rel: childRel, stats });
      await visit(childRel, next);
    }
  };
  await visit(Buffer.alloc(0), exclude);
  return plan;
}

/**
 * Copy costs of an upper's subtrees and its multiply-linked entries, fed entry by entry (by the
 * changes walk, which sees every entry once).
 */
export class CopyCosts {
  /** Cost of each directory's subtree, by the Latin-1 key of its path. */
  readonly #dirs = new Map<string, number>();
  /** Paths of each multiply-linked non-directory, by inode. */
  readonly #links = new Map<number | bigint, Buffer[]>();
  #total = 0;

  add(rel: Buffer, st: Stats): void {
    const cost = entryCost(st);
    this.#total += cost;
    if (st.isDirectory()) this.#dirs.set(rel.toString("latin1"), (this.#dirs.get(rel.toString("latin1")) ?? 0) + cost);
    for (let end = rel.lastIndexOf(0x2f); end > 0; end = rel.lastIndexOf(0x2f, end - 1)) {
      const key = rel.subarray(0, end).toString("latin1");
      this.#dirs.set(key, (this.#dirs.get(key) ?? 0) + cost);
    }
    if (!st.isDirectory() && !st.isCharacterDevice() && st.nlink > 1) {
      const list = this.#links.get(st.ino);
      if (list) list.push(Buffer.from(rel));
      else this.#links.set(st.ino, [Buffer.from(rel)]);
    }
  }

  get total(): number {
    return this.#total;
  }

  /** The subtree cost of a directory, or undefined for a path that is not a walked directory. */
  dir(rel: Buffer): number | undefined {
    return this.#dirs.get(rel.toString("latin1"));
  }

  /** Groups of paths that are names of one inode. */
  linkGroups(): Buffer[][] {
    return [...this.#links.values()].filter((paths) => paths.length > 1);
  }
}

function entryCost(st: Stats): number {
  // Holes of sparse files are not copied, so count allocated blocks, not the size.
  return ENTRY_COST + (st.isFile() ? Math.min(st.size, st.blocks * 512) : 0);
}

/**
 * Splits `plan.sources` into at most `runs` lists of about equal cost. Directories much larger
 * than one run's share are opened: they join `plan.dirs` and their children become sources.
 * Sources that share a multiply-linked inode land in the same list.
 */
export async function splitSources(upper: string, plan: CopyPlan, costs: CopyCosts, runs: number): Promise<Buffer[][]> {
  if (runs <= 1 || plan.sources.length === 0) return [plan.sources];
  const target = costs.total / (runs * 4);
  const unitCost = new Map<string, number>();
  const costOf = async (rel: Buffer): Promise<number> => {
    const dir = costs.dir(rel);
    if (dir !== undefined) return dir;
    return entryCost(await lstat(at(upper, rel)));
  };
  let units: Buffer[] = [];
  for (const rel of plan.sources) {
    units.push(rel);
    unitCost.set(rel.toString("latin1"), await costOf(rel));
  }
  // Each run's list must fit one cp command line: xargs would split a longer one over several
  // cp processes, and hard links between them would be lost.
  let argBytes = units.reduce((n, rel) => n + rel.length + ARG_OVERHEAD, 0);
  for (let opened = true; opened; ) {
    opened = false;
    const next: Buffer[] = [];
    for (const rel of units) {
      const key = rel.toString("latin1");
      const stats = (unitCost.get(key) ?? 0) > target ? await lstat(at(upper, rel)) : undefined;
      if (!stats?.isDirectory()) {
        next.push(rel);
        continue;
      }
      const names = await readdir(at(upper, rel), { encoding: "buffer" });
      const added = names.reduce((n, name) => n + rel.length + 1 + name.length + ARG_OVERHEAD, 0);
      if (names.length === 0 || argBytes + added - (rel.length + ARG_OVERHEAD) > ARG_BUDGET) {
        next.push(rel);
        continue;
      }
      argBytes += added - (rel.length + ARG_OVERHEAD);
      plan.dirs.push({ rel, stats });
      unitCost.delete(key);
      names.sort(Buffer.compare);
      for (const name of names) {
        const childRel = child(rel, name);
        next.push(childRel);
        unitCost.set(childRel.toString("latin1"), await costOf(childRel));
      }
      opened = true;
    }
    units = next;
  }

  // Units sharing an inode are merged (union-find over unit indexes).
  const index = new Map(units.map((rel, i) => [rel.toString("latin1"), i]));
  const parent = units.map((_, i) => i);
  const find = (i: number): number => {
    while (parent[i] !== i) {
      const up = parent[i] ?? i;
      parent[i] = parent[up] ?? up;
      i = up;
    }
    return i;
  };
  const unitOf = (rel: Buffer): number | undefined => {
    for (let end = rel.length; end > 0; end = rel.lastIndexOf(0x2f, end - 1)) {
      const i = index.get(rel.subarray(0, end).toString("latin1"));
      if (i !== undefined) return i;
    }
    return undefined;
  };
  for (const paths of costs.linkGroups()) {
    let first: number | undefined;
    for (const rel of paths) {
      const i = unitOf(rel);
      if (i === undefined) continue;
      if (first === undefined) first = find(i);
      else parent[find(i)] = first;
    }
  }
  const components = new Map<number, { units: Buffer[]; cost: number }>();
  units.forEach((rel, i) => {
    const root = find(i);
    const c = components.get(root) ?? { units: [], cost: 0 };
    c.units.push(rel);
    c.cost += unitCost.get(rel.toString("latin1")) ?? 0;
    components.set(root, c);
  });

  // Largest first, each to the lightest list.
  const lists = Array.from({ length: runs }, () => ({ units: [] as Buffer[], cost: 0 }));
  for (const c of [...components.values()].sort((a, b) => b.cost - a.cost)) {
    const lightest = lists.reduce((a, b) => (b.cost < a.cost ? b : a));
    lightest.units.push(...c.units);
    lightest.cost += c.cost;
  }
  plan.dirs.sort((a, b) => Buffer.compare(a.rel, b.rel));
  return lists.filter((l) => l.units.length > 0).map((l) => l.units.sort(Buffer.compare));
}
