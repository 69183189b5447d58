/**
 * Host-side folders of the Linux driver. Per sandbox, under <runDir>/<id> (a tmpfs sized to the
 * disk quota once mounted, mode 0711):
 *
 *   upper/   the writable layer (files, /outputs, /home/agent)
 *   work/    overlayfs work folder
 *   root/    the overlay mount: what the sandbox sees as /
 *   inputs/  bound read-only at /inputs; the host may add files after boot
 *   runtime/ bound read-only at /run/paddock; the host's files for the platform (the run token)
 */
import { chmod, mkdir, stat } from "node:fs/promises";
import path from "node:path";

/** Sandbox ids and instance names: lower-case letters, digits and dashes. */
export const NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;

export interface SandboxPaths {
  dir: string;
  upper: string;
  work: string;
  root: string;
  outputs: string;
  /** Host side of /inputs: in the tmpfs but outside the overlay, bind-mounted read-only. */
  inputs: string;
  /** Host side of /run/paddock, like inputs. */
  runtime: string;
}

export function sandboxPaths(runDir: string, id: string): SandboxPaths {
  const dir = path.join(runDir, id);
  const upper = path.join(dir, "upper");
  return {
    dir,
    upper,
    work: path.join(dir, "work"),
    root: path.join(dir, "root"),
    outputs: path.join(upper, "outputs"),
    inputs: path.join(dir, "inputs"),
    runtime: path.join(dir, "runtime"),
  };
}

/**
 * Creates runDir and its missing ancestors with mode 0711: the sandbox uid (which bwrap runs as)
 * must traverse them to reach the overlay, without being able to list sibling sandboxes. An
 * existing ancestor that others cannot traverse is an error, since bwrap would fail later.
 */
export async function ensureRunDir(runDir: string): Promise<void> {
  if (!path.isAbsolute(runDir)) throw new Error(`runDir must be an absolute path: ${runDir}`);
  const parts = path.resolve(runDir).split("/").filter(Boolean);
  let current = "/";
  for (const part of parts) {
    current = path.join(current, part);
    try {
      await mkdir(current, { mode: 0o711 });
      await chmod(current, 0o711);
    } catch (err) {
      if (!(err instanceof Error && "code" in err && err.code === "EEXIST")) throw err;
      const info = await stat(current);
      if (!info.isDirectory()) throw new Error(`${current} is not a directory`);
      if ((info.mode & 0o001) === 0) {
        throw new Error(
          `${current} must be traversable by the sandbox user (mode o+x), found ${info.mode.toString(8)}`,
        );
      }
    }
  }
}
