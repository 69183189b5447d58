/**
 * What overlayfs writes into an upper directory, a read-only merged view of a layer stack, and
 * whether an upper is still in use by a mounted overlay.
 *
 * Threat model: layers and upper directories hold files chosen by a hostile user, but their host
 * paths (the stack itself) come from the host. Paths that would change the meaning of the mount
 * option string are refused rather than escaped. The view is mounted read-only, nosuid, nodev and
 * noexec, and is only ever looked at with lstat and readdir.
 */
import { execFile } from "node:child_process";
import { mkdir, realpath } from "node:fs/promises";
import { isAbsolute } from "node:path";
import { promisify } from "node:util";
import { toolEnv } from "../fs/tool-env.ts";
import { readMountInfo } from "../sandbox/linux/mountinfo.ts";

const run = promisify(execFile);

/** Why `dir` cannot be named in an overlay lowerdir option, or null when it can. */
export function layerDirProblem(dir: string): string | null {
  if (!isAbsolute(dir)) return "must be an absolute path";
  if (/[,:\\\n\0]/.test(dir)) return "must not contain ',', ':', '\\', a newline or NUL";
  return null;
}

/**
 * Calls `fn` with a folder that shows the merged, read-only view of `lowers` (top first): the
 * only layer itself when there is one, an overlay mounted on `mountPoint` (created if needed,
 * unmounted before returning) when there are more, null when there are none.
 */
export async function withLowerView<T>(
  lowers: readonly string[],
  mountPoint: string,
  fn: (view: string | null) => Promise<T>,
): Promise<T> {
  for (const dir of lowers) {
    const problem = layerDirProblem(dir);
    if (problem) throw new Error(`lower layer ${JSON.stringify(dir)} ${problem}`);
  }
  if (lowers.length <= 1) return fn(lowers[0] ?? null);
  await mkdir(mountPoint, { recursive: true, mode: 0o700 });
  const options = `ro,nosuid,nodev,noexec,lowerdir=${lowers.join(":")}`;
  await run("mount", ["-t", "overlay", "-o", options, "overlay", mountPoint], { env: toolEnv() });
  try {
    return await fn(mountPoint);
  } finally {
    await run("umount", [mountPoint], { env: toolEnv() });
  }
}

/**
 * The mount point of an overlay (visible in this mount namespace) whose writable layer is
 * `upper`, or undefined when there is none.
 */
export async function overlayUsingUpper(upper: string): Promise<string | undefined> {
  const target = await realpath(upper);
  for (const mount of await readMountInfo()) {
    if (mount.fsType !== "overlay") continue;
    for (const option of mount.superOptions) {
      if (!option.startsWith("upperdir=")) continue;
      const dir = option
        .slice("upperdir=".length)
        .replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
      if (dir === target || (await realpath(dir).catch(() => dir)) === target) return mount.mountPoint;
    }
  }
  return undefined;
}
