/**
 * Benchmark of freezing a writable layer: builds a tmpfs upper of about 300 MB (1000 small files
 * in 50 folders that exist in the lower layers, plus 4 large files), freezes it into a fresh
 * layer store on disk a few times, and prints the seconds each freeze took. Not a test: it
 * asserts nothing about time.
 *
 *   node packages/host/src/envs/freeze-bench.ts [--runs N] [--mb TOTAL] [--small-files N] [--layers-dir DIR]
 *
 * Threat model: none beyond the tests': it runs as root on its own temporary folders and tmpfs,
 * which it unmounts and removes on exit, failure included.
 */
import { randomBytes } from "node:crypto";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { freezeUpper } from "./freeze.ts";
import { Scratch, sh, skipReason } from "./test-support.ts";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    mb: { type: "string", default: "300" },
    "small-files": { type: "string", default: "1000" },
    "layers-dir": { type: "string" },
  },
});
const runs = Number(values.runs);
const totalBytes = Number(values.mb) * 1024 * 1024;
const SMALL_FILES = Number(values["small-files"]);
const DIRS = 50;
const LARGE_FILES = 4;

const reason = skipReason();
if (reason) {
  console.log(`freeze-bench skipped: ${reason}`);
  process.exit(0);
}

const s = await Scratch.create("paddock-freeze-bench-");
try {
  // Two lower layers holding the folders the upper writes into.
  const lowers = [s.path("lower1"), s.path("lower0")];
  for (const lower of lowers) {
    for (let d = 0; d < DIRS; d++) await mkdir(join(lower, `usr/lib/pkg${d}`), { recursive: true });
    await writeFile(join(lower, "usr/lib/pkg0/existing"), "old\n");
  }

  const rw = await s.tmpfs(s.path("rw"), `${Math.ceil((totalBytes * 1.2) / 1024 / 1024) + 64}m`);
  const upper = join(rw, "upper");
  // Small files: 1 to 64 KiB, less when there are so many that they would fill half the total.
  const smallSpread = Math.max(1024, Math.min(63 * 1024, Math.floor(totalBytes / SMALL_FILES) - 1024));
  let written = 0;
  for (let i = 0; i < SMALL_FILES; i++) {
    const dir = join(upper, `usr/lib/pkg${i % DIRS}`);
    await mkdir(dir, { recursive: true });
    const size = 1024 + ((i * 7919) % smallSpread);
    await writeFile(join(dir, `file${i}.so`), randomBytes(size));
    written += size;
  }
  const largeSize = Math.max(0, Math.floor((totalBytes - written) / LARGE_FILES));
  await mkdir(join(upper, "opt/models"), { recursive: true });
  for (let i = 0; i < LARGE_FILES; i++) {
    await writeFile(join(upper, `opt/models/blob${i}.bin`), randomBytes(largeSize));
    written += largeSize;
  }
  console.log(
    `upper: ${SMALL_FILES + LARGE_FILES} files, ${(written / 1024 / 1024).toFixed(0)} MiB (tmpfs); lowers: ${lowers.length}`,
  );

  const layersRoot = values["layers-dir"] ?? s.path("stores");
  // Alternates one cp process with the default (one per core), so both see the same machine.
  const times = new Map<string, number[]>();
  for (let run = 1; run <= runs; run++) {
    for (const copyProcesses of [undefined, 1]) {
      const label = copyProcesses === undefined ? "default cp processes" : "1 cp process";
      const layersDir = join(layersRoot, `bench-${process.pid}-${run}-${copyProcesses ?? "default"}`);
      await mkdir(layersDir, { recursive: true });
      // Earlier runs' dirty pages are written out first, so the freeze's own sync flushes only its layer.
      sh("sync", ["--file-system", layersDir]);
      const started = performance.now();
      const frozen = await freezeUpper({ upper, lowers, layersDir, copyProcesses });
      const seconds = (performance.now() - started) / 1000;
      times.set(label, [...(times.get(label) ?? []), seconds]);
      console.log(
        `run ${run}, ${label}: freeze ${seconds.toFixed(2)} s (${(written / 1024 / 1024 / seconds).toFixed(0)} MiB/s, ` +
          `sync to disk included); ${frozen.entries} entries, ${frozen.changes.added} added, digest ${frozen.digest.slice(0, 19)}`,
      );
      await rm(layersDir, { recursive: true, force: true });
    }
  }
  for (const [label, list] of times) {
    const sorted = [...list].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)] ?? 0;
    console.log(
      `${label}: median ${median.toFixed(2)} s, min ${(sorted[0] ?? 0).toFixed(2)} s, max ${(sorted.at(-1) ?? 0).toFixed(2)} s`,
    );
  }
} finally {
  await s.close();
}
