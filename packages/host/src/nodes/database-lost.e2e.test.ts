/**
 * A host whose PostgreSQL goes away mid-run and comes back: while it is gone the host stays up and
 * answers (routes that need the store with database_unavailable), claims nothing, and kills the
 * sandbox of an attempt whose lease it can no longer renew, within that lease; once it is back
 * the node heartbeats, recovers the lost run (retried per its policy), claims new runs, and its
 * hint listener and leader lock come back.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import pg from "pg";
import { LEADER_LOCK_KEY } from "../nodes/leader.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runEvents, startTestHost, type TestHost, waitForRun } from "../testing/harness.ts";
import { postgresSkipReason, startPostgres } from "../testing/postgres.ts";
import { sandboxesUnder } from "../testing/processes.ts";
import { waitFor } from "../testing/wait.ts";

const skip = e2eSkip(hostSkipReason() || postgresSkipReason());
const LEASE_MS = 3000;

describe("a host whose PostgreSQL goes away mid-run", { skip }, () => {
  it("stops claiming, kills what it can no longer fence within its lease, and resumes when the database returns", async (t) => {
    const server = startPostgres();
    let paused = false;
    let host: TestHost | undefined;
    t.after(async () => {
      if (paused) server.resume();
      await host?.close();
      server.stop();
    });
    const url = await server.createDatabase("lost");
    host = await startTestHost({ database: url, leaseMs: LEASE_MS, warmSandboxes: 0 });
    const h = host;
    /** One statement on a connection of its own, as an observer beside the host. */
    const query = async (text: string, params: unknown[] = []) => {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        return (await client.query(text, params)).rows;
      } finally {
        await client.end();
      }
    };
    const leaderLocks = async () =>
      Number(
        (
          await query(
            "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted AND ((classid::bigint << 32) | objid::bigint) = $1::bigint",
            [LEADER_LOCK_KEY.toString()],
          )
        )[0]?.n,
      );
    const listening = async () =>
      Number((await query("SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"))[0]?.n);
    const newRun = async (agentId: string) => {
      const run = await h.api("POST", `/v1/agents/${agentId}/runs`, {});
      assert.equal(run.status, 201, JSON.stringify(run.body));
      return run.body.id as string;
    };

    // The first attempt hangs; the policy retries a lost attempt at once, and the second finishes.
    const agent = await h.api("POST", "/v1/agents", {
      name: "outlives-the-database",
      command: ["sh", "-c", 'echo "attempt $PADDOCK_ATTEMPT"; [ "$PADDOCK_ATTEMPT" = 1 ] && sleep 600; exit 0'],
      retry: { max_attempts: 2, backoff_s: 0, jitter: 0, on: ["lost"] },
    });
    assert.equal(agent.status, 201, JSON.stringify(agent.body));
    const runId = await newRun(agent.body.id);
    await waitFor(async () => (await runEvents(h, runId)).some((e) => e.type === "log"), {
      what: "the first attempt to log",
      timeoutMs: 60_000,
    });
    const sandbox = `${runId.replace(/_/g, "-")}-1`;
    assert.ok(sandboxesUnder(h.runDir).includes(sandbox), "the first attempt's sandbox is mounted");
    await waitFor(async () => (await leaderLocks()) === 1 && (await listening()) > 0, {
      what: "the node to lead and listen for hints",
    });

    server.pause();
    paused = true;
    const stoppedAt = Date.now();
    await waitFor(() => !sandboxesUnder(h.runDir).includes(sandbox), {
      what: "the sandbox of the attempt that can no longer be fenced to be killed",
      timeoutMs: LEASE_MS + 3000,
    });
    const killedAfter = Date.now() - stoppedAt;
    // The process is up and answers: liveness from memory, the store's routes with their code.
    const health = await h.api("GET", "/v1/health");
    assert.equal(health.status, 200, JSON.stringify(health.body));
    assert.equal(health.body.database, "unavailable");
    const read = await h.api("GET", `/v1/runs/${runId}`);
    assert.equal(read.status, 503, JSON.stringify(read.body));
    assert.equal(read.body.error.code, "database_unavailable");
    // Down for about a lease and a half in all.
    await waitFor(() => Date.now() - stoppedAt >= LEASE_MS * 1.5, { what: "the outage to last", intervalMs: 100 });

    server.resume();
    paused = false;
    const run = await waitForRun(h, runId, undefined, 30_000);
    assert.deepEqual([run.status, run.reason, run.attempt], ["succeeded", "completed", 2]);
    const events = await runEvents(h, runId);
    const types = events.map((e) => e.type);
    assert.deepEqual(
      events.filter((e) => e.type === "log").map((e) => e.data),
      [
        { stream: "stdout", line: "attempt 1" },
        { stream: "stdout", line: "attempt 2" },
      ],
      "each attempt ran once",
    );
    // This node's own recovery of lapsed leases found the run it had stopped, and retried it.
    assert.deepEqual(types, [
      ...["run.queued", "run.starting", "attempt.started", "run.running", "log"],
      ...["attempt.lost", "retry.scheduled"],
      ...["run.starting", "attempt.started", "run.running", "log", "attempt.finished", "run.succeeded"],
    ]);
    const nodeId = (await h.api("GET", "/v1/health")).body.node;
    assert.deepEqual(events.find((e) => e.type === "attempt.lost")?.data, {
      attempt: 1,
      worker: nodeId,
      why: "lease expired",
    });
    assert.equal((events.find((e) => e.type === "retry.scheduled")?.data as { reason?: string })?.reason, "lost");
    assert.deepEqual(
      events.map((e) => e.seq),
      events.map((_, i) => i + 1),
      "the run's events are one unbroken sequence",
    );

    // New work is claimed again, the node is live, and its hint listener and leader lock are back.
    const quick = await h.api("POST", "/v1/agents", { name: "after-the-outage", command: ["sh", "-c", "echo fine"] });
    assert.equal(quick.status, 201, JSON.stringify(quick.body));
    const later = await waitForRun(h, await newRun(quick.body.id), undefined, 30_000);
    assert.deepEqual([later.status, later.reason], ["succeeded", "completed"]);
    const node = (await h.api("GET", "/v1/nodes")).body.data[0];
    assert.equal(node.live, true);
    assert.equal((await h.api("GET", "/v1/health")).body.database, "ok");
    await waitFor(async () => (await leaderLocks()) === 1 && (await listening()) > 0, {
      what: "the node to lead and listen for hints again",
      timeoutMs: 10_000,
    });

    // The outage was told once by each task that retries on a timer, not at every retry.
    const told = h.logs.flatMap((l) => /^(\w+): the database cannot be reached/.exec(l)?.[1] ?? []);
    assert.deepEqual(told.sort(), ["engine", "notifications", "scheduler"], h.logs.join("\n"));
    assert.ok(h.logs.some((l) => l.includes(`run ${runId}: attempt 1 lost its lease`)));
    assert.ok(h.logs.some((l) => l.startsWith("engine: the database is reachable again")));
    assert.ok(killedAfter < LEASE_MS + 3000, `killed ${killedAfter} ms after the database went away`);
  });
});
