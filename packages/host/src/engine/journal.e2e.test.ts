/**
 * Crash and resume: an agent's first attempt makes boundary calls (a bridge call, a model call, a
 * call at an explicit step), then crashes (SIGKILL). Its retry repeats them: the completed ones are
 * answered from the journal, never sent upstream or charged again; the one whose request changed
 * is recorded as a divergence and goes live. The stand-ins count what reached them.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { isEvent } from "@paddock/protocol";
import { artifactJson, type StandIn, startStandIn } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName } from "../testing/harness.ts";
import { type LlmStandIn, startLlmStandIn } from "../testing/llm-stand-in.ts";
import { forEachStore } from "../testing/stores.ts";

const NODE = "/opt/paddock/runner/node";

const AGENT = `
import { readFileSync, writeFileSync } from "node:fs";
const { bridge, callAgent } = await import(process.env.PADDOCK_SDK);
const attempt = Number(process.env.PADDOCK_ATTEMPT);
const show = async (res) => ({ status: res.status, replayed: res.headers.get("paddock-replayed") === "true", body: await res.text() });
const a = await show(await bridge.fetch("echo", "/echo/a", { method: "POST", body: "same body" }));
const b = await show(await fetch(process.env.PADDOCK_BRIDGE_URL + "/v1/chat/completions", {
  method: "POST",
  headers: { authorization: "Bearer " + bridge.token(), "content-type": "application/json" },
  body: JSON.stringify({ model: "journal-model", max_tokens: 16, messages: [{ role: "user", content: "one two" }] }),
}));
const d = await show(await bridge.fetch("echo", "/echo/d", {
  method: "POST",
  headers: { "paddock-step": "decide" },
  body: attempt === 1 ? "first choice" : "second choice",
}));
const k = await callAgent("jchild", { x: 1 }, { wait: false });
if (attempt === 1) process.kill(process.pid, "SIGKILL");
const c = await show(await bridge.fetch("echo", "/echo/c", { method: "POST", body: "after the crash" }));
writeFileSync("/outputs/result.json", JSON.stringify({ a, b, c, d, k }));
`;

forEachStore((store) =>
  describe(`journal resume on ${store.name}`, { skip: e2eSkip(hostSkipReason()) || store.skip }, () => {
    let t: TestHost;
    let upstream: StandIn;
    let stand: LlmStandIn;
    before(async () => {
      upstream = await startStandIn();
      stand = await startLlmStandIn();
      t = await startTestHost(await store.hostConfig());
      await t.api("PUT", "/v1/secrets/echo-key", { value: "echo-secret-value" });
      await t.api("PUT", "/v1/connections/echo", {
        base_url: upstream.url,
        secret: "echo-key",
        auth: { type: "bearer" },
        internal: true,
        policy: { allow: [{ methods: ["POST"], path: "/echo/**" }] },
      });
      await t.api("PUT", "/v1/secrets/journal-llm", { value: "sk-journal" });
      await t.api("PUT", "/v1/providers/journal", {
        kind: "openai_compatible",
        base_url: `${stand.url}/v1`,
        secret: "journal-llm",
        models: { "journal-model": { input: 1, output: 1 } },
      });
      await t.api("POST", "/v1/credits/grants", { tenant: "default", credits: 10 });
      assert.equal((await t.api("POST", "/v1/agents", { name: "jchild", command: ["true"] })).status, 201);
    });
    after(async () => {
      await t?.close();
      await upstream?.close();
      await stand?.close();
    });

    it("answers a retried attempt's repeated calls from the journal, once upstream and charged once", async () => {
      const { run, events } = await runAgent(t, {
        name: uniqueName("resumable"),
        command: [NODE, "/app/agent.mjs"],
        files: { "agent.mjs": AGENT },
        policy: { connections: ["echo"], agents: ["jchild"] },
        retry: { max_attempts: 2, backoff_s: 0, on: ["crashed"] },
      });
      assert.equal(run.status, "succeeded", JSON.stringify(events.slice(-5)));
      assert.equal(run.attempt, 2);
      const retry = events.find(isEvent("retry.scheduled"));
      assert.equal(retry?.data.reason, "crashed", "the first attempt crashed");
      const out = await artifactJson(t, run.id, "result.json");
      // Attempt 2 got the journaled answers of a and b, and live ones for c and the changed d.
      assert.deepEqual([out.a.replayed, out.b.replayed, out.c.replayed, out.d.replayed], [true, true, false, false]);
      assert.equal(JSON.parse(out.a.body).body, "same body");
      assert.equal(JSON.parse(out.d.body).body, "second choice");
      assert.match(JSON.parse(out.b.body).choices[0].message.content, /Hello from journal-model/);
      // Upstream: a and c once each, d once per attempt (its request changed); the model once.
      const paths = upstream.seen.map((r) => r.url);
      assert.deepEqual(
        ["/echo/a", "/echo/c", "/echo/d"].map((p) => paths.filter((x) => x === p).length),
        [1, 1, 2],
      );
      assert.equal(stand.usage.length, 1, "the model call was not repeated");
      // The child run the first attempt started is the one the retry got: no second child.
      const children = (await t.api("GET", "/v1/runs?limit=100")).body.data.filter(
        (r: { parent_run_id: string | null }) => r.parent_run_id === run.id,
      );
      assert.deepEqual(
        children.map((r: { id: string }) => r.id),
        [out.k.run_id],
      );
      // Charged once; the replay is on the record as such.
      const bill = (await t.api("GET", `/v1/runs/${run.id}/credits`)).body;
      assert.equal(bill.calls.filter((c: { status: string }) => c.status === "settled").length, 1);
      const llm = events.filter(isEvent("llm.call"));
      assert.deepEqual(
        llm.map((e) => [e.attempt, e.data.replayed === true]),
        [
          [1, false],
          [2, true],
        ],
      );
      const bridged = events.filter(isEvent("bridge.call")).filter((e) => e.attempt === 2);
      assert.equal(bridged.filter((e) => e.data.replayed).length, 1);
      const diverged = events.filter(isEvent("journal.diverged"));
      assert.deepEqual(
        diverged.map((e) => e.data.step),
        ["bridge:echo:decide"],
      );
    });
  }),
);
