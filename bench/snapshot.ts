/**
 * `paddock bench snapshot`: what an environment's size costs. For each size (10 MiB, 300 MiB and
 * 1 GiB by default) it writes an environment edit session's writable layer on a tmpfs, shaped like
 * a `pip install --user` of a few packages (many small sources, fewer extension modules, a few
 * large bundled libraries), and times freezing it into a layer of the host's store. Then agents
 * whose current snapshot carries the smallest and the largest layer on top of the base image run
 * N times each, interleaved, on one host with the warm pool off (so every run mounts its layers
 * after the trigger), and the trigger-to-first-event times are compared.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chown, mkdir, open, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { Snapshots } from "../packages/host/src/agents/snapshots.ts";
import { freezeUpper } from "../packages/host/src/envs/freeze.ts";
import { Scratch } from "../packages/host/src/envs/test-support.ts";
import { AGENT_USER } from "../packages/host/src/fs/layout.ts";
import { ImageStore } from "../packages/host/src/images/image-store.ts";
import { openSqlite } from "../packages/host/src/store/sqlite.ts";
import { now, startBenchHost } from "./bench-host.ts";
import { type Dist, dist } from "./stats.ts";

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;

export const DEFAULT_SNAPSHOT_SIZES_MB: readonly number[] = [10, 300, 1024];

/** Where the environment's files go, as the sandbox sees them. */
export const SITE_PACKAGES = "/home/agent/.local/lib/python3.11/site-packages";

/**
 * The environment's files by size class: each class takes its share of the total bytes in files
 * whose sizes are log-uniform between min and max. About 21 files per MiB in all; a pip install
 * of numpy, pandas and scipy has 20 to 40.
 */
export const TIERS = [
  { name: "source", share: 0.15, min_bytes: 512, max_bytes: 32 * KiB, ext: ".py" },
  { name: "module", share: 0.35, min_bytes: 32 * KiB, max_bytes: 1 * MiB, ext: ".cpython-311-x86_64-linux-gnu.so" },
  { name: "library", share: 0.5, min_bytes: 4 * MiB, max_bytes: 32 * MiB, ext: ".so" },
] as const;
/** Sources and modules per folder, and folders per package. */
const FILES_PER_DIR = 16;
const DIRS_PER_PACKAGE = 10;

export interface SnapshotBenchOptions {
  imagesDir: string;
  runs: number;
  /** Environment sizes in MiB; boot is measured for the smallest and the largest. */
  sizesMb?: readonly number[];
}

export interface FrozenEnvironment {
  /** "10m", "300m", "1g". */
  size: string;
  files: number;
  dirs: number;
  bytes: number;
  /** Files and bytes per size class. */
  tiers: Record<string, { files: number; bytes: number }>;
  /** freezeUpper, from the call to its return: copy, digest, and the sync of the layer to disk. */
  freeze_s: number;
  freeze_mib_per_s: number;
  layer_digest: string;
  layer_entries: number;
}

export interface SnapshotBenchResult {
  scenario: "snapshot";
  runs: number;
  environment: {
    path: string;
    upper: "tmpfs";
    layers_dir: "disk";
    tiers: typeof TIERS;
    files_per_dir: number;
  };
  environments: FrozenEnvironment[];
  freeze_s: Record<string, number>;
  /** Trigger → first event, warm pool off, per environment size. */
  boot_ms: Record<string, Dist>;
  /** boot_ms p50 of the largest environment over that of the smallest, e.g. `boot_ratio_1g_over_10m`. */
  [ratio: `boot_ratio_${string}`]: number;
  target: { freeze_s_300m: number; boot_ratio_max: number };
}

/** "10m", "300m", "1g" for sizes in MiB. */
export function sizeLabel(mb: number): string {
  return mb >= 1024 && mb % 1024 === 0 ? `${mb / 1024}g` : `${mb}m`;
}

/** A small seeded generator, so a size always gives the same tree shape. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Writes an environment of `totalBytes` into `upper` as an overlay upper over the base image
 * would hold it: /home and /home/agent copied up with their owners, the rest the sandbox user's.
 * Sources and modules are mixed in folders of FILES_PER_DIR; the large libraries sit in
 * `<package>.libs` folders. Contents are random bytes.
 */
