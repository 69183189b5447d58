/**
 * What the API gives a dashboard over all of a tenant's runs, through the API over real services
 * and a real store (no root needed): the run list's filters and paging, replays, model and bridge
 * calls across runs, counts and spending per time bucket, a schedule's next fire time and a run's
 * events of chosen types. Another tenant's runs never show, and answer as unknown ones do.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  BridgeCallEvent,
  LlmCallEvent,
  Page,
  Run,
  RunEvent,
  type RunEventData,
  type RunStatus,
  type RunTrigger,
  Schedule,
  Stats,
} from "@paddock/protocol";
import type { z } from "zod";
import { Ledger } from "../gateway/ledger.ts";
import { EventLog, type NewEvent } from "../store/event-log.ts";
import { newId } from "../store/ids.ts";
import { migrate } from "../store/migrations.ts";
import type { RunsTable } from "../store/schema.ts";
import { type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { forEachStore } from "../testing/stores.ts";
import { runRow, seedAgent } from "../testing/test-store.ts";
import { waitFor } from "../testing/wait.ts";
import { nextFireAt } from "../triggers/scheduler.ts";

const T0 = Date.parse("2026-01-05T00:00:00.000Z");
const MINUTE = 60_000;
const iso = (ms: number) => new Date(ms).toISOString();
const STATUSES: RunStatus[] = ["succeeded", "failed", "canceled", "timed_out"];
const TRIGGERS: RunTrigger[] = ["api", "schedule", "webhook", "agent", "replay"];

forEachStore((store) =>
  describe(`runs, calls and stats across runs on ${store.name}`, { skip: store.skip }, () => {
    let h: NoRootHost;
    const keys = { a: "", b: "" };
    const tenants = { a: "", b: "" };
    const agents = { a1: "", a2: "", b1: "" };
    /** Tenant A's seeded runs, oldest first, and tenant B's. */
    const seeded: RunsTable[] = [];
    const theirs: RunsTable[] = [];

    const request = async (method: string, path: string, key: string, body?: unknown, headers = {}) => {
      const res = await h.services.app.request(path, {
        method,
        headers: {
          authorization: `Bearer ${key}`,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
          ...headers,
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      const text = await res.text();
      assert.notEqual(res.status, 500, text);
      return { status: res.status, headers: res.headers, body: JSON.parse(text) };
    };
    const get = async <S extends z.ZodType>(schema: S, path: string, key = keys.a): Promise<z.output<S>> => {
      const res = await request("GET", path, key);
      assert.equal(res.status, 200, `GET ${path}: ${JSON.stringify(res.body)}`);
      return schema.parse(res.body);
    };
    const refused = async (path: string, status: number, code: string, key = keys.a) => {
      const res = await request("GET", path, key);
      assert.equal(res.status, status, `GET ${path}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.code, code, `GET ${path}`);
      return res.body.error;
    };
    /** Every item of a list, walking its pages `limit` at a time. */
    const walk = async <S extends z.ZodType>(schema: S, path: string, limit: number, key = keys.a) => {
      const items: z.output<S>[] = [];
      let cursor: string | null = null;
      do {
        const sep = path.includes("?") ? "&" : "?";
        const url = `${path}${sep}limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
        const page: { data: z.output<S>[]; next_cursor: string | null } = await get(Page(schema), url, key);
        assert.ok(page.data.length <= limit);
        items.push(...page.data);
        cursor = page.next_cursor;
      } while (cursor !== null);
      return items;
    };
    const created = async (path: string, body: unknown, key = keys.a) => {
      const res = await request("POST", path, key, body);
      assert.ok(res.status === 200 || res.status === 201, `POST ${path}: ${JSON.stringify(res.body)}`);
      return res.body;
    };

    before(async () => {
      h = await startNoRootHost(store);
      for (const t of ["a", "b"] as const) {
        const tenant = await created("/v1/tenants", { name: `tenant-${t}` }, h.adminKey);
        tenants[t] = tenant.id;
        keys[t] = (await created(`/v1/tenants/${tenant.id}/keys`, {}, h.adminKey)).key;
      }
      const agent = (name: string, key: string) =>
        created("/v1/agents", { name, instructions: "Say hi.", model: "m" }, key).then((a) => a.id as string);
      agents.a1 = await agent("one", keys.a);
      agents.a2 = await agent("two", keys.a);
      agents.b1 = await agent("one", keys.b);

      // A's runs a minute apart: alternating agents, statuses and triggers; runs 20 to 29 are a
      // tree under run 0 (20 to 24 its children, 25 to 29 children of run 20).
      for (let i = 0; i < 30; i++) {
        const at = T0 + i * MINUTE + 17;
        const parent = i >= 25 ? seeded[20] : i >= 20 ? seeded[0] : undefined;
        seeded.push(
          runRow(tenants.a, i % 2 === 0 ? agents.a1 : agents.a2, {
            id: newId("run", at),
            created_at: at,
            started_at: at,
            finished_at: at + 1000,
            status: STATUSES[i % STATUSES.length] as RunStatus,
            trigger: TRIGGERS[i % TRIGGERS.length] as RunTrigger,
            parent_run_id: parent?.id ?? null,
            root_run_id: parent ? (seeded[0]?.id ?? null) : null,
          }),
        );
      }
      for (let i = 0; i < 5; i++) {
        const at = T0 + i * MINUTE + 30;
        theirs.push(
          runRow(tenants.b, agents.b1, { id: newId("run", at), created_at: at, status: "succeeded", trigger: "api" }),
        );
      }
      await h.db
        .insertInto("runs")
        .values([...seeded, ...theirs])
        .execute();
    });
    after(async () => {
      await h?.close();
    });

    const ids = (runs: { id: string }[]) => runs.map((r) => r.id);
    const newestFirst = (runs: RunsTable[]) => ids([...runs].reverse());

    it("lists runs by each filter and by several at once, newest first, page by page", async () => {
      const mine = (f: (r: RunsTable) => boolean) => newestFirst(seeded.filter(f));
      const first = seeded[0] as RunsTable;
      const twentieth = seeded[20] as RunsTable;
      const cases: [string, string[]][] = [
        ["", mine(() => true)],
        [`agent_id=${agents.a2}`, mine((r) => r.agent_id === agents.a2)],
        ["status=failed", mine((r) => r.status === "failed")],
        ["trigger=webhook", mine((r) => r.trigger === "webhook")],
        [`parent_run_id=${first.id}`, mine((r) => r.parent_run_id === first.id)],
        [`parent_run_id=${twentieth.id}`, mine((r) => r.parent_run_id === twentieth.id)],
        [`root_run_id=${first.id}`, mine((r) => r.root_run_id === first.id)],
        // created_after is inclusive, created_before exclusive, to the millisecond.
        [
          `created_after=${iso(T0 + 5 * MINUTE + 17)}&created_before=${iso(T0 + 9 * MINUTE + 17)}`,
          mine((r) => r.created_at >= T0 + 5 * MINUTE + 17 && r.created_at < T0 + 9 * MINUTE + 17),
        ],
        [`created_after=${iso(T0 + 5 * MINUTE + 18)}`, mine((r) => r.created_at > T0 + 5 * MINUTE + 17)],
        // An offset is a time like any other.
        [`created_before=2026-01-05T01:10:00%2B01:00`, mine((r) => r.created_at < T0 + 10 * MINUTE)],
        [`id_prefix=${twentieth.id.slice(0, 14)}`, [twentieth.id]],
        [`id_prefix=${twentieth.id.slice(4, 20)}`, [twentieth.id]],
        [`id_prefix=${first.id.slice(0, 9)}`, mine((r) => r.id.startsWith(first.id.slice(0, 9)))],
        [
          `agent_id=${agents.a1}&status=succeeded&created_after=${iso(T0 + 3 * MINUTE)}`,
          mine((r) => r.agent_id === agents.a1 && r.status === "succeeded" && r.created_at >= T0 + 3 * MINUTE),
        ],
        [`trigger=agent&root_run_id=${first.id}`, mine((r) => r.trigger === "agent" && r.root_run_id === first.id)],
        ["id_prefix=run_zzzz", []],
      ];
      for (const [query, expected] of cases) {
        const path = `/v1/runs${query ? `?${query}` : ""}`;
        // Runs the API made itself (none here yet) would come first; only seeded ones are expected.
        assert.deepEqual(ids(await walk(Run, path, 4)), expected, query);
      }
      assert.ok(cases.filter(([, expected]) => expected.length > 4).length >= 5, "several filters span pages");
    });

    it("never lists another tenant's runs, whatever the filter names", async () => {
      const first = seeded[0] as RunsTable;
      assert.deepEqual(ids(await walk(Run, "/v1/runs", 3, keys.b)), newestFirst(theirs));
      for (const query of [`agent_id=${agents.a1}`, `root_run_id=${first.id}`, `parent_run_id=${first.id}`]) {
        assert.deepEqual(ids(await walk(Run, `/v1/runs?${query}`, 50, keys.b)), [], query);
      }
      assert.deepEqual(ids(await walk(Run, `/v1/runs?id_prefix=${first.id.slice(0, 14)}`, 50, keys.b)), []);
    });

    it("refuses a filter out of its schema, naming it", async () => {
      for (const [query, name] of [
        ["created_after=yesterday", "created_after"],
        ["created_before=2026-01-05", "created_before"],
        ["trigger=manual", "trigger"],
        ["id_prefix=RUN_1", "id_prefix"],
        ["id_prefix=run_", "id_prefix"],
        ["status=lost", "status"],
      ]) {
        const error = await refused(`/v1/runs?${query}`, 400, "validation_failed");
        assert.equal(error.details[0].path, name, query);
      }
    });

    it("replays a run with its input or an edited one: a run of its own, of the same agent version", async () => {
      const original = Run.parse(await created(`/v1/agents/${agents.a1}/runs`, { input: { n: 1 } }));
      // A new version of the agent does not change what a replay of the earlier run runs.
      await request("PATCH", `/v1/agents/${agents.a1}`, keys.a, { max_steps: 7 });
      const same = Run.parse(await created(`/v1/runs/${original.id}/replay`, {}));
      assert.equal(same.trigger, "replay");
      assert.equal(same.replay_of, original.id);
      assert.equal(same.agent_id, agents.a1);
      assert.equal(same.agent_version, original.agent_version);
      assert.deepEqual(same.input, { n: 1 });
      assert.equal(same.parent_run_id, null);
      const spec = (id: string) =>
        h.db.selectFrom("runs").select("spec").where("id", "=", id).executeTakeFirstOrThrow();
      assert.equal((await spec(same.id)).spec, (await spec(original.id)).spec);
      const edited = Run.parse(await created(`/v1/runs/${original.id}/replay`, { input: { n: 2 } }));
      assert.deepEqual(edited.input, { n: 2 });
      const none = Run.parse(await created(`/v1/runs/${original.id}/replay`, { input: null }));
      assert.equal(none.input, null);
      // A replay of a replay names the run it replays.
      const again = Run.parse(await created(`/v1/runs/${edited.id}/replay`, {}));
      assert.equal(again.replay_of, edited.id);
      assert.deepEqual(again.input, { n: 2 });

      const events = await get(Page(RunEvent), `/v1/runs/${same.id}/events?types=run.queued`);
      assert.deepEqual(
        events.data.map((e) => e.data),
        [{ status: "queued", trigger: "replay", replay_of: original.id }],
      );
      const replays = await get(
        Page(Run),
        `/v1/runs?trigger=replay&agent_id=${agents.a1}&created_after=${iso(T0 + 30 * MINUTE)}`,
      );
      assert.deepEqual(ids(replays.data), [again.id, none.id, edited.id, same.id]);
    });

    it("replays under an Idempotency-Key as a trigger does, and refuses another tenant's run as unknown", async () => {
      const original = Run.parse(await created(`/v1/agents/${agents.a2}/runs`, { input: "x" }));
      const path = `/v1/runs/${original.id}/replay`;
      const keyed = (body: unknown, key: string) => request("POST", path, keys.a, body, { "idempotency-key": key });
      const first = await keyed({}, `replay-${store.name}`);
      assert.equal(first.status, 201);
      const repeated = await keyed({ input: "x" }, `replay-${store.name}`);
      assert.equal(repeated.status, 200);
      assert.equal(repeated.headers.get("idempotent-replayed"), "true");
      assert.equal(repeated.body.id, first.body.id);
      const reused = await keyed({ input: "y" }, `replay-${store.name}`);
      assert.equal(reused.status, 422);
      assert.equal(reused.body.error.code, "idempotency_key_reused");

      const unknown = `run_${"z".repeat(26)}`;
      for (const id of [original.id, unknown]) {
        const res = await request("POST", `/v1/runs/${id}/replay`, keys.b, {});
        assert.equal(res.status, 404);
        assert.equal(res.body.error.code, "not_found");
        assert.equal(res.body.error.message, `No run '${id}'.`);
      }
      const archived = await created(`/v1/agents/${agents.a2}/runs`, {});
      await request("DELETE", `/v1/agents/${agents.a2}`, keys.a);
      const refusal = await request("POST", `/v1/runs/${archived.id}/replay`, keys.a, {});
      assert.equal(refusal.status, 409);
      assert.equal(refusal.body.error.code, "agent_archived");
    });

    it("lists model and bridge calls over every run of the tenant, filtered and paged", async () => {
      const log = new EventLog(h.db, { dialect: store.name });
      const llm = (at: number, data: RunEventData<"llm.call">): NewEvent => ({ type: "llm.call", data, ts: at });
      const bridge = (at: number, data: RunEventData<"bridge.call">): NewEvent => ({
        type: "bridge.call",
        data,
        ts: at,
      });
      const call = { bytes_in: 10, bytes_out: 20, ms: 3, method: "GET", path: "/x" };
      const [r0, r1, r2, r3] = seeded as [RunsTable, RunsTable, RunsTable, RunsTable];
      const t = (n: number) => T0 + n * 1000;
      await log.write(r0.id, 1, [
        { type: "log", data: { stream: "stdout", line: "not a call" }, ts: t(1) },
        llm(t(2), { provider: "openai", model: "gpt", status: 200, input_tokens: 5, output_tokens: 7, cost: 0.25 }),
        bridge(t(3), { ...call, connection: "github", status: 200 }),
      ]);
      await log.write(r1.id, 1, [
        llm(t(4), { provider: "anthropic", model: "claude", status: 429, code: "provider_rate_limited" }),
        llm(t(5), { provider: "openai", model: "gpt-mini", status: 200, cost: 0.01 }),
        bridge(t(6), { ...call, connection: "github", status: 403, code: "policy_denied", rule: "GET /y" }),
      ]);
      await log.write(r2.id, 2, [
        llm(t(7), { code: "out_of_credits" }),
        bridge(t(8), { ...call, connection: "slack", status: 502, code: "upstream_error" }),
        bridge(t(9), { ...call, connection: "slack", status: 200 }),
      ]);
      await log.write(r3.id, 1, [llm(t(7), { provider: "openai", model: "gpt", status: 200 })]);
      await log.write((theirs[0] as RunsTable).id, 1, [llm(t(3), { provider: "openai", model: "gpt", status: 200 })]);

      const llmCalls = await walk(LlmCallEvent, "/v1/llm-calls", 2);
      // Newest first; two calls at the same time come in run order, newest run first.
      assert.deepEqual(
        llmCalls.map((c) => [c.run_id, c.time, c.model ?? null]),
        [
          [r3.id, iso(t(7)), "gpt"],
          [r2.id, iso(t(7)), null],
          [r1.id, iso(t(5)), "gpt-mini"],
          [r1.id, iso(t(4)), "claude"],
          [r0.id, iso(t(2)), "gpt"],
        ],
      );
      const firstCall = llmCalls.at(-1);
      assert.deepEqual(firstCall, {
        run_id: r0.id,
        agent_id: agents.a1,
        seq: 2,
        attempt: 1,
        time: iso(t(2)),
        provider: "openai",
        model: "gpt",
        status: 200,
        input_tokens: 5,
        output_tokens: 7,
        cost: 0.25,
      });
      const runsOf = (calls: { run_id: string; seq: number }[]) => calls.map((c) => `${c.run_id}:${c.seq}`);
      const llmCases: [string, string[]][] = [
        [`agent_id=${agents.a2}`, [`${r3.id}:1`, `${r1.id}:2`, `${r1.id}:1`]],
        [`run_id=${r1.id}`, [`${r1.id}:2`, `${r1.id}:1`]],
        ["provider=openai", [`${r3.id}:1`, `${r1.id}:2`, `${r0.id}:2`]],
        ["provider=openai&model=gpt", [`${r3.id}:1`, `${r0.id}:2`]],
        ["outcome=error", [`${r2.id}:1`, `${r1.id}:1`]],
        [`outcome=ok&provider=openai&agent_id=${agents.a1}`, [`${r0.id}:2`]],
        [`created_after=${iso(t(4))}&created_before=${iso(t(7))}`, [`${r1.id}:2`, `${r1.id}:1`]],
        [`run_id=${(theirs[0] as RunsTable).id}`, []],
      ];
      for (const [query, expected] of llmCases) {
        assert.deepEqual(runsOf(await walk(LlmCallEvent, `/v1/llm-calls?${query}`, 1)), expected, query);
      }
      const bridgeCalls = await walk(BridgeCallEvent, "/v1/bridge-calls", 3);
      assert.deepEqual(runsOf(bridgeCalls), [`${r2.id}:3`, `${r2.id}:2`, `${r1.id}:3`, `${r0.id}:3`]);
      assert.deepEqual(bridgeCalls[2], {
        ...call,
        run_id: r1.id,
        agent_id: agents.a2,
        seq: 3,
        attempt: 1,
        time: iso(t(6)),
        connection: "github",
        status: 403,
        code: "policy_denied",
        rule: "GET /y",
      });
      for (const [query, expected] of [
        ["connection=github", [`${r1.id}:3`, `${r0.id}:3`]],
        ["outcome=error", [`${r2.id}:2`, `${r1.id}:3`]],
        ["connection=slack&outcome=ok", [`${r2.id}:3`]],
      ] as const) {
        assert.deepEqual(runsOf(await walk(BridgeCallEvent, `/v1/bridge-calls?${query}`, 1)), expected, query);
      }
      // The other tenant sees its own call only, and none of A's runs' calls.
      assert.deepEqual(runsOf(await walk(LlmCallEvent, "/v1/llm-calls", 10, keys.b)), [`${theirs[0]?.id}:1`]);
      assert.deepEqual(runsOf(await walk(LlmCallEvent, `/v1/llm-calls?run_id=${r1.id}`, 10, keys.b)), []);
      assert.deepEqual(await walk(BridgeCallEvent, "/v1/bridge-calls", 10, keys.b), []);
      for (const cursor of ["x", "1.2.nope", `${t(5)}.1`]) {
        const error = await refused(`/v1/llm-calls?cursor=${cursor}`, 400, "validation_failed");
        assert.equal(error.details[0].path, "cursor");
      }
      await refused("/v1/bridge-calls?outcome=maybe", 400, "validation_failed");
    });

    it("counts runs by status and spending per bucket, in all and by agent", async () => {
      // Credits settled within the seeded runs' half hour, through the ledger as the gateway does.
      let now = 0;
      const ledger = new Ledger(h.db, { dialect: store.name, now: () => now });
      await ledger.grant(tenants.a, 1_000_000_000);
      const spend = async (at: number, run: RunsTable, micro: number) => {
        now = at;
        const reserved = await ledger.reserve({
          tenantId: tenants.a,
          agentId: run.agent_id,
          runId: run.id,
          inputMicro: micro,
          outputMicroPerToken: 0,
          maxOutputTokens: 1,
        });
        assert.ok(reserved.ok);
        await ledger.settle(reserved.reservation, micro, {
          provider: "p",
          model: "m",
          input_tokens: 1,
          output_tokens: 1,
          source: "usage",
        });
      };
      const [r0, r1] = seeded as [RunsTable, RunsTable];
      await spend(T0 + 2 * MINUTE, r0, 1_500_000);
      await spend(T0 + 3 * MINUTE, r1, 250_000);
      await spend(T0 + 12 * MINUTE, r1, 2_000_000);
      await spend(T0 + 40 * MINUTE, r0, 9_000_000);

      const stats = await get(Stats, `/v1/stats?from=${iso(T0)}&to=${iso(T0 + 25 * MINUTE)}&bucket_s=600`);
      assert.equal(stats.bucket_s, 600);
      assert.equal(stats.agent_id, null);
      assert.deepEqual(
        stats.buckets.map((b) => [b.start, b.end]),
        [
          [iso(T0), iso(T0 + 10 * MINUTE)],
          [iso(T0 + 10 * MINUTE), iso(T0 + 20 * MINUTE)],
          [iso(T0 + 20 * MINUTE), iso(T0 + 25 * MINUTE)],
        ],
      );
      const expected = (from: number, to: number, agent?: string) => {
        const counts = {
          queued: 0,
          starting: 0,
          running: 0,
          waiting: 0,
          succeeded: 0,
          failed: 0,
          timed_out: 0,
          canceled: 0,
        };
        for (const r of seeded) {
          if (r.created_at >= from && r.created_at < to && (!agent || r.agent_id === agent)) {
            counts[r.status as RunStatus]++;
          }
        }
        return counts;
      };
      assert.deepEqual(
        stats.buckets.map((b) => b.runs),
        [
          expected(T0, T0 + 10 * MINUTE),
          expected(T0 + 10 * MINUTE, T0 + 20 * MINUTE),
          expected(T0 + 20 * MINUTE, T0 + 25 * MINUTE),
        ],
      );
      assert.deepEqual(
        stats.buckets.map((b) => [b.spent, b.spent_by_agent]),
        [
          [1.75, { [agents.a1]: 1.5, [agents.a2]: 0.25 }],
          [2, { [agents.a2]: 2 }],
          [0, {}],
        ],
      );
      assert.deepEqual(stats.totals, { runs: expected(T0, T0 + 25 * MINUTE), spent: 3.75 });

      const one = await get(
        Stats,
        `/v1/stats?from=${iso(T0)}&to=${iso(T0 + 25 * MINUTE)}&bucket_s=600&agent_id=${agents.a1}`,
      );
      assert.equal(one.agent_id, agents.a1);
      assert.deepEqual(one.buckets[0]?.runs, expected(T0, T0 + 10 * MINUTE, agents.a1));
      assert.deepEqual(
        one.buckets.map((b) => b.spent),
        [1.5, 0, 0],
      );
      // Another tenant counts its own runs only, and spent nothing.
      const other = await get(Stats, `/v1/stats?from=${iso(T0)}&to=${iso(T0 + 25 * MINUTE)}&bucket_s=3600`, keys.b);
      assert.deepEqual(other.totals, {
        runs: { queued: 0, starting: 0, running: 0, waiting: 0, succeeded: 5, failed: 0, timed_out: 0, canceled: 0 },
        spent: 0,
      });
      // By default: the last day, by the hour.
      assert.equal((await get(Stats, "/v1/stats")).buckets.length, 24);
      for (const [query, name] of [
        [`from=${iso(T0)}&to=${iso(T0)}`, "from"],
        [`from=${iso(T0)}&to=${iso(T0 + 2 * 86_400_000)}&bucket_s=60`, "bucket_s"],
        ["bucket_s=10", "bucket_s"],
        ["from=today", "from"],
      ]) {
        const error = await refused(`/v1/stats?${query}`, 400, "validation_failed");
        assert.equal(error.details[0].path, name, query);
      }
    });

    it("gives a schedule's next fire time, none while it is paused", async () => {
      const agent = await created("/v1/agents", { name: "nightly", instructions: "Say hi.", model: "m" });
      const schedule = Schedule.parse(await created("/v1/schedules", { agent: agent.id, cron: "0 9 * * *" }));
      assert.ok(schedule.next_fire_at !== null && Date.parse(schedule.next_fire_at) > Date.now());
      assert.equal(schedule.next_fire_at, schedule.next_at);
      const paused = Schedule.parse(await created(`/v1/schedules/${schedule.id}/pause`, undefined));
      assert.equal(paused.next_fire_at, null);
      assert.equal(paused.next_at, schedule.next_at);
      const listed = await get(Page(Schedule), "/v1/schedules");
      assert.deepEqual(
        listed.data.map((s) => s.next_fire_at),
        [null],
      );
      const resumed = Schedule.parse(await created(`/v1/schedules/${schedule.id}/resume`, undefined));
      assert.equal(resumed.next_fire_at, resumed.next_at);
    });

    it("gives a run's events of the types asked for, as a page and as a stream", async () => {
      const run = Run.parse(await created(`/v1/agents/${agents.a1}/runs`, {}));
      await waitFor(async () => (await get(Run, `/v1/runs/${run.id}`)).status === "failed", {
        what: "the run to fail (this host boots no sandbox)",
      });
      const all = await get(Page(RunEvent), `/v1/runs/${run.id}/events`);
      const types = ["run.queued", "run.failed"];
      const page = await get(Page(RunEvent), `/v1/runs/${run.id}/events?types=${types.join(",")}`);
      assert.deepEqual(
        page.data,
        all.data.filter((e) => types.includes(e.type)),
      );
      const one = await get(Page(RunEvent), `/v1/runs/${run.id}/events?types=run.failed,run.queued&limit=1`);
      assert.deepEqual(
        one.data.map((e) => e.type),
        ["run.queued"],
      );
      assert.equal(one.next_cursor, String(one.data[0]?.seq));

      // The stream sends only those types and ends with the run, even when its end is not among them.
      const streamed = async (query: string) => {
        const res = await h.services.app.request(`/v1/runs/${run.id}/events?${query}`, {
          headers: { authorization: `Bearer ${keys.a}`, accept: "text/event-stream" },
        });
        assert.equal(res.status, 200);
        return [...(await res.text()).matchAll(/^event: (.+)$/gm)].map((m) => m[1]);
      };
      assert.deepEqual(await streamed("types=run.queued"), ["run.queued"]);
      assert.deepEqual(await streamed("types=attempt.error,run.failed"), ["attempt.error", "run.failed"]);
      const error = await refused(`/v1/runs/${run.id}/events?types=log,gpu.sampled,nope`, 400, "validation_failed");
      assert.equal(error.details[0].path, "types");
      assert.match(error.message, /"gpu\.sampled", "nope"/);
    });
  }),
);

