/** The HTTP API against a real host: bad input, tenant isolation, live events, cancel. */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { forEachStore } from "../testing/stores.ts";
import { waitFor } from "../testing/wait.ts";

const skip = e2eSkip(hostSkipReason());

forEachStore((store) =>
  describe(`API on ${store.name}`, { skip: skip || store.skip }, () => {
    let t: TestHost;
    let agentId: string;
    before(async () => {
      t = await startTestHost(await store.hostConfig());
      const res = await t.api("POST", "/v1/agents", { name: "echo", command: ["sh", "-c", "echo hi"] });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      agentId = res.body.id;
    });
    after(async () => {
      await t?.close();
    });

    const expectError = (res: { status: number; body: unknown }, status: number, code: string) => {
      assert.equal(res.status, status, JSON.stringify(res.body));
      const body = res.body as { error: { code: string; message: string } };
      assert.equal(body.error.code, code);
      assert.ok(body.error.message.length > 5);
    };

    it("serves the OpenAPI document generated from the request schemas", async () => {
      const res = await t.api("GET", "/v1/openapi.json", undefined, null);
      assert.equal(res.status, 200);
      assert.equal(res.body.openapi, "3.1.0");
      assert.ok(res.body.paths["/v1/agents"].post);
      assert.ok(res.body.paths["/v1/runs/{id}/events"].get);
      // An agent runs its command, or the built-in agent from instructions and a model: only the name is always required.
      assert.deepEqual(res.body.components.schemas.AgentCreate.required, ["name"]);
      assert.ok(res.body.components.schemas.AgentCreate.properties.instructions);
      assert.ok(res.body.paths["/v1/runs/{id}/credits"].get);
      assert.equal(res.body.components.schemas.Limits.properties.memory_mb.minimum, 32);
      // Each run event type is described with its data.
      const events = res.body.components.schemas.RunEvent;
      assert.equal(events.discriminator.propertyName, "type");
      assert.ok(events.oneOf.length >= 30, `${events.oneOf.length} event types`);
      assert.ok(res.body.components.schemas["RunEvent.llm.call"].properties.data.properties.cost);
    });

    describe("bad input gets a 4xx with a code and changes nothing", () => {
      it("missing or wrong API key", async () => {
        expectError(await t.api("GET", "/v1/agents", undefined, null), 401, "unauthorized");
        expectError(await t.api("GET", "/v1/agents", undefined, "pdk.key_nope.secret"), 401, "unauthorized");
        expectError(await t.api("GET", "/v1/agents", undefined, "garbage"), 401, "unauthorized");
        const real = t.adminKey.split(".");
        expectError(
          await t.api("GET", "/v1/agents", undefined, `${real[0]}.${real[1]}.wrongsecret`),
          401,
          "unauthorized",
        );
      });

      it("malformed JSON, wrong content type, oversize body", async () => {
        expectError(await t.api("POST", "/v1/agents", '{"name": "x",'), 400, "invalid_json");
        expectError(
          await t.api("POST", "/v1/agents", "name=x", undefined, {
            "content-type": "application/x-www-form-urlencoded",
          }),
          415,
          "unsupported_media_type",
        );
        const huge = { name: "big", command: ["true"], files: { "a.txt": "x".repeat(20 * 1024 * 1024) } };
        expectError(await t.api("POST", "/v1/agents", huge), 413, "body_too_large");
        expectError(
          await t.api("POST", `/v1/agents/${agentId}/runs`, { input: "x".repeat(2 * 1024 * 1024) }),
          413,
          "body_too_large",
        );
      });

      it("unknown fields, invalid limits, invalid names and paths", async () => {
        const bad = [
          { name: "a", command: ["true"], surprise: 1 },
          { name: "a", command: ["true"], limits: { memory_mb: 1 } },
          { name: "a", command: ["true"], limits: { timeout_s: -5 } },
          { name: "a", command: ["true"], limits: { cpus: "two" } },
          { name: "a", command: ["true"], limits: { bogus: 1 } },
          { name: "a", command: ["true"], limits: { memory_mb: 200_000 } },
          { name: "a", command: ["true"], limits: { disk_mb: 1_000_000 } },
          { name: "Bad Name", command: ["true"] },
          { name: "a", command: [] },
          { name: "a", command: ["true"], files: { "../escape": "x" } },
          { name: "a", command: ["true"], files: { "/abs": "x" } },
          { name: "a", command: ["true"], env: { PADDOCK_RUN_ID: "spoof" } },
          { command: ["true"] },
          [],
        ];
        for (const body of bad) {
          const res = await t.api("POST", "/v1/agents", body);
          expectError(res, 400, "validation_failed");
          assert.ok(Array.isArray(res.body.error.details), JSON.stringify(body));
        }
        expectError(
          await t.api("POST", `/v1/agents/${agentId}/runs`, { input: 1, other: 2 }),
          400,
          "validation_failed",
        );
        expectError(await t.api("GET", "/v1/runs?limit=0"), 400, "validation_failed");
        expectError(await t.api("GET", "/v1/runs?status=exploded"), 400, "validation_failed");
        const list = await t.api("GET", "/v1/agents?name=a");
        assert.deepEqual(list.body.data, [], "no agent was half-created");
      });

      it("a command missing from the image", async () => {
        const res = await t.api("POST", "/v1/agents", { name: "missing", command: ["no-such-tool", "--x"] });
        expectError(res, 422, "command_not_found");
        assert.deepEqual(res.body.error.details, { command: "no-such-tool" });
        expectError(
          await t.api("POST", "/v1/agents", { name: "missing2", command: ["/etc/passwd"] }),
          422,
          "command_not_found",
        );
        assert.deepEqual((await t.api("GET", "/v1/agents?name=missing")).body.data, []);
      });

      it("unknown ids and routes", async () => {
        expectError(await t.api("GET", "/v1/agents/agt_00000000000000000000000000"), 404, "not_found");
        expectError(await t.api("GET", "/v1/runs/run_00000000000000000000000000"), 404, "not_found");
        expectError(await t.api("GET", "/v1/runs/../../etc/passwd"), 404, "route_not_found");
        expectError(await t.api("GET", "/v1/runs/%27%3B--"), 404, "not_found");
        expectError(await t.api("POST", "/v1/agents/agt_00000000000000000000000000/runs", {}), 404, "not_found");
        expectError(await t.api("GET", "/v1/nothing"), 404, "route_not_found");
      });

      it("a duplicate agent name", async () => {
        expectError(await t.api("POST", "/v1/agents", { name: "echo", command: ["true"] }), 409, "conflict");
      });

      it("a tenant key on admin routes", async () => {
        const tenant = await t.api("POST", "/v1/tenants", { name: uniqueName("tk") });
        const key = (await t.api("POST", `/v1/tenants/${tenant.body.id}/keys`, {})).body.key;
        expectError(await t.api("POST", "/v1/tenants", { name: "x" }, key), 403, "forbidden");
        expectError(await t.api("GET", "/v1/tenants", undefined, key), 403, "forbidden");
      });
    });

    it("isolates tenants: another tenant's ids answer exactly like unknown ids on every route", async () => {
      const a = await t.api("POST", "/v1/tenants", { name: uniqueName("ta") });
      const b = await t.api("POST", "/v1/tenants", { name: uniqueName("tb") });
      const keyA = (await t.api("POST", `/v1/tenants/${a.body.id}/keys`, { name: "ci" })).body.key;
      const keyB = (await t.api("POST", `/v1/tenants/${b.body.id}/keys`, {})).body.key;
      assert.match(keyA, /^pdk\./);
      const agent = await t.api(
        "POST",
        "/v1/agents",
        { name: "mine", command: ["sh", "-c", "echo x > /outputs/f"] },
        keyA,
      );
      assert.equal(agent.status, 201);
      const run = await t.api("POST", `/v1/agents/${agent.body.id}/runs`, {}, keyA);
      const done = await waitForRun(t, run.body.id, keyA);
      assert.equal(done.status, "succeeded");
      const art = (await t.api("GET", `/v1/runs/${run.body.id}/artifacts`, undefined, keyA)).body.data[0];
      assert.ok(art);

      const routes: [string, string, unknown?][] = [
        ["GET", `/v1/agents/${agent.body.id}`],
        ["POST", `/v1/agents/${agent.body.id}/runs`, {}],
        ["GET", `/v1/runs/${run.body.id}`],
        ["POST", `/v1/runs/${run.body.id}/cancel`, {}],
        ["GET", `/v1/runs/${run.body.id}/events`],
        ["GET", `/v1/runs/${run.body.id}/artifacts`],
        ["GET", `/v1/runs/${run.body.id}/artifacts/${art.id}/content`],
      ];
      for (const [method, path, body] of routes) {
        const theirs = await t.api(method, path, body, keyB);
        const unknown = await t.api(
          method,
          path.replace(/(agt|run|art)_[0-9a-z]+/g, "$1_0000000000zzzzzzzzzzzzzzzz"),
          body,
          keyB,
        );
        assert.equal(theirs.status, 404, `${method} ${path}`);
        assert.equal(theirs.body.error.code, unknown.body.error.code, `${method} ${path}`);
      }
      // Lists show only the caller's own resources.
      assert.deepEqual((await t.api("GET", "/v1/agents", undefined, keyB)).body.data, []);
      assert.deepEqual((await t.api("GET", "/v1/runs", undefined, keyB)).body.data, []);
      assert.deepEqual(
        (await t.api("GET", "/v1/agents", undefined, keyA)).body.data.map((x: { name: string }) => x.name),
        ["mine"],
      );
      // The admin key is the default tenant's: it does not see tenant A either.
      assert.equal((await t.api("GET", `/v1/runs/${run.body.id}`)).status, 404);
      // Tenant B may reuse the same agent name in its own namespace.
      assert.equal((await t.api("POST", "/v1/agents", { name: "mine", command: ["true"] }, keyB)).status, 201);
    });

    it("streams events live over SSE and resumes from Last-Event-ID", async () => {
      const agent = await t.api("POST", "/v1/agents", {
        name: uniqueName("sse"),
        command: ["sh", "-c", "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done"],
      });
      const run = await t.api("POST", `/v1/agents/${agent.body.id}/runs`, {});
      const read = async (lastEventId?: string) => {
        const headers: Record<string, string> = { authorization: `Bearer ${t.adminKey}`, accept: "text/event-stream" };
        if (lastEventId) headers["last-event-id"] = lastEventId;
        const res = await fetch(`${t.host.url}/v1/runs/${run.body.id}/events`, { headers });
        assert.equal(res.headers.get("content-type")?.split(";")[0], "text/event-stream");
        const text = await res.text();
        return text
          .split("\n\n")
          .filter((block) => block.includes("data:"))
          .map((block) => {
            const id = /^id: (\d+)$/m.exec(block)?.[1];
            const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? "null");
            return { id: Number(id), type: data.type as string, data };
          });
      };
      const all = await read();
      assert.equal(all.at(-1)?.type, "run.succeeded", "the stream ends after the terminal event");
      assert.deepEqual(
        all.filter((e) => e.type === "log").map((e) => e.data.data.line),
        ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5"],
      );
      assert.deepEqual(
        all.map((e) => e.id),
        all.map((_, i) => i + 1),
      );
      const resumed = await read("4");
      assert.deepEqual(
        resumed.map((e) => e.id),
        all.slice(4).map((e) => e.id),
      );
    });

    it("cancels a queued run and a running one, and refuses to cancel a finished one", async () => {
      const sleeper = await t.api("POST", "/v1/agents", {
        name: uniqueName("sleeper"),
        command: ["sh", "-c", "echo started; sleep 60"],
      });
      const run = await t.api("POST", `/v1/agents/${sleeper.body.id}/runs`, {});
      await waitFor(
        async () =>
          (await t.api("GET", `/v1/runs/${run.body.id}/events`)).body.data.some(
            (e: { type: string }) => e.type === "log",
          ),
        { what: "the sleeper to start" },
      );
      const cancel = await t.api("POST", `/v1/runs/${run.body.id}/cancel`, {});
      assert.equal(cancel.status, 202);
      const done = await waitForRun(t, run.body.id);
      assert.deepEqual([done.status, done.reason], ["canceled", "canceled"]);
      expectError(await t.api("POST", `/v1/runs/${run.body.id}/cancel`, {}), 409, "run_not_cancelable");

      // A queued run, on a host with one slot that the sleeper holds.
      const one = await startTestHost({ ...(await store.hostConfig()), maxConcurrentRuns: 1 });
      try {
        const a = await one.api("POST", "/v1/agents", { name: "hold", command: ["sleep", "60"] });
        const holder = await one.api("POST", `/v1/agents/${a.body.id}/runs`, {});
        const queued = await one.api("POST", `/v1/agents/${a.body.id}/runs`, {});
        assert.equal((await one.api("GET", `/v1/runs/${queued.body.id}`)).body.status, "queued");
        const c2 = await one.api("POST", `/v1/runs/${queued.body.id}/cancel`, {});
        assert.equal(c2.status, 200);
        assert.deepEqual([c2.body.status, c2.body.reason], ["canceled", "canceled"]);
        const events = (await one.api("GET", `/v1/runs/${queued.body.id}/events`)).body.data;
        assert.deepEqual(
          events.map((e: { type: string }) => e.type),
          ["run.queued", "run.canceled"],
        );
        await one.api("POST", `/v1/runs/${holder.body.id}/cancel`, {});
        assert.equal((await waitForRun(one, holder.body.id)).status, "canceled");
      } finally {
        await one.close();
      }
    });

    it("lists runs newest first with a working cursor", async () => {
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) ids.push((await t.api("POST", `/v1/agents/${agentId}/runs`, {})).body.id);
      for (const id of ids) await waitForRun(t, id);
      const first = await t.api("GET", `/v1/runs?agent_id=${agentId}&limit=2`);
      assert.equal(first.body.data.length, 2);
      const second = await t.api("GET", `/v1/runs?agent_id=${agentId}&limit=2&cursor=${first.body.next_cursor}`);
      const seen = [...first.body.data, ...second.body.data].map((r: { id: string }) => r.id);
      for (const id of ids) assert.ok(seen.includes(id));
      assert.deepEqual(seen, [...seen].sort().reverse());
    });
  }),
);
