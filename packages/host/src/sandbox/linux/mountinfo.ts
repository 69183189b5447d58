/** Reads /proc/self/mountinfo (proc(5)): which filesystems are mounted where. */
import { readFile } from "node:fs/promises";

export interface MountEntry {
  id: number;
  parentId: number;
  /** The mount point, unescaped. */
  mountPoint: string;
  fsType: string;
  source: string;
  /** Per-superblock options, for example the controllers of a cgroup v1 hierarchy. */
  superOptions: string[];
}

/** mountinfo escapes space, tab, newline and backslash as three-digit octal. */
function unescapeField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/** Parses the text of a mountinfo file; malformed lines are skipped. */
export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(" ");
    const dash = fields.indexOf("-", 6);
    if (dash < 0 || fields.length < dash + 4) continue;
    entries.push({
      id: Number(fields[0]),
      parentId: Number(fields[1]),
      mountPoint: unescapeField(fields[4] ?? ""),
      fsType: fields[dash + 1] ?? "",
      source: unescapeField(fields[dash + 2] ?? ""),
      superOptions: (fields[dash + 3] ?? "").split(","),
    });
  }
  return entries;
}

export async function readMountInfo(): Promise<MountEntry[]> {
  return parseMountInfo(await readFile("/proc/self/mountinfo", "utf8"));
}

/**
 * Mount points below dir (and dir itself unless includeDir is false), deepest first: a child
 * mount must go before its parent.
 */
export async function mountPointsUnder(dir: string, includeDir = true): Promise<string[]> {
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  const points = new Set<string>();
  for (const entry of await readMountInfo()) {
    if ((includeDir && entry.mountPoint === dir) || entry.mountPoint.startsWith(prefix)) points.add(entry.mountPoint);
  }
  return [...points].sort((a, b) => b.split("/").length - a.split("/").length || b.localeCompare(a));
}
