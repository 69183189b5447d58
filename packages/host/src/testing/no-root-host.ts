/**
 * A host's services without root, Linux networking or a base image, for tests of everything in
 * front of the sandboxes (the API's auth, validation, errors and tenant isolation). The services
 * are built by buildServices as a host builds them, over a real store (SQLite in a temp folder unless a test names another); the
 * sandbox driver refuses every boot, the base image is an empty folder, and the runner layer is
 * one a host would find already built.
 */
import { createHash } from "node:crypto";
import { chmod, mkdir, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Kysely } from "kysely";
import { type HostConfigInput, type HostHooks, resolveHostConfig } from "../config.ts";
import {
  AGENT_USER,
  DEFAULT_IMAGE_POINTER,
  IMAGE_META,
  IMAGE_ROOTFS,
  RUNNER_VERSION_FILE,
  type RunnerVersion,
} from "../fs/layout.ts";
import { digestTree, hashFile } from "../fs/tree-digest.ts";
import { buildServices, ensureUiBuild, type Services } from "../host.ts";
import { unsealRunners } from "../images/runner-registry.ts";
import type { Database } from "../store/schema.ts";
import { RefusingSandboxDriver } from "./refusing-driver.ts";
import { type StoreKind, sqliteStore } from "./stores.ts";

export interface NoRootHost {
  services: Services;
  driver: RefusingSandboxDriver;
  adminKey: string;
  dataDir: string;
  /** The store under the services, for tests that set up or inspect rows directly. */
  db: Kysely<Database>;
  /** The PostgreSQL database's URL; undefined on SQLite. */
  database: string | undefined;
  /** Every line the services logged. */
  logs: string[];
  close(): Promise<void>;
}

const digestOf = (text: string) => `sha256-${createHash("sha256").update(text).digest("hex")}`;

/** An empty base image, made the default: enough for agents whose command is the runner's Node. */
async function placeImage(imagesDir: string): Promise<void> {
  const staging = join(imagesDir, ".staging");
  await mkdir(join(staging, IMAGE_ROOTFS), { recursive: true });
  const digest = await digestTree(join(staging, IMAGE_ROOTFS));
  await rename(staging, join(imagesDir, digest));
  const meta = { digest, source: "test", created_at: new Date(0).toISOString(), size_bytes: 0 };
  await writeFile(join(imagesDir, digest, IMAGE_META), JSON.stringify(meta));
  await writeFile(join(imagesDir, DEFAULT_IMAGE_POINTER), `${digest}\n`);
}

/**
 * A runner layer as RunnerLayers finds it built from these sources (a host builds one by starting
 * the runner in a sandbox, which needs root); returns the files it was built from.
 */
async function placeRunner(dataDir: string): Promise<{ bundlePath: string; nodePath: string }> {
  const sources = join(dataDir, "runner-sources");
  await mkdir(sources);
  const bundlePath = join(sources, "runner.mjs");
  const nodePath = join(sources, "node");
  await writeFile(bundlePath, "// not run: this host boots no sandbox\n");
  await writeFile(nodePath, "#!/bin/false\n");
  await chmod(nodePath, 0o755);
  const digest = digestOf("no-root test runner");
  const version: RunnerVersion = {
    digest,
    created_at: new Date(0).toISOString(),
    sources: {
      node: (await hashFile(nodePath)).sha256,
      bundle: (await hashFile(bundlePath)).sha256,
      uid: AGENT_USER.uid,
    },
    compile_cache: null,
  };
  await mkdir(join(dataDir, "runners", digest), { recursive: true });
  await writeFile(join(dataDir, "runners", digest, RUNNER_VERSION_FILE), JSON.stringify(version));
  return { bundlePath, nodePath };
}

/**
 * Builds a host's services over a new store (default SQLite) and its temp data folder, with its
 * admin key; `sharing` another host's PostgreSQL store makes a second host of the same cluster;
 * `ui` serves the dashboard under /ui too.
 * @example const h = await startNoRootHost(); const res = await h.services.app.request("/v1/health");
 */
export async function startNoRootHost(
  store: StoreKind = sqliteStore(),
  options: {
    sharing?: NoRootHost;
    config?: Partial<HostConfigInput>;
    testOnly?: HostHooks["testOnly"];
    ui?: boolean;
  } = {},
): Promise<NoRootHost> {
  const opened = await store.open({ url: options.sharing?.database });
  const { db, dataDir } = opened;
  const logs: string[] = [];
  const log = (line: string) => logs.push(line);
  const config = resolveHostConfig({
    dataDir,
    port: 0,
    warmSandboxes: 0,
    schedulerTickMs: 0,
    // Hosts of one store seal its secrets under one master key, and each claims a range of its own.
    ...(options.sharing
      ? { masterKeyFile: join(options.sharing.dataDir, "master.key"), sandboxCidr: "10.219.0.0/16" }
      : {}),
    ...options.config,
  });
  await placeImage(config.imagesDir);
  const runnerFiles = await placeRunner(dataDir);
  const undo: (() => Promise<unknown>)[] = [];
  const driver = new RefusingSandboxDriver();
  try {
    const services = await buildServices(config, {
      db,
      dialect: opened.dialect,
      hints: opened.hints,
      instance: "noroot",
      driver,
      log,
      undo,
      ...(options.testOnly ? { testOnly: options.testOnly } : {}),
      ...(options.ui ? { uiDir: await ensureUiBuild() } : {}),
    });
    await services.nodes.register({
      id: services.nodeId,
      version: "test",
      internalUrl: "http://127.0.0.1:0",
      sandboxCidr: config.sandboxCidr,
    });
    await services.runners.publish(runnerFiles);
    await opened.hints.ready();
    const adminKey = options.sharing?.adminKey ?? (await services.identity.bootstrap()).adminKey;
    if (!adminKey) throw new Error("a new data folder gives an admin key");
    return {
      services,
      db,
      driver,
      adminKey,
      dataDir,
      database: opened.url,
      logs,
      async close() {
        await services.engine.close();
        for (const step of undo.reverse()) await step();
        await unsealRunners(dataDir);
        await opened.close();
      },
    };
  } catch (err) {
    for (const step of undo.reverse()) await step().catch(() => {});
    await opened.close();
    throw err;
  }
}

/** One API call to `h` with `key`, a JSON body if given; the status and the parsed answer (null when empty). */
export async function apiCall(
  h: NoRootHost,
  method: string,
  path: string,
  key: string,
  body?: unknown,
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers.
): Promise<{ status: number; body: any }> {
  const res = await h.services.app.request(path, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body ? { "content-type": "application/json" } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: text === "" ? null : JSON.parse(text) };
}
