/**
 * Two hosts on one PostgreSQL store, without root: a run's event stream served by one host follows
 * what the other host writes (woken by a hint, not by the poll), and ends with the run; a cron slot
 * both hosts' schedulers fire at once makes one run.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { forEachStore } from "../testing/stores.ts";

forEachStore((store) => {
  if (store.name !== "postgres") return;
  describe("two hosts sharing a store", { skip: store.skip }, () => {
    let a: NoRootHost;
    let b: NoRootHost;
    before(async () => {
      a = await startNoRootHost(store);
      b = await startNoRootHost(store, { sharing: a });
      // Neither claims runs: the run below stays queued until host A cancels it.
      await a.services.engine.close();
      await b.services.engine.close();
    });
    after(async () => {
      await b?.close();
      await a?.close();
    });

    const request = (h: NoRootHost, method: string, path: string, body?: unknown, accept = "application/json") =>
      h.services.app.request(path, {
        method,
        headers: { authorization: `Bearer ${h.adminKey}`, "content-type": "application/json", accept },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });

    it("streams on host B the events host A writes, live, to the run's end", async () => {
      const agent = await request(a, "POST", "/v1/agents", { name: "shared", instructions: "Say hi.", model: "m" });
      assert.equal(agent.status, 201, await agent.clone().text());
      const run = await request(a, "POST", `/v1/agents/${((await agent.json()) as { id: string }).id}/runs`, {});
      assert.equal(run.status, 201, await run.clone().text());
      const runId = ((await run.json()) as { id: string }).id;

      const stream = await request(b, "GET", `/v1/runs/${runId}/events`, undefined, "text/event-stream");
      assert.equal(stream.status, 200);
      const reader = (stream.body as ReadableStream<Uint8Array>).getReader();
      const decoder = new TextDecoder();
      let text = "";
      const readUntil = async (pattern: RegExp) => {
        while (!pattern.test(text)) {
          const { value, done } = await reader.read();
          if (done) break;
          text += decoder.decode(value, { stream: true });
        }
        return pattern.test(text);
      };
      assert.ok(await readUntil(/event: run\.queued/), text);

      const started = Date.now();
      const canceled = await request(a, "POST", `/v1/runs/${runId}/cancel`, {});
      assert.equal(canceled.status, 200, await canceled.clone().text());
      assert.ok(await readUntil(/event: run\.canceled/), text);
      assert.ok(Date.now() - started < 900, `${Date.now() - started} ms: woken by the hint, before the poll`);
      // The run ended: the stream closes.
      assert.equal((await reader.read()).done, true);
    });

    it("makes one run of a cron slot both hosts' schedulers fire at once", async () => {
      const agent = await request(a, "POST", "/v1/agents", { name: "ticked", instructions: "Say hi.", model: "m" });
      const agentId = ((await agent.json()) as { id: string }).id;
      const made = await request(a, "POST", "/v1/schedules", { agent: agentId, cron: "* * * * *", overlap: "allow" });
      assert.equal(made.status, 201, await made.clone().text());
      const due = Date.parse(((await made.json()) as { next_at: string }).next_at);
      const started = await Promise.all([a.services.scheduler.tick(due), b.services.scheduler.tick(due)]);
      assert.equal(started.flat().length, 1, JSON.stringify(started));
      const runs = await request(b, "GET", `/v1/runs?agent_id=${agentId}`);
      assert.equal(((await runs.json()) as { data: unknown[] }).data.length, 1);
      assert.deepEqual(
        [...a.logs, ...b.logs].filter((l) => l.startsWith("schedule")),
        [],
      );
    });
  });
});
