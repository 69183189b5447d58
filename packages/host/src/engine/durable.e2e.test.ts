/**
 * Durable runs through a real host: retries per policy with backoff, idempotent API triggers under
 * concurrent identical requests, queue expiry, per-agent concurrency, and fair turns between
 * tenants so that one tenant's flood does not starve another.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { isEvent } from "@paddock/protocol";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { forEachStore } from "../testing/stores.ts";

forEachStore((store) =>
  describe(`durable runs on ${store.name}`, { skip: e2eSkip(hostSkipReason()) || store.skip }, () => {
    let t: TestHost;
    before(async () => {
      t = await startTestHost({ maxConcurrentRuns: 2, ...(await store.hostConfig()) });
    });
    after(async () => {
      await t?.close();
    });

    const create = async (body: Record<string, unknown>, key?: string) => {
      const res = await t.api("POST", "/v1/agents", body, key);
      assert.equal(res.status, 201, JSON.stringify(res.body));
      return res.body as { id: string };
    };
    const trigger = async (agentId: string, input: unknown = {}, key?: string, headers: Record<string, string> = {}) =>
      t.api("POST", `/v1/agents/${agentId}/runs`, { input }, key, headers);

    it("retries the exit codes its policy names, with backoff, each attempt in a fresh sandbox", async () => {
      const { run, events } = await runAgent(t, {
        name: uniqueName("flaky"),
        // Leaves a file in its writable layer: a retry that reused the sandbox would find it.
        command: ["sh", "-c", 'test -e /tmp/seen && exit 9; touch /tmp/seen; [ "$PADDOCK_ATTEMPT" -ge 3 ] || exit 75'],
        retry: { max_attempts: 4, backoff_s: 0.2, jitter: 0, exit_codes: [75], on: [] },
      });
      assert.equal(run.status, "succeeded", JSON.stringify(events.slice(-4)));
      assert.equal(run.attempt, 3);
      const retries = events.filter(isEvent("retry.scheduled")).map((e) => e.data);
      assert.deepEqual(
        retries.map((r) => [r.reason, r.exit_code, r.attempt, r.delay_ms]),
        [
          ["exit_code", 75, 2, 200],
          ["exit_code", 75, 3, 400],
        ],
      );
      // The backoff held: attempt 3 started at least 400 ms after attempt 2 finished.
      const finished2 = events.filter(isEvent("attempt.finished")).find((e) => e.attempt === 2);
      const started3 = events.filter(isEvent("attempt.started")).find((e) => e.attempt === 3);
      assert.ok(started3 && finished2 && Date.parse(started3.time) - Date.parse(finished2.time) >= 400);
    });

    it("does not retry what its policy leaves out, and fails on the last attempt", async () => {
      const { run, events } = await runAgent(t, {
        name: uniqueName("broken"),
        command: ["sh", "-c", "exit 3"],
        retry: { max_attempts: 2, backoff_s: 0, exit_codes: [3] },
      });
      assert.deepEqual([run.status, run.reason, run.exit_code, run.attempt], ["failed", "exit_code", 3, 2]);
      assert.equal(events.filter(isEvent("retry.scheduled")).length, 1);
      const other = await runAgent(t, {
        name: uniqueName("unlisted"),
        command: ["sh", "-c", "exit 4"],
        retry: { max_attempts: 3, exit_codes: [3], on: ["oom"] },
      });
      assert.deepEqual([other.run.status, other.run.attempt], ["failed", 1]);
    });

    it("answers concurrent identical requests with one Idempotency-Key with exactly one run", async () => {
      const agent = await create({ name: uniqueName("idem"), command: ["true"] });
      const headers = { "idempotency-key": `order-${uniqueName("k")}` };
      const answers = await Promise.all(
        Array.from({ length: 12 }, () => trigger(agent.id, { n: 1 }, undefined, headers)),
      );
      const ids = new Set(answers.map((a) => a.body.id));
      assert.equal(ids.size, 1, "one run for every answer");
      assert.deepEqual(
        answers.map((a) => a.status).sort((a, b) => a - b),
        [...Array(11).fill(200), 201],
      );
      assert.ok(answers.filter((a) => a.status === 200).every((a) => a.headers.get("idempotent-replayed") === "true"));
      const runs = await t.api("GET", `/v1/runs?agent_id=${agent.id}`);
      assert.equal(runs.body.data.length, 1);
      // The same key with another input is a mistake, not a new run.
      const reused = await trigger(agent.id, { n: 2 }, undefined, headers);
      assert.equal(reused.status, 422);
      assert.equal(reused.body.error.code, "idempotency_key_reused");
      const bad = await trigger(agent.id, {}, undefined, { "idempotency-key": "has space" });
      assert.equal(bad.status, 400);
      // Another tenant's identical key is its own.
      await t.api("POST", "/v1/tenants", { name: "idem-other" });
      const otherKey = (await t.api("POST", "/v1/tenants/idem-other/keys", {})).body.key as string;
      const theirs = await create({ name: "same-agent", command: ["true"] }, otherKey);
      const fresh = await trigger(theirs.id, { n: 1 }, otherKey, headers);
      assert.equal(fresh.status, 201);
      await waitForRun(t, fresh.body.id, otherKey);
    });

    it("expires a run that waited in the queue past its time to live", async () => {
      const blocker = await create({ name: uniqueName("block"), command: ["sleep", "30"] });
      const blocks = [await trigger(blocker.id), await trigger(blocker.id)];
      const waiting = await create({ name: uniqueName("ttl"), command: ["true"], queue_ttl_s: 1 });
      const queued = await trigger(waiting.id);
      const done = await waitForRun(t, queued.body.id, undefined, 20_000);
      assert.deepEqual([done.status, done.reason, done.attempt], ["failed", "expired", 0]);
      for (const b of blocks) await t.api("POST", `/v1/runs/${b.body.id}/cancel`);
      for (const b of blocks) await waitForRun(t, b.body.id);
    });

    it("keeps an agent to its max_concurrent_runs", async () => {
      const agent = await create({
        name: uniqueName("single"),
        command: ["sh", "-c", "sleep 0.3"],
        max_concurrent_runs: 1,
      });
      const runs = await Promise.all([trigger(agent.id), trigger(agent.id), trigger(agent.id)]);
      const done = await Promise.all(runs.map((r) => waitForRun(t, r.body.id)));
      const spans = done
        .map((r) => [Date.parse(r.started_at), Date.parse(r.finished_at)] as const)
        .sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < spans.length; i++) {
        assert.ok((spans[i]?.[0] ?? 0) >= (spans[i - 1]?.[1] ?? 0), `runs overlapped: ${JSON.stringify(spans)}`);
      }
    });

    it("gives another tenant its turn while one tenant has 200 runs queued", async () => {
      await t.api("POST", "/v1/tenants", { name: "flooder" });
      await t.api("POST", "/v1/tenants", { name: "quiet" });
      const flooder = (await t.api("POST", "/v1/tenants/flooder/keys", {})).body.key as string;
      const quiet = (await t.api("POST", "/v1/tenants/quiet/keys", {})).body.key as string;
      const flood = await create({ name: "flood", command: ["sh", "-c", "sleep 0.05"] }, flooder);
      const queued: string[] = [];
      for (let i = 0; i < 200; i++) queued.push((await trigger(flood.id, { i }, flooder)).body.id);
      const lone = await create({ name: "lone", command: ["true"] }, quiet);
      const mine = await trigger(lone.id, {}, quiet);
      const done = await waitForRun(t, mine.body.id, quiet, 60_000);
      assert.equal(done.status, "succeeded");
      // Started within its fair share: at most a couple of the flood's runs were claimed after it was queued.
      const flooded = (await t.api("GET", `/v1/runs?agent_id=${flood.id}&limit=200`, undefined, flooder)).body.data as {
        started_at: string | null;
      }[];
      const before = flooded.filter(
        (r) => r.started_at !== null && Date.parse(r.started_at) < Date.parse(done.started_at),
      );
      const queuedAt = Date.parse(mine.body.created_at);
      const claimedAfter = before.filter((r) => Date.parse(r.started_at as string) > queuedAt).length;
      assert.ok(claimedAfter <= 2, `${claimedAfter} flood runs were claimed ahead of the other tenant's`);
      assert.ok(flooded.filter((r) => r.started_at === null).length > 100, "the flood was still queued");
      // Clear the flood.
      for (const id of queued) await t.api("POST", `/v1/runs/${id}/cancel`, undefined, flooder);
    });
  }),
);
