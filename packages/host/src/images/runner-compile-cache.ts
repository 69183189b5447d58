/**
 * Node's compile cache for the runner, built into the runner layer before the layer is digested.
 * Node files a cache entry under a folder named by its version, V8's cache format and the uid,
 * keys the entry by the module's path, and before using it checks the size and hash of the
 * module's source. So the cache is made by starting the layer's own Node, as the sandbox uid,
 * with the layer at RUNNER_MOUNT and the runner's own command line and NODE_COMPILE_CACHE: what
 * every run does later, read-only. Starting it also proves the bundle is a runner: it must say
 * hello, start a command, relay that command's event and exit 0.
 *
 * Threat model: the bundle may be anything an admin uploaded, so it runs like sandboxed code: an
 * unprivileged uid without capabilities, every namespace (no network), no new privileges, the
 * sandbox's seccomp filter, the layer read-only, only the host's system folders (read-only, for
 * the Node binary's libraries), a time limit and capped output. What it wrote to the cache folder
 * reaches the layer only as plain files of bounded number and size, copied and owned by the host.
 */
import { type IOType, spawn } from "node:child_process";
import { constants } from "node:fs";
import { access, chmod, chown, copyFile, lstat, mkdir, mkdtemp, open, readdir, readlink } from "node:fs/promises";
import { join } from "node:path";
import { AppError, RunnerFrame, type RunnerSpec } from "@paddock/protocol";
import { RUNNER_CACHE, RUNNER_NODE } from "../fs/layout.ts";
import { removeTree } from "../fs/store-fs.ts";
import { RUNNER_ARGV, RUNNER_COMPILE_CACHE, RUNNER_ENV, RUNNER_MOUNT } from "../sandbox/driver.ts";
import { dropPrivileges, entryOptions, isolationOptions } from "../sandbox/linux/bwrap-args.ts";
import { HELPER_ENV, HELPER_PATH, SECCOMP_FD } from "../sandbox/linux/launcher.ts";
import { ensureRunDir } from "../sandbox/linux/paths.ts";
import { buildSeccompFilter } from "../sandbox/linux/seccomp.ts";
import { syscallArch } from "../sandbox/linux/syscalls.ts";

export interface CompileCacheOptions {
  /** The uid and gid sandboxes run as (Node files its cache per uid). */
  uid: number;
  gid: number;
  /**
   * Where the build stages its mount point and cache folder; must be traversable by the sandbox
   * uid (created 0711 if missing). Default /run/paddock.
   */
  stagingDir?: string;
  /** How long the runner may take; default 30 s. */
  timeoutMs?: number;
}

export interface CompileCache {
  /** Node's cache folder name (version, cache format, uid), or null when this Node wrote none. */
  tag: string | null;
  files: number;
  bytes: number;
}

/** The event the check command prints; the runner must relay it as an event frame. */
export const RUNNER_CHECK_EVENT = "runner.check";

const TOOL_NAMES = ["unshare", "mount", "setpriv", "bwrap", "sh"] as const;
type ToolName = (typeof TOOL_NAMES)[number];
const SEARCH_PATH = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"];
/** Host folders the Node binary may need (its libraries and loader), bound read-only or linked as on the host. */
const SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
const MAX_STDOUT = 1024 * 1024;
const MAX_STDERR = 64 * 1024;
const MAX_CACHE_FILES = 64;
const MAX_CACHE_BYTES = 64 * 1024 * 1024;
const TAG_RE = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/;
const ENTRY_RE = /^[0-9a-f]{1,16}$/;
/**
 * Binds the layer read-only at a path the sandbox uid can reach, inside the private mount
 * namespace `unshare` made (so the mount vanishes with the process), then execs the rest.
 */
const MOUNT_SCRIPT = '"$1" --bind "$2" "$3" && "$1" -o remount,bind,ro,nosuid,nodev "$3" && shift 3 && exec "$@"';

/**
 * setpriv ... bwrap ... -- the runner: dropped to the sandbox user with the sandbox's own
 * privilege, namespace, environment and seccomp options (bwrap-args.ts), over the host's system
 * folders read-only, the layer read-only at RUNNER_MOUNT and the cache folder writable.
 */
