/**
 * A host started by a benchmark on a temporary data folder, and the HTTP helpers the scenarios
 * time runs with: trigger a run over the API, follow its events over SSE.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { HostConfigInput } from "../packages/host/src/config.ts";
import { type RunningHost, startHost } from "../packages/host/src/host.ts";
import { unsealRunners } from "../packages/host/src/images/runner-registry.ts";

export const now = () => performance.now();

/**
 * The start of an agent's script (an ES module run by the sandbox's node): `call(connection)` GETs
 * `/bridge/CONNECTION/echo/x` on one keep-alive socket and resolves to its ms (a non-200 rejects);
 * `writeFileSync` is imported for the script's results.
 */
export const TIMED_BRIDGE_GET = `
import http from "node:http";
import { readFileSync, writeFileSync } from "node:fs";
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const token = () => readFileSync(process.env.PADDOCK_TOKEN_FILE, "utf8").trim();
const call = (connection) => new Promise((resolve, reject) => {
  const t0 = performance.now();
  const req = http.get(process.env.PADDOCK_BRIDGE_URL + "/bridge/" + connection + "/echo/x", { agent, headers: { authorization: "Bearer " + token() } }, (res) => {
    res.resume();
    res.on("end", () => (res.statusCode === 200 ? resolve(performance.now() - t0) : reject(new Error(connection + ": " + res.statusCode))));
  });
  req.on("error", reject);
});`;

export interface TimedRun {
  id: string;
  /** ms from the trigger to the agent's first event (its first log line or structured event). */
  first: number;
  /** ms from the trigger to the terminal event. */
  finished: number;
  status: string;
}

export interface BenchHost {
  host: RunningHost;
  dataDir: string;
  /** Calls the API with the admin key (and `headers`); throws on an error status. */
  api<T = { id: string }>(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<T>;
  /** Triggers a run of the agent and follows it to its end, timed from just before the request. */
  trigger(agentId: string): Promise<TimedRun>;
  /** Stops the host and removes its data folder. */
  close(): Promise<void>;
}

/**
 * Starts a host (embedded SQLite, Linux driver) on a new temporary data folder.
 * @example const b = await startBenchHost({ imagesDir, warmSandboxes: 0 }); try { … } finally { await b.close(); }
 */
export async function startBenchHost(
  config: { imagesDir: string; warmSandboxes: number } & Partial<HostConfigInput>,
): Promise<BenchHost> {
  const dataDir = await mkdtemp(join(tmpdir(), "paddock-bench-"));
  let host: RunningHost;
  try {
    host = await startHost({ dataDir, port: 0, ...config, log: () => {} });
  } catch (err) {
    await unsealRunners(dataDir);
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
  const key = host.adminKey as string;
  const api = async <T>(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<T> => {
    const res = await fetch(`${host.url}${path}`, {
      method,
      headers: { ...headers, authorization: `Bearer ${key}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    }).catch((err: Error) => {
      // fetch's own message says nothing ("fetch failed"); its cause says what failed.
      throw new Error(`${method} ${path}: ${String(err.cause ?? err)}`, { cause: err });
    });
    const json = (await res.json()) as T;
    if (!res.ok) throw new Error(`${method} ${path}: ${JSON.stringify(json)}`);
    return json;
  };
  return {
    host,
    dataDir,
    api,
    async trigger(agentId) {
      const t0 = now();
      const run = await api<{ id: string }>("POST", `/v1/agents/${agentId}/runs`, {});
      return { id: run.id, ...(await follow(host.url, key, run.id, t0)) };
    },
    async close() {
      await host.close();
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Reads a run's events over SSE until its terminal event; returns ms (from `t0`) to its first agent event and to the end. */
export async function follow(
  url: string,
  key: string,
  runId: string,
  t0: number,
): Promise<{ first: number; finished: number; status: string }> {
  const res = await fetch(`${url}/v1/runs/${runId}/events`, {
    headers: { authorization: `Bearer ${key}`, accept: "text/event-stream" },
  });
  if (!res.body) throw new Error("no event stream");
  let first = Number.NaN;
  let buf = "";
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    buf += decoder.decode(chunk, { stream: true });
    let i = buf.indexOf("\n\n");
    while (i !== -1) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (data) {
        const e = JSON.parse(data) as { type: string; data: { status?: string } };
        if (Number.isNaN(first) && (e.type === "user" || e.type === "log")) first = now() - t0;
        if (
          e.type.startsWith("run.") &&
          ["succeeded", "failed", "timed_out", "canceled"].includes(e.data.status ?? "")
        ) {
          return { first, finished: now() - t0, status: e.data.status as string };
        }
      }
      i = buf.indexOf("\n\n");
    }
  }
  throw new Error(`event stream of ${runId} ended early`);
}

/** A JSON file the run left in /outputs, read through the artifacts API. */
export async function artifactJson<T>(b: BenchHost, runId: string, path: string): Promise<T> {
  const artifacts = await b.api<{ data: { id: string; path: string }[] }>("GET", `/v1/runs/${runId}/artifacts`);
  const file = artifacts.data.find((a) => a.path === path);
  if (!file) throw new Error(`the run ${runId} left no ${path}`);
  const content = await fetch(`${b.host.url}/v1/runs/${runId}/artifacts/${file.id}/content`, {
    headers: { authorization: `Bearer ${b.host.adminKey}` },
  });
  return content.json() as Promise<T>;
}
