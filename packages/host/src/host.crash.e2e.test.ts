/** A host killed with SIGKILL mid-run: the next host on the same data directory recovers. */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { instanceOf, sandboxRunDir, startHost } from "./host.ts";
import { unsealRunners } from "./images/runner-registry.ts";
import { e2eSkip } from "./testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "./testing/harness.ts";
import { spawnHost } from "./testing/host-child.ts";
import { assertOrder } from "./testing/order.ts";
import { waitFor } from "./testing/wait.ts";

const skip = e2eSkip(hostSkipReason());

describe("host crash", { skip }, () => {
  it("leaves no run stuck in running and no sandbox behind", async (t) => {
    const dataDir = await realpath(await mkdtemp(join(tmpdir(), "paddock-crash-")));
    const instance = instanceOf(dataDir);
    const first = await spawnHost({ dataDir, port: 0, imagesDir: testImagesDir() });
    const child = first.child;
    t.after(async () => {
      if (child.exitCode === null) child.kill("SIGKILL");
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    });
    const call = async (url: string, method: string, path: string, body?: unknown) => {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: { authorization: `Bearer ${first.adminKey}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      return res.json() as Promise<{ id: string; status: string; reason: string; data: { type: string }[] }>;
    };
    const finished = (url: string, id: string) =>
      waitFor(
        async () => {
          const run = await call(url, "GET", `/v1/runs/${id}`);
          return ["succeeded", "failed", "timed_out", "canceled"].includes(run.status) ? run : undefined;
        },
        { what: `run ${id} to finish`, timeoutMs: 60_000 },
      );
    const agent = await call(first.url, "POST", "/v1/agents", {
      name: "long",
      command: ["sh", "-c", "echo working; sleep 600"],
    });
    const run = await call(first.url, "POST", `/v1/agents/${agent.id}/runs`, {});
    // An agent whose policy retries lost attempts at once: its first attempt hangs, its second finishes.
    const retried = await call(first.url, "POST", "/v1/agents", {
      name: "retried",
      command: ["sh", "-c", 'echo "attempt $PADDOCK_ATTEMPT"; [ "$PADDOCK_ATTEMPT" = 1 ] && sleep 600; exit 0'],
      retry: { max_attempts: 2, backoff_s: 0, jitter: 0, on: ["lost"] },
    });
    const retriedRun = await call(first.url, "POST", `/v1/agents/${retried.id}/runs`, {});
    for (const id of [run.id, retriedRun.id]) {
      await waitFor(
        async () => (await call(first.url, "GET", `/v1/runs/${id}/events`)).data.some((e) => e.type === "log"),
        {
          what: `run ${id} to log`,
          timeoutMs: 60_000,
        },
      );
    }
    // The dead host's sandboxes, by name: the retried run's next attempt gets a sandbox of its own,
    // so these checks hold however soon it starts.
    const runDir = sandboxRunDir(dataDir);
    const dead = sandboxesUnder(runDir);
    assert.ok(dead.length >= 2, `both runs' sandboxes are mounted while they run: ${dead.join(", ")}`);
    assert.ok(cgroupsOf(instance, dead).length >= 2, "the sandboxes have cgroups while they run");

    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));

    const host = await startHost({ dataDir, port: 0, imagesDir: testImagesDir(), log: () => {} });
    try {
      const after = await call(host.url, "GET", `/v1/runs/${run.id}`);
      assert.deepEqual([after.status, after.reason], ["failed", "lost"]);
      const types = (await call(host.url, "GET", `/v1/runs/${run.id}/events`)).data.map((e) => e.type);
      assert.deepEqual(types.slice(-2), ["attempt.lost", "run.failed"]);
      assert.ok(types.includes("log"), "events acknowledged before the crash survive it");
      const mounted = sandboxesUnder(runDir);
      assert.deepEqual(
        dead.filter((name) => mounted.includes(name)),
        [],
        "no sandbox mount of the dead host remains",
      );
      assert.deepEqual(cgroupsOf(instance, dead), [], "no cgroup of the dead host's sandboxes remains");
      // The run whose policy retries lost attempts ran again, once, and finished.
      const done = await finished(host.url, retriedRun.id);
      assert.deepEqual([done.status, done.reason], ["succeeded", "completed"]);
      const log = (await call(host.url, "GET", `/v1/runs/${retriedRun.id}/events`)).data as unknown as {
        seq: number;
        type: string;
        data: { line?: string; reason?: string };
      }[];
      const lines = log.filter((e) => e.type === "log").map((e) => e.data.line);
      assert.deepEqual(lines, ["attempt 1", "attempt 2"], "each attempt ran exactly once");
      const kinds = log.map((e) => e.type);
      assertOrder(kinds, ["attempt.lost", "retry.scheduled"]);
      assert.equal(log.find((e) => e.type === "retry.scheduled")?.data.reason, "lost");
      assert.deepEqual(
        log.map((e) => e.seq),
        log.map((_, i) => i + 1),
        "no acknowledged event lost, none twice",
      );
      // The recovered host runs new work normally.
      const quick = await call(host.url, "POST", "/v1/agents", { name: "quick", command: ["sh", "-c", "echo fine"] });
      const again = await finished(host.url, (await call(host.url, "POST", `/v1/agents/${quick.id}/runs`, {})).id);
      assert.deepEqual([again.status, again.reason], ["succeeded", "completed"]);
      const quickLog = (await call(host.url, "GET", `/v1/runs/${again.id}/events`)).data as unknown as {
        type: string;
        data: { line?: string };
      }[];
      assert.deepEqual(
        quickLog.filter((e) => e.type === "log").map((e) => e.data.line),
        ["fine"],
      );
    } finally {
      await host.close();
    }
  });
});

/** Names of the sandboxes with a mount under runDir (the driver's own folders start with a dot). */
function sandboxesUnder(runDir: string): string[] {
  const names = new Set<string>();
  for (const line of readFileSync("/proc/mounts", "utf8").split("\n")) {
    const point = line.split(" ")[1] ?? "";
    if (!point.startsWith(`${runDir}/`)) continue;
    const name = point.slice(runDir.length + 1).split("/")[0] ?? "";
    if (!name.startsWith(".")) names.add(name);
  }
  return [...names].sort();
}

/** The cgroup folders, in any hierarchy, of the named sandboxes of a host instance. */
function cgroupsOf(instance: string, names: string[]): string[] {
  return ["memory", "pids", "cpu", "unified", ""].flatMap((ctl) => {
    const dir = join("/sys/fs/cgroup", ctl, "paddock", instance);
    return existsSync(dir)
      ? readdirSync(dir)
          .filter((n) => names.includes(n))
          .map((n) => join(dir, n))
      : [];
  });
}
