/**
 * Runs the coreutils, findutils and attr tools that freezing relies on, with file names passed as
 * raw bytes. Node can only put UTF-8 strings in argv, while a hostile user's file names can be any
 * bytes but "/" and NUL, so names go NUL-separated through xargs' standard input instead, each as
 * "./name" after "--": a name can never be read as an option nor be altered on the way.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { toolEnv } from "./tool-env.ts";

/** Bytes of arguments per command that xargs builds (ARG_MAX is usually 2 MiB). */
export const XARGS_SIZE = 1024 * 1024;

/** Which Debian package each tool comes from, for the error when one is missing. */
const PACKAGE: Record<string, string> = {
  getfattr: "attr",
  setfattr: "attr",
  cp: "coreutils",
  xargs: "findutils",
  find: "findutils",
};

/** "./rel" as bytes; the root itself is ".". */
export function dotPath(rel: Buffer): Buffer {
  return rel.length === 0 ? Buffer.from(".") : Buffer.concat([DOT_SLASH, rel]);
}
const DOT_SLASH = Buffer.from("./");

/**
 * Runs `command` (argv, ending in "--") in `cwd` with the relative `paths` appended as "./path",
 * split over as few runs as xargs can fit. Nothing runs for an empty list. `onStdout` receives
 * the standard output as it streams. Rejects when a run fails.
 */
export async function runOverPaths(
  cwd: string,
  command: string[],
  paths: readonly Buffer[],
  onStdout?: (chunk: Buffer) => void,
): Promise<void> {
  if (paths.length === 0) return;
  const tool = command[0] ?? "";
  const child = spawn("xargs", ["-0", "-r", "-s", String(XARGS_SIZE), ...command], {
    cwd,
    stdio: ["pipe", onStdout ? "pipe" : "ignore", "pipe"],
    env: toolEnv(),
  });
  if (onStdout) child.stdout?.on("data", onStdout);
  const done = exited(child, "xargs", tool);
  await feed(
    child,
    paths.map((p) => Buffer.concat([dotPath(p), NUL])),
  );
  await done;
}
const NUL = Buffer.from([0]);

/** Writes `chunks` to the child's standard input, waiting on back-pressure, then closes it. */
export async function feed(child: ChildProcess, chunks: Iterable<Buffer>): Promise<void> {
  const stdin = child.stdin;
  if (!stdin) throw new Error("child has no standard input");
  let failed = false;
  stdin.on("error", () => {
    failed = true;
  });
  let batch: Buffer[] = [];
  let size = 0;
  const flush = async (): Promise<void> => {
    if (batch.length === 0 || failed) return;
    const data = Buffer.concat(batch);
    batch = [];
    size = 0;
    if (!stdin.write(data)) {
      await new Promise<void>((resolve) => {
        stdin.once("drain", resolve);
        stdin.once("close", resolve);
      });
    }
  };
  for (const chunk of chunks) {
    batch.push(chunk);
    size += chunk.length;
    if (size >= 64 * 1024) await flush();
    if (failed) break;
  }
  await flush();
  stdin.end();
}

/**
 * Resolves when the child (started as `program`, running `tool`) exits 0; rejects with the start
 * of its stderr otherwise.
 */
export function exited(child: ChildProcess, program: string, tool = program): Promise<void> {
  const stderr: Buffer[] = [];
  let stderrBytes = 0;
  child.stderr?.on("data", (chunk: Buffer) => {
    if (stderrBytes < 8192) stderr.push(chunk);
    stderrBytes += chunk.length;
  });
  return new Promise((resolve, reject) => {
    child.on("error", (err) => {
      const code = (err as NodeJS.ErrnoException).code;
      reject(
        code === "ENOENT" ? new Error(`${program} not found: install the Debian package ${PACKAGE[program]}`) : err,
      );
    });
    child.on("close", (code, signal) => {
      if (code === 0) return resolve();
      const text = Buffer.concat(stderr).toString("utf8").trim().slice(0, 2000);
      // xargs exits 127 when it cannot find the command it runs.
      const missing = code === 127 && PACKAGE[tool] ? ` (install the Debian package ${PACKAGE[tool]})` : "";
      reject(new Error(`${tool} failed (${signal ?? `exit ${code}`})${missing}: ${text}`));
    });
  });
}
