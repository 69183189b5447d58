/**
 * Garbage collection of content-addressed layers. A runner is kept while it is current or any
 * snapshot names it, and with it the layers built from its sources; an environment layer while any snapshot or unfinished run names it.
 * Layers younger than the grace period are kept too, since an agent being created or an
 * environment being frozen writes its layer a moment before the snapshot that names it.
 */
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { TERMINAL_STATUSES } from "@paddock/protocol";
import type { Kysely } from "kysely";
import type { Snapshots } from "./agents/snapshots.ts";
import type { BlobStore } from "./blobs/blobs.ts";
import { removeTree } from "./fs/store-fs.ts";
import type { RunnerRegistry } from "./images/runner-registry.ts";
import type { Database } from "./store/schema.ts";
import { parseRunSpec } from "./store/stored.ts";

export interface GcResult {
  runners: string[];
  layers: string[];
}

/** The runner layers, environment layers and base images snapshots and unfinished runs name. */
async function referencedLayers(
  db: Kysely<Database>,
  snapshots: Snapshots,
): Promise<{ runners: Set<string>; layers: Set<string>; bases: Set<string> }> {
  const referenced = await snapshots.referenced();
  const unfinished = await db.selectFrom("runs").select("spec").where("status", "not in", TERMINAL_STATUSES).execute();
  for (const r of unfinished) {
    const spec = parseRunSpec(r.spec);
    for (const l of spec.layers) referenced.layers.add(l);
    referenced.bases.add(spec.image);
  }
  return referenced;
}

export async function collectGarbage(opts: {
  db: Kysely<Database>;
  snapshots: Snapshots;
  runners: RunnerRegistry;
  layersDir: string;
  graceMs?: number;
}): Promise<GcResult> {
  const referenced = await referencedLayers(opts.db, opts.snapshots);
  const runners = await opts.runners.gc(referenced.runners);
  const layers: string[] = [];
  const cutoff = Date.now() - (opts.graceMs ?? 3_600_000);
  for (const name of await readdir(opts.layersDir).catch(() => [] as string[])) {
    if (!name.startsWith("sha256-") || referenced.layers.has(name)) continue;
    const dir = join(opts.layersDir, name);
    if ((await stat(dir)).mtimeMs > cutoff) continue;
    await removeTree(dir);
    layers.push(name);
  }
  return { runners, layers };
}

/**
 * Mark and sweep of the shared blob store: a blob is kept while an artifact row names it, it is
 * the packed archive of a layer or base image a snapshot or an unfinished run names, it is a known
 * runner's Node binary or bundle, or while it is younger than the grace period (a collector stores an artifact's blob a moment before its row is written).
 * Only one node should sweep a shared store at a time. Returns the digests deleted.
 */
export async function collectBlobGarbage(opts: {
  db: Kysely<Database>;
  snapshots: Snapshots;
  blobs: BlobStore;
  graceMs: number;
}): Promise<string[]> {
  const cutoff = Date.now() - opts.graceMs;
  const before = await referencedBlobs(opts.db, opts.snapshots);
  const candidates: string[] = [];
  for await (const blob of opts.blobs.list()) {
    if (!before.has(blob.sha256) && blob.modifiedMs <= cutoff) candidates.push(blob.sha256);
  }
  // Marked again after the listing: an old blob that something came to name meanwhile (a layer
  // published again, an artifact of the same content) is kept.
  const after = await referencedBlobs(opts.db, opts.snapshots);
  const deleted: string[] = [];
  for (const sha256 of candidates) {
    if (!after.has(sha256) && (await opts.blobs.delete(sha256))) deleted.push(sha256);
  }
  return deleted;
}

/**
 * The blobs artifacts name, the packed layers and base images snapshots or unfinished runs name,
 * and the sources of the runners the store knows.
 */
async function referencedBlobs(db: Kysely<Database>, snapshots: Snapshots): Promise<Set<string>> {
  const keep = new Set<string>();
  for (const r of await db.selectFrom("artifacts").select("sha256").distinct().execute()) keep.add(r.sha256);
  const { layers, bases } = await referencedLayers(db, snapshots);
  for (const r of await db.selectFrom("tree_blobs").select(["kind", "digest", "sha256"]).execute()) {
    if ((r.kind === "layer" ? layers : bases).has(r.digest)) keep.add(r.sha256);
  }
  // Runners' sources while their runner is known (the runner GC forgets the unused ones first).
  for (const r of await db.selectFrom("runners").select(["node_sha256", "bundle_sha256"]).execute()) {
    for (const sha256 of [r.node_sha256, r.bundle_sha256]) if (sha256) keep.add(sha256);
  }
  return keep;
}
