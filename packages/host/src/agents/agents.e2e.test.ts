/**
 * Agent versions and deletion through a real host: an update saves the next version while runs
 * already queued keep theirs; an invalid update changes nothing; a deleted (archived) agent lets
 * its runs going finish, stays readable, and refuses new runs from every trigger with
 * agent_archived.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { waitFor } from "../testing/wait.ts";
import { signDelivery } from "../triggers/webhooks.ts";

/** Prints which version of the script ran, after sleeping the input's `sleep` seconds. */
const script = (version: number) =>
  [
    "import json, time",
    "time.sleep(json.load(open('/inputs/input.json')).get('sleep', 0))",
    `print('script-v${version}', flush=True)`,
  ].join("\n");

describe("agent versions and deletion", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  before(async () => {
    t = await startTestHost({ schedulerTickMs: 0 });
  });
  after(async () => {
    await t?.close();
  });

  const expectError = (res: { status: number; body: { error?: { code: string } } }, status: number, code: string) => {
    assert.equal(res.status, status, JSON.stringify(res.body));
    assert.equal(res.body.error?.code, code);
  };
  const create = async (body: Record<string, unknown>) => {
    const res = await t.api("POST", "/v1/agents", body);
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return res.body;
  };
  const trigger = async (agentId: string, input: unknown = {}) => {
    const res = await t.api("POST", `/v1/agents/${agentId}/runs`, { input });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return res.body;
  };
  const waitStatus = (runId: string, status: string) =>
    waitFor(async () => (await t.api("GET", `/v1/runs/${runId}`)).body.status === status, {
      what: `run ${runId} to be ${status}`,
      timeoutMs: 120_000,
      intervalMs: 50,
    });
  const printed = async (runId: string) =>
    (await t.api("GET", `/v1/runs/${runId}/events`)).body.data
      .filter((e: { type: string }) => e.type === "log")
      .map((e: { data: { line: string } }) => e.data.line);

  it("describes the update and delete routes in the OpenAPI document", async () => {
    const doc = (await t.api("GET", "/v1/openapi.json", undefined, null)).body;
    const path = doc.paths["/v1/agents/{id}"];
    assert.ok(path.patch && path.put && path.delete && path.get);
    assert.match(path.patch.summary, /JSON merge patch \(RFC 7396\)/);
    assert.equal(doc.components.schemas.AgentUpdate.required, undefined, "every field of an update is optional");
    assert.ok(doc.components.schemas.Agent.properties.archived_at);
    assert.ok(doc.components.schemas.Run.properties.agent_version);
  });

  it("an update saves version 2; a run queued before it keeps version 1, its spec and its files", async () => {
    const agent = await create({
      name: uniqueName("versioned"),
      command: ["python3", "main.py"],
      files: { "main.py": script(1) },
      max_concurrent_runs: 1,
      limits: { memory_mb: 256 },
    });
    assert.equal(agent.version, 1);
    assert.equal(agent.archived_at, null);
    const running = await trigger(agent.id, { sleep: 600 });
    await waitStatus(running.id, "running");
    // The agent runs one at a time: this one waits in the queue through the update.
    const queued = await trigger(agent.id);
    assert.deepEqual([queued.status, queued.agent_version], ["queued", 1]);

    const updated = await t.api("PATCH", `/v1/agents/${agent.id}`, {
      files: { "main.py": script(2) },
      limits: { timeout_s: 300 },
    });
    assert.equal(updated.status, 200, JSON.stringify(updated.body));
    assert.equal(updated.body.version, 2);
    // Limits merge key by key; the files are a new environment version.
    assert.deepEqual([updated.body.limits.memory_mb, updated.body.limits.timeout_s], [256, 300]);
    assert.equal(updated.body.snapshot.version, 2);
    const history = (await t.api("GET", `/v1/agents/${agent.id}/snapshots`)).body.data;
    assert.deepEqual(
      history.map((s: { version: number; reason: string }) => [s.version, s.reason]),
      [
        [2, "update"],
        [1, "create"],
      ],
    );
    assert.notDeepEqual(history[0].layers, history[1].layers);
    const next = await trigger(agent.id);
    assert.equal(next.agent_version, 2);

    await t.api("POST", `/v1/runs/${running.id}/cancel`, {});
    const first = await waitForRun(t, queued.id);
    const second = await waitForRun(t, next.id);
    assert.deepEqual([first.status, first.agent_version], ["succeeded", 1]);
    assert.deepEqual([second.status, second.agent_version], ["succeeded", 2]);
    assert.deepEqual(await printed(first.id), ["script-v1"]);
    assert.deepEqual(await printed(second.id), ["script-v2"]);

    // The same definition again saves nothing new.
    const same = await t.api("PATCH", `/v1/agents/${agent.id}`, { files: { "main.py": script(2) } });
    assert.deepEqual([same.status, same.body.version, same.body.snapshot.version], [200, 2, 2]);
  });

  it("a run retried after an update runs its next attempt with the version it was triggered with", async () => {
    const agent = await create({
      name: uniqueName("retried"),
      command: ["sh", "-c", "echo one; exit 3"],
      retry: { max_attempts: 2, on: ["exit_code"], backoff_s: 5, jitter: 0 },
    });
    const run = await trigger(agent.id);
    await waitFor(
      async () =>
        (await t.api("GET", `/v1/runs/${run.id}/events`)).body.data.some(
          (e: { type: string }) => e.type === "retry.scheduled",
        ),
      { what: "the first attempt to be retried", timeoutMs: 120_000, intervalMs: 50 },
    );
    const updated = await t.api("PATCH", `/v1/agents/${agent.id}`, { command: ["sh", "-c", "echo two"] });
    assert.equal(updated.body.version, 2);
    const done = await waitForRun(t, run.id);
    assert.deepEqual([done.status, done.attempt, done.agent_version], ["failed", 2, 1]);
    assert.deepEqual(await printed(run.id), ["one", "one"]);
  });

  it("an invalid update changes nothing, with a code and a message naming what is wrong", async () => {
    await t.api("PUT", "/v1/connections/known", {
      base_url: "https://api.example.com",
      auth: { type: "none" },
      policy: { allow: [{ methods: ["GET"], path: "/**" }] },
    });
    const agent = await create({ name: uniqueName("steady"), command: ["true"], env: { A: "1" } });
    const bad: [unknown, number, string, RegExp][] = [
      [{ model: "m" }, 400, "validation_failed", /model: only for the built-in agent/],
      [{ instructions: "help" }, 400, "validation_failed", /model: the built-in agent needs a model/],
      [{ command: ["true"], instructions: "x", model: "m" }, 400, "validation_failed", /command: give either/],
      [{ name: "renamed" }, 400, "validation_failed", /name: an agent's name cannot change/],
      [{ limits: { memory_mb: 1 } }, 400, "validation_failed", /limits\.memory_mb/],
      [{ limits: { memory_mb: 900_000 } }, 400, "validation_failed", /limits\.memory_mb/],
      [{ surprise: 1 }, 400, "validation_failed", /surprise/],
      [{ command: ["no-such-tool"] }, 422, "command_not_found", /no-such-tool/],
      [{ policy: { connections: ["known", "unknown"] } }, 422, "unknown_connection", /unknown/],
      [{ files: { "../escape": "x" } }, 400, "validation_failed", /files/],
    ];
    for (const [body, status, code, message] of bad) {
      const res = await t.api("PATCH", `/v1/agents/${agent.id}`, body);
      expectError(res, status, code);
      assert.match(res.body.error.message, message, JSON.stringify(body));
    }
    const after = (await t.api("GET", `/v1/agents/${agent.id}`)).body;
    assert.deepEqual(after, agent);
    // A valid one after all that is version 2, with what it names replaced and the rest kept.
    const ok = await t.api("PATCH", `/v1/agents/${agent.id}`, {
      name: agent.name,
      policy: { connections: ["known"] },
      queue_ttl_s: 60,
    });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.deepEqual(
      [ok.body.version, ok.body.policy.connections, ok.body.queue_ttl_s, ok.body.env, ok.body.command],
      [2, ["known"], 60, { A: "1" }, ["true"]],
    );
    // null clears a bound; a built-in agent replaces the command.
    const cleared = await t.api("PATCH", `/v1/agents/${agent.id}`, { queue_ttl_s: null });
    assert.deepEqual([cleared.body.version, cleared.body.queue_ttl_s], [3, null]);
    const builtin = await t.api("PATCH", `/v1/agents/${agent.id}`, { instructions: "Say hi.", model: "some-model" });
    assert.equal(builtin.status, 200, JSON.stringify(builtin.body));
    assert.deepEqual([builtin.body.version, builtin.body.builtin.model], [4, "some-model"]);
    expectError(await t.api("PATCH", "/v1/agents/agt_00000000000000000000000000", {}), 404, "not_found");
  });

  it("deleting an agent lets its runs going finish, keeps it readable and refuses every new run", async () => {
    const name = uniqueName("retired");
    const agent = await create({
      name,
      command: ["python3", "main.py"],
      files: { "main.py": script(1) },
      max_concurrent_runs: 1,
    });
    const hook = (await t.api("POST", `/v1/agents/${agent.id}/webhooks`)).body;
    const schedule = (await t.api("POST", "/v1/schedules", { agent: agent.id, cron: "* * * * *" })).body;
    // Long enough to be going when the agent is deleted (which the test does not depend on): both
    // runs were triggered before the delete, so both finish.
    const running = await trigger(agent.id, { sleep: 3 });
    await waitStatus(running.id, "running");
    const queued = await trigger(agent.id);

    const deleted = await t.api("DELETE", `/v1/agents/${agent.id}`);
    assert.equal(deleted.status, 200, JSON.stringify(deleted.body));
    assert.ok(deleted.body.archived_at);
    expectError(await t.api("POST", `/v1/agents/${agent.id}/runs`, {}), 409, "agent_archived");
    assert.equal((await waitForRun(t, running.id)).status, "succeeded");
    assert.equal((await waitForRun(t, queued.id)).status, "succeeded");
    assert.deepEqual(await printed(queued.id), ["script-v1"]);

    // Readable: the agent, its runs and their events; listed only when asked for.
    assert.equal((await t.api("GET", `/v1/agents/${agent.id}`)).body.archived_at, deleted.body.archived_at);
    assert.deepEqual((await t.api("GET", `/v1/agents?name=${name}`)).body.data, []);
    const listed = (await t.api("GET", `/v1/agents?name=${name}&archived=true`)).body.data;
    assert.deepEqual(
      listed.map((a: { id: string }) => a.id),
      [agent.id],
    );
    assert.equal((await t.api("GET", `/v1/runs?agent_id=${agent.id}`)).body.data.length, 2);

    // No new runs from the API, a webhook or a schedule; no changes.
    const refused = await t.api("POST", `/v1/agents/${agent.id}/runs`, {});
    expectError(refused, 409, "agent_archived");
    assert.match(refused.body.error.message, new RegExp(`'${name}' was deleted`));
    const ts = String(Math.floor(Date.now() / 1000));
    const body = "{}";
    const delivery = await t.api("POST", hook.path, body, null, {
      "content-type": "application/json",
      "x-paddock-timestamp": ts,
      "x-paddock-delivery": "after-delete",
      "x-paddock-signature": signDelivery(hook.secret, ts, "after-delete", body),
    });
    expectError(delivery, 409, "agent_archived");
    expectError(await t.api("POST", `/v1/agents/${agent.id}/webhooks`), 409, "agent_archived");
    assert.equal((await t.api("GET", `/v1/schedules/${schedule.id}`)).body.paused, true);
    expectError(await t.api("POST", `/v1/schedules/${schedule.id}/resume`, {}), 409, "agent_archived");
    expectError(await t.api("POST", "/v1/schedules", { agent: agent.id, cron: "* * * * *" }), 409, "agent_archived");
    assert.deepEqual(await t.host.scheduler.tick(Date.now() + 3_600_000), []);
    expectError(await t.api("PATCH", `/v1/agents/${agent.id}`, { env: { A: "1" } }), 409, "agent_archived");
    assert.equal((await t.api("GET", `/v1/runs?agent_id=${agent.id}`)).body.data.length, 2);

    // Deleting again changes nothing; the name is free for a new agent.
    const again = await t.api("DELETE", `/v1/agents/${agent.id}`);
    assert.deepEqual([again.status, again.body.archived_at], [200, deleted.body.archived_at]);
    const reborn = await create({ name, command: ["true"] });
    assert.notEqual(reborn.id, agent.id);
    assert.equal((await waitForRun(t, (await trigger(reborn.id)).id)).status, "succeeded");
    expectError(await t.api("POST", "/v1/agents", { name, command: ["true"] }), 409, "conflict");
  });

  it("a session opened before the delete can be discarded but no longer changes the environment", async () => {
    const agent = await create({ name: uniqueName("sealed"), command: ["true"] });
    const opened = await t.api("POST", `/v1/agents/${agent.id}/env/session`, {});
    assert.equal(opened.status, 201, JSON.stringify(opened.body));
    assert.equal((await t.api("DELETE", `/v1/agents/${agent.id}`)).status, 200);
    const base = `/v1/agents/${agent.id}/env`;
    expectError(await t.api("POST", `${base}/session/exec`, { argv: ["touch", "/x"] }), 409, "agent_archived");
    expectError(await t.api("POST", `${base}/freeze`, {}), 409, "agent_archived");
    expectError(await t.api("POST", `/v1/agents/${agent.id}/rollback`, { version: 1 }), 409, "agent_archived");
    assert.equal((await t.api("GET", `${base}/session`)).status, 200);
    assert.equal((await t.api("DELETE", `${base}/session`)).status, 200);
    expectError(await t.api("POST", `${base}/session`, {}), 409, "agent_archived");
    const history = (await t.api("GET", `/v1/agents/${agent.id}/snapshots`)).body.data;
    assert.equal(history.length, 1);
  });

  it("an agent cannot start a child run of a deleted agent", async () => {
    const callee = await create({ name: uniqueName("callee"), command: ["true"] });
    await t.api("DELETE", `/v1/agents/${callee.id}`);
    const caller = await create({
      name: uniqueName("caller"),
      command: ["/opt/paddock/runner/node", "/app/call.mjs"],
      files: {
        "call.mjs": [
          "const { callAgent } = await import(process.env.PADDOCK_SDK);",
          `try { await callAgent(${JSON.stringify(callee.name)}, {}); } catch (e) { console.log(String(e.message)); }`,
        ].join("\n"),
      },
      policy: { agents: [callee.name] },
    });
    const run = await waitForRun(t, (await trigger(caller.id)).id);
    assert.equal(run.status, "succeeded");
    const [line] = await printed(run.id);
    assert.match(line, /agent_archived: The agent '.*' was deleted/);
  });
});
