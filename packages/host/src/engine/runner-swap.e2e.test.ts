/**
 * Runner hot-swap: a new runner is published while agents exist; their next run boots with it
 * swapped in (recorded, timed), and a successful run re-snapshots the agent onto the new runner
 * with the very same environment digests, so the run after needs no swap.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { RunnerLayers } from "../images/runner-layers.ts";
import { RunnerRegistry } from "../images/runner-registry.ts";
import { openSqlite } from "../store/sqlite.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, startTestHost, type TestHost, waitForRun } from "../testing/harness.ts";
import { assertOrder } from "../testing/order.ts";
import { waitFor } from "../testing/wait.ts";

const skip = e2eSkip(hostSkipReason());
const BUNDLE = new URL("../../../runner/dist/runner.mjs", import.meta.url).pathname;

// biome-ignore lint/suspicious/noExplicitAny: JSON.
type Json = any;

describe("runner hot-swap", { skip }, () => {
  let t: TestHost;
  let scratch: string;
  before(async () => {
    t = await startTestHost({ warmSandboxes: 0 });
    scratch = await mkdtemp(join(tmpdir(), "paddock-runner-"));
  });
  after(async () => {
    await t?.close();
    await rm(scratch, { recursive: true, force: true });
  });

  /** Publishes a runner that differs from the built one by a comment, from a separate store connection. */
  const publish = async (tag: string) => {
    const bundle = join(scratch, `runner-${tag}.mjs`);
    await writeFile(bundle, `${await readFile(BUNDLE, "utf8")}\n// ${tag}\n`);
    const db = openSqlite(join(t.dataDir, "paddock.db"));
    try {
      const runnersDir = join(t.dataDir, "runners");
      const registry = new RunnerRegistry(db, new RunnerLayers({ runnersDir }), runnersDir, () => {});
      return await registry.publish({ bundlePath: bundle, nodePath: process.execPath });
    } finally {
      await db.destroy();
    }
  };
  const runOnce = async (agentId: string) => {
    const started = await t.api("POST", `/v1/agents/${agentId}/runs`, {});
    const run = await waitForRun(t, started.body.id);
    const events: Json[] = (await t.api("GET", `/v1/runs/${run.id}/events`)).body.data;
    return { run, events, swap: events.find((e) => e.type === "runner.swapped")?.data };
  };

  it("swaps the current runner in, re-snapshots with identical environment digests, then boots without a swap", async () => {
    const agent = await t.api("POST", "/v1/agents", {
      name: "swapper",
      command: ["python3", "main.py"],
      files: { "main.py": "import os\nprint(os.listdir('/opt/paddock/runner'))\n" },
    });
    assert.equal(agent.status, 201, JSON.stringify(agent.body));
    const v1 = agent.body.snapshot;
    assert.equal(v1.version, 1);

    const first = await runOnce(agent.body.id);
    assert.equal(first.run.status, "succeeded");
    assert.equal(first.swap, undefined, "the agent was made with the current runner");

    const next = await publish("v2");
    assert.notEqual(next.digest, v1.runner);
    // The host rereads the current runner from the store at most every 500 ms.
    await waitFor(
      async () =>
        (await t.api("GET", "/v1/runners")).body.data.some((r: Json) => r.digest === next.digest && r.current),
      { what: "the host to see the new runner as current" },
    );

    const swapped = await runOnce(agent.body.id);
    assert.equal(swapped.run.status, "succeeded", JSON.stringify(swapped.events.slice(-4)));
    assert.equal(swapped.swap.from, v1.runner);
    assert.equal(swapped.swap.to, next.digest);
    assert.equal(typeof swapped.swap.ms, "number");
    const made = swapped.events.find((e) => e.type === "snapshot.created")?.data;
    assert.equal(made.version, 2);
    assertOrder(
      swapped.events.map((e) => e.type),
      ["snapshot.created", "run.succeeded"],
      "recorded before the run ends",
    );

    const after1 = (await t.api("GET", `/v1/agents/${agent.body.id}`)).body.snapshot;
    assert.deepEqual(after1, { version: 2, base: v1.base, layers: v1.layers, runner: next.digest });

    const third = await runOnce(agent.body.id);
    assert.equal(third.run.status, "succeeded");
    assert.equal(third.swap, undefined, "the re-snapshot names the current runner");
    assert.ok(!third.events.some((e) => e.type === "snapshot.created"));

    const history = (await t.api("GET", `/v1/agents/${agent.body.id}/snapshots`)).body.data;
    assert.deepEqual(
      history.map((s: Json) => [s.version, s.reason, s.current, s.layers]),
      [
        [2, "runner", true, v1.layers],
        [1, "create", false, v1.layers],
      ],
    );
  });

  it("rolls back to an earlier version as a new version, and refuses unknown ones", async () => {
    const agent = (await t.api("GET", "/v1/agents?name=swapper")).body.data[0];
    const rolled = await t.api("POST", `/v1/agents/${agent.id}/rollback`, { version: 1 });
    assert.equal(rolled.status, 201, JSON.stringify(rolled.body));
    assert.deepEqual([rolled.body.version, rolled.body.reason, rolled.body.current], [3, "rollback", true]);
    assert.equal((await t.api("GET", `/v1/agents/${agent.id}`)).body.snapshot.version, 3);
    const bad = await t.api("POST", `/v1/agents/${agent.id}/rollback`, { version: 99 });
    assert.deepEqual([bad.status, bad.body.error.code], [404, "not_found"]);
    const bad2 = await t.api("POST", `/v1/agents/${agent.id}/rollback`, { version: "one" });
    assert.deepEqual([bad2.status, bad2.body.error.code], [400, "validation_failed"]);
    assert.equal((await t.api("GET", `/v1/agents/${agent.id}/snapshots`)).body.data.length, 3, "nothing half-written");
    // Version 3 names version 1's runner again: its next run swaps and re-snapshots once more.
    const run = await runOnce(agent.id);
    assert.ok(run.swap, "swapped after the rollback");
    assert.equal((await t.api("GET", `/v1/agents/${agent.id}`)).body.snapshot.version, 4);
  });

  it("keeps runner layers a snapshot names and collects the rest", async () => {
    const named = (await t.api("GET", "/v1/runners")).body.data.map((r: Json) => r.digest);
    const orphan = await publish("v3"); // current now, but no snapshot names it
    await publish("v4"); // supersedes v3
    await t.restart();
    const runnersDir = join(t.dataDir, "runners");
    assert.ok(!existsSync(join(runnersDir, orphan.digest)), "an unnamed, superseded runner is removed");
    for (const digest of named) assert.ok(existsSync(join(runnersDir, digest)), `kept ${digest}`);
    // The host's own build is current again after a restart (deploying a host deploys its runner).
    const list = (await t.api("GET", "/v1/runners")).body.data;
    const current = list.find((r: Json) => r.current);
    assert.ok(current && named.includes(current.digest));
  });
});
