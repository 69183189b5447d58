import assert from "node:assert/strict";
import { mkdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { getXattr, Scratch, skipReason } from "../envs/test-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { quote, readXattrs, unquote, writeXattrs, type XattrMap } from "./xattrs.ts";

/** The map as sorted [path, name, hex value] rows. */
function plain(map: XattrMap): string[][] {
  const rows: string[][] = [];
  for (const [path, list] of map) {
    for (const x of list) rows.push([path, Buffer.from(x.name).toString("latin1"), x.value.toString("hex")]);
  }
  return rows.sort((a, b) => a.join("\0").localeCompare(b.join("\0")));
}

describe("quote", () => {
  test("round-trips every byte and leaves no newline, backslash-free escape or '=' behind", () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const quoted = quote(all);
    assert.equal(quoted.includes(0x0a), false);
    assert.equal(quoted.includes(0x3d), false);
    assert.deepEqual(unquote(quoted), all);
    assert.deepEqual(unquote(Buffer.from("a\\134b\\012")), Buffer.from("a\\b\n"));
    assert.deepEqual(unquote(Buffer.from("trailing\\1")), Buffer.from("trailing\\1"));
  });
});

describe("readXattrs / writeXattrs", { skip: e2eSkip(skipReason()) }, () => {
  test("copy attributes between trees by raw names, without following symlinks", async () => {
    const s = await Scratch.create("paddock-xattrs-");
    try {
      const odd = Buffer.from([0x2d, 0x6e, 0x0a, 0xff, 0x5c, 0x3d]); // "-n", newline, non-UTF-8, "\", "="
      const src = s.path("src");
      const dst = s.path("dst");
      for (const root of [src, dst]) {
        await mkdir(join(root, "dir"), { recursive: true });
        await writeFile(Buffer.concat([Buffer.from(`${root}/dir/`), odd]), "x");
        await writeFile(join(root, "target"), "t");
        await symlink("target", join(root, "link"));
      }
      // Node passes argv as UTF-8, so the odd name is set through setfattr --restore instead.
      const seeded: XattrMap = new Map([
        [
          Buffer.concat([Buffer.from("dir/"), odd]).toString("latin1"),
          [{ name: "user.a=b", value: Buffer.from([0, 255]) }],
        ],
        ["dir", [{ name: "trusted.overlay.opaque", value: Buffer.from("y") }]],
        ["target", [{ name: "user.t", value: Buffer.alloc(0) }]],
      ]);
      await writeXattrs(src, seeded);

      const seen: string[] = [];
      const read = await readXattrs(src, [Buffer.alloc(0)], {
        recursive: true,
        keep: (path, name) => {
          seen.push(`${path.toString("latin1")} ${name.toString("latin1")}`);
          return name.toString().startsWith("user.") || name.toString() === "trusted.overlay.opaque";
        },
      });
      assert.deepEqual(plain(read), plain(seeded));
      assert.ok(!seen.some((line) => line.startsWith("link ")), "the symlink's target is not read through the link");

      await writeXattrs(dst, read);
      assert.equal(getXattr(join(dst, "dir"), "trusted.overlay.opaque"), "0x79");
      assert.equal(getXattr(join(dst, "target"), "user.t"), "0x");
      const again = await readXattrs(dst, [Buffer.alloc(0)], { recursive: true, keep: () => true });
      assert.deepEqual(plain(again), plain(seeded));
    } finally {
      await s.close();
    }
  });
});