export function compileCacheCommand(
  tools: { setpriv: string; bwrap: string },
  user: { uid: number; gid: number },
  dirs: { mountPoint: string; written: string; system: string[] },
): string[] {
  return [
    tools.setpriv,
    ...dropPrivileges(user.uid, user.gid),
    tools.bwrap,
    ...isolationOptions(),
    ...dirs.system,
    "--ro-bind",
    dirs.mountPoint,
    RUNNER_MOUNT,
    "--bind",
    dirs.written,
    RUNNER_COMPILE_CACHE,
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/tmp",
    ...entryOptions({ PATH: HELPER_PATH, LANG: "C.UTF-8", ...RUNNER_ENV }, "/"),
    "--",
    ...RUNNER_ARGV,
  ];
}

/**
 * Runs the runner in `layerDir` (holding node and runner.mjs, and an empty compile-cache/ folder)
 * as it starts in a sandbox, and fills compile-cache/ with the cache Node wrote. Throws AppError
 * runner_invalid when the runner does not work, with Node's stderr in the details.
 * @example const cache = await buildCompileCache(tmpLayer, { uid: 61000, gid: 61000 });
 */
export async function buildCompileCache(layerDir: string, options: CompileCacheOptions): Promise<CompileCache> {
  const tools = await findTools();
  const stagingDir = options.stagingDir ?? "/run/paddock";
  await ensureRunDir(stagingDir);
  const stage = await mkdtemp(join(stagingDir, ".runner-cache-"));
  try {
    await chmod(stage, 0o711);
    const mountPoint = join(stage, "runner");
    const written = join(stage, "cache");
    await mkdir(mountPoint, { mode: 0o755 });
    await mkdir(written, { mode: 0o700 });
    await chown(written, options.uid, options.gid);
    const seccompFile = join(stage, "seccomp.bpf");
    const filter = await open(seccompFile, "wx", 0o600);
    await filter.writeFile(buildSeccompFilter(syscallArch()));
    await filter.close();

    const argv = [
      ...["--mount", "--propagation", "private", "--", tools.sh, "-c", MOUNT_SCRIPT, "sh"],
      ...[tools.mount, layerDir, mountPoint],
      ...compileCacheCommand(tools, options, { mountPoint, written, system: await systemMounts() }),
    ];
    const spec: RunnerSpec = {
      command: [`${RUNNER_MOUNT}/${RUNNER_NODE}`, "-e", `console.log('::paddock::{"type":"${RUNNER_CHECK_EVENT}"}')`],
      env: {},
      cwd: "/",
      heartbeat_ms: 60_000,
      max_line_bytes: 16 * 1024,
    };
    const result = await runOnce(tools.unshare, argv, seccompFile, JSON.stringify(spec), options.timeoutMs ?? 30_000);
    checkRunner(result);
    return await copyCache(written, join(layerDir, RUNNER_CACHE));
  } finally {
    // removeTree detaches any mount first, so the layer can never be emptied through the stage.
    await removeTree(stage);
  }
}

interface RunResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

async function findTools(): Promise<Record<ToolName, string>> {
  const found: Partial<Record<ToolName, string>> = {};
  for (const name of TOOL_NAMES) {
    for (const dir of SEARCH_PATH) {
      const ok = await access(join(dir, name), constants.X_OK).then(
        () => true,
        () => false,
      );
      if (ok) {
        found[name] = join(dir, name);
        break;
      }
    }
  }
  const missing = TOOL_NAMES.filter((n) => !found[n]);
  if (missing.length > 0) throw new Error(`building the runner's compile cache needs: ${missing.join(", ")}`);
  return found as Record<ToolName, string>;
}

async function systemMounts(): Promise<string[]> {
  const args: string[] = [];
  for (const dir of SYSTEM_DIRS) {
    const st = await lstat(dir).catch(() => null);
    if (st?.isSymbolicLink()) args.push("--symlink", await readlink(dir), dir);
    else if (st?.isDirectory()) args.push("--ro-bind", dir, dir);
  }
  args.push("--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache");
  return args;
}

