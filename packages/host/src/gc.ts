/**
 * Garbage collection of content-addressed layers. A runner layer is kept while it is current or
 * any snapshot names it; an environment layer while any snapshot or unfinished run names it.
 * Layers younger than the grace period are kept too, since an agent being created or an
 * environment being frozen writes its layer a moment before the snapshot that names it.
 */
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { TERMINAL_STATUSES } from "@paddock/protocol";
import type { Kysely } from "kysely";
import type { Snapshots } from "./agents/snapshots.ts";
import { removeTree } from "./fs/store-fs.ts";
import type { RunnerRegistry } from "./images/runner-registry.ts";
import type { Database } from "./store/schema.ts";
import { parseRunSpec } from "./store/stored.ts";

export interface GcResult {
  runners: string[];
  layers: string[];
}

export async function collectGarbage(opts: {
  db: Kysely<Database>;
  snapshots: Snapshots;
  runners: RunnerRegistry;
  layersDir: string;
  graceMs?: number;
}): Promise<GcResult> {
  const referenced = await opts.snapshots.referenced();
  const unfinished = await opts.db
    .selectFrom("runs")
    .select("spec")
    .where("status", "not in", TERMINAL_STATUSES)
    .execute();
  for (const r of unfinished) {
    for (const l of parseRunSpec(r.spec).layers) referenced.layers.add(l);
  }
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
