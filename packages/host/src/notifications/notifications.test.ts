/**
 * Notifications end to end without root, on SQLite and PostgreSQL: a host's services over a real
 * store (its sandbox driver refuses to boot, so every run ends `failed` at once, which is an event
 * to announce) and a receiver on loopback playing the tenant's endpoint. Signatures are checked
 * with the receiver's own HMAC; faults (500, 410, a redirect, no answer, a private address) are
 * the receiver's real answers.
 */
import assert from "node:assert/strict";
import { after, before, describe, it, type TestContext } from "node:test";
import { Ledger } from "../gateway/ledger.ts";
import { EventLog } from "../store/event-log.ts";
import { LocalHints } from "../store/hints.ts";
import { type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { type Received, signedWith, startNotificationReceiver } from "../testing/notification-receiver.ts";
import { forEachStore } from "../testing/stores.ts";
import { waitFor } from "../testing/wait.ts";
import { NotificationOutbox } from "./outbox.ts";

const BACKOFF_MS = 20;
const TIMEOUT_MS = 1000;
const RETRY_FOR_MS = 3000;

forEachStore((store) =>
  describe(`notifications on ${store.name}`, { skip: store.skip }, () => {
    let h: NoRootHost;
    /** Names the host resolves, for endpoints given by name. */
    const dns = new Map<string, string[]>();
    let tenants = 0;

    // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers.
    const call = async (method: string, path: string, body?: unknown, key = h.adminKey): Promise<any> => {
      const res = await h.services.app.request(path, {
        method,
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : null };
    };
    const ok = async (method: string, path: string, body?: unknown, key = h.adminKey) => {
      const res = await call(method, path, body, key);
      assert.ok(
        res.status === 200 || res.status === 201,
        `${method} ${path}: ${res.status} ${JSON.stringify(res.body)}`,
      );
      return res.body;
    };

    /** A tenant of its own (so no other test's subscription sees its runs), its key, an agent and a receiver. */
    const fresh = async (t: TestContext) => {
      const tenant = await ok("POST", "/v1/tenants", { name: `n-${store.name}-${++tenants}` });
      const key: string = (await ok("POST", `/v1/tenants/${tenant.id}/keys`, {})).key;
      const agent = await ok("POST", "/v1/agents", { name: "notified", instructions: "Say hi.", model: "m" }, key);
      const receiver = await startNotificationReceiver();
      t.after(() => receiver.close());
      /** A subscription of the tenant made by the admin, internal (the receiver is on loopback). */
      const subscribe = (body: Record<string, unknown> = {}) =>
        ok("POST", "/v1/notifications", {
          url: receiver.url,
          events: ["run.finished"],
          internal: true,
          tenant: tenant.id,
          ...body,
        });
      /** Runs the agent once; the host's driver refuses it, so it ends failed. */
      const run = async () => {
        const id: string = (await ok("POST", `/v1/agents/${agent.id}/runs`, {}, key)).id;
        await waitFor(async () => (await ok("GET", `/v1/runs/${id}`, undefined, key)).status === "failed", {
          what: `run ${id} to end`,
        });
        return id;
      };
      // biome-ignore lint/suspicious/noExplicitAny: delivery JSON.
      const deliveries = async (sub: string): Promise<any[]> =>
        (await ok("GET", `/v1/notifications/${sub}/deliveries`, undefined, key)).data;
      /** The subscription's one delivery once it is no longer pending. */
      const settled = (sub: string) =>
        waitFor(
          async () => {
            const [d] = await deliveries(sub);
            return d && d.status !== "pending" && d;
          },
          { what: `a delivery of ${sub} to settle` },
        );
      return { tenant, key, agent, receiver, subscribe, run, deliveries, settled };
    };

    before(async () => {
      h = await startNoRootHost(store, {
        config: {
          notificationBackoffMs: BACKOFF_MS,
          notificationTimeoutMs: TIMEOUT_MS,
          notificationRetryForMs: RETRY_FOR_MS,
        },
        testOnly: { egress: { allowPrivateAddresses: true }, resolve: async (name) => dns.get(name) ?? [] },
      });
      await h.services.dispatcher.start();
    });
    after(async () => {
      await h?.close();
    });

    it("signs each delivery with the secret shown once; the payload names the run and how it ended", async (t) => {
      const f = await fresh(t);
      const sub = await f.subscribe();
      assert.match(sub.secret, /^whsec_[\w-]{43}$/);
      assert.equal((await ok("GET", `/v1/notifications/${sub.id}`, undefined, f.key)).secret, undefined);
      const listed = (await ok("GET", "/v1/notifications", undefined, f.key)).data;
      assert.deepEqual(
        listed.map((s: { id: string; secret?: string }) => [s.id, s.secret]),
        [[sub.id, undefined]],
      );
      const runId = await f.run();
      const d = await f.settled(sub.id);
      assert.equal(d.status, "delivered");
      const [got] = f.receiver.received as [Received];
      assert.equal(f.receiver.received.length, 1);
      assert.deepEqual(signedWith(got, [sub.secret, "another secret"]), [sub.secret]);
      assert.equal(got.headers["x-paddock-delivery"], d.id);
      assert.equal(got.headers["x-paddock-event"], "run.failed");
      assert.ok(Math.abs(Number(got.headers["x-paddock-timestamp"]) - Date.now() / 1000) < 60);
      assert.equal(got.payload.id, d.id);
      assert.equal(got.payload.type, "run.failed");
      assert.equal(got.payload.tenant_id, f.tenant.id);
      assert.deepEqual(
        { ...got.payload.data, seq: undefined },
        {
          run_id: runId,
          agent_id: f.agent.id,
          attempt: 1,
          seq: undefined,
          status: "failed",
          reason: "sandbox_error",
          exit_code: null,
        },
      );
      assert.deepEqual(d.payload, got.payload);
      assert.deepEqual(
        d.attempts.map((a: { n: number; status: number; error: string | null }) => [a.n, a.status, a.error]),
        [[1, 200, null]],
      );
      // The body is sent byte for byte as stored: a tampered one does not verify.
      assert.deepEqual(signedWith({ ...got, body: got.body.replace("failed", "succeeded") }, [sub.secret]), []);
    });

    it("retries after 500s with a growing backoff, under one delivery id, recording every attempt", async (t) => {
      const f = await fresh(t);
      const sub = await f.subscribe();
      f.receiver.answer(500, 500, 503);
      await f.run();
      const d = await f.settled(sub.id);
      assert.equal(d.status, "delivered");
      assert.deepEqual(
        d.attempts.map((a: { status: number }) => a.status),
        [500, 500, 503, 200],
      );
      assert.match(d.attempts[0].error, /answered 500/);
      const got = f.receiver.received;
      assert.deepEqual(new Set(got.map((r) => r.headers["x-paddock-delivery"])), new Set([d.id]));
      for (const r of got) assert.deepEqual(signedWith(r, [sub.secret]), [sub.secret]);
      // Each wait at least the doubled backoff less its jitter.
      for (let i = 1; i < got.length; i++) {
        const gap = (got[i] as Received).at - (got[i - 1] as Received).at;
        assert.ok(gap >= BACKOFF_MS * 2 ** (i - 1) * 0.8 - 2, `wait ${i}: ${gap} ms`);
      }
    });

    it("stops after 410: the subscription is disabled and sends nothing more", async (t) => {
      const f = await fresh(t);
      const sub = await f.subscribe();
      f.receiver.answer(410);
      await f.run();
      const d = await f.settled(sub.id);
      assert.equal(d.status, "failed");
      assert.deepEqual(
        d.attempts.map((a: { status: number }) => a.status),
        [410],
      );
      const after = await ok("GET", `/v1/notifications/${sub.id}`, undefined, f.key);
      assert.deepEqual([after.status, after.disabled_reason], ["disabled", "the endpoint answered 410 Gone"]);
      assert.ok(h.logs.some((l) => l.includes(`subscription ${sub.id} disabled`)));
      // Deliveries are written with the run's end: once it ended, none exists for a disabled subscription.
      await f.run();
      assert.equal((await f.deliveries(sub.id)).length, 1);
      assert.equal(f.receiver.received.length, 1);
      const resend = await call("POST", `/v1/notifications/${sub.id}/deliveries/${d.id}/resend`, {}, f.key);
      assert.deepEqual([resend.status, resend.body.error.code], [409, "notification_disabled"]);
    });

    it("follows no redirect: a 3xx is a failed attempt, retried", async (t) => {
      const f = await fresh(t);
      const elsewhere = await startNotificationReceiver();
      t.after(() => elsewhere.close());
      const sub = await f.subscribe();
      f.receiver.answer(
        { status: 302, headers: { location: elsewhere.url } },
        { status: 307, headers: { location: "/" } },
      );
      await f.run();
      const d = await f.settled(sub.id);
      assert.deepEqual(
        d.attempts.map((a: { status: number; error: string | null }) => [a.status, a.error]),
        [
          [302, "redirect (302) not followed"],
          [307, "redirect (307) not followed"],
          [200, null],
        ],
      );
      assert.equal(elsewhere.received.length, 0);
      assert.equal(f.receiver.received.length, 3);
    });

    it("records an endpoint that does not answer in time, and sends again", async (t) => {
      const f = await fresh(t);
      const sub = await f.subscribe();
      f.receiver.answer("hold");
      await f.run();
      const d = await f.settled(sub.id);
      assert.equal(d.status, "delivered");
      const [first, second] = d.attempts;
      assert.deepEqual([first.status, first.error], [null, `no answer within ${TIMEOUT_MS} ms`]);
      assert.ok(first.latency_ms >= TIMEOUT_MS * 0.9, `${first.latency_ms} ms`);
      assert.equal(second.status, 200);
    });

    it("gives up once the retry window has passed, and logs it", async (t) => {
      const f = await fresh(t);
      const sub = await f.subscribe();
      f.receiver.otherwise = 500;
      await f.run();
      const d = await waitFor(
        async () => {
          const [one] = await f.deliveries(sub.id);
          return one?.status === "failed" && one;
        },
        { what: "the delivery to fail", timeoutMs: RETRY_FOR_MS * 10 },
      );
      assert.ok(d.attempts.length >= 4, `${d.attempts.length} attempts`);
      assert.ok(d.attempts.every((a: { status: number }) => a.status === 500));
      assert.equal(d.next_at, null);
      assert.ok(h.logs.some((l) => l.includes(`delivery ${d.id} failed after ${d.attempts.length} attempt(s)`)));
      // The subscription stays active: the endpoint did not say it is gone.
      assert.equal((await ok("GET", `/v1/notifications/${sub.id}`, undefined, f.key)).status, "active");
    });

    it("refuses a private endpoint unless the admin marks it internal, at creation and at send", async (t) => {
      const f = await fresh(t);
      const refused = async (body: Record<string, unknown>, key: string, status = 422) => {
        const res = await call("POST", "/v1/notifications", { events: ["run.finished"], ...body }, key);
        assert.equal(res.status, status, `${JSON.stringify(body)}: ${JSON.stringify(res.body)}`);
        return res.body.error;
      };
      const loopback = await refused({ url: `https://127.0.0.1:${f.receiver.port}/hook` }, f.key);
      assert.equal(loopback.code, "notification_url_refused");
      assert.match(loopback.message, /loopback; only the admin may mark a subscription internal/);
      for (const url of ["https://localhost/hook", "https://[::1]/", "https://10.1.2.3/", "https://2130706433/"]) {
        assert.equal((await refused({ url }, f.key)).code, "notification_url_refused", url);
      }
      assert.match((await refused({ url: "http://hooks.example.com/" }, f.key)).message, /must be https/);
      assert.match((await refused({ url: "https://user:pw@hooks.example.com/" }, f.key)).message, /user or password/);
      assert.equal((await refused({ url: f.receiver.url, internal: true }, f.key, 403)).code, "forbidden");
      assert.equal((await refused({ url: "https://hooks.example.com/", tenant: "x" }, f.key, 403)).code, "forbidden");
      // Link-local (the metadata service) is never called, internal or not.
      const metadata = await refused({ url: "http://169.254.169.254/latest", internal: true }, h.adminKey);
      assert.match(metadata.message, /link-local, which is never called/);
      // A name is judged when called: one that resolves to loopback is refused at send.
      dns.set("hooks.rebinding.test", ["127.0.0.1"]);
      const sub = await ok(
        "POST",
        "/v1/notifications",
        { url: `https://hooks.rebinding.test:${f.receiver.port}/hook`, events: ["run.failed"] },
        f.key,
      );
      assert.equal(sub.internal, false);
      await f.run();
      const d = await waitFor(
        async () => {
          const [one] = await f.deliveries(sub.id);
          return one?.attempts.length >= 2 && one;
        },
        { what: "two refused attempts" },
      );
      assert.equal(
        d.attempts[0].error,
        "not sent: hooks.rebinding.test resolves to a loopback address, which only an internal subscription may call",
      );
      assert.equal(d.attempts[0].status, null);
      assert.equal(f.receiver.received.length, 0);
      await ok("DELETE", `/v1/notifications/${sub.id}`, undefined, f.key);
    });

    it("signs with both secrets while a rotation overlaps, then with the new one alone", async (t) => {
      const f = await fresh(t);
      const sub = await f.subscribe();
      const rotated = await ok("POST", `/v1/notifications/${sub.id}/rotate`, { overlap_s: 3600 }, f.key);
      assert.notEqual(rotated.secret, sub.secret);
      assert.ok(Date.parse(rotated.previous_secret_until) > Date.now() + 3500_000);
      await f.run();
      await f.settled(sub.id);
      const [during] = f.receiver.received as [Received];
      assert.deepEqual(signedWith(during, [rotated.secret, sub.secret]), [rotated.secret, sub.secret]);
      assert.match(String(during.headers["x-paddock-signature"]), /^sha256=[0-9a-f]{64},sha256=[0-9a-f]{64}$/);
      const again = await ok("POST", `/v1/notifications/${sub.id}/rotate`, { overlap_s: 0 }, f.key);
      assert.equal(again.previous_secret_until, null);
      await f.run();
      await waitFor(() => f.receiver.received.length === 2, { what: "the second delivery" });
      const after = f.receiver.received[1] as Received;
      assert.deepEqual(signedWith(after, [again.secret, rotated.secret, sub.secret]), [again.secret]);
    });

    it("sends a delivery again by hand, with the same id and payload", async (t) => {
      const f = await fresh(t);
      const sub = await f.subscribe();
      await f.run();
      const d = await f.settled(sub.id);
      const resent = await ok("POST", `/v1/notifications/${sub.id}/deliveries/${d.id}/resend`, {}, f.key);
      assert.equal(resent.id, d.id);
      await waitFor(() => f.receiver.received.length === 2, { what: "the delivery sent again" });
      const [first, second] = f.receiver.received as [Received, Received];
      assert.equal(second.body, first.body);
      assert.equal(second.headers["x-paddock-delivery"], d.id);
      const after = await waitFor(
        async () => {
          const [one] = await f.deliveries(sub.id);
          return one?.attempts.length === 2 && one.status === "delivered" && one;
        },
        { what: "the second attempt recorded" },
      );
      assert.deepEqual(
        after.attempts.map((a: { n: number }) => a.n),
        [1, 2],
      );
      // Another tenant's delivery answers as an unknown one.
      const other = await fresh(t);
      const theirs = await call("POST", `/v1/notifications/${sub.id}/deliveries/${d.id}/resend`, {}, other.key);
      assert.deepEqual([theirs.status, theirs.body.error.code], [404, "not_found"]);
    });

    it("announces credits.low once, when billing takes the balance below the threshold", async (t) => {
      const f = await fresh(t);
      const sub = await f.subscribe({ events: ["credits.low"], credits_below: 5 });
      assert.equal(sub.credits_below, 5);
      const missing = await call(
        "POST",
        "/v1/notifications",
        { url: "https://a.example.com/", events: ["credits.low"] },
        f.key,
      );
      assert.equal(missing.body.error.details[0].path, "credits_below");
      const outbox = new NotificationOutbox({ hints: new LocalHints() }, { dialect: store.name, retryForMs: 60_000 });
      const ledger = new Ledger(h.db, { dialect: store.name, watcher: outbox });
      await ledger.grant(f.tenant.id, 10_000_000);
      const bill = async (micro: number) => {
        const r = await ledger.reserve({
          tenantId: f.tenant.id,
          agentId: f.agent.id,
          runId: "run_none",
          inputMicro: micro,
          outputMicroPerToken: 0,
          maxOutputTokens: 1,
        });
        assert.ok(r.ok);
        await ledger.settle(r.reservation, micro, {
          provider: "p",
          model: "m",
          input_tokens: 1,
          output_tokens: 0,
          source: "usage",
        });
      };
      await bill(3_000_000); // 7 left
      await bill(2_000_000); // 5 left: not below 5
      assert.equal((await f.deliveries(sub.id)).length, 0);
      await bill(1_000_000); // 4 left: crossed
      await bill(1_000_000); // 3 left: already below
      const d = await f.settled(sub.id);
      assert.equal((await f.deliveries(sub.id)).length, 1);
      assert.equal(d.status, "delivered");
      const [got] = f.receiver.received as [Received];
      assert.equal(got.payload.type, "credits.low");
      assert.deepEqual(got.payload.data, { balance: 4, threshold: 5 });
      assert.deepEqual(signedWith(got, [sub.secret]), [sub.secret]);
    });

    it("writes deliveries in the event's transaction: an append rolled back leaves none", async (t) => {
      const f = await fresh(t);
      const sub = await f.subscribe({ events: ["run.succeeded"] });
      const runId = await f.run();
      const outbox = new NotificationOutbox({ hints: new LocalHints() }, { dialect: store.name, retryForMs: 60_000 });
      const events = new EventLog(h.db, { dialect: store.name, announcer: outbox });
      const ended = {
        type: "run.succeeded" as const,
        data: { status: "succeeded" as const, reason: "exit_code" as const, exit_code: 0 },
      };
      await assert.rejects(
        h.db.transaction().execute(async (trx) => {
          await events.append(trx, runId, 1, [ended]);
          const written = await trx
            .selectFrom("notification_deliveries")
            .select("id")
            .where("subscription_id", "=", sub.id)
            .execute();
          assert.equal(written.length, 1, "written with the event");
          throw new Error("rolled back");
        }),
        /rolled back/,
      );
      assert.equal((await f.deliveries(sub.id)).length, 0);
      await events.write(runId, 1, [ended]);
      assert.equal((await f.deliveries(sub.id)).length, 1);
    });

    it("shares the work between nodes of one store: each delivery is sent once", {
      skip: store.name !== "postgres" && "one node per SQLite store",
    }, async (t) => {
      const second = await startNoRootHost(store, { sharing: h });
      t.after(() => second.close());
      await second.services.dispatcher.start();
      const f = await fresh(t);
      const sub = await f.subscribe();
      const runs = 20;
      await Promise.all(Array.from({ length: runs }, () => f.run()));
      await waitFor(
        async () => {
          const list = await f.deliveries(sub.id);
          return list.length === runs && list.every((d) => d.status === "delivered");
        },
        { what: `${runs} deliveries` },
      );
      const ids = f.receiver.received.map((r) => r.payload.id);
      assert.equal(ids.length, runs);
      assert.equal(new Set(ids).size, runs);
    });
  }),
);
