/** What tests learn about live processes and sandboxes from /proc (Linux). */
import { readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";

export interface ProcessInfo {
  pid: number;
  /** The executable's name as the kernel shows it (at most 15 bytes). */
  comm: string;
}

/**
 * The processes descended from `root` (not root itself), found by walking the parent ids of
 * /proc/<pid>/stat. A process that exits during the walk is left out.
 */
export async function descendants(root: number): Promise<ProcessInfo[]> {
  const parents = new Map<number, number[]>();
  const comms = new Map<number, string>();
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, "utf8").catch(() => null);
    if (stat === null) continue;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ")".
    const close = stat.lastIndexOf(")");
    const ppid = Number(stat.slice(close + 2).split(" ")[1]);
    const pid = Number(entry);
    comms.set(pid, stat.slice(stat.indexOf("(") + 1, close));
    const siblings = parents.get(ppid) ?? [];
    siblings.push(pid);
    parents.set(ppid, siblings);
  }
  const found: ProcessInfo[] = [];
  const queue = [...(parents.get(root) ?? [])];
  for (let pid = queue.shift(); pid !== undefined; pid = queue.shift()) {
    found.push({ pid, comm: comms.get(pid) ?? "" });
    queue.push(...(parents.get(pid) ?? []));
  }
  return found;
}

/** Names of the sandboxes mounted under a host's run folder. */
export function sandboxesUnder(runDir: string): string[] {
  const names = new Set<string>();
  for (const line of readFileSync("/proc/mounts", "utf8").split("\n")) {
    const point = line.split(" ")[1] ?? "";
    if (point.startsWith(`${runDir}/`)) names.add(point.slice(runDir.length + 1).split("/")[0] ?? "");
  }
  return [...names];
}
