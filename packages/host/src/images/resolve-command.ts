/**
 * Finds the executable a sandbox would run for an argv[0], by looking through the sandbox's
 * layers on the host the way overlayfs merges them.
 *
 * Threat model: layers hold files chosen by agents and users, including symlinks that point
 * anywhere. The host must answer without ever looking at its own files: every path it touches is a
 * layer folder joined with names it has checked, one by one, to be real directories of that layer.
 * Symlinks are followed inside the image only (absolute targets restart at the image root, ".."
 * stops at it), and at most 40 of them per lookup, as the kernel does.
 */
import type { Stats } from "node:fs";
import { lstat, readlink } from "node:fs/promises";
import { join, posix } from "node:path";
import { isErrno } from "../fs/store-fs.ts";

/**
 * PATH of a sandbox whose agent sets none, and of edit sessions: folders of the image. The host's
 * own tools are found with TOOL_PATH (fs/tool-env.ts), folders of the host: the same list today,
 * but one may change without the other.
 */
export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** Working folder of an agent's command. */
export const DEFAULT_CWD = "/app";
const MAX_SYMLINKS = 40;

export interface ResolveCommandOptions {
  /** PATH inside the sandbox; defaults to DEFAULT_PATH. */
  path?: string;
  /** Working folder inside the sandbox; defaults to /app. */
  cwd?: string;
}

/**
 * The absolute in-image path (lexically normalized) of the executable `argv0` names, or null when
 * there is none. Bare names are looked up in PATH, other relative names against cwd. The path must
 * lead, through symlinks inside the image, to a regular file with an execute bit.
 * @example await resolveCommand([appLayer, baseRootfs], "python3") // "/usr/bin/python3"
 */
export async function resolveCommand(
  layers: string[],
  argv0: string,
  options: ResolveCommandOptions = {},
): Promise<string | null> {
  if (argv0 === "" || argv0.includes("\0")) return null;
  const cwd = posix.resolve("/", options.cwd ?? DEFAULT_CWD);
  const image = new LayeredImage(layers);
  const candidates = argv0.includes("/")
    ? [posix.resolve(cwd, argv0)]
    : (options.path ?? DEFAULT_PATH).split(":").map((dir) => posix.resolve(cwd, dir, argv0));
  const raw = argv0.includes("/")
    ? [argv0.startsWith("/") ? argv0 : `${cwd}/${argv0}`]
    : (options.path ?? DEFAULT_PATH).split(":").map((dir) => `${dir.startsWith("/") ? dir : `${cwd}/${dir}`}/${argv0}`);
  for (let i = 0; i < raw.length; i++) {
    const entry = await image.resolve(raw[i] ?? "", true);
    if (entry?.kind === "other" && entry.stats.isFile() && (entry.stats.mode & 0o111) !== 0) {
      return candidates[i] ?? null;
    }
  }
  return null;
}

/** A directory of the merged image: the host folders that contribute to it, top-most first. */
interface MergedDir {
  kind: "dir";
  hosts: string[];
}
type Entry = MergedDir | { kind: "symlink"; host: string } | { kind: "other"; host: string; stats: Stats };

class LayeredImage {
  readonly #root: MergedDir;

  constructor(layers: string[]) {
    this.#root = { kind: "dir", hosts: [...layers] };
  }

  /** The entry an absolute in-image path names, resolving symlinks as the kernel would. */
  async resolve(path: string, followLast: boolean): Promise<Entry | null> {
    const stack: MergedDir[] = [this.#root];
    const todo = path.split("/").reverse();
    let links = 0;
    while (todo.length > 0) {
      const name = todo.pop() ?? "";
      if (name === "" || name === ".") continue;
      if (name === "..") {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const dir = stack[stack.length - 1] ?? this.#root;
      const entry = await this.#lookup(dir, name);
      if (!entry) return null;
      const last = todo.length === 0;
      if (entry.kind === "symlink" && (followLast || !last)) {
        if (++links > MAX_SYMLINKS) return null;
        const target = await readlink(entry.host);
        if (target === "") return null;
        if (target.startsWith("/")) stack.splice(1);
        todo.push(...target.split("/").reverse());
        continue;
      }
      if (entry.kind === "dir") {
        stack.push(entry);
        continue;
      }
      // Only a directory (or a symlink to one) may be followed by more components.
      return last ? entry : null;
    }
    return stack[stack.length - 1] ?? this.#root;
  }

  /**
   * Looks `name` up in a merged directory: the top-most layer that has it decides, except that
   * directories merge with the directories of the same name below them. A whiteout (a character
   * device 0/0) hides everything below it. Opaque directories are marked by an xattr that is not
   * read here, so a frozen layer should not rely on them.
   */
  async #lookup(dir: MergedDir, name: string): Promise<Entry | null> {
    const dirs: string[] = [];
    for (const host of dir.hosts) {
      const path = join(host, name);
      let stats: Stats;
      try {
        stats = await lstat(path);
      } catch (err) {
        if (isErrno(err, "ENOENT", "ENOTDIR", "ENAMETOOLONG")) continue;
        throw err;
      }
      if (stats.isCharacterDevice() && stats.rdev === 0) break;
      if (stats.isDirectory()) {
        dirs.push(path);
        continue;
      }
      if (dirs.length > 0) break;
      return stats.isSymbolicLink() ? { kind: "symlink", host: path } : { kind: "other", host: path, stats };
    }
    return dirs.length > 0 ? { kind: "dir", hosts: dirs } : null;
  }
}