describe("nextFireAt", () => {
  const row = {
    id: "sch_x",
    tenant_id: "ten_x",
    agent_id: "agt_x",
    cron: "0 9 * * *",
    timezone: "UTC",
    overlap: "skip",
    catch_up_s: 3600,
    input: null,
    paused: 0,
    next_at: Date.parse("2026-01-05T09:00:00Z"),
    last_slot_at: null,
    end_user: null,
    created_at: 0,
  };
  it("is the next slot ahead, now for a slot due inside the catch-up window, else the slot after now", () => {
    assert.equal(nextFireAt(row, Date.parse("2026-01-05T08:00:00Z")), row.next_at);
    const late = Date.parse("2026-01-05T09:30:00Z");
    assert.equal(nextFireAt(row, late), late);
    // Down for two days: the slot of this morning is inside the window, the older ones are not.
    const later = Date.parse("2026-01-07T09:20:00Z");
    assert.equal(nextFireAt(row, later), later);
    assert.equal(nextFireAt(row, Date.parse("2026-01-07T11:00:00Z")), Date.parse("2026-01-08T09:00:00Z"));
    assert.equal(nextFireAt({ ...row, paused: 1 }, late), null);
    assert.equal(nextFireAt({ ...row, next_at: null }, late), null);
  });
});

