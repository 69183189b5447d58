/**
 * A cluster on this machine for tests and benchmarks: a private PostgreSQL server, a shared blob
 * folder, one master key, and `paddock serve` processes (the real CLI) on that database, each
 * with its own data folder, node id and sandbox range. A node can be killed, paused and started
 * again under the same id; close() stops every node cleanly (a killed one is started again
 * first, so that it sweeps what it left behind) and removes everything.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, realpath, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { sandboxRunDir } from "../host.ts";
import { unsealRunners } from "../images/runner-registry.ts";
import { testImagesDir } from "./harness.ts";
import { startPostgres, type TestPostgres } from "./postgres.ts";
import { descendants } from "./processes.ts";

const PADDOCK = new URL("../../../../bin/paddock", import.meta.url).pathname;

export interface ClusterOptions {
  nodes: number;
  /** Each node's `--lease-ms`. */
  leaseMs: number;
  /** Each node's `--max-runs`. */
  maxRuns?: number;
  /** The second octet of the first node's /16 sandbox range (10.X.0.0/16); the next nodes take the next ones. */
  cidrBase?: number;
  imagesDir?: string;
}

export interface ClusterNode {
  readonly id: string;
  readonly dataDir: string;
  readonly sandboxCidr: string;
  /** The API URL of its current process. */
  url: string;
  /** Its current process; null once it exited. */
  child: ChildProcess | null;
  /** What it printed to stderr (its log), across restarts. */
  readonly logs: string[];
  /** Where its sandboxes are mounted. */
  readonly runDir: string;
}

export interface Cluster {
  readonly nodes: ClusterNode[];
  readonly postgres: TestPostgres;
  readonly databaseUrl: string;
  readonly blobsDir: string;
  readonly adminKey: string;
  /** Calls a node's API with the admin key (or `key`); `body` undefined sends none. */
  api(node: ClusterNode, method: string, path: string, body?: unknown, key?: string): Promise<ApiAnswer>;
  /** SIGKILLs the node's process (its sandboxes die with it) and waits for it to exit. */
  kill(node: ClusterNode): Promise<void>;
  /** Starts a node again under the same id and data folder. */
  restart(node: ClusterNode): Promise<void>;
  /** The node whose `attempt.started` event (of `attempt`, default the last) names it. */
  nodeOf(runId: string, attempt?: number): Promise<ClusterNode | undefined>;
  close(): Promise<void>;
}

export interface ApiAnswer {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON.
  body: any;
}

/** The environment of a node: this process's, without the PADDOCK_* settings a developer may have set. */
function nodeEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("PADDOCK_")));
}

/** Starts `paddock serve` for the node and waits for its banner; resolves to its URL and admin key, if printed. */
async function serve(
  node: ClusterNode,
  args: string[],
): Promise<{ child: ChildProcess; url: string; adminKey: string | null }> {
  const child = spawn(PADDOCK, ["serve", ...args], { stdio: ["ignore", "pipe", "pipe"], env: nodeEnv() });
  createInterface({ input: child.stderr as NodeJS.ReadableStream }).on("line", (l) => node.logs.push(l));
  let printed = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`node ${node.id} did not start:\n${printed}\n${node.logs.join("\n")}`));
    }, 120_000);
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      printed += `${line}\n`;
      const key = /^ {2}(pdk\.\S+)$/.exec(line)?.[1];
      if (key || line.startsWith("admin API key: in ")) {
        clearTimeout(timer);
        const url = /serving (http:\/\/\S+)/.exec(printed)?.[1] ?? "";
        resolve({ child, url, adminKey: key ?? null });
      }
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`node ${node.id} exited (${code ?? signal}):\n${printed}\n${node.logs.join("\n")}`));
    });
  });
}

/**
 * Starts the cluster; call postgresSkipReason() and hostSkipReason() first.
 * @example const c = await startCluster({ nodes: 3, leaseMs: 3000 }); await c.api(c.nodes[0], "GET", "/v1/nodes");
 */
