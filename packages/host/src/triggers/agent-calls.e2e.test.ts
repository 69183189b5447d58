/**
 * Agent-to-agent calls through a real host: a run starts a child run through the bridge with the
 * runner SDK's callAgent and waits for its result; agents its policy does not name are refused;
 * a run tree is cut at its depth limit; the lineage is recorded; a child's model calls are billed
 * to the root run.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { isEvent } from "@paddock/protocol";
import { artifactJson } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { type LlmStandIn, startLlmStandIn } from "../testing/llm-stand-in.ts";
import { forEachStore } from "../testing/stores.ts";
import { waitFor } from "../testing/wait.ts";
import { MAX_DEPTH } from "./agent-calls.ts";

const NODE = "/opt/paddock/runner/node";

/** Calls the agents of its input in turn; writes what each call returned or why it failed. */
const CALLER = `
import { readFileSync, writeFileSync } from "node:fs";
const { callAgent } = await import(process.env.PADDOCK_SDK);
const { calls } = JSON.parse(readFileSync(process.env.PADDOCK_INPUT, "utf8"));
const out = [];
for (const c of calls) {
  try { out.push(await callAgent(c.agent, c.input)); } catch (e) { out.push({ error: String(e.message) }); }
}
writeFileSync("/outputs/calls.json", JSON.stringify(out));
`;

/** Doubles its input's n, reports it as its result, and asks the model once (billed to the root). */
const CHILD = `
import { readFileSync, writeFileSync } from "node:fs";
const { n } = JSON.parse(readFileSync(process.env.PADDOCK_INPUT, "utf8"));
const token = readFileSync(process.env.PADDOCK_TOKEN_FILE, "utf8").trim();
const r = await fetch(process.env.PADDOCK_BRIDGE_URL + "/v1/chat/completions", {
  method: "POST",
  headers: { authorization: "Bearer " + token, "content-type": "application/json" },
  body: JSON.stringify({ model: "tree-model", max_tokens: 16, messages: [{ role: "user", content: "hi" }] }),
});
writeFileSync("/outputs/doubled.txt", String(2 * n));
console.log("::paddock::" + JSON.stringify({ type: "result", data: { doubled: 2 * n, llm: r.status } }));
`;

/** Calls itself until the host says no; reports how deep it got. */
const LOOPER = `
import { readFileSync } from "node:fs";
const { callAgent } = await import(process.env.PADDOCK_SDK);
const { depth } = JSON.parse(readFileSync(process.env.PADDOCK_INPUT, "utf8"));
let result;
try {
  const child = await callAgent(process.env.SELF, { depth: depth + 1 });
  result = child.result;
} catch (e) {
  result = { deepest: depth, refused: String(e.message) };
}
console.log("::paddock::" + JSON.stringify({ type: "result", data: result }));
`;

