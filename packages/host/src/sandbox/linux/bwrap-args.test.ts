/**
 * The argument lists that start sandboxes: every way in (runs, edit sessions, the runner's
 * compile-cache build) carries the same privilege drop, namespaces, environment and seccomp
 * options. (isolation.test.ts proves what they do in the kernel.)
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { compileCacheCommand } from "../../images/runner-compile-cache.ts";
import { RUNNER_ARGV } from "../driver.ts";
import { bwrapOptions, launchCommand, sessionBwrapOptions } from "./bwrap-args.ts";
import { SECCOMP_FD, type Tools } from "./launcher.ts";

const tools = { setpriv: "/usr/bin/setpriv", bwrap: "/usr/bin/bwrap" } as Tools;
const DROP = [
  "--reuid=61000",
  "--regid=61001",
  "--clear-groups",
  "--bounding-set=-all",
  "--inh-caps=-all",
  "--no-new-privs",
];
const ISOLATION = ["--unshare-user", "--unshare-all", "--disable-userns", "--die-with-parent", "--new-session"];

/** The arguments between `from` (exclusive) and `to` (exclusive). */
const between = (args: string[], from: string, to: string) => args.slice(args.indexOf(from) + 1, args.indexOf(to));

test("a run and the compile-cache build drop privileges with the same setpriv options before bwrap", () => {
  const run = launchCommand(tools, 61000, 61001, ["/bin/true"]);
  const cache = compileCacheCommand(tools, { uid: 61000, gid: 61001 }, { mountPoint: "/m", written: "/w", system: [] });
  for (const argv of [run, cache]) {
    assert.equal(argv[0], tools.setpriv);
    assert.deepEqual(between(argv, tools.setpriv, tools.bwrap), DROP);
  }
});

test("a run and the compile-cache build unshare every namespace and forbid nested user namespaces", () => {
  const run = bwrapOptions({
    root: "/r",
    runnerDir: "/runner",
    inputs: "/i",
    runtime: "/t",
    shareNet: false,
    env: {},
    cwd: "/app",
  });
  const cache = compileCacheCommand(tools, { uid: 1, gid: 1 }, { mountPoint: "/m", written: "/w", system: [] });
  assert.deepEqual(run.slice(0, ISOLATION.length), ISOLATION);
  assert.deepEqual(cache.slice(cache.indexOf(tools.bwrap) + 1).slice(0, ISOLATION.length), ISOLATION);
  // A sandbox network keeps the namespace the launcher entered, and nothing else changes.
  const shared = bwrapOptions({
    root: "/r",
    runnerDir: "/runner",
    inputs: "/i",
    runtime: "/t",
    shareNet: true,
    env: {},
    cwd: "/app",
  });
  assert.deepEqual(
    shared.filter((a) => a !== "--share-net"),
    run,
  );
});

test("every sandbox gets exactly its environment, its folder and the seccomp filter, last", () => {
  const env = { A: "1", B: "two words" };
  const tail = ["--clearenv", "--setenv", "A", "1", "--setenv", "B", "two words", "--chdir", "/app"];
  const seccomp = ["--seccomp", String(SECCOMP_FD)];
  const run = bwrapOptions({
    root: "/r",
    runnerDir: "/x",
    inputs: "/i",
    runtime: "/t",
    shareNet: false,
    env,
    cwd: "/app",
  });
  const session = sessionBwrapOptions({ root: "/r", runnerDir: "/x", env, cwd: "/app", terminal: false });
  for (const args of [run, session]) assert.deepEqual(args.slice(-tail.length - 2), [...tail, ...seccomp]);
  const cache = compileCacheCommand(tools, { uid: 1, gid: 1 }, { mountPoint: "/m", written: "/w", system: [] });
  const entry = cache.slice(cache.indexOf("--clearenv"), cache.indexOf("--"));
  assert.deepEqual(entry.slice(-4), ["--chdir", "/", ...seccomp]);
  assert.deepEqual(cache.slice(cache.indexOf("--") + 1), [...RUNNER_ARGV]);
});
