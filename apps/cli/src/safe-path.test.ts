import assert from "node:assert/strict";
import { mkdir, mkdtemp, realpath, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { CliError } from "./args.ts";
import { artifactDestination, prepareDestination } from "./safe-path.ts";

let tmp: string;
before(async () => {
  tmp = await realpath(await mkdtemp(join(tmpdir(), "paddock-safe-path-")));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe("artifactDestination", () => {
  it("places relative paths below the folder", () => {
    assert.equal(artifactDestination("/dl", "report.md"), "/dl/report.md");
    assert.equal(artifactDestination("/dl", "charts/q1/chart.svg"), "/dl/charts/q1/chart.svg");
    assert.equal(artifactDestination("/dl", "..hidden"), "/dl/..hidden");
  });

  it("refuses paths that could leave the folder", () => {
    for (const bad of ["", "/etc/passwd", "../x", "a/../../x", "a/..", ".", "./a", "a//b", "a/", "a\\..\\b", "a\0b"]) {
      assert.throws(() => artifactDestination("/dl", bad), CliError, JSON.stringify(bad));
    }
  });
});

describe("prepareDestination", () => {
  it("creates the parent folders", async () => {
    const root = join(tmp, "plain");
    await mkdir(root);
    assert.equal(await prepareDestination(root, "a/b/c.txt"), join(root, "a/b/c.txt"));
  });

  it("refuses a destination whose folder is a symlink out of the download folder", async () => {
    const root = join(tmp, "linked");
    await mkdir(join(tmp, "elsewhere"), { recursive: true });
    await mkdir(root);
    await symlink(join(tmp, "elsewhere"), join(root, "out"));
    await assert.rejects(prepareDestination(root, "out/x.txt"), /resolves outside/);
  });
});
