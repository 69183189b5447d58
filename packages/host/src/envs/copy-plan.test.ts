import assert from "node:assert/strict";
import { link, lstat, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { excludeTree, walkChanges } from "./changes.ts";
import { CopyCosts, planCopy, splitSources } from "./copy-plan.ts";
import { freezeUpper } from "./freeze.ts";
import { describeTree, Scratch, skipReason } from "./test-support.ts";

const MB = 1024 * 1024;

/** big1/ and big2/ hold 3 MB each, one file being in both; small/ holds a few bytes. */
async function makeUpper(upper: string): Promise<void> {
  for (const dir of ["big1", "big2"]) {
    await mkdir(join(upper, dir), { recursive: true });
    for (let i = dir === "big1" ? 0 : 1; i < 3; i++) {
      await writeFile(join(upper, dir, `f${i}`), Buffer.alloc(MB, i + dir.length));
    }
  }
  // Without the link rule, the greedy split would put big1/f0 and big2/f0 in different runs.
  await link(join(upper, "big1/f0"), join(upper, "big2/f0"));
  await mkdir(join(upper, "small"));
  await writeFile(join(upper, "small/s"), "s");
  await writeFile(join(upper, "top"), "t");
}

describe("splitSources", { skip: e2eSkip(skipReason()) }, () => {
  test("opens big folders, balances the runs and keeps the names of one inode in one run", async () => {
    const s = await Scratch.create("paddock-copy-plan-");
    try {
      const upper = s.path("upper");
      await makeUpper(upper);
      const exclude = excludeTree([]);
      const plan = await planCopy(upper, await lstat(upper), exclude);
      assert.deepEqual(
        plan.sources.map((p) => p.toString()),
        ["big1", "big2", "small", "top"],
      );
      const costs = new CopyCosts();
      await walkChanges(upper, null, { exclude, xattrs: new Map(), onEntry: (rel, st) => costs.add(rel, st) });
      const runs = (await splitSources(upper, plan, costs, 2)).map((list) => list.map((p) => p.toString()));

      assert.equal(runs.length, 2);
      assert.deepEqual(
        plan.dirs.map((d) => d.rel.toString()),
        ["", "big1", "big2"],
        "the big folders are recreated and their files become sources",
      );
      const all = runs.flat().sort();
      assert.deepEqual(all, ["big1/f0", "big1/f1", "big1/f2", "big2/f0", "big2/f1", "big2/f2", "small", "top"]);
      const runOf = (rel: string): number => runs.findIndex((list) => list.includes(rel));
      assert.equal(runOf("big1/f0"), runOf("big2/f0"), "both names of one inode go to the same cp");
      const bytes = runs.map((list) => list.filter((p) => p.startsWith("big")).length);
      assert.ok(Math.abs((bytes[0] ?? 0) - (bytes[1] ?? 0)) <= 2, `runs are balanced: ${JSON.stringify(runs)}`);

      // The whole freeze, split over two runs, keeps the link and the content.
      const frozen = await freezeUpper({ upper, lowers: [], layersDir: s.path("layers") });
      const a = await lstat(join(frozen.dir, "big1/f0"));
      const b = await lstat(join(frozen.dir, "big2/f0"));
      assert.equal(a.ino, b.ino);
      assert.deepEqual(await describeTree(frozen.dir), await describeTree(upper));
    } finally {
      await s.close();
    }
  });
});
