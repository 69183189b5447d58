/**
 * Edit-session sandboxes on the real kernel: a root user whose ids map to a host range of the
 * session's own, a writable layer that outlives each sandbox, a pseudo-terminal with a window
 * size that follows resizes, and the host untouched.
 */
import assert from "node:assert/strict";
import { lstat, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { e2eSkip } from "../../testing/e2e-skip.ts";
import { waitFor } from "../../testing/wait.ts";
import { terminalFrame } from "../driver.ts";
import { SESSION_ID_COUNT } from "./linux-driver.ts";
import {
  leftovers,
  makeRunnerDir,
  makeTestDriver,
  runSandbox,
  skipReason,
  type TestDriver,
  testRootfs,
  testSpec,
} from "./test-support.ts";

const skip = e2eSkip(skipReason());
const BASE = 1_500_000_000;

describe("edit session sandboxes", { skip }, () => {
  let t: TestDriver;
  let runnerDir: string;
  let layerDir: string;
  let upper: string;

  before(async () => {
    t = await makeTestDriver("session");
    runnerDir = await makeRunnerDir();
    const layer = await t.driver.createSessionLayer("s1", 64, BASE);
    layerDir = layer.dir;
    upper = layer.upper;
  });

  after(async () => {
    await t.driver.removeSessionLayer("s1").catch(() => {});
    await t.driver.close();
    await t.cleanup();
    await rm(runnerDir, { recursive: true, force: true });
  });

  const session = (id: string, argv: string[], terminal?: { rows: number; cols: number }) =>
    testSpec(id, runnerDir, argv, {
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", HOME: "/root" },
      session: { layerDir, idBase: BASE, terminal },
    });

  test("root inside owns the image's files and can give files to other users", async () => {
    const script = [
      "id -u",
      "stat -c '%u:%g' /usr/bin/env",
      "mkdir -p /srv/data && chown 42:43 /srv/data && echo made > /srv/data/file && chown 1234:1234 /srv/data/file",
      "su -s /bin/sh nobody -c 'id -u'",
      "cat /proc/self/uid_map",
    ].join(" && ");
    const res = await runSandbox(t.driver, session("s1-a", ["/bin/sh", "-c", script]));
    assert.equal(res.exit.code, 0, res.stderr);
    const lines = res.stdout.trim().split("\n");
    assert.equal(lines[0], "0");
    assert.equal(lines[1], "0:0");
    assert.equal(lines[2], "65534");
    assert.deepEqual(lines[3]?.trim().split(/\s+/), ["0", String(BASE), String(SESSION_ID_COUNT)]);
    // On the host the files carry the session's range, never host root's or the sandbox uid's ids.
    const dir = await lstat(path.join(upper, "srv/data"));
    assert.deepEqual([dir.uid, dir.gid], [BASE + 42, BASE + 43]);
    const file = await lstat(path.join(upper, "srv/data/file"));
    assert.deepEqual([file.uid, file.gid], [BASE + 1234, BASE + 1234]);
  });

  test("the writable layer persists from one sandbox of the session to the next", async () => {
    const res = await runSandbox(t.driver, session("s1-b", ["/bin/cat", "/srv/data/file"]));
    assert.equal(res.exit.code, 0, res.stderr);
    assert.equal(res.stdout, "made\n");
  });

  test("root inside has no power over the host: lower layers stay untouched, no mounts, no namespaces", async () => {
    const script = [
      "echo x > /etc/hostname.new && mv /etc/hostname.new /etc/hostname",
      "(mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED || echo no-mount)",
      "(unshare -U true 2>/dev/null && echo UNSHARED || echo no-unshare)",
      "(mknod /dev/x c 1 3 2>/dev/null && echo MKNOD || echo no-mknod)",
      "grep CapEff /proc/self/status",
    ].join("; ");
    const imageFile = path.join(testRootfs(), "etc/hostname");
    const before = await readFile(imageFile, "utf8");
    const res = await runSandbox(t.driver, session("s1-c", ["/bin/sh", "-c", script]));
    assert.equal(res.exit.code, 0, res.stderr);
    assert.match(res.stdout, /no-mount/);
    assert.match(res.stdout, /no-unshare/);
    assert.match(res.stdout, /no-mknod/);
    // The change landed in the session's layer, not in the image.
    assert.equal(await readFile(path.join(upper, "etc/hostname"), "utf8"), "x\n");
    assert.equal(await readFile(imageFile, "utf8"), before);
    const capEff = BigInt(`0x${/CapEff:\s*([0-9a-f]+)/.exec(res.stdout)?.[1] ?? "0"}`);
    const CAP_SYS_ADMIN = 21n;
    const CAP_MKNOD = 27n;
    assert.equal((capEff >> CAP_SYS_ADMIN) & 1n, 0n);
    assert.equal((capEff >> CAP_MKNOD) & 1n, 0n);
  });

  test("a terminal: a real tty, its size, resizes, and job control", async () => {
    const handle = await t.driver.boot(session("s1-d", ["/bin/bash", "-i"], { rows: 30, cols: 100 }));
    try {
      let text = "";
      handle.stdout.on("data", (chunk: Buffer) => {
        text += chunk.toString();
      });
      const ended = new Promise((resolve) => handle.stdout.once("end", resolve));
      const send = (data: string) => handle.stdin.write(terminalFrame({ data: Buffer.from(data) }));
      send("tty; stty size\n");
      await waitFor(() => /30 100/.test(text), { what: "the first size" });
      // The relay applies a resize as it reads it, before it writes the input that follows.
      handle.stdin.write(terminalFrame({ rows: 40, cols: 120 }));
      send("stty size; sleep 30 &\njobs; exit 7\n");
      const exit = await handle.exited;
      await ended;
      assert.equal(exit.code, 7, text);
      // bwrap shows the terminal it was given as /dev/console.
      assert.match(text, /\r\n\/dev\/(pts\/\d+|console)\r\n/);
      assert.match(text, /30 100/);
      assert.match(text, /40 120/);
      assert.match(text, /\[1\]\+\s+Running\s+sleep 30/);
    } finally {
      await handle.destroy();
    }
  });

  test("removing the session layer and closing the driver leave nothing behind", async () => {
    await t.driver.removeSessionLayer("s1");
    await t.driver.removeSessionLayer("s1");
    await t.driver.close();
    assert.deepEqual(await leftovers(t.runDir, t.instance), []);
  });
});