export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  const root = await realpath(await mkdtemp(join(tmpdir(), "paddock-cluster-")));
  const postgres = startPostgres();
  const nodes: ClusterNode[] = [];
  const argsOf = new Map<ClusterNode, string[]>();
  const cleanup = async () => {
    await Promise.all(nodes.map((n) => stopNode(n)));
    for (const n of nodes) await unsealRunners(n.dataDir).catch(() => {});
    postgres.stop();
    await rm(root, { recursive: true, force: true, maxRetries: 5 });
  };
  const stopNode = async (node: ClusterNode) => {
    const child = node.child;
    if (!child || !alive(node)) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGCONT");
    child.kill("SIGTERM");
    await exited;
    node.child = null;
  };
  try {
    const databaseUrl = await postgres.createDatabase("paddock");
    const blobsDir = join(root, "blobs");
    const keyFile = join(root, "master.key");
    await writeFile(keyFile, `${randomBytes(32).toString("base64")}\n`, { mode: 0o600 });
    let adminKey = "";
    const start = async (node: ClusterNode) => {
      const started = await serve(node, argsOf.get(node) ?? []);
      node.child = started.child;
      node.url = started.url;
      if (started.adminKey) adminKey = started.adminKey;
    };
    // One after another: the first start migrates the database and makes the admin key.
    for (let i = 0; i < opts.nodes; i++) {
      const dataDir = join(root, `node-${i}`);
      const sandboxCidr = `10.${(opts.cidrBase ?? 240) + i}.0.0/16`;
      const node: ClusterNode = {
        id: `node-${i}`,
        dataDir,
        sandboxCidr,
        url: "",
        child: null,
        logs: [],
        runDir: "",
      };
      argsOf.set(node, [
        ...["--data-dir", dataDir, "--port", "0", "--images-dir", opts.imagesDir ?? testImagesDir()],
        ...["--node-id", node.id, "--sandbox-cidr", sandboxCidr, "--database", databaseUrl],
        ...["--blobs", `file://${blobsDir}`, "--master-key-file", keyFile, "--lease-ms", String(opts.leaseMs)],
        ...(opts.maxRuns ? ["--max-runs", String(opts.maxRuns)] : []),
      ]);
      nodes.push(node);
      await start(node);
      Object.assign(node, { runDir: sandboxRunDir(await realpath(dataDir)) });
    }
    const api = async (node: ClusterNode, method: string, path: string, body?: unknown, key = adminKey) => {
      const res = await fetch(`${node.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : null };
    };
    return {
      nodes,
      postgres,
      databaseUrl,
      blobsDir,
      adminKey,
      api,
      async kill(node) {
        const child = node.child;
        if (!child || !alive(node)) return;
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGKILL");
        await exited;
        node.child = null;
      },
      restart: start,
      async nodeOf(runId, attempt) {
        const { body } = await api(nodes[0] as ClusterNode, "GET", `/v1/runs/${runId}/events?limit=1000`);
        const started = ((body?.data ?? []) as { type: string; attempt: number; data: { worker: string } }[]).filter(
          (e) => e.type === "attempt.started" && (attempt === undefined || e.attempt === attempt),
        );
        const worker = started.at(-1)?.data.worker;
        return nodes.find((n) => n.id === worker);
      },
      async close() {
        // A node killed, or one that died on its own, starts again to sweep its leftover mounts,
        // networks and cgroups.
        for (const n of nodes) if (!alive(n)) await start(n).catch(() => {});
        await cleanup();
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** Whether the node's current process is still running. */
function alive(node: ClusterNode): boolean {
  const child = node.child;
  return child !== null && child.exitCode === null && child.signalCode === null;
}

/** The processes below a node's process: its sandboxes' among them. */
export function nodeProcesses(node: ClusterNode): Promise<number[]> {
  const pid = node.child?.pid;
  return pid ? descendants(pid).then((list) => list.map((p) => p.pid)) : Promise.resolve([]);
}
