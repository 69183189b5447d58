/**
 * A cancel asked for through another node: that node marks the run in the shared store (the same
 * RunRepository.requestCancel its API calls) and cannot reach this node's sandbox. The node that
 * runs it notices the mark (its cancel poll between heartbeats), kills the sandbox and records the
 * run canceled, as a cancel through its own API would.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Kysely } from "kysely";
import { RunRepository } from "../engine/runs.ts";
import { EventLog } from "../store/event-log.ts";
import type { Database } from "../store/schema.ts";
import { openSqlite } from "../store/sqlite.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runEvents, startTestHost, type TestHost, uniqueName } from "../testing/harness.ts";
import { waitFor } from "../testing/wait.ts";

const skip = e2eSkip(hostSkipReason());

/** Whether a sandbox of this name is mounted under runDir. */
function mounted(runDir: string, name: string): boolean {
  return readFileSync("/proc/mounts", "utf8")
    .split("\n")
    .some((line) => (line.split(" ")[1] ?? "").startsWith(`${runDir}/${name}/`));
}

describe("a cancel asked for through another node", { skip }, () => {
  let t: TestHost;
  let db: Kysely<Database>;
  before(async () => {
    // A long lease: its heartbeat (every 40 s) comes too late, so the cancel poll is what acts.
    t = await startTestHost({ warmSandboxes: 0, leaseMs: 120_000 });
    db = openSqlite(join(t.dataDir, "paddock.db"));
  });
  after(async () => {
    await db?.destroy();
    await t?.close();
  });

  it("stops the run on the node that runs it: canceled, its sandbox gone", async () => {
    const agent = await t.api("POST", "/v1/agents", { name: uniqueName("far-cancel"), command: ["sleep", "600"] });
    assert.equal(agent.status, 201, JSON.stringify(agent.body));
    const started = await t.api("POST", `/v1/agents/${agent.body.id}/runs`, {});
    assert.equal(started.status, 201, JSON.stringify(started.body));
    const id = started.body.id as string;
    await waitFor(async () => (await runEvents(t, id)).some((e) => e.type === "run.running"), {
      what: "the run to run",
    });
    const sandbox = `${id.replace(/_/g, "-")}-1`;
    assert.ok(mounted(t.runDir, sandbox), "its sandbox is mounted");

    // What another node's API does: the mark and its event, through the store it shares.
    const elsewhere = new RunRepository(db, new EventLog(db));
    assert.equal(await elsewhere.requestCancel(id), true);

    const ended = await waitFor(
      async () => {
        const run = await t.api("GET", `/v1/runs/${id}`);
        return run.body.status === "canceled" && run.body;
      },
      { what: "the run to end canceled", timeoutMs: 8000, intervalMs: 20 },
    );
    assert.deepEqual([ended.status, ended.reason], ["canceled", "canceled"]);
    await waitFor(() => !mounted(t.runDir, sandbox), { what: "its sandbox to be gone", timeoutMs: 8000 });
    const types = (await runEvents(t, id)).map((e) => e.type);
    assert.ok(types.includes("run.cancel_requested"), types.join(","));
    assert.equal(types.at(-1), "run.canceled");
  });
});