async function runOnce(
  file: string,
  argv: string[],
  seccompFile: string,
  stdin: string,
  timeoutMs: number,
): Promise<RunResult> {
  const seccomp = await open(seccompFile, "r");
  try {
    return await new Promise<RunResult>((resolve, reject) => {
      // The filter goes on SECCOMP_FD, where entryOptions tells bwrap to read it.
      const stdio: (IOType | number)[] = ["pipe", "pipe", "pipe"];
      stdio[SECCOMP_FD] = seccomp.fd;
      const child = spawn(file, argv, { stdio, env: HELPER_ENV });
      let stdout = "";
      let stderr = "";
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill("SIGKILL");
      }, timeoutMs);
      child.stdout?.on("data", (chunk: Buffer) => {
        if (stdout.length < MAX_STDOUT) stdout += chunk.toString("utf8");
      });
      child.stderr?.on("data", (chunk: Buffer) => {
        if (stderr.length < MAX_STDERR) stderr += chunk.toString("utf8");
      });
      child.stdin?.on("error", () => {});
      child.stdin?.end(stdin);
      child.once("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.once("close", (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stdout, stderr, timedOut });
      });
    });
  } finally {
    await seccomp.close();
  }
}

/** Throws unless the run showed a working runner; a failure of the tools around it is the host's, not the bundle's. */
function checkRunner(r: RunResult): void {
  const frames: RunnerFrame[] = [];
  for (const line of r.stdout.split("\n")) {
    if (line === "") continue;
    try {
      const parsed = RunnerFrame.safeParse(JSON.parse(line));
      if (parsed.success) frames.push(parsed.data);
    } catch {}
  }
  const exit = frames.find((f) => f.t === "exit");
  let problem: string | null = null;
  if (r.timedOut) problem = "it did not finish within the time limit";
  else if (frames[0]?.t !== "hello") problem = "it did not start (no hello frame)";
  else if (!frames.some((f) => f.t === "event" && f.type === RUNNER_CHECK_EVENT))
    problem = "it did not relay its command's event";
  else if (exit?.t !== "exit" || exit.code !== 0) problem = "it did not report its command's exit";
  else if (r.code !== 0) problem = `it exited with ${r.code ?? r.signal}`;
  if (problem === null) return;
  const stderr = r.stderr.trim();
  if (frames.length === 0 && !r.timedOut && /^(unshare|mount|setpriv|sh|bwrap): (?!execvp )/m.test(stderr)) {
    throw new Error(`could not start the runner check sandbox: ${stderr.slice(0, 2000)}`);
  }
  throw new AppError("runner_invalid", `The runner does not work: ${problem}.`, {
    exit_code: r.code,
    signal: r.signal,
    stderr: stderr.slice(-4000),
  });
}

/** Copies Node's cache files (plain files in per-version folders) into the layer, owned by the host. */
async function copyCache(from: string, to: string): Promise<CompileCache> {
  const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const tags: string[] = [];
  let files = 0;
  let bytes = 0;
  for (const tag of (await readdir(from)).sort()) {
    const dir = join(from, tag);
    if (!TAG_RE.test(tag) || !(await lstat(dir)).isDirectory()) continue;
    const entries: string[] = [];
    for (const name of (await readdir(dir)).sort()) {
      const st = await lstat(join(dir, name));
      // Anything else (Node's unfinished temporary files, links) is left behind.
      if (!ENTRY_RE.test(name) || !st.isFile()) continue;
      files++;
      bytes += st.size;
      if (files > MAX_CACHE_FILES || bytes > MAX_CACHE_BYTES) {
        throw new AppError(
          "runner_invalid",
          "The runner does not work: it wrote more compile cache than a runner can.",
        );
      }
      entries.push(name);
    }
    if (entries.length === 0) continue;
    await mkdir(join(to, tag), { mode: 0o755 });
    await chown(join(to, tag), owner.uid, owner.gid);
    await chmod(join(to, tag), 0o755);
    for (const name of entries) {
      const target = join(to, tag, name);
      await copyFile(join(dir, name), target, constants.COPYFILE_EXCL);
      await chown(target, owner.uid, owner.gid);
      await chmod(target, 0o644);
    }
    tags.push(tag);
  }
  return { tag: tags.length > 0 ? tags.join(",") : null, files, bytes };
}
