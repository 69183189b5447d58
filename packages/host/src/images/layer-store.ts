/**
 * Content-addressed environment layers. A layer built from an agent's files holds them under
 * `app/`, which the sandbox sees as /app. The files belong to the sandbox user so the agent can
 * change its own copy-on-write copy; the layer folder itself belongs to the host.
 *
 * Paths come from API callers. They are checked again here, whatever checked them before, so a
 * path can never name anything outside the layer being written.
 */
import { chmod, chown, mkdir, open, rename, stat } from "node:fs/promises";
import { join } from "node:path";
import { AppError } from "@paddock/protocol";
import { isDigest, LAYER_APP_DIR } from "../fs/layout.ts";
import { isErrno, makeTempDir, removeStaleTemps, removeTree } from "../fs/store-fs.ts";
import { digestTree } from "../fs/tree-digest.ts";

export interface LayerStoreOptions {
  layersDir: string;
  /** Owner of the files under app/ (the sandbox user). */
  uid: number;
  gid: number;
}

/** Work-in-progress folders older than this are left over from a crash and removed. */
const STALE_TEMP_MS = 60 * 60 * 1000;
const MAX_NAME_BYTES = 255;

/**
 * Why `path` is not acceptable as a file path inside a layer, or null when it is.
 * @example layerPathProblem("../etc/passwd") // "must not contain '.', '..' or empty parts"
 */
export function layerPathProblem(path: string): string | null {
  if (typeof path !== "string" || path.length === 0) return "must be a non-empty string";
  if (path.startsWith("/")) return "must be relative";
  if (path.includes("\0")) return "must not contain NUL";
  if (path.includes("\\")) return "must not contain a backslash";
  const parts = path.split("/");
  if (parts.some((p) => p === "" || p === "." || p === "..")) return "must not contain '.', '..' or empty parts";
  if (parts.some((p) => Buffer.byteLength(p) > MAX_NAME_BYTES))
    return `each part must be at most ${MAX_NAME_BYTES} bytes`;
  return null;
}

export class LayerStore {
  readonly layersDir: string;
  readonly #uid: number;
  readonly #gid: number;

  constructor(options: LayerStoreOptions) {
    this.layersDir = options.layersDir;
    this.#uid = options.uid;
    this.#gid = options.gid;
  }

  /** Host folder of the layer with this digest. */
  path(digest: string): string {
    if (!isDigest(digest)) throw new AppError("validation_failed", `not a layer digest: ${JSON.stringify(digest)}`);
    return join(this.layersDir, digest);
  }

  async has(digest: string): Promise<boolean> {
    try {
      return (await stat(this.path(digest))).isDirectory();
    } catch (err) {
      if (isErrno(err, "ENOENT")) return false;
      throw err;
    }
  }

  /**
   * Stores `files` (relative path → UTF-8 content) as a layer under app/ and returns its digest.
   * Dirs get mode 0755, files 0644 (0755 when the content starts with "#!"), all owned by the
   * sandbox user. The same files always give the same digest; an existing layer is reused.
   * `check` sees the written layer's folder before it is stored: when it throws, nothing is.
   * @example const digest = await layers.putFiles({ "main.py": "print('hi')\n" });
   */
  async putFiles(files: Record<string, string>, check?: (dir: string) => Promise<void>): Promise<string> {
    const paths = checkFiles(files);
    await removeStaleTemps(this.layersDir, STALE_TEMP_MS);
    const tmp = await makeTempDir(this.layersDir);
    let moved = false;
    try {
      const app = join(tmp, LAYER_APP_DIR);
      await this.#mkdir(app);
      const made = new Set<string>();
      for (const path of paths) {
        const parts = path.split("/");
        for (let i = 1; i < parts.length; i++) {
          const dir = parts.slice(0, i).join("/");
          if (made.has(dir)) continue;
          await this.#mkdir(join(app, dir));
          made.add(dir);
        }
        const content = files[path] ?? "";
        await this.#writeFile(join(app, path), content, content.startsWith("#!") ? 0o755 : 0o644);
      }
      await check?.(tmp);
      const digest = await digestTree(tmp);
      const final = join(this.layersDir, digest);
      if (await this.has(digest)) return digest;
      try {
        await rename(tmp, final);
        moved = true;
      } catch (err) {
        // Another writer stored the same layer first.
        if (!isErrno(err, "ENOTEMPTY", "EEXIST") || !(await this.has(digest))) throw err;
      }
      return digest;
    } finally {
      if (!moved) await removeTree(tmp);
    }
  }

  async #mkdir(path: string): Promise<void> {
    await mkdir(path, { mode: 0o755 });
    await chmod(path, 0o755);
    await chown(path, this.#uid, this.#gid);
  }

  async #writeFile(path: string, content: string, mode: number): Promise<void> {
    const fh = await open(path, "wx", mode);
    try {
      await fh.writeFile(content);
      await fh.chmod(mode);
      await fh.chown(this.#uid, this.#gid);
    } finally {
      await fh.close();
    }
  }
}

/** Validates every path and content; returns the paths sorted. Throws validation_failed. */
function checkFiles(files: Record<string, string>): string[] {
  if (typeof files !== "object" || files === null) {
    throw new AppError("validation_failed", "files must be an object of path → content");
  }
  const problems: { path: string; message: string }[] = [];
  const paths = Object.keys(files).sort();
  const fileSet = new Set(paths);
  for (const path of paths) {
    const problem = layerPathProblem(path);
    if (problem) {
      problems.push({ path, message: problem });
      continue;
    }
    if (typeof files[path] !== "string") problems.push({ path, message: "content must be a string" });
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join("/");
      if (fileSet.has(dir)) problems.push({ path, message: `${dir} is a file, not a folder` });
    }
  }
  if (problems.length > 0) {
    const list = problems.map((p) => `${JSON.stringify(p.path)} ${p.message}`).join("; ");
    throw new AppError("validation_failed", `Invalid files: ${list}`, { files: problems });
  }
  return paths;
}
