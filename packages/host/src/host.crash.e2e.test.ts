/** A host killed with SIGKILL mid-run: the next host on the same data directory recovers. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { describe, it } from "node:test";
import { unsealRunners } from "./engine/runner-registry.ts";
import { startHost } from "./host.ts";
import { e2eSkip } from "./testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "./testing/harness.ts";

const skip = e2eSkip(hostSkipReason());

describe("host crash", { skip }, () => {
  it("leaves no run stuck in running and no sandbox behind", async (t) => {
    const dataDir = await realpath(await mkdtemp(join(tmpdir(), "paddock-crash-")));
    const instance = createHash("sha256").update(dataDir).digest("hex").slice(0, 10);
    const child = spawn(
      process.execPath,
      [
        new URL("./testing/host-process.ts", import.meta.url).pathname,
        JSON.stringify({ dataDir, port: 0, imagesDir: testImagesDir() }),
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    t.after(async () => {
      if (child.exitCode === null) child.kill("SIGKILL");
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    });
    const first = await new Promise<{ url: string; adminKey: string }>((resolve, reject) => {
      createInterface({ input: child.stdout }).once("line", (l) => resolve(JSON.parse(l)));
      child.once("exit", (code) => reject(new Error(`host exited early (${code})`)));
    });
    const call = async (url: string, method: string, path: string, body?: unknown) => {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: { authorization: `Bearer ${first.adminKey}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      return res.json() as Promise<{ id: string; status: string; reason: string; data: { type: string }[] }>;
    };
    const agent = await call(first.url, "POST", "/v1/agents", {
      name: "long",
      command: ["sh", "-c", "echo working; sleep 600"],
    });
    const run = await call(first.url, "POST", `/v1/agents/${agent.id}/runs`, {});
    // An agent whose policy retries lost attempts: its first attempt hangs, its second finishes.
    const retried = await call(first.url, "POST", "/v1/agents", {
      name: "retried",
      command: ["sh", "-c", 'echo "attempt $PADDOCK_ATTEMPT"; [ "$PADDOCK_ATTEMPT" = 1 ] && sleep 600; exit 0'],
      // Its retry waits three seconds: the checks below see what the dead host left, before it starts.
      retry: { max_attempts: 2, backoff_s: 3, jitter: 0, on: ["lost"] },
    });
    const retriedRun = await call(first.url, "POST", `/v1/agents/${retried.id}/runs`, {});
    for (const id of [run.id, retriedRun.id]) {
      for (let i = 0; i < 400; i++) {
        const events = await call(first.url, "GET", `/v1/runs/${id}/events`);
        if (events.data.some((e) => e.type === "log")) break;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const runDir = `/run/paddock/${instance}`;
    assert.ok(readFileSync("/proc/mounts", "utf8").includes(runDir), "the sandbox is mounted while it runs");

    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));

    const host = await startHost({ dataDir, port: 0, imagesDir: testImagesDir(), log: () => {} });
    try {
      const after = await call(host.url, "GET", `/v1/runs/${run.id}`);
      assert.deepEqual([after.status, after.reason], ["failed", "lost"]);
      const types = (await call(host.url, "GET", `/v1/runs/${run.id}/events`)).data.map((e) => e.type);
      assert.deepEqual(types.slice(-2), ["attempt.lost", "run.failed"]);
      assert.ok(types.includes("log"), "events acknowledged before the crash survive it");
      assert.ok(!readFileSync("/proc/mounts", "utf8").includes(runDir), "no mount of the dead host remains");
      for (const ctl of ["memory", "pids", "cpu", "unified", ""]) {
        const dir = join("/sys/fs/cgroup", ctl, "paddock", instance);
        if (existsSync(dir))
          assert.deepEqual(
            readdirSync(dir).filter((n) => !n.includes(".")),
            [],
            dir,
          );
      }
      // The run whose policy retries lost attempts ran again, once, and finished.
      let done = await call(host.url, "GET", `/v1/runs/${retriedRun.id}`);
      for (let i = 0; i < 400 && !["succeeded", "failed"].includes(done.status); i++) {
        await new Promise((r) => setTimeout(r, 50));
        done = await call(host.url, "GET", `/v1/runs/${retriedRun.id}`);
      }
      assert.deepEqual([done.status, done.reason], ["succeeded", "completed"]);
      const log = (await call(host.url, "GET", `/v1/runs/${retriedRun.id}/events`)).data as unknown as {
        seq: number;
        type: string;
        data: { line?: string; reason?: string };
      }[];
      const lines = log.filter((e) => e.type === "log").map((e) => e.data.line);
      assert.deepEqual(lines, ["attempt 1", "attempt 2"], "each attempt ran exactly once");
      const kinds = log.map((e) => e.type);
      assert.ok(kinds.indexOf("attempt.lost") < kinds.indexOf("retry.scheduled"), kinds.join(","));
      assert.equal(log.find((e) => e.type === "retry.scheduled")?.data.reason, "lost");
      assert.deepEqual(
        log.map((e) => e.seq),
        log.map((_, i) => i + 1),
        "no acknowledged event lost, none twice",
      );
      // The recovered host runs new work normally.
      const again = await call(host.url, "POST", `/v1/agents/${agent.id}/runs`, {});
      await call(host.url, "POST", `/v1/runs/${again.id}/cancel`, {});
    } finally {
      await host.close();
    }
  });
});
