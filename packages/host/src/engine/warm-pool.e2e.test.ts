/**
 * Warm sandboxes through the whole host: a spare serves an agent's next run with that run's own
 * input, carries nothing over from any earlier run, matches only its own snapshot and limits, and
 * is gone after its idle time and at shutdown.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { waitFor } from "../testing/wait.ts";

const skip = e2eSkip(hostSkipReason());

// biome-ignore lint/suspicious/noExplicitAny: event JSON.
type Ev = { type: string; data: any };

describe("warm sandboxes", { skip }, () => {
  let t: TestHost;
  before(async () => {
    t = await startTestHost({ warmSandboxes: 2, warmIdleMs: 60_000 });
  });
  after(async () => {
    await t?.close();
  });

  const run = async (agentId: string, input: unknown) => {
    const started = await t.api("POST", `/v1/agents/${agentId}/runs`, { input });
    const done = await waitForRun(t, started.body.id);
    const events: Ev[] = (await t.api("GET", `/v1/runs/${done.id}/events`)).body.data;
    return { done, events, warm: events.find((e) => e.type === "run.running")?.data.warm as boolean };
  };
  const waitWarm = (n: number) => waitFor(() => t.host.warmCount === n, { what: `${n} warm sandbox(es)` });

  it("serves the next run of the same agent, with its own input and none of the last run's files", async () => {
    const script = [
      "import json, os",
      "seen = sorted(os.listdir('/tmp')) + sorted(os.listdir('/home/agent')) + sorted(os.listdir('/outputs'))",
      "inp = json.load(open('/inputs/input.json'))",
      "print('::paddock::' + json.dumps({'type': 'seen', 'data': {'input': inp, 'files': seen}}), flush=True)",
      "open('/tmp/left-' + str(inp['n']), 'w').write('x')",
      "open('/home/agent/left', 'w').write('x')",
      "open('/outputs/out-' + str(inp['n']), 'w').write('x')",
    ].join("\n");
    const agent = await t.api("POST", "/v1/agents", {
      name: uniqueName("warm"),
      command: ["python3", "main.py"],
      files: { "main.py": script },
    });
    const first = await run(agent.body.id, { n: 1 });
    assert.equal(first.done.status, "succeeded");
    assert.equal(first.warm, false, "the first run boots cold");
    await waitWarm(1);
    for (const n of [2, 3]) {
      const next = await run(agent.body.id, { n });
      assert.equal(next.done.status, "succeeded", JSON.stringify(next.events.slice(-3)));
      assert.equal(next.warm, true, `run ${n} took the spare`);
      const seen = next.events.find((e) => e.type === "user")?.data.data;
      assert.deepEqual(seen, { input: { n }, files: [] }, "its own input; nothing an earlier run wrote");
      const arts = (await t.api("GET", `/v1/runs/${next.done.id}/artifacts`)).body.data;
      assert.deepEqual(
        arts.map((a: { path: string }) => a.path),
        [`out-${n}`],
      );
      await waitWarm(1);
    }
  });

  it("gives a spare only to a run with the same snapshot and limits", async () => {
    const a = await t.api("POST", "/v1/agents", {
      name: uniqueName("wa"),
      command: ["true"],
      limits: { memory_mb: 256 },
    });
    const b = await t.api("POST", "/v1/agents", {
      name: uniqueName("wb"),
      command: ["true"],
      limits: { memory_mb: 128 },
    });
    assert.equal((await run(a.body.id, null)).warm, false);
    const other = await run(b.body.id, null);
    assert.equal(other.warm, false, "a spare booted with 256 MB is not used for a 128 MB agent");
    // The agent the spare was booted for takes it on its next run.
    assert.equal((await run(a.body.id, null)).warm, true);
  });

  it("is destroyed after its idle time and at shutdown, leaving nothing behind", async () => {
    // The idle time is long enough for the spare to be seen before it goes.
    const short = await startTestHost({ warmSandboxes: 1, warmIdleMs: 3000 });
    const spares = (n: number, what: string) => waitFor(() => short.host.warmCount === n, { what });
    try {
      const agent = await short.api("POST", "/v1/agents", { name: "idle", command: ["true"] });
      const started = await short.api("POST", `/v1/agents/${agent.body.id}/runs`, {});
      await waitForRun(short, started.body.id);
      await spares(1, "the spare booted after the run");
      await spares(0, "the spare to expire");
      // Boot another spare, then shut down while it waits.
      const again = await short.api("POST", `/v1/agents/${agent.body.id}/runs`, {});
      await waitForRun(short, again.body.id);
      await spares(1, "the second spare");
    } finally {
      await short.close();
    }
    const mounts = readFileSync("/proc/mounts", "utf8");
    assert.ok(!mounts.includes(short.runDir), "no mount of the closed host");
  });
});
