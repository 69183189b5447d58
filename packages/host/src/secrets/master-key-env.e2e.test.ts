/**
 * A master key given as PADDOCK_MASTER_KEY stays in the host process: a real host started with it
 * in its environment runs an agent, keeps warm launchers, freezes an environment session, exports
 * that snapshot and imports it back, and no process below it (tools, launchers, sandboxes) ever
 * shows the key in /proc/<pid>/environ.
 *
 * Two scans look: every process below the host, walked every millisecond or so; and, in a worker
 * thread, the host's direct children read as fast as /proc allows, so that tools living a few
 * milliseconds (mkfifo, mknod and setfattr from an import) are seen too; the test fails unless
 * that scan saw some. A child between fork and exec still shows its parent's memory, the host's
 * own environment; such a sample (the host's executable and environment, byte for byte) is left
 * out, since what the child runs with is only known after the exec.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, readlink, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Worker } from "node:worker_threads";
import { startHost } from "../host.ts";
import { unsealRunners } from "../images/runner-registry.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../testing/harness.ts";
import { spawnHost } from "../testing/host-child.ts";
import { descendants } from "../testing/processes.ts";
import { waitFor } from "../testing/wait.ts";
import { MASTER_KEY_ENV } from "./vault.ts";

/** Tools only a snapshot import starts, each for a moment: for a FIFO, a whiteout, kept attributes. */
const IMPORT_TOOLS = ["mkfifo", "mknod", "setfattr"];

/** One look at a process: its name, executable and environment. */
interface Sample {
  pid: number;
  comm: string;
  exe: string;
  environ: string;
}

/**
 * Runs in a worker thread: reads the host's direct children (every thread's `children` list) in a
 * loop paused 1 ms at a time until told to stop, and posts one sample per process and executable.
 */
const CHILD_SCAN = `
const { readFileSync, readdirSync, readlinkSync } = require("node:fs");
const { parentPort, workerData } = require("node:worker_threads");
const stop = new Int32Array(workerData.stop);
const read = (path) => { try { return readFileSync(path, "latin1"); } catch { return null; } };
const link = (path) => { try { return readlinkSync(path); } catch { return null; } };
const samples = new Map();
while (Atomics.load(stop, 0) === 0) {
  let tasks = [];
  try { tasks = readdirSync("/proc/" + workerData.pid + "/task"); } catch { break; }
  for (const task of tasks) {
    for (const pid of (read("/proc/" + workerData.pid + "/task/" + task + "/children") ?? "").split(" ")) {
      if (pid === "") continue;
      // The same executable before and after: the environment read is that executable's.
      const exe = link("/proc/" + pid + "/exe");
      const environ = read("/proc/" + pid + "/environ");
      const comm = read("/proc/" + pid + "/comm");
      if (exe === null || environ === null || comm === null || link("/proc/" + pid + "/exe") !== exe) continue;
      const key = pid + " " + exe;
      if (!samples.has(key)) samples.set(key, { pid: Number(pid), comm: comm.trim(), exe, environ });
    }
  }
  Atomics.wait(stop, 0, 0, 1);
}
parentPort.postMessage([...samples.values()]);
`;

