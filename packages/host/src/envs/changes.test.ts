import assert from "node:assert/strict";
import { mkdir, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { computeChanges, excludeTree } from "./changes.ts";
import { freezeUpper } from "./freeze.ts";
import { describeTree, mountsUnder, Scratch, skipReason } from "./test-support.ts";

const skip = e2eSkip(skipReason());

describe("computeChanges", { skip }, () => {
  test("compares with the merged lower stack, whose whiteouts and opaque folders hide entries", async () => {
    const s = await Scratch.create("paddock-changes-");
    try {
      const base = s.path("base");
      for (const [rel, content] of Object.entries({ "etc/a": "a", "etc/b": "b", "d/x": "x", "d/y": "y" })) {
        await mkdir(join(base, rel, ".."), { recursive: true });
        await writeFile(join(base, rel), content);
      }
      await mkdir(join(base, "tmp"));
      const layersDir = s.path("layers");

      // First session: delete etc/a, replace d with a folder holding only z.
      await s.tmpfs(s.path("rw1"), "64m");
      const m1 = await s.overlay([base], s.path("rw1/upper"), s.path("rw1/work"), s.path("m1"));
      await rm(join(m1, "etc/a"));
      await rm(join(m1, "d"), { recursive: true });
      await mkdir(join(m1, "d"));
      await writeFile(join(m1, "d/z"), "z");
      await s.unmount(m1);
      const first = await freezeUpper({ upper: s.path("rw1/upper"), lowers: [base], layersDir });
      assert.deepEqual(first.changes, {
        added: 1,
        modified: 1,
        removed: 3,
        bytes_added: 1,
        sample: { added: ["/d/z"], modified: ["/d"], removed: ["/d/x", "/d/y", "/etc/a"] },
      });

      // Second session over [first, base]: names the first layer hid come back as added.
      const lowers = [first.dir, base];
      await s.tmpfs(s.path("rw2"), "64m");
      const m2 = await s.overlay(lowers, s.path("rw2/upper"), s.path("rw2/work"), s.path("m2"));
      await writeFile(join(m2, "etc/a"), "a again");
      await writeFile(join(m2, "d/x"), "x again");
      await writeFile(join(m2, "d/z"), "z2");
      await rm(join(m2, "etc/b"));
      await writeFile(join(m2, "tmp/junk"), "junk");
      const upper = s.path("rw2/upper");

      const all = await computeChanges({ upper, lowers });
      assert.deepEqual(all.sample, {
        added: ["/d/x", "/etc/a", "/tmp/junk"],
        modified: ["/d/z"],
        removed: ["/etc/b"],
      });
      assert.equal(all.bytes_added, "a again".length + "x again".length + "junk".length);
      const withoutTmp = await computeChanges({ upper, lowers, exclude: ["/tmp"] });
      assert.deepEqual(withoutTmp.sample.added, ["/d/x", "/etc/a"]);
      assert.equal(withoutTmp.added, 2);

      const expected = await describeTree(m2, ["tmp"]);
      await s.unmount(m2);
      const second = await freezeUpper({ upper, lowers, layersDir, exclude: ["/tmp"] });
      assert.deepEqual(second.changes, withoutTmp);
      const view = await s.readOnlyOverlay([second.dir, ...lowers], s.path("view"));
      assert.deepEqual(await describeTree(view, ["tmp"]), expected);
      assert.deepEqual(await readdir(join(view, "tmp")), []);
      assert.deepEqual(
        mountsUnder(tmpdir()).filter((m) => m.includes("paddock-lowers-")),
        [],
      );
      assert.deepEqual(
        (await readdir(tmpdir())).filter((n) => n.startsWith("paddock-lowers-")),
        [],
      );
    } finally {
      await s.close();
    }
  });

  test("no lower layers: everything is added", async () => {
    const s = await Scratch.create("paddock-changes-");
    try {
      const upper = s.path("upper");
      await mkdir(join(upper, "a/b"), { recursive: true });
      await writeFile(join(upper, "a/b/f"), "12345");
      const changes = await computeChanges({ upper, lowers: [] });
      assert.deepEqual(changes, {
        added: 3,
        modified: 0,
        removed: 0,
        bytes_added: 5,
        sample: { added: ["/a", "/a/b", "/a/b/f"], modified: [], removed: [] },
      });
    } finally {
      await s.close();
    }
  });

  test("samples keep the first 50 paths in byte order and counts stay exact", async () => {
    const s = await Scratch.create("paddock-changes-");
    try {
      const upper = s.path("upper");
      await mkdir(upper);
      const names = Array.from({ length: 500 }, (_, i) => `f${String(i).padStart(3, "0")}`);
      await Promise.all(names.map((n) => writeFile(join(upper, n), "")));
      const changes = await computeChanges({ upper, lowers: [] });
      assert.equal(changes.added, 500);
      assert.deepEqual(
        changes.sample.added,
        names.slice(0, 50).map((n) => `/${n}`),
      );
    } finally {
      await s.close();
    }
  });
});

describe("excludeTree", () => {
  test("accepts absolute normalized paths only", () => {
    const tree = excludeTree(["/tmp", "/opt/paddock/runner"]);
    assert.equal(tree.children.get("tmp")?.excluded, true);
    assert.equal(tree.children.get("opt")?.excluded, false);
    assert.equal(tree.children.get("opt")?.children.get("paddock")?.children.get("runner")?.excluded, true);
    for (const bad of ["/", "tmp", "/a/../b", "/a//b", "/a/", "/a\0"]) {
      assert.throws(() => excludeTree([bad]), /absolute, normalized/, bad);
    }
  });
});
