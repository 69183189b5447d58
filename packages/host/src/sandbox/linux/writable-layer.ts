/**
 * Fills a sandbox's writable layer before the overlay is mounted on it.
 *
 * Threat model: spec.files are written as root into a fresh tmpfs nothing else can reach yet,
 * so there are no symlinks to follow; paths are still checked to stay inside the layer and out
 * of places that the sandbox's own mounts would hide. Files and the folders created for them
 * are root-owned, so the sandbox can read but not change them; only /outputs and /home/agent
 * belong to the sandbox uid. All calls are synchronous: they hit a tmpfs and take microseconds.
 */
import { chmodSync, chownSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { INPUTS_DIR, OUTPUTS_DIR, RUNNER_MOUNT, RUNTIME_DIR, type SandboxFile } from "../driver.ts";

/** Where spec.files may not go: bwrap mounts over these, hiding whatever the layer holds. */
const HIDDEN_PREFIXES = ["/proc", "/dev", RUNNER_MOUNT, INPUTS_DIR];

/** Checks that a sandbox path is absolute, normalized and not hidden by a mount. */
export function checkSandboxFilePath(file: string): void {
  if (!file.startsWith("/") || path.posix.normalize(file) !== file || file === "/" || file.endsWith("/")) {
    throw new Error(`sandbox file path must be absolute and normalized: ${JSON.stringify(file)}`);
  }
  if (file.includes("\0")) throw new Error("sandbox file path contains NUL");
  for (const prefix of HIDDEN_PREFIXES) {
    if (file === prefix || file.startsWith(`${prefix}/`))
      throw new Error(`sandbox file ${file} would be hidden by ${prefix}`);
  }
}

/** Creates each missing folder of a path inside the layer, root-owned with the given mode. */
function mkdirs(layer: string, sandboxDir: string, mode: number): void {
  let current = layer;
  for (const part of sandboxDir.split("/").filter(Boolean)) {
    current = path.join(current, part);
    try {
      mkdirSync(current, { mode });
      chmodSync(current, mode);
    } catch (err) {
      if (!(err instanceof Error && "code" in err && err.code === "EEXIST")) throw err;
    }
  }
}

/** A folder owned by the sandbox user. */
function userDir(layer: string, sandboxDir: string, mode: number, uid: number, gid: number): void {
  mkdirs(layer, path.posix.dirname(sandboxDir), 0o755);
  const dir = path.join(layer, sandboxDir);
  mkdirSync(dir, { mode });
  chmodSync(dir, mode);
  chownSync(dir, uid, gid);
}

/**
 * Lays out upper (the writable layer), work and root folders inside a freshly mounted tmpfs:
 * /outputs (0755) and /home/agent (0700) owned by the sandbox user, the runner and inputs mount
 * points, the root-owned inputs and runtime folders, then spec.files.
 */
export function prepareWritableLayer(
  dirs: { upper: string; work: string; root: string; inputs: string; runtime: string },
  files: SandboxFile[],
  uid: number,
  gid: number,
): void {
  for (const dir of [dirs.upper, dirs.work, dirs.root, dirs.inputs, dirs.runtime]) {
    mkdirSync(dir, { mode: 0o755 });
    chmodSync(dir, 0o755);
  }
  userDir(dirs.upper, OUTPUTS_DIR, 0o755, uid, gid);
  userDir(dirs.upper, "/home/agent", 0o700, uid, gid);
  mkdirs(dirs.upper, RUNNER_MOUNT, 0o755);
  mkdirs(dirs.upper, INPUTS_DIR, 0o755);
  mkdirs(dirs.upper, RUNTIME_DIR, 0o755);
  for (const file of files) {
    checkSandboxFilePath(file.path);
    const mode = file.mode ?? 0o444;
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new Error(`bad mode for ${file.path}: ${mode}`);
    mkdirs(dirs.upper, path.posix.dirname(file.path), 0o755);
    const target = path.join(dirs.upper, file.path);
    writeFileSync(target, file.content, { mode, flag: "wx" });
    chmodSync(target, mode);
  }
}