forEachStore((store) =>
  describe(`agent-to-agent calls on ${store.name}`, { skip: e2eSkip(hostSkipReason()) || store.skip }, () => {
    let t: TestHost;
    let stand: LlmStandIn;
    let child: string;
    before(async () => {
      stand = await startLlmStandIn();
      t = await startTestHost(await store.hostConfig());
      await t.api("PUT", "/v1/secrets/tree-key", { value: "sk-tree" });
      await t.api("PUT", "/v1/providers/tree", {
        kind: "openai_compatible",
        base_url: `${stand.url}/v1`,
        secret: "tree-key",
        models: { "tree-model": { input: 1, output: 1 } },
      });
      await t.api("POST", "/v1/credits/grants", { tenant: "default", credits: 10 });
      child = uniqueName("child");
      const made = await t.api("POST", "/v1/agents", {
        name: child,
        command: [NODE, "/app/child.mjs"],
        files: { "child.mjs": CHILD },
      });
      assert.equal(made.status, 201, JSON.stringify(made.body));
      await t.api("POST", "/v1/agents", { name: uniqueName("unlisted"), command: ["true"] });
    });
    after(async () => {
      await t?.close();
      await stand?.close();
    });

    it("starts a child its policy names, waits for its result, and refuses one it does not", async () => {
      const { run, events } = await runAgent(
        t,
        {
          name: uniqueName("parent"),
          command: [NODE, "/app/caller.mjs"],
          files: { "caller.mjs": CALLER },
          policy: { agents: [child] },
        },
        {
          calls: [
            { agent: child, input: { n: 21 } },
            { agent: "unlisted-agent", input: {} },
          ],
        },
      );
      assert.equal(run.status, "succeeded", JSON.stringify(events.slice(-4)));
      const [ok, refused] = await artifactJson(t, run.id, "calls.json");
      assert.equal(ok.status, "succeeded");
      assert.deepEqual(ok.result, { doubled: 42, llm: 200 });
      assert.deepEqual(ok.artifacts, [{ path: "doubled.txt", size: 2 }]);
      assert.match(
        refused.error,
        /connection_not_allowed: The agent's policy does not allow starting 'unlisted-agent'/,
      );
      assert.ok(events.filter(isEvent("agent.called")).some((e) => e.data.run_id === ok.run_id));
      assert.ok(events.filter(isEvent("agent.call")).some((e) => e.data.code === "connection_not_allowed"));
      // The lineage is on the child's record.
      const childRun = (await t.api("GET", `/v1/runs/${ok.run_id}`)).body;
      assert.deepEqual([childRun.trigger, childRun.parent_run_id, childRun.root_run_id], ["agent", run.id, run.id]);
      // Its model call is on the root run's bill, not its own.
      const rootBill = (await t.api("GET", `/v1/runs/${run.id}/credits`)).body;
      assert.equal(rootBill.calls.length, 1);
      assert.equal(rootBill.calls[0].status, "settled");
      assert.equal((await t.api("GET", `/v1/runs/${ok.run_id}/credits`)).body.calls.length, 0);
    });

    it("stops a run tree that calls itself at the depth limit", async () => {
      const name = uniqueName("looper");
      const { run } = await runAgent(
        t,
        {
          name,
          command: [NODE, "/app/looper.mjs"],
          files: { "looper.mjs": LOOPER },
          env: { SELF: name },
          policy: { agents: [name] },
        },
        { depth: 0 },
      );
      assert.equal(run.status, "succeeded");
      const events = (await t.api("GET", `/v1/runs/${run.id}/events`)).body.data as {
        type: string;
        data: { type?: string; data?: unknown };
      }[];
      const result = events.find((e) => e.type === "user" && e.data.type === "result")?.data.data as {
        deepest: number;
        refused: string;
      };
      assert.equal(result.deepest, MAX_DEPTH);
      assert.match(result.refused, /agent_depth_exceeded/);
      const tree = (await t.api("GET", "/v1/runs?limit=100")).body.data.filter(
        (r: { root_run_id: string | null }) => r.root_run_id === run.id,
      );
      assert.equal(tree.length, MAX_DEPTH);
    });

    it("cancels the child runs of a run that is canceled", async () => {
      const sleeper = uniqueName("sleeper");
      await t.api("POST", "/v1/agents", { name: sleeper, command: ["sleep", "60"] });
      const parent = await t.api("POST", "/v1/agents", {
        name: uniqueName("waiting-parent"),
        command: [NODE, "/app/caller.mjs"],
        files: { "caller.mjs": CALLER },
        policy: { agents: [sleeper] },
      });
      const run = (
        await t.api("POST", `/v1/agents/${parent.body.id}/runs`, { input: { calls: [{ agent: sleeper, input: {} }] } })
      ).body;
      const child: { id: string; status: string } = await waitFor(
        async () =>
          (await t.api("GET", "/v1/runs?limit=100")).body.data.find(
            (r: { parent_run_id: string | null; status: string }) =>
              r.parent_run_id === run.id && r.status === "running",
          ),
        { what: "the child run to be running" },
      );
      assert.equal((await t.api("POST", `/v1/runs/${run.id}/cancel`)).status, 202);
      const parentDone = await waitForRun(t, run.id);
      const childDone = await waitForRun(t, child.id);
      assert.deepEqual([parentDone.status, childDone.status], ["canceled", "canceled"]);
    });
  }),
);