export async function writeEnvironment(
  upper: string,
  totalBytes: number,
): Promise<Omit<FrozenEnvironment, "size" | "freeze_s" | "freeze_mib_per_s" | "layer_digest" | "layer_entries">> {
  const rand = mulberry32(totalBytes);
  const small: { size: number; ext: string }[] = [];
  const large: number[] = [];
  const tiers: Record<string, { files: number; bytes: number }> = {};
  for (const tier of TIERS) {
    const counts = { files: 0, bytes: 0 };
    tiers[tier.name] = counts;
    let left = Math.round(totalBytes * tier.share);
    while (left > 0) {
      const drawn = Math.round(tier.min_bytes * (tier.max_bytes / tier.min_bytes) ** rand());
      const size = Math.min(left, drawn);
      if (tier.name === "library") large.push(size);
      else small.push({ size, ext: tier.ext });
      counts.files++;
      counts.bytes += size;
      left -= size;
    }
  }
  for (let i = small.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [small[i], small[j]] = [small[j] as (typeof small)[number], small[i] as (typeof small)[number]];
  }

  const { uid, gid } = AGENT_USER;
  const made = new Set<string>();
  const dir = async (rel: string) => {
    if (made.has(rel)) return;
    await mkdir(join(upper, rel), { mode: 0o755 });
    await chown(join(upper, rel), uid, gid);
    made.add(rel);
  };
  await mkdir(join(upper, "home"), { recursive: true, mode: 0o755 });
  const site = SITE_PACKAGES.slice(1);
  const parts = site.split("/");
  for (let i = 2; i <= parts.length; i++) await dir(parts.slice(0, i).join("/"));

  let bytes = 0;
  for (const [i, file] of small.entries()) {
    const d = Math.floor(i / FILES_PER_DIR);
    const pkg = `${site}/pkg${Math.floor(d / DIRS_PER_PACKAGE)}`;
    await dir(pkg);
    await dir(`${pkg}/sub${d % DIRS_PER_PACKAGE}`);
    const path = join(upper, pkg, `sub${d % DIRS_PER_PACKAGE}`, `m${i}${file.ext}`);
    await writeFile(path, randomBytes(file.size), { mode: file.ext === ".py" ? 0o644 : 0o755 });
    await chown(path, uid, gid);
    bytes += file.size;
  }
  for (const [i, size] of large.entries()) {
    await dir(`${site}/pkg${i}.libs`);
    const path = join(upper, site, `pkg${i}.libs`, `lib${i}.so`);
    const fh = await open(path, "wx", 0o755);
    try {
      for (let done = 0; done < size; done += 4 * MiB) await fh.write(randomBytes(Math.min(4 * MiB, size - done)));
      await fh.chown(uid, gid);
    } finally {
      await fh.close();
    }
    bytes += size;
  }
  // home/agent and the folders above site-packages, plus home itself.
  return { files: small.length + large.length, dirs: made.size + 1, bytes, tiers };
}

/**
 * Makes `layer` the top layer of the agent's environment: appends a snapshot version (reason
 * "freeze") and moves the agent's current version to it in one transaction, through its own
 * connection to the host's store.
 */
async function snapshotWithLayer(
  dataDir: string,
  agentId: string,
  layer: { digest: string; bytes: number; changes: unknown },
): Promise<void> {
  const db = openSqlite(join(dataDir, "paddock.db"));
  try {
    const snapshots = new Snapshots(db);
    await db.transaction().execute(async (trx) => {
      const agent = await trx.selectFrom("agents").selectAll().where("id", "=", agentId).executeTakeFirstOrThrow();
      const current = await snapshots.get(trx, agentId, agent.current_version);
      if (!current) throw new Error(`agent ${agentId} has no snapshot ${agent.current_version}`);
      const row = await snapshots.append(trx, {
        tenantId: agent.tenant_id,
        agentId,
        base: current.base,
        layers: [...(JSON.parse(current.layers) as string[]), layer.digest],
        runner: current.runner,
        reason: "freeze",
        parentVersion: current.version,
        changes: layer.changes,
        envBytes: Number(current.env_bytes) + layer.bytes,
      });
      if (!(await snapshots.moveCurrent(trx, agentId, current.version, row.version))) {
        throw new Error(`agent ${agentId} changed meanwhile`);
      }
    });
  } finally {
    await db.destroy();
  }
}

/**
 * Runs the scenario on a host of its own (temporary data folder, base image from `imagesDir`).
 * @example const result = await snapshotBench({ imagesDir: ".paddock/images", runs: 30 });
 */
