/**
 * Approvals past the bridge, end to end: a model call past the budget's approve_above waits for a
 * person (holding nothing of the budget meanwhile), a child run's start that the policy names waits
 * and starts once, and the built-in agent shows the model a denial's note, so it can adapt. The
 * stand-ins (a model provider, an upstream) count what reaches them.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { isEvent } from "@paddock/protocol";
import { pendingApprovals, startRun } from "../testing/approval-support.ts";
import { artifactJson, type StandIn, startStandIn } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runEvents, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { type LlmStandIn, startLlmStandIn } from "../testing/llm-stand-in.ts";

const NODE = "/opt/paddock/runner/node";

/** Calls the child agent twice with the same input, then once with another; records each answer. */
const PARENT = `
import { writeFileSync } from "node:fs";
const { callAgent } = await import(process.env.PADDOCK_SDK);
const results = [];
for (const input of [{ n: 1 }, { n: 1 }, { n: 2 }]) {
  try {
    results.push(await callAgent("approved-child", input, { wait: false }));
  } catch (err) {
    results.push({ error: String(err) });
  }
}
writeFileSync("/outputs/result.json", JSON.stringify(results));
`;

describe("approvals of model calls and child runs", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  let llm: LlmStandIn;
  let upstream: StandIn;

  before(async () => {
    llm = await startLlmStandIn();
    upstream = await startStandIn();
    t = await startTestHost({ approvalHoldMs: 300 });
    await t.api("PUT", "/v1/secrets/appr-llm", { value: "sk-approvals" });
    const provider = await t.api("PUT", "/v1/providers/appr", {
      kind: "openai_compatible",
      base_url: `${llm.url}/v1`,
      secret: "appr-llm",
      // 1000 credits per million tokens: a call of a few hundred tokens costs a few tenths of a credit.
      models: { "appr-model": { input: 1000, output: 1000 }, "note-model": { input: 1, output: 1 } },
    });
    assert.equal(provider.status, 201, JSON.stringify(provider.body));
    await t.api("POST", "/v1/credits/grants", { tenant: "default", credits: 100 });
    await t.api("PUT", "/v1/connections/up", {
      base_url: upstream.url,
      auth: { type: "none" },
      internal: true,
      policy: { allow: [{ methods: ["POST"], path: "/send/**", approval: { timeout_s: 120 } }] },
    });
    const child = await t.api("POST", "/v1/agents", { name: "approved-child", command: ["true"] });
    assert.equal(child.status, 201, JSON.stringify(child.body));
  });
  after(async () => {
    await t?.close();
    await llm?.close();
    await upstream?.close();
  });

  it("holds a model call past approve_above, reserving nothing, until a person approves it", async () => {
    const { runId } = await startRun(t, {
      name: uniqueName("spender"),
      instructions: "Answer briefly.",
      model: "appr-model",
      tools: ["finish"],
      budget: { per_run: 20, approve_above: 0.01 },
    });
    const [pending] = await pendingApprovals(t, runId);
    assert.equal(pending.request.kind, "llm");
    assert.equal(pending.request.target, "appr-model");
    assert.equal(pending.request.path, "/chat/completions");
    assert.equal(pending.request.headers.authorization, "<key of provider appr>");
    assert.ok(pending.request.credits.reserve > 0.01, JSON.stringify(pending.request.credits));
    assert.equal(pending.request.credits.approve_above, 0.01);
    // While it waits, the provider has seen nothing and the budget holds nothing for it.
    const waiting = (await t.api("GET", `/v1/runs/${runId}/credits`)).body;
    assert.deepEqual([waiting.spent, waiting.reserved, waiting.calls.length], [0, 0, 0]);
    assert.equal(llm.seen.filter((r) => r.body.model === "appr-model").length, 0);
    assert.equal((await t.api("POST", `/v1/approvals/${pending.id}`, { decision: "approve" })).status, 200);
    const done = await waitForRun(t, runId);
    assert.equal(done.status, "succeeded");
    assert.equal(llm.seen.filter((r) => r.body.model === "appr-model").length, 1, "sent once");
    const bill = (await t.api("GET", `/v1/runs/${runId}/credits`)).body;
    assert.equal(bill.calls.filter((c: { status: string }) => c.status === "settled").length, 1);
    assert.ok(bill.spent > 0.01 && bill.spent <= 20 && bill.reserved === 0, JSON.stringify(bill));
    const calls = (await runEvents(t, runId)).filter(isEvent("llm.call"));
    assert.deepEqual(
      calls.map((e) => [e.data.status, e.data.approval]),
      [[200, pending.id]],
    );
  });

  it("shows the built-in agent a denial's note in its next model request, and sends nothing", async () => {
    llm.script("note-model", [
      {
        tools: [
          {
            id: "call_1",
            name: "http",
            arguments: { connection: "up", method: "POST", path: "/send/release", body: "ship" },
          },
        ],
      },
      { text: "Understood, I will not release." },
    ]);
    const before = llm.seen.length;
    const { runId } = await startRun(t, {
      name: uniqueName("careful"),
      instructions: "Release the build.",
      model: "note-model",
      tools: ["http", "finish"],
      policy: { connections: ["up"] },
    });
    const [pending] = await pendingApprovals(t, runId);
    assert.equal(pending.request.body.preview, "ship");
    const note = "Not on a Friday: use the staging repo instead.";
    assert.equal((await t.api("POST", `/v1/approvals/${pending.id}`, { decision: "deny", note })).status, 200);
    const done = await waitForRun(t, runId);
    assert.equal(done.status, "succeeded");
    const asked = llm.seen.slice(before).filter((r) => r.body.model === "note-model");
    assert.equal(asked.length, 2);
    const toolReply = JSON.stringify(((asked[1]?.body.messages ?? []) as unknown[]).at(-1));
    assert.match(toolReply, /approval_denied/);
    assert.ok(toolReply.includes(note), toolReply);
    assert.equal(upstream.seen.filter((r) => r.url === "/send/release").length, 0);
  });

  it("starts an approved child run once; an identical repeat gets the same child, another input asks anew", async () => {
    const { runId } = await startRun(t, {
      name: uniqueName("parent"),
      command: [NODE, "/app/parent.mjs"],
      files: { "parent.mjs": PARENT },
      policy: { agents: [{ name: "approved-child", approval: { timeout_s: 120 } }] },
    });
    const [first] = await pendingApprovals(t, runId);
    assert.deepEqual([first.request.kind, first.request.target], ["agent", "approved-child"]);
    assert.equal(first.request.body.preview, JSON.stringify({ input: { n: 1 } }));
    assert.equal((await t.api("POST", `/v1/approvals/${first.id}`, { decision: "approve" })).status, 200);
    const [second] = await pendingApprovals(t, runId);
    assert.notEqual(second.id, first.id);
    assert.equal(
      (await t.api("POST", `/v1/approvals/${second.id}`, { decision: "deny", note: "one is enough" })).status,
      200,
    );
    const done = await waitForRun(t, runId);
    assert.equal(done.status, "succeeded");
    const results = await artifactJson(t, runId, "result.json");
    assert.equal(results[0].run_id, results[1].run_id, "the repeat got the same child");
    assert.match(results[2].error, /approval_denied: A person denied this call: one is enough/);
    const children = (await t.api("GET", "/v1/runs?limit=200")).body.data.filter(
      (r: { parent_run_id: string | null }) => r.parent_run_id === runId,
    );
    assert.deepEqual(
      children.map((r: { id: string }) => r.id),
      [results[0].run_id],
    );
  });
});
