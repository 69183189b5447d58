/**
 * Signed webhooks through a real host: a signed delivery starts a run with the body as its input;
 * forged, stale, replayed, oversized and unknown deliveries are refused or answered with the run
 * already started, each with its code.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { forEachStore } from "../testing/stores.ts";
import { signDelivery } from "./webhooks.ts";

forEachStore((store) =>
  describe(`webhooks on ${store.name}`, { skip: e2eSkip(hostSkipReason()) || store.skip }, () => {
    let t: TestHost;
    let hook: { id: string; path: string; secret: string };
    let other: { id: string; path: string; secret: string };
    let agentId: string;
    before(async () => {
      t = await startTestHost(await store.hostConfig());
      const agent = await t.api("POST", "/v1/agents", {
        name: uniqueName("hooked"),
        command: ["sh", "-c", "cat /inputs/input.json"],
      });
      agentId = agent.body.id;
      hook = (await t.api("POST", `/v1/agents/${agentId}/webhooks`)).body;
      other = (await t.api("POST", `/v1/agents/${agentId}/webhooks`)).body;
    });
    after(async () => {
      await t?.close();
    });

    const deliver = async (
      path: string,
      body: string,
      opts: { secret?: string; ts?: number; delivery?: string; signature?: string; type?: string } = {},
    ) => {
      const ts = String(opts.ts ?? Math.floor(Date.now() / 1000));
      const delivery = opts.delivery ?? `d-${Math.random().toString(36).slice(2)}`;
      const headers: Record<string, string> = {
        "content-type": opts.type ?? "application/json",
        "x-paddock-timestamp": ts,
        "x-paddock-delivery": delivery,
        "x-paddock-signature": opts.signature ?? signDelivery(opts.secret ?? hook.secret, ts, delivery, body),
      };
      return t.api("POST", path, body, null, headers);
    };

    it("starts a run whose input is the signed body; a repeated delivery id answers with the same run", async () => {
      assert.match(hook.id, /^whk_[0-9a-z]{32}$/);
      assert.equal(hook.path, `/v1/hooks/${hook.id}`);
      const body = JSON.stringify({ event: "push", ref: "main" });
      const first = await deliver(hook.path, body, { delivery: "delivery-1" });
      assert.equal(first.status, 202, JSON.stringify(first.body));
      assert.equal(first.body.deduplicated, false);
      const run = await waitForRun(t, first.body.run_id);
      assert.equal(run.status, "succeeded");
      assert.deepEqual(run.input, { event: "push", ref: "main" });
      assert.equal(run.trigger, "webhook");
      const events = (await t.api("GET", `/v1/runs/${run.id}/events`)).body.data as {
        type: string;
        data: { line?: string };
      }[];
      assert.ok(events.some((e) => e.type === "webhook.received"));
      assert.equal(events.find((e) => e.type === "log")?.data.line, body);
      const again = await deliver(hook.path, body, { delivery: "delivery-1" });
      assert.equal(again.status, 202);
      assert.deepEqual([again.body.run_id, again.body.deduplicated], [run.id, true]);
      // A body that is not JSON arrives as text.
      const text = await deliver(hook.path, "plain words", { type: "text/plain" });
      assert.equal((await waitForRun(t, text.body.run_id)).input, "plain words");
    });

    it("refuses forged, stale, unknown and oversized deliveries, starting nothing", async () => {
      const before = (await t.api("GET", `/v1/runs?agent_id=${agentId}&limit=100`)).body.data.length;
      const body = JSON.stringify({ event: "x" });
      const now = Math.floor(Date.now() / 1000);
      const cases: [string, Promise<{ status: number; body: { error: { code: string } } }>, number, string][] = [
        [
          "another webhook's secret",
          deliver(hook.path, body, { secret: other.secret }),
          401,
          "webhook_signature_invalid",
        ],
        ["no signature", deliver(hook.path, body, { signature: "" }), 401, "webhook_signature_invalid"],
        [
          "a body changed after signing",
          deliver(hook.path, body, { delivery: "x1", signature: signDelivery(hook.secret, String(now), "x1", "{}") }),
          401,
          "webhook_signature_invalid",
        ],
        [
          "a captured delivery resent under a new id",
          deliver(hook.path, body, {
            delivery: "fresh-id",
            signature: signDelivery(hook.secret, String(now), "old-id", body),
          }),
          401,
          "webhook_signature_invalid",
        ],
        ["six minutes old", deliver(hook.path, body, { ts: now - 360 }), 401, "webhook_timestamp_expired"],
        ["six minutes ahead", deliver(hook.path, body, { ts: now + 360 }), 401, "webhook_timestamp_expired"],
        ["an unknown webhook", deliver(`/v1/hooks/whk_${"a".repeat(32)}`, body), 401, "webhook_signature_invalid"],
        ["a malformed id", deliver("/v1/hooks/nope", body), 401, "webhook_signature_invalid"],
        [
          "a bad delivery id",
          deliver(hook.path, body, { delivery: "has space", signature: `sha256=${"0".repeat(64)}` }),
          400,
          "validation_failed",
        ],
        ["over 256 KiB", deliver(hook.path, "x".repeat(300 * 1024)), 413, "body_too_large"],
      ];
      for (const [what, pending, status, code] of cases) {
        const res = await pending;
        assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`);
        assert.equal(res.body.error.code, code, what);
      }
      const after = (await t.api("GET", `/v1/runs?agent_id=${agentId}&limit=100`)).body.data.length;
      assert.equal(after, before, "no refused delivery started a run");
    });

    it("lists webhooks without secrets and stops answering a deleted one", async () => {
      const list = await t.api("GET", `/v1/agents/${agentId}/webhooks`);
      assert.deepEqual(
        list.body.data.map((w: { id: string; secret?: string }) => [w.id, w.secret]),
        [
          [hook.id, undefined],
          [other.id, undefined],
        ],
      );
      assert.equal((await t.api("DELETE", `/v1/webhooks/${other.id}`)).status, 200);
      const gone = await deliver(other.path, "{}", { secret: other.secret });
      assert.equal(gone.status, 401);
      // Another tenant cannot see or delete them.
      await t.api("POST", "/v1/tenants", { name: "hook-outsider" });
      const key = (await t.api("POST", "/v1/tenants/hook-outsider/keys", {})).body.key as string;
      assert.equal((await t.api("DELETE", `/v1/webhooks/${hook.id}`, undefined, key)).status, 404);
      assert.equal((await t.api("GET", `/v1/agents/${agentId}/webhooks`, undefined, key)).status, 404);
    });
  }),
);
