/**
 * Starts real hosts for end-to-end tests: a temporary data directory, the shared base image built
 * by `make base-image` (found through PADDOCK_TEST_DATA), real sandboxes. `hostSkipReason()` says
 * why such tests cannot run here, so they skip with that reason instead of passing silently.
 */
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Page, RunEvent } from "@paddock/protocol";
import type { HostConfigInput } from "../config.ts";
import { type RunningHost, startHost } from "../host.ts";
import { unsealRunners } from "../images/runner-registry.ts";
import { waitFor } from "./wait.ts";

export function testImagesDir(): string {
  const data = process.env.PADDOCK_TEST_DATA ?? new URL("../../../../.paddock", import.meta.url).pathname;
  return join(data, "images");
}

export function hostSkipReason(): string | false {
  if (process.platform !== "linux") return "the Linux sandbox driver needs Linux";
  if (process.getuid?.() !== 0) return "the host needs root to create sandboxes";
  if (!existsSync("/usr/bin/bwrap")) return "bubblewrap is not installed (run make setup)";
  const pointer = join(testImagesDir(), "default");
  if (!existsSync(pointer)) return `no base image at ${testImagesDir()} (run make base-image)`;
  const digest = readFileSync(pointer, "utf8").trim();
  if (!existsSync(join(testImagesDir(), digest, "rootfs"))) return `base image ${digest} is incomplete`;
  return false;
}

export interface TestHost {
  host: RunningHost;
  dataDir: string;
  /** Where the host's sandboxes are mounted. */
  runDir: string;
  adminKey: string;
  logs: string[];
  /** Calls the API; `key` defaults to the admin key, null sends none. */
  api(
    method: string,
    path: string,
    body?: unknown,
    key?: string | null,
    headers?: Record<string, string>,
  ): Promise<ApiResult>;
  restart(overrides?: Partial<HostConfigInput>): Promise<void>;
  close(): Promise<void>;
}

export interface ApiResult {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON responses.
  body: any;
  headers: Headers;
}

export async function startTestHost(overrides: Partial<HostConfigInput> = {}): Promise<TestHost> {
  const dataDir = await realpath(await mkdtemp(join(tmpdir(), "paddock-test-")));
  const logs: string[] = [];
  const config: HostConfigInput = {
    dataDir,
    port: 0,
    imagesDir: testImagesDir(),
    log: (line) => logs.push(line),
    ...overrides,
  };
  let host = await startHost(config);
  const adminKey = host.adminKey as string;
  const t: TestHost = {
    get host() {
      return host;
    },
    dataDir,
    get runDir() {
      return host.runDir;
    },
    adminKey,
    logs,
    async api(method, path, body, key = adminKey, headers = {}) {
      const init: RequestInit = { method, headers: { ...headers } };
      const h = init.headers as Record<string, string>;
      if (key !== null) h.authorization = `Bearer ${key}`;
      if (body !== undefined) {
        h["content-type"] ??= "application/json";
        init.body = typeof body === "string" ? body : JSON.stringify(body);
      }
      const res = await fetch(`${host.url}${path}`, init);
      const text = await res.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {}
      return { status: res.status, body: parsed, headers: res.headers };
    },
    async restart(more = {}) {
      await host.close();
      host = await startHost({ ...config, ...more });
    },
    async close() {
      // fetch (undici) throws "ReadableStream is already closed" when the server drops a keep-alive
      // connection right after a streamed answer it has just read; let it settle first.
      await new Promise((resolve) => setTimeout(resolve, 50));
      await host.close();
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  return t;
}

const TERMINAL = new Set(["succeeded", "failed", "timed_out", "canceled"]);

/** Polls a run until it reaches a terminal status (bounded). */
// biome-ignore lint/suspicious/noExplicitAny: run JSON.
export async function waitForRun(t: TestHost, runId: string, key?: string, timeoutMs = 120_000): Promise<any> {
  let last: string | undefined;
  return waitFor(
    async () => {
      const res = await t.api("GET", `/v1/runs/${runId}`, undefined, key);
      last = res.body?.status;
      return TERMINAL.has(res.body?.status) && res.body;
    },
    { what: () => `run ${runId} to finish (still ${last})`, timeoutMs, intervalMs: 50 },
  );
}

/** A run's events (up to 1000), parsed with the protocol's schema: an event it does not describe fails the test. */
export async function runEvents(t: TestHost, runId: string, key?: string): Promise<RunEvent[]> {
  const res = await t.api("GET", `/v1/runs/${runId}/events?limit=1000`, undefined, key);
  if (res.status !== 200) throw new Error(`events: ${res.status} ${JSON.stringify(res.body)}`);
  return Page(RunEvent).parse(res.body).data;
}

/** Creates an agent and runs it once; returns the finished run and its events. */
export async function runAgent(
  t: TestHost,
  agent: Record<string, unknown>,
  input?: unknown,
  key?: string,
  // biome-ignore lint/suspicious/noExplicitAny: JSON.
): Promise<{ agent: any; run: any; events: RunEvent[] }> {
  const created = await t.api("POST", "/v1/agents", agent, key);
  if (created.status !== 201) throw new Error(`agent create: ${created.status} ${JSON.stringify(created.body)}`);
  const started = await t.api("POST", `/v1/agents/${created.body.id}/runs`, input === undefined ? {} : { input }, key);
  if (started.status !== 201) throw new Error(`run create: ${started.status} ${JSON.stringify(started.body)}`);
  const run = await waitForRun(t, started.body.id, key);
  return { agent: created.body, run, events: await runEvents(t, run.id, key) };
}

let counter = 0;
export const uniqueName = (base: string) => `${base}-${process.pid}-${++counter}`;