describe("a master key from the environment", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("reaches no process the host starts", async (t) => {
    const key = randomBytes(32).toString("base64");
    const dataDir = await realpath(await mkdtemp(join(tmpdir(), "paddock-key-env-")));
    const config = { dataDir, port: 0, imagesDir: testImagesDir() };
    const host = await spawnHost(config, { ...process.env, [MASTER_KEY_ENV]: key });
    const hostPid = host.child.pid as number;
    t.after(async () => {
      if (host.child.exitCode === null) {
        host.child.kill("SIGKILL");
        await new Promise((r) => host.child.once("exit", r));
      }
      // A host on the same data folder removes what the killed one left (sandboxes, mounts).
      process.env[MASTER_KEY_ENV] = key;
      const cleaner = await startHost({ ...config, log: () => {} });
      await cleaner.close();
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    });

    // A child not yet exec'd shows this: the host's executable and its environment, key included.
    const hostExe = await readlink(`/proc/${hostPid}/exe`);
    const hostEnviron = await readFile(`/proc/${hostPid}/environ`, "latin1");
    const seen = new Map<number, Sample>();
    const leaks = new Set<string>();
    const judge = (sample: Sample) => {
      if (sample.exe === hostExe && sample.environ === hostEnviron) return;
      seen.set(sample.pid, sample);
      if (sample.environ.includes(`${MASTER_KEY_ENV}=`) || sample.environ.includes(key)) {
        leaks.add(`${sample.pid} ${sample.comm} (${sample.exe})`);
      }
    };
    // Every process below the host, looked at again and again while the host works...
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        for (const p of await descendants(hostPid)) {
          // The same executable before and after: the environment read is that executable's.
          const exe = await readlink(`/proc/${p.pid}/exe`).catch(() => null);
          const environ = await readFile(`/proc/${p.pid}/environ`, "latin1").catch(() => null);
          const still = await readlink(`/proc/${p.pid}/exe`).catch(() => null);
          if (exe !== null && environ !== null && still === exe) judge({ pid: p.pid, comm: p.comm, exe, environ });
        }
        await sleep(1);
      }
    })();
    // ...and its short-lived children, in a worker.
    const stopScan = new Int32Array(new SharedArrayBuffer(4));
    const childScan = new Worker(CHILD_SCAN, { eval: true, workerData: { pid: hostPid, stop: stopScan.buffer } });
    const childSamples = once(childScan, "message").then(([samples]) => samples as Sample[]);
    let fast: Sample[] = [];

    const call = async (method: string, path: string, body?: unknown) => {
      const res = await fetch(`${host.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${host.adminKey}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      // biome-ignore lint/suspicious/noExplicitAny: JSON bodies.
      return { status: res.status, body: (await res.json()) as any };
    };
    try {
      // The host took the key from the environment: it made no key file of its own.
      assert.equal(existsSync(join(dataDir, "master.key")), false);

      // A sandbox that stays up, and the launchers the host keeps warm beside it.
      const agent = await call("POST", "/v1/agents", { name: "sleeper", command: ["sh", "-c", "sleep 600"] });
      const run = await call("POST", `/v1/agents/${agent.body.id}/runs`, {});
      assert.equal(run.status, 201, JSON.stringify(run.body));
      const sleeper = await waitFor(
        () => [...seen.values()].find((p) => p.comm === "sleep" && p.environ.includes(`PADDOCK_RUN_ID=${run.body.id}`)),
        { what: "the run's sleep process to be seen", timeoutMs: 120_000 },
      );
      assert.ok(sleeper.environ.includes("PADDOCK_ATTEMPT=1"), "environments are read from the sandbox");

      // Freezing runs the host's copy and attribute tools over a tree of files.
      const shaped = await call("POST", "/v1/agents", { name: "shaped", command: ["true"] });
      const base = `/v1/agents/${shaped.body.id}`;
      assert.equal((await call("POST", `${base}/env/session`, {})).status, 201);
      // Files, FIFOs (an import makes each with mkfifo) and a deleted base file (a whiteout: mknod).
      const script =
        "mkdir /root/many && cd /root/many && for i in $(seq 2000); do echo $i > f$i; done" +
        " && for i in $(seq 200); do mkfifo p$i; done && rm /etc/issue";
      const made = await call("POST", `${base}/env/session/exec`, { argv: ["sh", "-c", script] });
      assert.equal(made.body.exit_code, 0, JSON.stringify(made.body));
      const frozen = await call("POST", `${base}/env/freeze`, {});
      assert.equal(frozen.status, 201, JSON.stringify(frozen.body));

      // Exporting packs the layers (getfattr); importing unpacks them (mkfifo, mknod, setfattr).
      const version = frozen.body.snapshot.version as number;
      const exported = await fetch(`${host.url}${base}/snapshots/${version}/export?include_base=false`, {
        headers: { authorization: `Bearer ${host.adminKey}` },
      });
      const archive = Buffer.from(await exported.arrayBuffer());
      assert.equal(exported.status, 200, archive.toString());
      const imported = await fetch(`${host.url}${base}/snapshots/import`, {
        method: "POST",
        headers: { authorization: `Bearer ${host.adminKey}`, "content-type": "application/zstd" },
        body: archive,
      });
      assert.equal(imported.status, 201, await imported.text());

      await call("POST", `/v1/runs/${run.body.id}/cancel`, {});
    } finally {
      sampling = false;
      Atomics.store(stopScan, 0, 1);
      await sampler;
      fast = await childSamples;
    }
    for (const sample of fast) judge(sample);
    const names = [...new Set([...seen.values()].map((p) => p.comm))].sort();
    assert.ok(names.includes("sleep"), `the sandbox's processes were seen: ${names.join(", ")}`);
    const tools = [...new Set(fast.map((p) => p.comm))].filter((comm) => IMPORT_TOOLS.includes(comm));
    assert.ok(tools.length > 0, `the import's tools were seen (seen: ${names.join(", ")})`);
    assert.deepEqual([...leaks], [], `processes holding the key (seen: ${names.join(", ")})`);
  });
});
