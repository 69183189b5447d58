/**
 * Starts a host in a process of its own (host-process.ts), for tests that kill it or look at the
 * processes it starts; the caller chooses its environment.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import type { HostConfigInput } from "../config.ts";

export interface HostChild {
  child: ChildProcess;
  url: string;
  adminKey: string;
}

/** Spawns the host with `config` (without its log function) and waits until it listens. */
export async function spawnHost(
  config: Omit<HostConfigInput, "log">,
  env: NodeJS.ProcessEnv = process.env,
): Promise<HostChild> {
  const child = spawn(
    process.execPath,
    [new URL("./host-process.ts", import.meta.url).pathname, JSON.stringify(config)],
    { stdio: ["ignore", "pipe", "inherit"], env },
  );
  const started = await new Promise<{ url: string; adminKey: string }>((resolve, reject) => {
    if (!child.stdout) return reject(new Error("the host has no standard output"));
    createInterface({ input: child.stdout }).once("line", (l) => resolve(JSON.parse(l)));
    child.once("exit", (code) => reject(new Error(`host exited early (${code})`)));
  });
  return { child, ...started };
}
