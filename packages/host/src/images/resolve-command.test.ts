import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { LayerStore } from "./layer-store.ts";
import { resolveCommand } from "./resolve-command.ts";

const isRoot = process.getuid?.() === 0;
let work: string;
let base: string;
let upper: string;
let hostOnly: string;

async function file(root: string, rel: string, mode: number, content = "#!/bin/sh\n"): Promise<void> {
  await mkdir(dirname(join(root, rel)), { recursive: true });
  await writeFile(join(root, rel), content);
  await chmod(join(root, rel), mode);
}

async function link(root: string, rel: string, target: string): Promise<void> {
  await mkdir(dirname(join(root, rel)), { recursive: true });
  await symlink(target, join(root, rel));
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), "paddock-resolve-command-"));
  base = join(work, "base");
  upper = join(work, "upper");
  hostOnly = join(work, "host-only");

  // Host files that exist only outside the image: nothing may resolve to them.
  await file(hostOnly, "bin/escape", 0o755);
  await file(hostOnly, "dir/tool", 0o755);

  // A base image with merged /usr, as Debian has it.
  await file(base, "usr/bin/tool", 0o755);
  await file(base, "usr/bin/python3.11", 0o755);
  await link(base, "usr/bin/python3", "python3.11");
  await link(base, "usr/bin/py", "python3");
  await link(base, "bin", "usr/bin");
  await link(base, "usr/bin/abs", "/usr/bin/tool");
  await file(base, "usr/bin/data", 0o644, "data");
  await file(base, "usr/bin/shadowed", 0o755);
  await file(base, "usr/bin/hidden", 0o755);
  await link(base, "usr/bin/to-host", join(hostOnly, "bin/escape"));
  await link(base, "usr/bin/dotdot", `../../../../../../../../..${join(hostOnly, "bin/escape")}`);
  await link(base, "usr/bin/dotdot-in", "../../../../../usr/bin/tool");
  await link(base, "usr/bin/host-dir", join(hostOnly, "dir"));
  await link(base, "usr/bin/loop-a", "loop-b");
  await link(base, "usr/bin/loop-b", "loop-a");
  await link(base, "usr/bin/self", "self");
  await link(base, "usr/bin/dangling", "/nowhere/at/all");
  await file(base, "opt/pkg/run", 0o755);
  await mkdir(join(base, "usr/bin/a-dir"), { recursive: true });
  // A chain of exactly 40 symlinks resolves; one of 41 does not.
  await file(base, "chain/c0", 0o755);
  for (let i = 1; i <= 41; i++) await link(base, `chain/c${i}`, `c${i - 1}`);

  // An upper layer, as an agent's files give.
  await file(upper, "app/run.sh", 0o755);
  await file(upper, "app/notes.txt", 0o644, "notes");
  await file(upper, "usr/bin/data", 0o755);
  await file(upper, "usr/bin/shadowed", 0o644, "no longer executable");
  await file(upper, "usr/local/bin/local-tool", 0o755);
  await writeFile(join(upper, "opt"), "a file hiding the base's /opt folder");
  // The absolute symlink's target re-rooted inside the image exists in this layer only.
  await file(upper, join(hostOnly, "dir/tool").slice(1), 0o755);
  if (isRoot) execFileSync("mknod", [join(upper, "usr/bin/hidden"), "c", "0", "0"]);
});

after(async () => {
  await rm(work, { recursive: true, force: true });
});

