/**
 * Nodes with a real host and real sandboxes: a drained node lets its runs finish and claims no
 * more; an attempt whose run another node took over is fenced (its writes refused, its events not
 * recorded) and its sandbox killed within its lease.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { sql } from "kysely";
import { openSqlite } from "../store/sqlite.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runEvents, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { sandboxesUnder } from "../testing/processes.ts";
import { waitFor } from "../testing/wait.ts";

const skip = e2eSkip(hostSkipReason());
const LEASE_MS = 3000;

describe("nodes end to end", { skip }, () => {
  let t: TestHost;
  before(async () => {
    t = await startTestHost({ leaseMs: LEASE_MS, warmSandboxes: 0 });
  });
  after(async () => {
    await t?.close();
  });

  const start = async (command: string) => {
    const agent = await t.api("POST", "/v1/agents", { name: uniqueName("node"), command: ["sh", "-c", command] });
    assert.equal(agent.status, 201, JSON.stringify(agent.body));
    const run = await t.api("POST", `/v1/agents/${agent.body.id}/runs`, {});
    assert.equal(run.status, 201, JSON.stringify(run.body));
    return run.body.id as string;
  };
  const eventTypes = async (id: string) => (await runEvents(t, id)).map((e) => e.type);

  it("fences an attempt whose run another node took over: writes refused, sandbox killed within the lease", async () => {
    // One attempt writes events all the time (fenced at its next write); the other writes none
    // (fenced at the next lease renewal).
    const chatty = await start("while true; do echo tick; sleep 0.05; done");
    const silent = await start("sleep 600");
    await waitFor(async () => (await eventTypes(chatty)).includes("log"), { what: "the chatty run to log" });
    await waitFor(async () => (await eventTypes(silent)).includes("run.running"), { what: "the silent run to run" });
    const sandboxes = [chatty, silent].map((id) => `${id.replace(/_/g, "-")}-1`);
    for (const name of sandboxes) assert.ok(sandboxesUnder(t.runDir).includes(name), `${name} is mounted`);

    // Another node recovers both runs and claims them, as a recovery would: attempt 2, its worker.
    const db = openSqlite(join(t.dataDir, "paddock.db"));
    try {
      const takenAt = Date.now();
      const seqs = await db.transaction().execute(async (trx) => {
        await trx
          .updateTable("runs")
          .set((eb) => ({ attempt: eb("attempt", "+", 1), worker_id: "node-b", lease_until: Date.now() + 600_000 }))
          .where("id", "in", [chatty, silent])
          .execute();
        const { rows } = await sql<{ run_id: string; last: number }>`
          SELECT run_id, max(seq) AS last FROM events WHERE run_id IN (${chatty}, ${silent}) GROUP BY run_id`.execute(
          trx,
        );
        return new Map(rows.map((r) => [r.run_id, Number(r.last)]));
      });
      await waitFor(() => sandboxes.every((name) => !sandboxesUnder(t.runDir).includes(name)), {
        what: "both old attempts' sandboxes to be killed",
        timeoutMs: LEASE_MS,
        intervalMs: 20,
      });
      assert.ok(Date.now() - takenAt < LEASE_MS, "killed within the lease");
      for (const id of [chatty, silent]) {
        await waitFor(
          () => t.logs.some((l) => l.includes(`run ${id}: attempt 1 ended; the run is no longer its own`)),
          {
            what: `run ${id}'s old attempt to end`,
          },
        );
        assert.ok(
          t.logs.some((l) => l.includes(`run ${id}: attempt 1 lost its lease`)),
          `${id} lost its lease`,
        );
        const events = await runEvents(t, id);
        assert.deepEqual(
          events.filter((e) => e.seq > (seqs.get(id) ?? 0)).map((e) => e.type),
          [],
          "nothing the old attempt wrote after the takeover was recorded",
        );
        const run = await db.selectFrom("runs").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
        assert.deepEqual([run.status, run.attempt, run.worker_id], ["running", 2, "node-b"], "the run is node-b's");
        const attempt = await db
          .selectFrom("attempts")
          .selectAll()
          .where("run_id", "=", id)
          .where("n", "=", 1)
          .executeTakeFirstOrThrow();
        assert.equal(attempt.finished_at, null, "the old attempt recorded no outcome");
      }
      // Let the runs end so the host closes cleanly.
      await db
        .updateTable("runs")
        .set({ status: "canceled", lease_until: null })
        .where("id", "in", [chatty, silent])
        .execute();
    } finally {
      await db.destroy();
    }
  });

  it("a drained node lets its runs finish and claims no more; a restart claims again", async () => {
    const going = await start("echo started; sleep 1; echo done");
    await waitFor(async () => (await eventTypes(going)).includes("log"), { what: "the run to start" });
    const nodeId = (await t.api("GET", "/v1/health")).body.node as string;
    const drained = await t.api("POST", `/v1/nodes/${nodeId}/drain`);
    assert.equal(drained.status, 200, JSON.stringify(drained.body));
    assert.equal(drained.body.active_runs, 1);
    const queued = await start("echo later");
    const finished = await waitForRun(t, going);
    assert.deepEqual([finished.status, finished.reason], ["succeeded", "completed"]);
    // The run that finished woke the engine, which claimed nothing.
    assert.equal((await t.api("GET", `/v1/runs/${queued}`)).body.status, "queued");
    const listed = (await t.api("GET", "/v1/nodes")).body.data.find((n: { id: string }) => n.id === nodeId);
    assert.deepEqual([listed.draining, listed.active_runs, listed.live], [true, 0, true]);
    await t.restart();
    const later = await waitForRun(t, queued);
    assert.deepEqual([later.status, later.reason], ["succeeded", "completed"]);
  });
});
