/**
 * Reads an agent definition file (agent.json) and expands its `files_dir` into the `files` map of
 * an AgentCreate body: every regular file below the folder, as a relative path → UTF-8 text.
 *
 * An agent.json may come from someone else, so the folder must stay inside the JSON file's own
 * folder and no symlink below it may point outside it: creating an agent must never upload
 * unrelated local files. Binary and oversize files are refused by name, before anything is sent.
 */
import { lstat, readdir, readFile, realpath, stat } from "node:fs/promises";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { MAX_FILES_BYTES } from "@paddock/protocol";
import { CliError } from "./args.ts";

/** Most files an agent may carry (the API's limit). */
export const MAX_FILES = 1000;
/** Longest relative path the API accepts. */
const MAX_PATH_LENGTH = 255;
/** Names skipped while walking: version-control and bytecode caches, never agent files. */
export const IGNORED_NAMES: ReadonlySet<string> = new Set([".git", "__pycache__", ".DS_Store"]);

const utf8 = new TextDecoder("utf-8", { fatal: true });

function within(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === "" || (!rel.startsWith(`..${sep}`) && rel !== ".." && !isAbsolute(rel));
}

/**
 * Reads every regular file below `dir` into a map of relative POSIX path → UTF-8 content.
 * Throws CliError naming the offending file for binary, oversize or escaping entries.
 */
export async function readFilesDir(dir: string): Promise<Record<string, string>> {
  let root: string;
  try {
    root = await realpath(dir);
  } catch {
    throw new CliError(`files folder ${dir} does not exist`);
  }
  if (!(await stat(root)).isDirectory()) throw new CliError(`${dir} is not a folder`);

  const files = new Map<string, string>();
  let count = 0;
  let total = 0;

  const walk = async (folder: string, parts: string[]): Promise<void> => {
    const entries = await readdir(folder, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      if (IGNORED_NAMES.has(entry.name)) continue;
      const full = join(folder, entry.name);
      const rel = [...parts, entry.name].join("/");
      let info = await lstat(full);
      if (info.isSymbolicLink()) {
        const target = await realpath(full).catch(() => null);
        if (target === null) throw new CliError(`${rel}: a symlink whose target does not exist`);
        if (!within(root, target)) throw new CliError(`${rel}: a symlink that points outside ${dir}`);
        info = await stat(target);
        if (info.isDirectory()) throw new CliError(`${rel}: symlinked folders are not supported`);
      }
      if (info.isDirectory()) {
        await walk(full, [...parts, entry.name]);
        continue;
      }
      if (!info.isFile()) throw new CliError(`${rel}: not a regular file`);
      if (rel.length > MAX_PATH_LENGTH) throw new CliError(`${rel}: path longer than ${MAX_PATH_LENGTH}`);
      if (/[\\\0]/.test(rel)) throw new CliError(`${rel}: file names may not contain '\\'`);
      if (info.size > MAX_FILES_BYTES) {
        throw new CliError(`${rel}: ${info.size} bytes; agent files may hold at most ${MAX_FILES_BYTES} bytes`);
      }
      if (++count > MAX_FILES) throw new CliError(`${dir}: more than ${MAX_FILES} files`);
      const bytes = await readFile(full);
      total += bytes.length;
      if (total > MAX_FILES_BYTES) {
        throw new CliError(`${dir}: the files add up to more than ${MAX_FILES_BYTES} bytes`);
      }
      if (bytes.includes(0)) throw new CliError(`${rel}: a binary file; agent files must be UTF-8 text`);
      try {
        files.set(rel, utf8.decode(bytes));
      } catch {
        throw new CliError(`${rel}: not valid UTF-8; agent files must be UTF-8 text`);
      }
    }
  };
  await walk(root, []);
  // fromEntries defines own properties, so a file named "__proto__" stays a file.
  return Object.fromEntries(files);
}

/**
 * Reads an AgentCreate body from a JSON file. A `files_dir` key (relative to the file, and
 * inside its folder) is replaced by the files it holds, merged with any inline `files`.
 */
export async function loadAgentFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new CliError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new CliError(`${path} is not valid JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new CliError(`${path} must hold a JSON object (an agent definition)`);
  }
  const { files_dir: filesDir, ...agent } = body as Record<string, unknown>;
  if (filesDir === undefined) return agent;
  if (typeof filesDir !== "string" || filesDir === "") {
    throw new CliError(`${path}: files_dir must be a relative folder path`);
  }
  const base = await realpath(dirname(resolve(path)));
  const folder = resolve(base, filesDir);
  const real = await realpath(folder).catch(() => folder);
  if (isAbsolute(filesDir) || !within(base, folder) || !within(base, real)) {
    throw new CliError(`${path}: files_dir '${filesDir}' must stay inside ${base}`);
  }
  const files = new Map(Object.entries(await readFilesDir(folder)));
  const inline = agent.files;
  if (inline !== undefined) {
    if (inline === null || typeof inline !== "object" || Array.isArray(inline)) {
      throw new CliError(`${path}: files must be an object of path → content`);
    }
    for (const [name, content] of Object.entries(inline)) {
      if (files.has(name)) throw new CliError(`${path}: '${name}' is both in files and in files_dir`);
      files.set(name, content as string);
    }
  }
  return { ...agent, files: Object.fromEntries(files) };
}
