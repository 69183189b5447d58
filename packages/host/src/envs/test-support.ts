/**
 * Helpers for the tests and the benchmark of freezing: whether the machine can run them, real
 * tmpfs and overlayfs mounts that are always undone, and a plain description of a folder tree to
 * compare two views with.
 *
 * Threat model: only the tests' own folders under the system temp folder are mounted on,
 * written or removed; mounts are tracked and undone by their exact mount point.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { accessSync, constants, readFileSync } from "node:fs";
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

function hasExecutable(name: string): boolean {
  for (const dir of ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]) {
    try {
      accessSync(join(dir, name), constants.X_OK);
      return true;
    } catch {}
  }
  return false;
}

/** Why the freezing tests cannot run here, or undefined when they can. */
export function skipReason(): string | undefined {
  if (process.platform !== "linux") return "freezing needs Linux (overlayfs)";
  if (process.getuid?.() !== 0) return "freezing needs root (mounts, file owners, trusted.* attributes)";
  for (const tool of ["getfattr", "setfattr"]) {
    if (!hasExecutable(tool)) return `${tool} is not installed (Debian package attr)`;
  }
  try {
    if (!readFileSync("/proc/filesystems", "utf8").includes("\toverlay\n")) {
      execFileSync("modprobe", ["overlay"], { stdio: "ignore" });
    }
  } catch {
    return "overlayfs is not available";
  }
  return undefined;
}

export function sh(command: string, args: string[]): string {
  return execFileSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** A temporary folder whose mounts are undone (deepest first) and contents removed by close(). */
export class Scratch {
  readonly dir: string;
  readonly #mounts: string[] = [];

  private constructor(dir: string) {
    this.dir = dir;
  }

  static async create(prefix: string): Promise<Scratch> {
    return new Scratch(await mkdtemp(join(tmpdir(), prefix)));
  }

  path(...parts: string[]): string {
    return join(this.dir, ...parts);
  }

  async tmpfs(at: string, size: string): Promise<string> {
    await mkdir(at, { recursive: true });
    sh("mount", ["-t", "tmpfs", "-o", `size=${size},mode=0755`, "tmpfs", at]);
    this.#mounts.push(at);
    return at;
  }

  /** A writable overlay of `lowers` (top first) with `upper` and `work`, merged at `merged`. */
  async overlay(lowers: string[], upper: string, work: string, merged: string): Promise<string> {
    for (const dir of [upper, work, merged]) await mkdir(dir, { recursive: true });
    sh("mount", [
      "-t",
      "overlay",
      "-o",
      `lowerdir=${lowers.join(":")},upperdir=${upper},workdir=${work}`,
      "overlay",
      merged,
    ]);
    this.#mounts.push(merged);
    return merged;
  }

  /** A read-only overlay of `lowers` (top first) at `merged`. */
  async readOnlyOverlay(lowers: string[], merged: string): Promise<string> {
    await mkdir(merged, { recursive: true });
    sh("mount", ["-t", "overlay", "-o", `ro,lowerdir=${lowers.join(":")}`, "overlay", merged]);
    this.#mounts.push(merged);
    return merged;
  }

  async unmount(at: string): Promise<void> {
    const i = this.#mounts.lastIndexOf(at);
    if (i < 0) throw new Error(`${at} was not mounted here`);
    sh("umount", [at]);
    this.#mounts.splice(i, 1);
  }

  /** Undoes every mount, checks none is left under the folder, and removes it. */
  async close(): Promise<void> {
    const errors: unknown[] = [];
    for (const at of [...this.#mounts].reverse()) {
      try {
        sh("umount", [at]);
      } catch (err) {
        try {
          sh("umount", ["--lazy", at]);
        } catch {
          errors.push(err);
        }
      }
    }
    this.#mounts.length = 0;
    const left = mountsUnder(this.dir);
    if (left.length === 0) await rm(this.dir, { recursive: true, force: true });
    else errors.push(new Error(`mounts left under ${this.dir}: ${left.join(", ")}`));
    if (errors.length > 0) throw errors[0];
  }
}

/** Mount points at or below `dir`, from /proc/mounts. */
export function mountsUnder(dir: string): string[] {
  return readFileSync("/proc/mounts", "utf8")
    .split("\n")
    .map((line) =>
      (line.split(" ")[1] ?? "").replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8))),
    )
    .filter((at) => at === dir || at.startsWith(`${dir}/`));
}

/**
 * One line per entry of the tree at `root` (paths relative, names as JSON of their Latin-1 form):
 * type, permission bits, owner, and content hash, link target or device numbers. Subtrees whose
 * relative path is in `skip` are left out.
 */
export async function describeTree(root: string, skip: readonly string[] = []): Promise<string[]> {
  const lines: string[] = [];
  const skipped = new Set(skip);
  const visit = async (rel: Buffer): Promise<void> => {
    const abs = rel.length === 0 ? Buffer.from(root) : Buffer.concat([Buffer.from(`${root}/`), rel]);
    const st = await lstat(abs);
    let detail = "";
    let kind = "other";
    if (st.isDirectory()) kind = "dir";
    else if (st.isFile()) {
      kind = "file";
      detail = createHash("sha256")
        .update(await readFile(abs))
        .digest("hex");
    } else if (st.isSymbolicLink()) {
      kind = "symlink";
      detail = (await readlink(abs, { encoding: "buffer" })).toString("latin1");
    } else if (st.isCharacterDevice()) {
      kind = "char";
      detail = String(st.rdev);
    } else if (st.isFIFO()) kind = "fifo";
    lines.push(JSON.stringify([rel.toString("latin1"), kind, (st.mode & 0o7777).toString(8), st.uid, st.gid, detail]));
    if (kind !== "dir") return;
    const names = await readdir(abs, { encoding: "buffer" });
    for (const name of names) {
      const child = rel.length === 0 ? name : Buffer.concat([rel, Buffer.from("/"), name]);
      if (skipped.has(child.toString("latin1"))) continue;
      await visit(child);
    }
  };
  await visit(Buffer.alloc(0));
  return lines.sort();
}

/** The value of one extended attribute (hex), read with getfattr, or undefined when absent. */
export function getXattr(path: string, name: string): string | undefined {
  try {
    const out = sh("getfattr", ["-h", "--absolute-names", "-n", name, "-e", "hex", path]);
    const line = out.split("\n").find((l) => l.startsWith(`${name}=`));
    return line?.slice(name.length + 1);
  } catch {
    return undefined;
  }
}

/** Every extended attribute name below `root` (getfattr -R), as "relpath name" lines. */
export function listXattrNames(root: string): string[] {
  const out = execFileSync("getfattr", ["-R", "-P", "-h", "-m", "-", "."], { cwd: root, encoding: "latin1" });
  const lines: string[] = [];
  let file = "";
  for (const line of out.split("\n")) {
    if (line.startsWith("# file: ")) file = line.slice(8);
    else if (line !== "") lines.push(`${file} ${line}`);
  }
  return lines.sort();
}
