/** The Linux driver on the real kernel: running argv, stdio, files, outputs, limits, failures. */
import assert from "node:assert/strict";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { DEFAULT_LIMITS } from "@paddock/protocol";
import { e2eSkip } from "../../testing/e2e-skip.ts";
import { waitFor } from "../../testing/wait.ts";
import { RUNNER_MOUNT } from "../driver.ts";
import { detectCgroups } from "./cgroups.ts";
import { mountPointsUnder } from "./mountinfo.ts";
import {
  cgroupPids,
  collect,
  leftovers,
  makeRunnerDir,
  makeTestDriver,
  runSandbox,
  skipReason,
  type TestDriver,
  testSpec,
} from "./test-support.ts";

const SANDBOX_UID = 61000;

describe("Linux sandbox driver", { skip: e2eSkip(skipReason()) }, () => {
  let runnerDir: string;
  let t: TestDriver;

  before(async () => {
    runnerDir = await makeRunnerDir();
    t = await makeTestDriver("driver");
  });

  after(async () => {
    await t.cleanup();
    await rm(runnerDir, { recursive: true, force: true });
    assert.deepEqual(await leftovers(t.runDir, t.instance), []);
  });

  test("runs argv with stdout, stderr and exit code 0", async () => {
    const result = await runSandbox(
      t.driver,
      testSpec("echo", runnerDir, ["/bin/sh", "-c", "echo hello; echo oops >&2"]),
    );
    assert.equal(result.stdout, "hello\n");
    assert.equal(result.stderr, "oops\n");
    assert.deepEqual(result.exit, { code: 0, signal: null, oom: false });
  });

  test("reports a non-zero exit code", async () => {
    const result = await runSandbox(t.driver, testSpec("exit7", runnerDir, ["/bin/sh", "-c", "exit 7"]));
    assert.deepEqual(result.exit, { code: 7, signal: null, oom: false });
  });

  test("reports death by signal", async () => {
    const result = await runSandbox(t.driver, testSpec("sig", runnerDir, ["/bin/sh", "-c", "kill -9 $$"]));
    assert.deepEqual(result.exit, { code: null, signal: "SIGKILL", oom: false });
  });

  test("feeds stdin and runs node from the read-only runner mount", async () => {
    const script =
      "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(s.toUpperCase(), process.version))";
    const result = await runSandbox(
      t.driver,
      testSpec("node", runnerDir, [`${RUNNER_MOUNT}/node`, "-e", script]),
      "abc",
    );
    assert.equal(result.stdout, `ABC ${process.version}\n`);
    assert.equal(result.exit.code, 0);
  });

  test("gives argv exactly spec.env and spec.cwd", async () => {
    const result = await runSandbox(
      t.driver,
      testSpec("env", runnerDir, ["/bin/sh", "-c", "pwd; exec /usr/bin/env"], {
        env: { PATH: "/usr/bin:/bin", FOO: "bar baz", EMPTY: "" },
        cwd: "/tmp",
      }),
    );
    const [cwd, ...env] = result.stdout.trim().split("\n");
    assert.equal(cwd, "/tmp");
    // dash exports PWD itself; everything else is spec.env.
    assert.deepEqual(env.filter((line) => !line.startsWith("PWD=")).sort(), [
      "EMPTY=",
      "FOO=bar baz",
      "PATH=/usr/bin:/bin",
    ]);
  });

  test("runs as the sandbox uid without capabilities, under seccomp and no_new_privs", async () => {
    const result = await runSandbox(
      t.driver,
      testSpec("ids", runnerDir, [
        "/bin/sh",
        "-c",
        "id -u; id -g; id -G; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; ls /proc/self/fd",
      ]),
    );
    const lines = result.stdout.trim().split("\n");
    assert.deepEqual(lines.slice(0, 3), ["61000", "61000", "61000"]);
    const status = Object.fromEntries(lines.slice(3, 10).map((line) => line.split(/:\s+/) as [string, string]));
    for (const cap of ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"])
      assert.equal(status[cap], "0000000000000000", cap);
    assert.equal(status.NoNewPrivs, "1");
    assert.equal(status.Seccomp, "2");
    // Only stdio (and ls's own directory descriptor): no host descriptor leaks in.
    assert.deepEqual(lines.slice(10).map(Number).sort(), [0, 1, 2, 3]);
  });

  test("shows files the host adds to inputsDir after boot, read-only, at /inputs", async () => {
    const script = [
      "while [ ! -e /inputs/input.json ]; do sleep 0.01; done",
      "cat /inputs/input.json; echo",
      "stat -c '%a %u' /inputs/input.json",
      "(echo changed > /inputs/input.json) 2>/dev/null && echo WROTE",
      "(touch /inputs/new) 2>/dev/null && echo CREATED",
      "echo done",
    ].join("; ");
    const handle = await t.driver.boot(testSpec("inputs", runnerDir, ["/bin/sh", "-c", script]));
    try {
      handle.stdin.end();
      writeFileSync(path.join(handle.inputsDir, "input.json"), '{"late":true}', { mode: 0o444 });
      const [stdout, , exit] = await Promise.all([collect(handle.stdout), collect(handle.stderr), handle.exited]);
      assert.equal(exit.code, 0);
      assert.equal(stdout, '{"late":true}\n444 65534\ndone\n');
    } finally {
      await handle.destroy();
    }
  });

  test("places spec.files root-owned and read-only; /outputs and /home/agent belong to the sandbox user", async () => {
    const spec = testSpec(
      "files",
      runnerDir,
      [
        "/bin/sh",
        "-c",
        [
          "stat -c '%n %a %u' /data /data/input.json /etc/paddock/tool.sh /outputs /home/agent",
          "cat /data/input.json; echo",
          "/etc/paddock/tool.sh",
          "echo changed > /data/input.json && echo WROTE-INPUT",
          "echo result > /outputs/result.txt",
          "echo note > /home/agent/note",
        ].join("; "),
      ],
      {
        files: [
          { path: "/data/input.json", content: '{"a":1}' },
          { path: "/etc/paddock/tool.sh", content: Buffer.from("#!/bin/sh\necho tool ran\n"), mode: 0o555 },
        ],
      },
    );
    const handle = await t.driver.boot(spec);
    try {
      handle.stdin.end();
      const [stdout, , exit] = await Promise.all([collect(handle.stdout), collect(handle.stderr), handle.exited]);
      assert.equal(exit.code, 0);
      const lines = stdout.trim().split("\n");
      // Root is not mapped into the sandbox's user namespace: root-owned files show the overflow uid.
      assert.deepEqual(lines.slice(0, 5), [
        "/data 755 65534",
        "/data/input.json 444 65534",
        "/etc/paddock/tool.sh 555 65534",
        `/outputs 755 ${SANDBOX_UID}`,
        `/home/agent 700 ${SANDBOX_UID}`,
      ]);
      assert.equal(lines[5], '{"a":1}');
      assert.equal(lines[6], "tool ran");
      assert.ok(!stdout.includes("WROTE-INPUT"));
      // The host sees /outputs at outputsDir.
      assert.equal(readFileSync(path.join(handle.outputsDir, "result.txt"), "utf8"), "result\n");
      assert.equal(statSync(path.join(handle.outputsDir, "result.txt")).uid, SANDBOX_UID);
    } finally {
      await handle.destroy();
    }
    assert.ok(!existsSync(handle.outputsDir));
  });

  test("applies spec.limits to the sandbox's cgroups, which hold its processes", async () => {
    const limits = { ...DEFAULT_LIMITS, memory_mb: 96, pids: 40, cpus: 0.5 };
    const handle = await t.driver.boot(testSpec("limits", runnerDir, ["/bin/sleep", "60"], { limits }));
    try {
      const layout = await detectCgroups();
      const dir = (root: string): string => path.join(root, "paddock", t.instance, "limits");
      const read = (root: string, file: string): Promise<string> =>
        readFile(path.join(dir(root), file), "utf8").then((s) => s.trim());
      assert.equal(await read(layout.pids, "pids.max"), "40");
      if (layout.version === "v1") {
        assert.equal(await read(layout.memory, "memory.limit_in_bytes"), String(96 * 1024 * 1024));
        assert.equal(await read(layout.cpu, "cpu.cfs_quota_us"), "50000");
        assert.equal(await read(layout.cpu, "cpu.cfs_period_us"), "100000");
        assert.equal(await read(layout.cpu, "cpu.shares"), "512");
      } else {
        assert.equal(await read(layout.memory, "memory.max"), String(96 * 1024 * 1024));
        assert.equal(await read(layout.cpu, "cpu.max"), "50000 100000");
      }
      // boot() returns before bwrap has started argv: wait for it.
      const commands = await waitFor(
        async () => {
          const found = (await cgroupPids(t.instance, "limits")).map((pid) => {
            try {
              return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0];
            } catch {
              return undefined;
            }
          });
          return found.includes("/bin/sleep") ? found : undefined;
        },
        { what: "argv to run in the sandbox's cgroup" },
      );
      assert.ok(commands.includes("/usr/bin/bwrap"), `cgroup holds ${commands.join(", ")}`);
    } finally {
      await handle.destroy();
    }
  });

  test("kill() ends the sandbox and destroy() is idempotent", async () => {
    const handle = await t.driver.boot(testSpec("idem", runnerDir, ["/bin/sleep", "60"]));
    try {
      await handle.kill();
      await handle.kill();
      assert.deepEqual(await handle.exited, { code: null, signal: "SIGKILL", oom: false });
      await Promise.all([handle.destroy(), handle.destroy()]);
      await handle.destroy();
      await handle.kill();
    } finally {
      await handle.destroy();
    }
    assert.deepEqual(await mountPointsUnder(path.join(t.runDir, "idem")), []);
    assert.deepEqual(await cgroupPids(t.instance, "idem"), []);
  });

  test("refuses a second sandbox with a live id", async () => {
    const first = await t.driver.boot(testSpec("dup", runnerDir, ["/bin/sleep", "60"]));
    try {
      await assert.rejects(t.driver.boot(testSpec("dup", runnerDir, ["/bin/true"])), /already exists/);
      assert.equal((await cgroupPids(t.instance, "dup")).length > 0, true);
    } finally {
      await first.destroy();
    }
  });

  test("rejects bad specs before touching anything", async () => {
    const bad = [
      testSpec("Bad_Id", runnerDir, ["/bin/true"]),
      testSpec("bad-layer", runnerDir, ["/bin/true"], { layers: ["/no/such/layer"] }),
      testSpec("bad-layer2", runnerDir, ["/bin/true"], { layers: ["/tmp/a,upperdir=/x"] }),
      testSpec("bad-runner", "/no/such/runner", ["/bin/true"]),
      testSpec("bad-argv", runnerDir, []),
      testSpec("bad-env", runnerDir, ["/bin/true"], { env: { "A=B": "x" } }),
      testSpec("bad-file", runnerDir, ["/bin/true"], { files: [{ path: "/data/../etc/passwd", content: "" }] }),
      testSpec("bad-file2", runnerDir, ["/bin/true"], { files: [{ path: `${RUNNER_MOUNT}/runner.mjs`, content: "" }] }),
    ];
    for (const spec of bad) {
      await assert.rejects(t.driver.boot(spec), Error, spec.id);
      assert.ok(!existsSync(path.join(t.runDir, spec.id)), spec.id);
    }
  });

  test("cleans up and throws a clear error when boot fails after mounting", async () => {
    // Two files where one needs the other to be a folder: fails while filling the tmpfs.
    const files = [
      { path: "/data/a", content: "x" },
      { path: "/data/a/b", content: "y" },
    ];
    await assert.rejects(
      t.driver.boot(testSpec("midway", runnerDir, ["/bin/true"], { files })),
      /sandbox midway: boot failed: preparing the writable layer/,
    );
    // A lower layer overlayfs refuses: fails at the overlay mount, after the tmpfs.
    await assert.rejects(
      t.driver.boot(testSpec("midway2", runnerDir, ["/bin/true"], { layers: ["/proc/1"] })),
      /sandbox midway2: boot failed: mount overlay/,
    );
    for (const id of ["midway", "midway2"]) {
      assert.deepEqual(await mountPointsUnder(path.join(t.runDir, id)), []);
      assert.ok(!existsSync(path.join(t.runDir, id)));
      assert.deepEqual(await cgroupPids(t.instance, id), []);
    }
    assert.deepEqual(await leftovers(t.runDir, t.instance).then((l) => l.filter((x) => x.includes("midway"))), []);
  });

  test("the bash launcher and a driver without warm launchers behave the same", async () => {
    for (const [name, extra] of [
      ["bash", { helper: "bash" as const, warmLaunchers: 0 }],
      ["cold", { warmLaunchers: 0 }],
    ] as const) {
      const other = await makeTestDriver(`driver-${name}`, extra);
      try {
        const spec = testSpec("alt", runnerDir, ["/bin/sh", "-c", "cat /data/x; id -u; ls /proc/self/fd | wc -l"], {
          files: [{ path: "/data/x", content: "file\n" }],
        });
        for (let i = 0; i < 2; i++) {
          const result = await runSandbox(other.driver, spec);
          assert.equal(result.stdout, "file\n61000\n4\n", name);
          assert.equal(result.exit.code, 0);
        }
      } finally {
        await other.cleanup();
      }
      assert.deepEqual(await leftovers(other.runDir, other.instance), []);
    }
  });

  test("boots sandboxes concurrently", async () => {
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        runSandbox(t.driver, testSpec(`par-${i}`, runnerDir, ["/bin/sh", "-c", `echo ${i}`])),
      ),
    );
    assert.deepEqual(
      results.map((r) => r.stdout),
      ["0\n", "1\n", "2\n", "3\n", "4\n", "5\n"],
    );
  });
});
