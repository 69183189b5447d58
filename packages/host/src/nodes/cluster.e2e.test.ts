/**
 * Three nodes on one machine, as an operator runs them: three `paddock serve` processes on one
 * PostgreSQL database and one blob folder, each with its own sandbox range, real sandboxes. Runs
 * spread over the nodes; any node serves any run's events live and cancels a run another node
 * executes; a killed node's runs are retried by the others, never twice at once, their event
 * sequences unbroken; a paused node that lost its lease has its late writes refused and its
 * sandbox killed; one agent's budget holds against calls from runs on every node; one cron slot
 * and one idempotency key make one run however many nodes race for them.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { after, afterEach, before, describe, it, type TestContext } from "node:test";
import type { RunEvent } from "@paddock/protocol";
import pg from "pg";
import { type Cluster, type ClusterNode, nodeProcesses, startCluster } from "../testing/cluster.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason } from "../testing/harness.ts";
import { FLOOD_AGENT, type LlmStandIn, startLlmStandIn } from "../testing/llm-stand-in.ts";
import { postgresSkipReason } from "../testing/postgres.ts";
import { waitFor } from "../testing/wait.ts";
import { LEADER_LOCK_KEY } from "./leader.ts";

const skip = e2eSkip(hostSkipReason() || postgresSkipReason());
const LEASE_MS = 3000;
const MAX_RUNS = 2;
/** An agent that runs until canceled on its first attempt and ends at once on a retry. */
const FIRST_ATTEMPT_HANGS = [
  "sh",
  "-c",
  'echo "attempt $PADDOCK_ATTEMPT"; if [ "$PADDOCK_ATTEMPT" = 1 ]; then while true; do echo tick; sleep 0.1; done; fi; echo again',
];
const RETRY_LOST = { max_attempts: 2, backoff_s: 0, jitter: 0, on: ["lost"] };
const TERMINAL = ["succeeded", "failed", "timed_out", "canceled"];