export async function snapshotBench(opts: SnapshotBenchOptions): Promise<SnapshotBenchResult> {
  const sizes = [...new Set(opts.sizesMb ?? DEFAULT_SNAPSHOT_SIZES_MB)].sort((a, b) => a - b);
  if (sizes.length < 2 || sizes.some((mb) => !Number.isInteger(mb) || mb < 1)) {
    throw new Error("sizes must be at least two different whole numbers of MiB");
  }
  const image = await new ImageStore({ imagesDir: opts.imagesDir }).resolve("default");
  // Freezing happens after the host has started: a host collects unreferenced layers when it starts.
  const bench = await startBenchHost({ imagesDir: opts.imagesDir, warmSandboxes: 0 });
  const scratch = await Scratch.create("paddock-bench-snapshot-");
  try {
    const layersDir = join(bench.dataDir, "layers");
    await mkdir(layersDir, { recursive: true });
    const boots = [sizes[0] as number, sizes.at(-1) as number];
    const agents = new Map<number, string>();
    const environments: FrozenEnvironment[] = [];
    for (const mb of sizes) {
      const size = sizeLabel(mb);
      const rw = await scratch.tmpfs(scratch.path(size), `${Math.ceil(mb * 1.1) + 64}m`);
      const upper = join(rw, "upper");
      const env = await writeEnvironment(upper, mb * MiB);
      // Earlier writes reach the disk first, so the freeze's own sync flushes only its layer.
      await run("sync", ["--file-system", layersDir]);
      const t0 = now();
      const frozen = await freezeUpper({ upper, lowers: [image.rootfs], layersDir });
      const seconds = (now() - t0) / 1000;
      await scratch.unmount(rw);
      if (frozen.reused) throw new Error(`the ${size} layer was already in the store`);
      environments.push({
        size,
        ...env,
        freeze_s: Math.round(seconds * 1000) / 1000,
        freeze_mib_per_s: Math.round(env.bytes / MiB / seconds),
        layer_digest: frozen.digest,
        layer_entries: frozen.entries,
      });
      if (!boots.includes(mb)) continue;
      // The command fails, and the bench with it, unless the layer is mounted.
      const agent = await bench.api("POST", "/v1/agents", {
        name: `bench-env-${size}`,
        command: ["sh", "-c", `test -d ${SITE_PACKAGES} && echo '::paddock::{"type":"ready"}'`],
      });
      await snapshotWithLayer(bench.dataDir, agent.id, frozen);
      agents.set(mb, agent.id);
    }

    const samples = new Map<number, number[]>(boots.map((mb) => [mb, []]));
    const boot = async (mb: number, keep: boolean) => {
      const r = await bench.trigger(agents.get(mb) as string);
      if (r.status !== "succeeded") throw new Error(`a run of the ${sizeLabel(mb)} environment ended ${r.status}`);
      if (keep) samples.get(mb)?.push(r.first);
    };
    for (const mb of boots) await boot(mb, false); // warm-up: page cache, JIT
    for (let i = 0; i < opts.runs; i++) {
      // Alternating which goes first, so neither size always follows the other.
      for (const mb of i % 2 === 0 ? boots : [...boots].reverse()) await boot(mb, true);
    }
    const bootMs = Object.fromEntries(boots.map((mb) => [sizeLabel(mb), dist(samples.get(mb) ?? [])]));
    const [small, large] = boots.map((mb) => bootMs[sizeLabel(mb)]?.p50 ?? Number.NaN) as [number, number];
    const ratio = `boot_ratio_${sizeLabel(boots[1] as number)}_over_${sizeLabel(boots[0] as number)}` as const;
    return {
      scenario: "snapshot",
      runs: opts.runs,
      environment: {
        path: SITE_PACKAGES,
        upper: "tmpfs",
        layers_dir: "disk",
        tiers: TIERS,
        files_per_dir: FILES_PER_DIR,
      },
      environments,
      freeze_s: Object.fromEntries(environments.map((e) => [e.size, e.freeze_s])),
      boot_ms: bootMs,
      ...({ [ratio]: Math.round((large / small) * 1000) / 1000 } as Record<typeof ratio, number>),
      target: { freeze_s_300m: 3, boot_ratio_max: 1.2 },
    };
  } finally {
    try {
      await scratch.close();
    } finally {
      await bench.close();
    }
  }
}
