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
import type { Stats } from "node:fs";
import { mkdir, realpath } from "node:fs/promises";
import { isAbsolute } from "node:path";
import { promisify } from "node:util";
import type { TreeXattr } from "../images/tree-digest.ts";
import { readMountInfo } from "../sandbox/linux/mountinfo.ts";
import { toolEnv } from "../tool-env.ts";

const run = promisify(execFile);

/** Marks a directory whose lower namesakes are hidden. */
export const OPAQUE_XATTR = "trusted.overlay.opaque";
const OPAQUE_YES = Buffer.from("y");

/** A whiteout: a character device 0/0 that hides its namesake in the layers below. */
export function isWhiteout(st: Stats): boolean {
  return st.isCharacterDevice() && Number(st.rdev) === 0;
}

/** True when the attributes mark an opaque directory. */
export function isOpaque(xattrs: readonly TreeXattr[] | undefined): boolean {
  if (!xattrs) return false;
  return xattrs.some((x) => x.name.toString() === OPAQUE_XATTR && x.value.equals(OPAQUE_YES));
}

/** True for the value of an opaque mark that lower layers honour ("y"). */
export function isOpaqueValue(value: Buffer): boolean {
  return value.equals(OPAQUE_YES);
}

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