describe("resolveCommand on synthetic layers", () => {
  test("bare names are looked up in PATH, through symlink chains", async () => {
    assert.equal(await resolveCommand([base], "tool"), "/usr/bin/tool");
    assert.equal(await resolveCommand([base], "python3"), "/usr/bin/python3");
    assert.equal(await resolveCommand([base], "py"), "/usr/bin/py");
    assert.equal(await resolveCommand([base], "abs"), "/usr/bin/abs");
    assert.equal(await resolveCommand([base], "dotdot-in"), "/usr/bin/dotdot-in");
    assert.equal(await resolveCommand([base], "tool", { path: "/bin" }), "/bin/tool");
    assert.equal(await resolveCommand([base], "tool", { path: "/nope:/bin:/usr/bin" }), "/bin/tool");
    assert.equal(await resolveCommand([base], "tool", { path: "/opt" }), null);
  });

  test("paths with a slash are taken as they are, relative ones against cwd", async () => {
    assert.equal(await resolveCommand([base], "/bin/tool"), "/bin/tool");
    assert.equal(await resolveCommand([base], "/../../usr/bin/tool"), "/usr/bin/tool");
    assert.equal(await resolveCommand([upper, base], "./run.sh"), "/app/run.sh");
    assert.equal(await resolveCommand([upper, base], "app/run.sh", { cwd: "/" }), "/app/run.sh");
    assert.equal(await resolveCommand([upper, base], "run.sh"), null, "bare names are not looked up in cwd");
    assert.equal(await resolveCommand([upper, base], "run.sh", { path: "/app" }), "/app/run.sh");
    assert.equal(await resolveCommand([upper, base], "run.sh", { path: "" }), "/app/run.sh", "empty PATH entry = cwd");
    assert.equal(await resolveCommand([base], "/usr/bin/tool/"), null, "a trailing slash needs a folder");
    assert.equal(await resolveCommand([base], ""), null);
    assert.equal(await resolveCommand([base], "to\0ol"), null);
  });

  test("symlinks never lead to host files", async () => {
    assert.equal(await resolveCommand([base], "to-host"), null);
    assert.equal(await resolveCommand([base], "dotdot"), null);
    assert.equal(await resolveCommand([base], join(hostOnly, "bin/escape")), null);
    assert.equal(await resolveCommand([base], "/usr/bin/host-dir/tool"), null);
    // Re-rooted inside the image, the same absolute target is found in the layer that has it.
    assert.equal(await resolveCommand([upper, base], "/usr/bin/host-dir/tool"), "/usr/bin/host-dir/tool");
  });

  test("loops, over-long chains and dangling links resolve to nothing", async () => {
    assert.equal(await resolveCommand([base], "loop-a"), null);
    assert.equal(await resolveCommand([base], "self"), null);
    assert.equal(await resolveCommand([base], "dangling"), null);
    assert.equal(await resolveCommand([base], "/chain/c40"), "/chain/c40");
    assert.equal(await resolveCommand([base], "/chain/c41"), null);
  });

  test("only regular files with an execute bit count", async () => {
    assert.equal(await resolveCommand([base], "data"), null);
    assert.equal(await resolveCommand([base], "a-dir"), null);
    assert.equal(await resolveCommand([base], "/usr/bin"), null);
    assert.equal(await resolveCommand([upper, base], "/app/notes.txt"), null);
  });

  test("upper layers shadow the base as overlayfs does", async () => {
    assert.equal(await resolveCommand([upper, base], "data"), "/usr/bin/data", "an executable upper file wins");
    assert.equal(await resolveCommand([base], "shadowed"), "/usr/bin/shadowed");
    assert.equal(await resolveCommand([upper, base], "shadowed"), null, "a non-executable upper file wins too");
    assert.equal(await resolveCommand([upper, base], "tool"), "/usr/bin/tool", "folders merge");
    assert.equal(await resolveCommand([upper, base], "local-tool"), "/usr/local/bin/local-tool");
    assert.equal(await resolveCommand([base], "/opt/pkg/run"), "/opt/pkg/run");
    assert.equal(await resolveCommand([upper, base], "/opt/pkg/run"), null, "an upper file hides a lower folder");
  });

  test("a whiteout hides the base's file", {
    skip: e2eSkip(!isRoot && "creating a whiteout device needs root"),
  }, async () => {
    assert.equal(await resolveCommand([base], "hidden"), "/usr/bin/hidden");
    assert.equal(await resolveCommand([upper, base], "hidden"), null);
  });
});

const dataDir = process.env.PADDOCK_TEST_DATA;
async function realRootfs(): Promise<string | null> {
  if (!dataDir) return null;
  try {
    const digest = (await readFile(join(dataDir, "images/default"), "utf8")).trim();
    return join(dataDir, "images", digest, "rootfs");
  } catch {
    return null;
  }
}
const rootfs = await realRootfs();
const noImage = rootfs
  ? false
  : "no base image: set PADDOCK_TEST_DATA to a data folder where 'make base-image' built one";

describe("resolveCommand on the real base image", { skip: e2eSkip(noImage) }, () => {
  test("python3, sh and /bin/sh resolve; a missing command does not", async () => {
    const layers = [rootfs ?? ""];
    assert.equal(await resolveCommand(layers, "python3"), "/usr/bin/python3");
    assert.equal(await resolveCommand(layers, "sh"), "/usr/bin/sh");
    assert.equal(await resolveCommand(layers, "/bin/sh"), "/bin/sh");
    assert.equal(await resolveCommand(layers, "/usr/bin/env"), "/usr/bin/env");
    assert.equal(await resolveCommand(layers, "no-such-cmd"), null);
    assert.equal(await resolveCommand(layers, "/etc/passwd"), null);
  });

  test("an agent's files layered on the image resolve with the image's tools", async () => {
    const layers = new LayerStore({
      layersDir: join(work, "layers"),
      uid: process.getuid?.() ?? 0,
      gid: process.getgid?.() ?? 0,
    });
    const layer = layers.path(await layers.putFiles({ "main.sh": "#!/bin/sh\necho hi\n", "main.py": "print(1)\n" }));
    const stack = [layer, rootfs ?? ""];
    assert.equal(await resolveCommand(stack, "./main.sh"), "/app/main.sh");
    assert.equal(await resolveCommand(stack, "main.py", { path: "/app" }), null);
    assert.equal(await resolveCommand(stack, "python3"), "/usr/bin/python3");
  });
});
