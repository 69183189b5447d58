/** What the CLI's end-to-end tests share: where bin/paddock and the base image are, and when they can run. */
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

export const ROOT = new URL("../../../", import.meta.url).pathname;
export const PADDOCK = join(ROOT, "bin/paddock");
export const IMAGES = join(process.env.PADDOCK_TEST_DATA ?? join(ROOT, ".paddock"), "images");

/** Why a test against a real host cannot run here, or false when it can. */
export function hostSkipReason(): string | false {
  if (process.platform !== "linux") return "the Linux sandbox driver needs Linux";
  if (process.getuid?.() !== 0) return "the host needs root to create sandboxes";
  const pointer = join(IMAGES, "default");
  if (!existsSync(pointer)) return `no base image at ${IMAGES} (run make base-image)`;
  const digest = readFileSync(pointer, "utf8").trim();
  if (!existsSync(join(IMAGES, digest, "rootfs"))) return `base image ${digest} at ${IMAGES} is incomplete`;
  return false;
}

/** This process's environment without PADDOCK_* variables, plus `env`. */
export function cleanEnv(env: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("PADDOCK_"))), ...env };
}

/** What one bin/paddock invocation did. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export const showCli = (r: CliResult) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

/** Runs bin/paddock against a host with an API key, in a clean environment; never throws. */
export function runCli(args: string[], url: string, key: string): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      PADDOCK,
      args,
      { env: cleanEnv({ PADDOCK_URL: url, PADDOCK_API_KEY: key }), timeout: 120_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}