describe("a three-node cluster", { skip }, () => {
  let c: Cluster;
  let seq = 0;
  before(async () => {
    c = await startCluster({ nodes: 3, leaseMs: LEASE_MS, maxRuns: MAX_RUNS });
  });
  // A failed test shows what the nodes logged.
  afterEach((t) => {
    const test = t as TestContext & { passed?: boolean };
    if (test.passed === false) for (const n of c?.nodes ?? []) test.diagnostic(`${n.id}:\n${n.logs.join("\n")}`);
  });
  after(async () => {
    await c?.close();
  });

  const node = (i: number) => c.nodes[i] as ClusterNode;
  const ok = async (n: ClusterNode, method: string, path: string, body?: unknown) => {
    const res = await c.api(n, method, path, body);
    assert.ok(res.status < 300, `${method} ${path} on ${n.id}: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body;
  };
  const agent = async (def: Record<string, unknown>) =>
    (await ok(node(0), "POST", "/v1/agents", { name: `cluster-${process.pid}-${++seq}`, ...def })).id as string;
  const trigger = async (agentId: string, input: unknown = {}, via = node(0)) =>
    (await ok(via, "POST", `/v1/agents/${agentId}/runs`, { input })).id as string;
  const events = async (runId: string, via = node(0)): Promise<RunEvent[]> =>
    (await ok(via, "GET", `/v1/runs/${runId}/events?limit=1000`)).data;
  const finished = (runId: string, timeoutMs = 120_000) => {
    let last = "";
    return waitFor(
      async () => {
        const run = await ok(node(0), "GET", `/v1/runs/${runId}`);
        last = JSON.stringify(run);
        return TERMINAL.includes(run.status) && run;
      },
      { what: () => `run ${runId} to end (last seen: ${last})`, timeoutMs },
    );
  };
  /** Waits until the run logged `line` and returns the node its attempt runs on. */
  const runningOn = async (runId: string, line = "tick") => {
    await waitFor(
      async () => (await events(runId)).some((e) => e.type === "log" && (e.data as { line: string }).line === line),
      { what: `run ${runId} to print ${line}` },
    );
    const on = await c.nodeOf(runId);
    assert.ok(on, `run ${runId} names a node of the cluster`);
    return on;
  };
  const mounted = (n: ClusterNode, runId: string, attempt: number) =>
    existsSync(n.runDir) && readdirSync(n.runDir).includes(`${runId.replace(/_/g, "-")}-${attempt}`);
  /** The run's events are numbered 1..n without a gap. */
  const assertUnbroken = (list: RunEvent[]) =>
    assert.deepEqual(
      list.map((e) => e.seq),
      list.map((_, i) => i + 1),
      "the event sequence is unbroken",
    );
  const cancelAll = async (ids: string[]) => {
    for (const id of ids) await c.api(node(0), "POST", `/v1/runs/${id}/cancel`, {});
    for (const id of ids) await finished(id);
  };

  it("spreads runs over the nodes, each holding at most its --max-runs", async () => {
    const id = await agent({ command: FIRST_ATTEMPT_HANGS });
    const runs = await Promise.all(Array.from({ length: 3 * MAX_RUNS }, () => trigger(id)));
    const placed = await Promise.all(runs.map((r) => runningOn(r)));
    const counts = new Map<string, number>();
    for (const n of placed) counts.set(n.id, (counts.get(n.id) ?? 0) + 1);
    assert.deepEqual(
      [...counts.entries()].sort(),
      c.nodes.map((n) => [n.id, MAX_RUNS]),
      "every node runs its share",
    );
    const listed = await ok(node(2), "GET", "/v1/nodes");
    assert.deepEqual(
      listed.data.map((n: { id: string; live: boolean; active_runs: number }) => [n.id, n.live, n.active_runs]),
      c.nodes.map((n) => [n.id, true, MAX_RUNS]),
    );
    await cancelAll(runs);
  });

  it("follows on node B, live, the events of a run node A executes, and cancels it from node C", async () => {
    const id = await agent({ command: FIRST_ATTEMPT_HANGS });
    const runId = await trigger(id);
    const a = await runningOn(runId);
    const [b, far] = c.nodes.filter((n) => n !== a) as [ClusterNode, ClusterNode];
    const res = await fetch(`${b.url}/v1/runs/${runId}/events`, {
      headers: { authorization: `Bearer ${c.adminKey}`, accept: "text/event-stream" },
    });
    assert.equal(res.status, 200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = "";
    const arrivals: { seq: number; at: number }[] = [];
    const readUntil = async (done: () => boolean) => {
      while (!done()) {
        const { value, done: ended } = await reader.read();
        if (ended) return;
        text += decoder.decode(value, { stream: true });
        for (const m of text.matchAll(/^id: (\d+)$/gm)) {
          const seen = Number(m[1]);
          if (!arrivals.some((x) => x.seq === seen)) arrivals.push({ seq: seen, at: Date.now() });
        }
      }
    };
    // Ticks written on A after the stream opened arrive on B while the run goes on.
    const opened = arrivals.length;
    await readUntil(() => arrivals.length >= opened + 10);
    assert.ok(arrivals.length >= opened + 10, text.slice(-500));
    const live = (await ok(b, "GET", `/v1/runs/${runId}`)).status;
    assert.equal(live, "running", "the events arrived while the run ran");

    // Cancel through the third node: the owner stops the run and kills its sandbox.
    await ok(far, "POST", `/v1/runs/${runId}/cancel`, {});
    await readUntil(() => /event: run\.canceled/.test(text));
    assert.match(text, /event: run\.canceled/, "B's stream saw the run end");
    const ended = await finished(runId);
    assert.deepEqual([ended.status, ended.reason], ["canceled", "canceled"]);
    await waitFor(() => !mounted(a, runId, 1), { what: "the owner to remove the sandbox", timeoutMs: 10_000 });
    const list = await events(runId, b);
    assertUnbroken(list);
    assert.deepEqual(
      arrivals.map((x) => x.seq),
      list.map((e) => e.seq).filter((s) => s >= (arrivals[0]?.seq ?? 1)),
      "B streamed every event, in order",
    );
    await reader.cancel();
  });

  it("retries a killed node's runs on the others, never twice at once, events unbroken", async () => {
    const id = await agent({ command: FIRST_ATTEMPT_HANGS, retry: RETRY_LOST });
    const runs = await Promise.all(Array.from({ length: 3 * MAX_RUNS }, () => trigger(id)));
    const placed = await Promise.all(runs.map((r) => runningOn(r)));
    const victim = node(1);
    const doomed = runs.filter((_, i) => placed[i] === victim);
    assert.equal(doomed.length, MAX_RUNS, "the victim runs its share");
    // One run of each other node ends, so each has a slot for a retry; the other goes on untouched.
    const others = runs.filter((r) => !doomed.includes(r));
    const survivors = c.nodes
      .filter((n) => n !== victim)
      .map((n) => others.find((r) => placed[runs.indexOf(r)] === n) as string);
    await cancelAll(others.filter((r) => !survivors.includes(r)));
    const before = await nodeProcesses(victim);
    assert.ok(before.length > 0, "the victim's sandboxes are its processes");

    const killedAt = Date.now();
    await c.kill(victim);
    // Its sandboxes die with it (bwrap --die-with-parent), before the lease lapses.
    const goneAt = await waitFor(() => before.every((pid) => !existsSync(`/proc/${pid}`)) && Date.now(), {
      what: "the killed node's sandbox processes to exit",
      timeoutMs: LEASE_MS,
      intervalMs: 10,
    });
    for (const runId of doomed) {
      const ended = await finished(runId, 30_000);
      assert.deepEqual([ended.status, ended.reason, ended.attempt], ["succeeded", "completed", 2], runId);
      const list = await events(runId, node(2));
      assertUnbroken(list);
      const started = list.filter((e) => e.type === "attempt.started");
      assert.equal(started.length, 2, "one retry, no more");
      const retry = started[1] as RunEvent & { data: { worker: string } };
      assert.notEqual(retry.data.worker, victim.id, "another node ran the retry");
      assert.ok(Date.parse(retry.time) > goneAt, "the retry started after the first attempt's processes were gone");
      // The lease was renewed at most a third of it before the kill: it lapsed two thirds of it after.
      assert.ok(Date.parse(retry.time) - killedAt >= (LEASE_MS * 2) / 3 - 100, "recovered once the lease lapsed");
      const lost = list.find((e) => e.type === "attempt.lost");
      assert.equal(lost?.attempt, 1, "the first attempt is recorded lost");
      assert.ok(
        list.filter((e) => e.attempt === 1).every((e) => e.seq < retry.seq),
        "nothing of the first attempt after the retry began",
      );
    }
    // The survivors were never touched: still their first attempt, still running.
    for (const runId of survivors) {
      const run = await ok(node(0), "GET", `/v1/runs/${runId}`);
      assert.deepEqual([run.status, run.attempt], ["running", 1], runId);
    }
    await cancelAll(survivors);
    // The node comes back under its id, with nothing of its old sandboxes left.
    await c.restart(victim);
    for (const runId of doomed) assert.ok(!mounted(victim, runId, 1), "the restarted node swept its old sandboxes");
    const listed = await ok(node(0), "GET", "/v1/nodes");
    assert.equal(listed.data.find((n: { id: string }) => n.id === victim.id)?.live, true);
  });

  it("refuses the late writes of a node paused past its lease, and kills its sandbox", async () => {
    const id = await agent({ command: FIRST_ATTEMPT_HANGS, retry: RETRY_LOST });
    const runId = await trigger(id);
    const paused = await runningOn(runId);
    paused.child?.kill("SIGSTOP");
    let resumed = false;
    try {
      const retried = await waitFor(
        async () => {
          const started = (await events(runId, node(paused === node(0) ? 1 : 0))).filter(
            (e) => e.type === "attempt.started" && e.attempt === 2,
          );
          return started[0];
        },
        { what: "another node to retry the paused node's run", timeoutMs: 30_000 },
      );
      // The sandbox kept printing while its node slept: those lines are now the late writes.
      paused.child?.kill("SIGCONT");
      resumed = true;
      await waitFor(() => !mounted(paused, runId, 1), {
        what: "the paused node to kill its sandbox",
        timeoutMs: LEASE_MS * 2,
      });
      await waitFor(() => paused.logs.some((l) => l.includes(`run ${runId}: attempt 1 lost its lease`)), {
        what: "the paused node to log the lost lease",
      });
      const ended = await finished(runId);
      assert.deepEqual([ended.status, ended.attempt], ["succeeded", 2]);
      const list = await events(runId);
      assertUnbroken(list);
      assert.ok(
        list.filter((e) => e.attempt === 1).every((e) => e.seq < retried.seq),
        "nothing the first attempt wrote after the takeover was recorded",
      );
      assert.notEqual((retried as RunEvent & { data: { worker: string } }).data.worker, paused.id);
    } finally {
      if (!resumed) paused.child?.kill("SIGCONT");
    }
  });

  it("makes one run of one idempotency key and of one cron slot, with three nodes racing", async () => {
    const id = await agent({ command: ["true"] });
    const key = `race-${process.pid}`;
    const answers = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        fetch(`${node(i % 3).url}/v1/agents/${id}/runs`, {
          method: "POST",
          headers: {
            authorization: `Bearer ${c.adminKey}`,
            "content-type": "application/json",
            "idempotency-key": key,
          },
          body: "{}",
        }).then(async (r) => ({ status: r.status, id: ((await r.json()) as { id: string }).id })),
      ),
    );
    assert.equal(new Set(answers.map((a) => a.id)).size, 1, JSON.stringify(answers));
    assert.equal(answers.filter((a) => a.status === 201).length, 1, "one answer made the run");
    assert.ok(answers.every((a) => a.status === 201 || a.status === 200));

    // A schedule every second; whichever node leads fires it, the store keeps each slot once.
    const scheduled = await agent({ command: ["true"] });
    const schedule = await ok(node(1), "POST", "/v1/schedules", { agent: scheduled, cron: "* * * * * *" });
    const fired = await waitFor(
      async () => {
        const list = (await ok(node(2), "GET", `/v1/runs?agent_id=${scheduled}&limit=100`)).data;
        return list.length >= 4 && list;
      },
      { what: "four slots to fire" },
    );
    await ok(node(0), "POST", `/v1/schedules/${schedule.id}/pause`);
    const slots: string[] = [];
    for (const run of fired as { id: string }[]) {
      const list = await events(run.id);
      const slot = list.find((e) => e.type === "schedule.fired")?.data as { slot: string } | undefined;
      assert.ok(slot, `run ${run.id} names its slot`);
      slots.push(slot.slot);
    }
    assert.equal(new Set(slots).size, slots.length, `one run per slot: ${slots.join(", ")}`);
    for (const run of fired as { id: string }[]) await finished(run.id);
  });

  it("boots on every node a runner published through one: the others build it from its shared sources", async () => {
    const bundle = await readFile(new URL("../../../runner/dist/runner.mjs", import.meta.url), "utf8");
    const form = new FormData();
    form.set("bundle", new Blob([`${bundle}\n// published-on-node-0\n`]), "runner.mjs");
    const res = await fetch(`${node(0).url}/v1/runners`, {
      method: "POST",
      headers: { authorization: `Bearer ${c.adminKey}` },
      body: form,
    });
    assert.equal(res.status, 201, await res.clone().text());
    const published = (await res.json()) as { digest: string };
    const id = await agent({ command: ["sh", "-c", "tail -n 1 /opt/paddock/runner/runner.mjs; sleep 2"] });
    const runs = await Promise.all(Array.from({ length: 3 * MAX_RUNS }, () => trigger(id)));
    const seen = new Map<string, string[]>();
    for (const runId of runs) {
      const ended = await finished(runId);
      assert.equal(ended.status, "succeeded", JSON.stringify(ended));
      const lines = (await events(runId)).filter((e) => e.type === "log").map((e) => (e.data as { line: string }).line);
      const on = (await c.nodeOf(runId))?.id ?? "none";
      seen.set(on, [...(seen.get(on) ?? []), ...lines]);
    }
    assert.deepEqual([...seen.keys()].sort(), c.nodes.map((n) => n.id).sort(), "every node ran the agent");
    for (const [on, lines] of seen) {
      assert.ok(
        lines.every((l) => l === "// published-on-node-0"),
        `${on} mounted the published bundle: ${lines.join(", ")}`,
      );
    }
    for (const n of c.nodes.slice(1)) {
      assert.ok(
        n.logs.some((l) => l.includes(`built runner ${published.digest} here from its shared sources`)),
        `${n.id} built the runner from the blob store`,
      );
    }
  });

  it("serves an edit session through any node, and boots and exports its frozen environment on nodes that never had it", async () => {
    const id = await agent({ command: ["sh", "-c", "cat /opt/mark; sleep 2"] });
    const opened = await c.api(node(1), "POST", `/v1/agents/${id}/env/session`, {});
    assert.equal(opened.status, 201, JSON.stringify(opened.body));
    // Node 2 passes the command to node 1, which holds the session.
    const wrote = await ok(node(2), "POST", `/v1/agents/${id}/env/session/exec`, {
      argv: ["sh", "-c", "echo frozen-on-node-1 > /opt/mark && chmod 644 /opt/mark && cat /opt/mark"],
    });
    assert.equal(wrote.stdout, "frozen-on-node-1\n");
    const frozen = await c.api(node(0), "POST", `/v1/agents/${id}/env/freeze`, {});
    assert.equal(frozen.status, 201, JSON.stringify(frozen.body));
    const version = (await ok(node(0), "GET", `/v1/agents/${id}`)).snapshot.version as number;

    // Node 2 never had the layer: it fetches it from the blob store to export it.
    const exported = await fetch(`${node(2).url}/v1/agents/${id}/snapshots/${version}/export?include_base=false`, {
      headers: { authorization: `Bearer ${c.adminKey}` },
    });
    assert.equal(exported.status, 200, await exported.clone().text());
    assert.ok((await exported.arrayBuffer()).byteLength > 0);

    const runs = await Promise.all(Array.from({ length: 3 * MAX_RUNS }, () => trigger(id)));
    const seen = new Set<string>();
    for (const runId of runs) {
      const ended = await finished(runId);
      assert.equal(ended.status, "succeeded", JSON.stringify(ended));
      const lines = (await events(runId)).filter((e) => e.type === "log").map((e) => (e.data as { line: string }).line);
      assert.deepEqual(lines, ["frozen-on-node-1"]);
      seen.add((await c.nodeOf(runId))?.id ?? "none");
    }
    assert.equal(seen.size, 3, "every node booted the frozen environment");
  });

  it("takes the lead from a paused leader, so schedules keep firing, each slot once", async () => {
    const db = new pg.Client({ connectionString: c.databaseUrl });
    await db.connect();
    try {
      const leaderNode = async () => {
        const { rows } = await db.query(
          `SELECT a.application_name AS name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = $1::bigint`,
          [LEADER_LOCK_KEY.toString()],
        );
        return c.nodes.find((n) => rows[0]?.name === `paddock-node:${n.id}`);
      };
      const id = await agent({ command: ["true"] });
      const schedule = await ok(node(0), "POST", "/v1/schedules", { agent: id, cron: "* * * * * *" });
      const stuck = await waitFor(leaderNode, { what: "a node to lead" });
      const other = c.nodes.find((n) => n !== stuck) as ClusterNode;
      const count = async () => (await ok(other, "GET", `/v1/runs?agent_id=${id}&limit=200`)).data.length as number;
      stuck.child?.kill("SIGSTOP");
      let resumed = false;
      try {
        const next = await waitFor(async () => (await leaderNode()) !== stuck && leaderNode(), {
          what: "another node to take the lead",
          timeoutMs: LEASE_MS * 5,
        });
        assert.notEqual(next?.id, stuck.id);
        const before = await count();
        await waitFor(async () => (await count()) >= before + 2, { what: "the schedule to fire under the new leader" });
      } finally {
        stuck.child?.kill("SIGCONT");
        resumed = true;
      }
      assert.ok(resumed);
      await ok(other, "POST", `/v1/schedules/${schedule.id}/pause`);
      const runs = (await ok(other, "GET", `/v1/runs?agent_id=${id}&limit=200`)).data as { id: string }[];
      const slots: string[] = [];
      for (const run of runs) {
        const fired = (await events(run.id, other)).find((e) => e.type === "schedule.fired")?.data as { slot: string };
        slots.push(fired.slot);
        await finished(run.id);
      }
      assert.equal(new Set(slots).size, slots.length, `one run per slot: ${slots.join(", ")}`);
      // The paused node lives on: it heartbeats again and serves.
      await waitFor(async () => (await c.api(stuck, "GET", "/v1/health")).status === 200, {
        what: "the paused node to answer",
      });
    } finally {
      await db.end();
    }
  });

  describe("with a model provider", () => {
    let stand: LlmStandIn;
    before(async () => {
      stand = await startLlmStandIn();
      await ok(node(0), "PUT", "/v1/secrets/openai-key", { value: `sk-${process.pid}` });
      await ok(node(0), "PUT", "/v1/providers/local-openai", {
        kind: "openai_compatible",
        base_url: `${stand.url}/v1`,
        secret: "openai-key",
        models: { "gpt-test": { input: 3, output: 15, max_output_tokens: 1000 } },
      });
      await ok(node(0), "POST", "/v1/credits/grants", { tenant: "default", credits: 1000 });
    });
    after(async () => {
      await stand?.close();
    });

    it("holds one agent's budget against 102 concurrent calls from runs on all three nodes", async () => {
      // About 35 calls' worth for the agent's whole life; six runs, two on each node, 17 calls each.
      const budget = 0.005;
      const id = await agent({
        command: ["/opt/paddock/runner/node", "/app/flood.mjs"],
        files: { "flood.mjs": FLOOD_AGENT },
        budget: { total: budget },
      });
      // Each run waits before calling, so all six are placed before any ends.
      const runs = await Promise.all(
        Array.from({ length: 3 * MAX_RUNS }, () => trigger(id, { count: 17, delay_ms: 1500 })),
      );
      const ended = await Promise.all(runs.map((r) => finished(r)));
      const workers = new Set<string>();
      const calls: { status?: number; code?: string; cost?: number }[] = [];
      for (const run of ended) {
        workers.add((await c.nodeOf(run.id))?.id ?? "none");
        for (const e of await events(run.id)) if (e.type === "llm.call") calls.push(e.data as (typeof calls)[number]);
      }
      assert.equal(workers.size, 3, "the calls came from runs on every node");
      const credits = await ok(node(2), "GET", "/v1/credits");
      const spent = credits.agents.find((a: { agent_id: string }) => a.agent_id === id);
      assert.ok(spent.spent <= budget, `spent ${spent.spent} of ${budget}`);
      assert.equal(spent.reserved, 0, "every reservation was settled or released");
      const served = calls.filter((call) => call.status === 200);
      assert.ok(served.length > 0 && served.length < 102, `${served.length} calls served`);
      const charged = served.reduce((sum, call) => sum + (call.cost ?? 0), 0);
      assert.ok(Math.abs(charged - spent.spent) < 1e-9, `the calls' costs (${charged}) are what was spent`);
      assert.ok(
        calls.some((call) => call.code === "out_of_credits"),
        "calls past the budget were refused",
      );
    });
  });
});
