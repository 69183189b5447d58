/**
 * Agent versions and deletion over a host's real services without root (testing/no-root-host.ts):
 * an update is a JSON merge patch of the definition and a PUT replaces it whole, both checked as
 * a create is; a deleted (archived) agent changes no more and starts no run, even one whose spec
 * was read before the delete; its history stays readable; the gateway's budget of a run is the
 * one of the version the run froze.
 */
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AppError, WEBHOOK_HEADERS } from "@paddock/protocol";
import { type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { signDelivery } from "../triggers/webhooks.ts";
import { mergePatch, runSpec } from "./agents.ts";

interface Answer {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers.
  body: any;
}

describe("merge patches", () => {
  it("merge objects key by key, remove a key for null and replace arrays and other values", () => {
    const target = { a: { b: 1, c: 2 }, list: [1, 2], keep: "x", gone: 1 };
    assert.deepEqual(mergePatch(target, { a: { b: null, d: 3 }, list: [3], gone: null, added: { e: null } }), {
      a: { c: 2, d: 3 },
      list: [3],
      keep: "x",
      added: {},
    });
    assert.deepEqual(target.a, { b: 1, c: 2 }, "the target is not changed");
    assert.equal(mergePatch({ a: 1 }, "text"), "text");
    assert.deepEqual(mergePatch("text", { a: 1 }), { a: 1 });
  });
});

describe("agent versions and deletion without root", () => {
  let h: NoRootHost;
  let tenant = "";
  let key = "";
  before(async () => {
    h = await startNoRootHost();
    tenant = (await h.services.identity.createTenant("versions")).id;
    key = (await h.services.identity.createTenantKey(tenant, null)).key ?? "";
  });
  after(async () => {
    await h?.close();
  });

  let counter = 0;
  const name = (prefix: string) => `${prefix}-${++counter}`;
  const api = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
    const res = await h.services.app.request(path, {
      method,
      headers: {
        authorization: `Bearer ${key}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        ...headers,
      },
      ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null } as Answer;
  };
  const ok = (res: Answer, status = 200) => {
    assert.equal(res.status, status, JSON.stringify(res.body));
    return res.body;
  };
  const refused = (res: Answer, status: number, code: string) => {
    assert.equal(res.status, status, JSON.stringify(res.body));
    assert.equal(res.body.error.code, code, JSON.stringify(res.body));
  };
  /** A built-in agent: its command is the runner's Node, which every environment has. */
  const create = async (extra: Record<string, unknown> = {}) =>
    ok(await api("POST", "/v1/agents", { name: name("agent"), instructions: "Say hi.", model: "m", ...extra }), 201);

  it("a PATCH changes what it names: objects merge key by key, null removes, arrays replace", async () => {
    await ok(
      await api("PUT", "/v1/connections/known", {
        base_url: "https://api.example.com/",
        auth: { type: "none" },
        policy: { allow: [{ methods: ["GET"], path: "/**" }] },
      }),
      201,
    );
    const agent = await create({
      env: { A: "1", B: "2" },
      budget: { per_run: 1, total: 5 },
      policy: { connections: ["known"], agents: ["helper"] },
      limits: { memory_mb: 256, timeout_s: 30 },
      retry: { max_attempts: 3, backoff_s: 1 },
      max_concurrent_runs: 2,
    });
    const patch = async (body: unknown) => ok(await api("PATCH", `/v1/agents/${agent.id}`, body));

    const budget = await patch({ budget: { per_run: 2 } });
    assert.deepEqual([budget.version, budget.budget], [2, { per_run: 2, total: 5 }]);
    const policy = await patch({ policy: { connections: [] } });
    assert.deepEqual(policy.policy, { connections: [], agents: ["helper"] });
    const env = await patch({ env: { A: null, C: "3" } });
    assert.deepEqual(env.env, { B: "2", C: "3" });
    const limits = await patch({ limits: { timeout_s: null, cpus: 0.5 } });
    assert.deepEqual([limits.limits.memory_mb, limits.limits.timeout_s, limits.limits.cpus], [256, 600, 0.5]);
    const retry = await patch({ retry: { backoff_s: 2 } });
    assert.deepEqual([retry.retry.max_attempts, retry.retry.backoff_s], [3, 2]);
    const cleared = await patch({ budget: null, retry: null, policy: null, max_concurrent_runs: null });
    assert.deepEqual(
      [cleared.budget, cleared.retry.max_attempts, cleared.policy, cleared.max_concurrent_runs],
      [{}, 1, { connections: [], agents: [] }, null],
    );
    assert.deepEqual([cleared.env, cleared.builtin.instructions], [{ B: "2", C: "3" }, "Say hi."]);
    assert.equal(cleared.version, 7);
    // Nothing new: no version.
    assert.equal((await patch({ env: { B: "2" }, budget: null })).version, 7);
    // Every version's definition stays readable, newest first.
    const versions = ok(await api("GET", `/v1/agents/${agent.id}/versions`)).data;
    assert.deepEqual(
      versions.map((v: { version: number }) => v.version),
      [7, 6, 5, 4, 3, 2, 1],
    );
    assert.deepEqual(versions[6].definition.budget, { per_run: 1, total: 5 });
    assert.deepEqual(versions[5].definition.budget, { per_run: 2, total: 5 });
    assert.deepEqual(versions[0].definition.budget, {});
    assert.deepEqual(
      (({ version, created_at, ...definition }) => definition)(
        ok(await api("GET", `/v1/agents/${agent.id}`)) as Record<string, unknown>,
      ),
      {
        ...versions[0].definition,
        id: agent.id,
        name: agent.name,
        snapshot: agent.snapshot,
        archived_at: null,
      },
    );
  });

  it("an invalid PATCH or PUT is checked as a create is and changes nothing", async () => {
    const agent = await create({ env: { A: "1" } });
    for (const [body, code] of [
      [{ model: null }, "validation_failed"],
      [{ instructions: null }, "validation_failed"],
      [{ env: { PADDOCK_X: "1" } }, "validation_failed"],
      [{ budget: { surprise: 1 } }, "validation_failed"],
      [{ limits: { memory_mb: 1 } }, "validation_failed"],
      [{ name: "renamed" }, "validation_failed"],
      [{ name: null }, "validation_failed"],
      [{ policy: { connections: ["nowhere"] } }, "unknown_connection"],
    ] as const) {
      const res = await api("PATCH", `/v1/agents/${agent.id}`, body);
      assert.equal(res.body?.error?.code, code, `${JSON.stringify(body)}: ${JSON.stringify(res.body)}`);
    }
    refused(await api("PUT", `/v1/agents/${agent.id}`, { name: "renamed", command: ["x"] }), 400, "validation_failed");
    refused(await api("PUT", `/v1/agents/${agent.id}`, { env: {} }), 400, "validation_failed");
    assert.deepEqual(ok(await api("GET", `/v1/agents/${agent.id}`)), agent);
  });

  it("a PUT replaces the whole definition: what it leaves out takes its default", async () => {
    const agent = await create({ env: { A: "1" }, budget: { total: 5 }, queue_ttl_s: 60, max_steps: 7 });
    const replaced = ok(
      await api("PUT", `/v1/agents/${agent.id}`, { name: agent.name, instructions: "Say bye.", model: "m2" }),
    );
    assert.deepEqual(
      [replaced.version, replaced.env, replaced.budget, replaced.queue_ttl_s, replaced.builtin],
      [2, {}, {}, null, { instructions: "Say bye.", model: "m2", tools: agent.builtin.tools, max_steps: 20 }],
    );
    // The same definition again (the name left out) saves nothing.
    const same = ok(await api("PUT", `/v1/agents/${agent.id}`, { instructions: "Say bye.", model: "m2" }));
    assert.equal(same.version, 2);
  });

  it("an invalid definition stores no files layer; a command among its files is found before it is stored", {
    skip: process.getuid?.() !== 0 && "layer files are owned by the sandbox user: needs root",
  }, async () => {
    const agent = await create();
    const layersDir = join(h.dataDir, "layers");
    const layers = async () => (await readdir(layersDir).catch(() => [])).sort();
    const before = await layers();
    const bad = await api("PATCH", `/v1/agents/${agent.id}`, {
      files: { "notes.txt": "new files" },
      command: ["./missing.sh"],
    });
    refused(bad, 422, "command_not_found");
    assert.deepEqual(await layers(), before);
    const good = ok(
      await api("PATCH", `/v1/agents/${agent.id}`, {
        files: { "run.sh": "#!/bin/sh\necho hi\n" },
        command: ["./run.sh"],
      }),
    );
    assert.deepEqual([good.version, good.command, good.builtin, good.snapshot.version], [2, ["./run.sh"], null, 2]);
    assert.equal((await layers()).length, before.length + 1);
    assert.equal(good.snapshot.layers.length, 1);
    // A new agent's files are its one layer; the same files again are the same layer.
    const made = await create({ files: { "go.sh": "#!/bin/sh\n" } });
    const again = ok(
      await api("PUT", `/v1/agents/${made.id}`, { command: ["./go.sh"], files: { "go.sh": "#!/bin/sh\n" } }),
    );
    assert.deepEqual([made.snapshot.layers.length, again.snapshot.layers], [1, made.snapshot.layers]);
  });

  it("a deleted agent changes no more: update, replace, rollback, snapshot import and sessions refuse", async () => {
    const agent = await create();
    ok(await api("PATCH", `/v1/agents/${agent.id}`, { env: { A: "1" } }));
    ok(await api("DELETE", `/v1/agents/${agent.id}`));
    refused(await api("POST", `/v1/agents/${agent.id}/rollback`, { version: 1 }), 409, "agent_archived");
    refused(await api("PATCH", `/v1/agents/${agent.id}`, { env: { A: "2" } }), 409, "agent_archived");
    refused(await api("PUT", `/v1/agents/${agent.id}`, { command: ["true"] }), 409, "agent_archived");
    refused(
      await api("POST", `/v1/agents/${agent.id}/snapshots/import`, "x", { "content-type": "application/zstd" }),
      409,
      "agent_archived",
    );
    // A session opened before the delete may no longer change the environment (it is refused
    // before the session is looked for: this host's driver offers none).
    for (const change of [
      h.services.sessions.exec(tenant, agent.id, { argv: ["true"] }),
      h.services.sessions.freeze(tenant, agent.id, {}),
    ]) {
      await assert.rejects(change, (err: unknown) => err instanceof AppError && err.code === "agent_archived");
    }
    const history = ok(await api("GET", `/v1/agents/${agent.id}/snapshots`)).data;
    assert.equal(history.length, 1, "no environment version was made");
    assert.equal(ok(await api("GET", `/v1/agents/${agent.id}`)).snapshot.version, 1);
  });

  it("a run whose spec was read before the delete is refused when it would be queued after it", async () => {
    const agent = await create();
    // What a trigger read before the delete, queued after it.
    const spec = runSpec(await h.services.agents.get(tenant, agent.id));
    ok(await api("DELETE", `/v1/agents/${agent.id}`));
    await assert.rejects(
      h.services.runs.create(tenant, agent.id, spec, null, { trigger: "api" }),
      (err: unknown) => err instanceof AppError && err.code === "agent_archived",
    );
    assert.deepEqual(ok(await api("GET", `/v1/runs?agent_id=${agent.id}`)).data, []);
  });

  it("a trigger repeated with its Idempotency-Key answers with its run after the delete; a new one is refused", async () => {
    const agent = await create();
    const trigger = (key: string) => api("POST", `/v1/agents/${agent.id}/runs`, {}, { "idempotency-key": key });
    const first = ok(await trigger("k-1"), 201);
    ok(await api("DELETE", `/v1/agents/${agent.id}`));
    assert.equal(ok(await trigger("k-1")).id, first.id);
    refused(await trigger("k-2"), 409, "agent_archived");
    refused(await api("POST", `/v1/agents/${agent.id}/runs`, {}), 409, "agent_archived");
  });

  it("a deleted agent's webhooks are listed, and a repeated delivery answers with its first run", async () => {
    const agent = await create();
    const hook = ok(await api("POST", `/v1/agents/${agent.id}/webhooks`), 201);
    const deliver = (delivery: string) => {
      const ts = String(Math.floor(Date.now() / 1000));
      return api("POST", hook.path, "{}", {
        [WEBHOOK_HEADERS.timestamp]: ts,
        [WEBHOOK_HEADERS.delivery]: delivery,
        [WEBHOOK_HEADERS.signature]: signDelivery(hook.secret, ts, delivery, "{}"),
      });
    };
    const first = ok(await deliver("d-1"), 202);
    ok(await api("DELETE", `/v1/agents/${agent.id}`));
    const listed = ok(await api("GET", `/v1/agents/${agent.id}/webhooks`)).data;
    assert.deepEqual(
      listed.map((w: { id: string }) => w.id),
      [hook.id],
    );
    const again = ok(await deliver("d-1"), 202);
    assert.deepEqual([again.run_id, again.deduplicated], [first.run_id, true]);
    refused(await deliver("d-2"), 409, "agent_archived");
  });

  it("a run's budget is the one of the version it froze, whatever the agent becomes", async () => {
    const agent = await create({ budget: { per_run: 1, total: 10, requests_per_minute: 5 } });
    const first = ok(await api("POST", `/v1/agents/${agent.id}/runs`, {}), 201);
    const budgets = h.services.agents;
    const micro = 1_000_000;
    assert.deepEqual(await budgets.budgetOfRun(first.id), {
      perRun: 1 * micro,
      agentTotal: 10 * micro,
      requestsPerMinute: 5,
    });
    ok(await api("PATCH", `/v1/agents/${agent.id}`, { budget: { per_run: 3, requests_per_minute: null } }));
    const second = ok(await api("POST", `/v1/agents/${agent.id}/runs`, {}), 201);
    assert.deepEqual(await budgets.budgetOfRun(first.id), {
      perRun: 1 * micro,
      agentTotal: 10 * micro,
      requestsPerMinute: 5,
    });
    assert.deepEqual(await budgets.budgetOfRun(second.id), { perRun: 3 * micro, agentTotal: 10 * micro });
    assert.deepEqual(await budgets.budgetOfRun("run_unknown"), {});
  });
});