forEachStore((store) =>
  describe(`calls written before their index on ${store.name}`, { skip: store.skip }, () => {
    it("are indexed by the migration that makes the index", async () => {
      const opened = await store.open({ to: "0012_runner_sources" });
      try {
        const db = opened.db;
        const { tenant, agent } = await seedAgent(db);
        // The columns later migrations add are left out.
        const {
          replay_of: _r,
          end_user: _e,
          trace_parent: _t,
          ...run
        } = runRow(tenant, agent, { id: "run_1", event_seq: 3 });
        await db.insertInto("runs").values(run).execute();
        const event = (seq: number, type: string, data: unknown) => ({
          run_id: "run_1",
          seq,
          attempt: 1,
          type,
          ts: 1000 + seq,
          data: JSON.stringify(data),
        });
        await db
          .insertInto("events")
          .values([
            event(1, "llm.call", { provider: "openai", model: "gpt", status: 200 }),
            event(2, "bridge.call", { connection: "gh", method: "GET", path: "/", status: 404, bytes_in: 0 }),
            event(3, "log", { stream: "stdout", line: "x" }),
          ])
          .execute();
        await migrate(db);
        const rows = await db.selectFrom("calls").selectAll().orderBy("seq").execute();
        assert.deepEqual(
          rows.map((r) => ({ ...r, ts: Number(r.ts) })),
          [
            {
              run_id: "run_1",
              seq: 1,
              tenant_id: tenant,
              agent_id: agent,
              kind: "llm",
              ts: 1001,
              target: "openai",
              model: "gpt",
              ok: 1,
            },
            {
              run_id: "run_1",
              seq: 2,
              tenant_id: tenant,
              agent_id: agent,
              kind: "bridge",
              ts: 1002,
              target: "gh",
              model: null,
              ok: 0,
            },
          ],
        );
      } finally {
        await opened.close();
      }
    });
  }),
);
