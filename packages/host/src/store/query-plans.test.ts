/**
 * The lists and counts a dashboard asks for stay fast with many runs because each reads a range
 * of an index made for it. Rather than timing them, this seeds 100,000 runs (with as many calls
 * and ledger lines) and reads each query's plan from the database itself: the index it names
 * must be the one used, no big table may be read in full, and a page must be read in its order
 * (no sort) where the filter keeps many rows. Plans are read before and after the database has
 * statistics (a new SQLite store has none; PostgreSQL gathers them on its own after a while).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type Compilable, CompiledQuery, type Kysely, sql } from "kysely";
import { type CallFilter, CallLog } from "../activity/calls.ts";
import { Claims } from "../engine/claims.ts";
import { type RunFilter, RunRepository } from "../engine/runs.ts";
import { Ledger } from "../gateway/ledger.ts";
import { forEachStore, type StoreKind } from "../testing/stores.ts";
import { runRow } from "../testing/test-store.ts";
import { EventLog } from "./event-log.ts";
import { newId } from "./ids.ts";
import type { Dialect } from "./portable.ts";
import type { CallsTable, CreditLedgerTable, Database, EventsTable, RunsTable } from "./schema.ts";

const RUNS = 100_000;
const CALLS = 50_000;
const LEDGER_LINES = 50_000;
const DAY = 86_400_000;

/** A small deterministic generator, so that every run of the test seeds the same shapes. */
function random(seed: number): () => number {
  let s = seed;
  return () => {
    s = (s * 1_103_515_245 + 12_345) % 2 ** 31;
    return s / 2 ** 31;
  };
}

/** The one of `options` whose cumulative weight first exceeds r. */
function pick<T>(r: number, options: [T, number][]): T {
  let sum = 0;
  for (const [value, weight] of options) {
    sum += weight;
    if (r < sum) return value;
  }
  return (options[options.length - 1] as [T, number])[0];
}

/** Inserts rows in one transaction, in statements of as many rows as either database's cap on parameters allows. */
async function insertAll<T extends keyof Database>(db: Kysely<Database>, table: T, rows: object[]) {
  const per = Math.floor(30_000 / Object.keys(rows[0] ?? { x: 1 }).length);
  await db.transaction().execute(async (trx) => {
    for (let i = 0; i < rows.length; i += per) {
      await trx
        .insertInto(table)
        // biome-ignore lint/suspicious/noExplicitAny: rows of the table named, built above.
        .values(rows.slice(i, i + per) as any)
        .execute();
    }
  });
}

/** The plan of a query, one line per step: SQLite's EXPLAIN QUERY PLAN, PostgreSQL's plan nodes. */
async function planOf(db: Kysely<Database>, dialect: Dialect, query: Compilable): Promise<string[]> {
  const { sql: text, parameters } = query.compile();
  if (dialect === "sqlite") {
    const { rows } = await db.executeQuery<{ detail: string }>(
      CompiledQuery.raw(`EXPLAIN QUERY PLAN ${text}`, [...parameters]),
    );
    return rows.map((r) => r.detail);
  }
  const { rows } = await db.executeQuery<{ "QUERY PLAN": unknown }>(
    CompiledQuery.raw(`EXPLAIN (FORMAT JSON) ${text}`, [...parameters]),
  );
  const lines: string[] = [];
  const walk = (node: Record<string, unknown>) => {
    const on = node["Relation Name"] ? ` on ${node["Relation Name"]}` : "";
    const using = node["Index Name"] ? ` using ${node["Index Name"]}` : "";
    lines.push(`${node["Node Type"]}${on}${using}`);
    for (const child of (node.Plans as Record<string, unknown>[] | undefined) ?? []) walk(child);
  };
  const plan = rows[0]?.["QUERY PLAN"] as { Plan: Record<string, unknown> }[];
  walk((plan[0] as { Plan: Record<string, unknown> }).Plan);
  return lines;
}

interface Case {
  what: string;
  query: Compilable;
  /** The index the plan must use: a name, or any of several (a filter on two indexed columns). */
  index: string | string[];
  /** The plan must read rows in the page's order (no sort step). */
  ordered: boolean;
}

/** Whether a plan reads `table` in full, sorts, or uses `index`. */
function judge(dialect: Dialect, plan: string[], table: string) {
  if (dialect === "sqlite") {
    return {
      fullScan: plan.some((l) => new RegExp(`^SCAN ${table}\\b`).test(l)),
      sorts: plan.some((l) => /USE TEMP B-TREE FOR (ORDER|GROUP) BY/.test(l)),
      uses: (index: string) => plan.some((l) => l.startsWith("SEARCH") && l.includes(` INDEX ${index} `)),
    };
  }
  return {
    fullScan: plan.some((l) => l.startsWith("Seq Scan") && l.includes(` on ${table}`)),
    sorts: plan.some((l) => /^(Incremental )?Sort\b/.test(l)),
    uses: (index: string) => plan.some((l) => l.endsWith(` using ${index}`)),
  };
}

forEachStore((store: StoreKind) =>
  describe(`query plans over ${RUNS} runs on ${store.name}`, { skip: store.skip }, () => {
    let opened: Awaited<ReturnType<StoreKind["open"]>>;
    let runs: RunRepository;
    let claims: Claims;
    let calls: CallLog;
    let ledger: Ledger;
    const big = "ten_big";
    const agentIds = Array.from({ length: 20 }, (_, i) => `agt_${String(i).padStart(4, "0")}`);
    let sample: { run: RunsTable; child: RunsTable; now: number };

    before(async () => {
      opened = await store.open();
      const db = opened.db;
      const log = new EventLog(db, { dialect: store.name });
      runs = new RunRepository(db, log);
      claims = new Claims({ db, runs, events: log }, { workerId: "plans", maxConcurrent: 1, dialect: store.name });
      calls = new CallLog(db);
      ledger = new Ledger(db, { dialect: store.name });
      const r = random(7);
      const now = Date.parse("2026-06-30T00:00:00Z");
      await insertAll(db, "tenants", [
        { id: big, name: "big", created_at: 0 },
        { id: "ten_small", name: "small", created_at: 0 },
      ]);
      await insertAll(
        db,
        "agents",
        agentIds.map((id, i) => ({
          id,
          tenant_id: i < 16 ? big : "ten_small",
          name: id,
          spec: "{}",
          current_version: 1,
          version: 1,
          archived_at: null,
          created_at: 0,
        })),
      );
      // Runs over 30 days: nine in ten the big tenant's, mostly finished, a tenth of them child runs.
      const rows: RunsTable[] = [];
      for (let i = 0; i < RUNS; i++) {
        const at = now - Math.floor(r() * 30 * DAY);
        const parent = i > 100 && r() < 0.1 ? rows[Math.floor(r() * rows.length)] : undefined;
        const tenant = parent ? parent.tenant_id : r() < 0.9 ? big : "ten_small";
        const agents = tenant === big ? agentIds.slice(0, 16) : agentIds.slice(16);
        const agent = agents[Math.floor(r() * agents.length)] as string;
        rows.push(
          runRow(tenant, agent, {
            id: newId("run", at),
            created_at: at,
            started_at: at,
            finished_at: at + 1000,
            status: pick(r(), [
              ["succeeded", 0.8],
              ["failed", 0.1],
              ["canceled", 0.05],
              ["timed_out", 0.03],
              ["queued", 0.02],
            ]),
            trigger: parent
              ? "agent"
              : pick(r(), [
                  ["api", 0.55],
                  ["schedule", 0.3],
                  ["webhook", 0.12],
                  ["replay", 0.03],
                ]),
            parent_run_id: parent?.id ?? null,
            root_run_id: parent ? (parent.root_run_id ?? parent.id) : null,
          }),
        );
      }
      await insertAll(db, "runs", rows);
      // Calls on random runs, each with its event.
      const seqs = new Map<string, number>();
      const events: EventsTable[] = [];
      const callRows: CallsTable[] = [];
      for (let i = 0; i < CALLS; i++) {
        const run = rows[Math.floor(r() * rows.length)] as RunsTable;
        const seq = (seqs.get(run.id) ?? 0) + 1;
        seqs.set(run.id, seq);
        const llm = r() < 0.6;
        const ts = run.created_at + seq * 10;
        events.push({ run_id: run.id, seq, attempt: 1, type: llm ? "llm.call" : "bridge.call", ts, data: "{}" });
        callRows.push({
          run_id: run.id,
          seq,
          tenant_id: run.tenant_id,
          agent_id: run.agent_id,
          kind: llm ? "llm" : "bridge",
          ts,
          target: llm ? `provider${Math.floor(r() * 3)}` : `conn${Math.floor(r() * 5)}`,
          model: llm ? `model${Math.floor(r() * 6)}` : null,
          ok: r() < 0.95 ? 1 : 0,
        });
      }
      await insertAll(db, "events", events);
      await insertAll(db, "calls", callRows);
      const ledgerRows: CreditLedgerTable[] = [];
      for (let i = 0; i < LEDGER_LINES; i++) {
        const run = rows[Math.floor(r() * rows.length)] as RunsTable;
        ledgerRows.push({
          id: newId("led", run.created_at + 5),
          tenant_id: run.tenant_id,
          agent_id: run.agent_id,
          run_id: run.id,
          call_id: `cal_${Math.floor(i / 2)}`,
          kind: i % 2 === 0 ? "reserve" : "settle",
          amount: 1000 + Math.floor(r() * 100_000),
          detail: null,
          created_at: run.created_at + 5,
        });
      }
      await insertAll(db, "credit_ledger", ledgerRows);
      const child = rows.find((x) => x.parent_run_id !== null && x.tenant_id === big) as RunsTable;
      const run = rows.find((x) => x.tenant_id === big && (seqs.get(x.id) ?? 0) > 0) as RunsTable;
      sample = { run, child, now };
    });
    after(async () => {
      await opened?.close();
    });

    const cases = (): Case[] => {
      const { run, child, now } = sample;
      const list = (filter: Omit<RunFilter, "limit">) => runs.listQuery(big, { limit: 50, ...filter });
      const callList = (kind: "llm" | "bridge", filter: Omit<CallFilter, "limit">) =>
        calls.listQuery(big, kind, { limit: 50, ...filter });
      const range = { from: now - 7 * DAY, to: now, bucketMs: 3_600_000 };
      return [
        { what: "runs", query: list({}), index: "runs_tenant_list", ordered: true },
        { what: "runs, next page", query: list({ cursor: run.id }), index: "runs_tenant_list", ordered: true },
        { what: "runs of an agent", query: list({ agentId: run.agent_id }), index: "runs_agent_list", ordered: true },
        { what: "runs by status", query: list({ status: "failed" }), index: "runs_status", ordered: true },
        {
          what: "runs by status and time",
          query: list({ status: "failed", createdAfter: now - 3 * DAY, createdBefore: now - DAY }),
          // Either the status's index over the time range, or the time range checking the status in the index.
          index: ["runs_status", "runs_tenant_list"],
          ordered: true,
        },
        { what: "runs by trigger", query: list({ trigger: "webhook" }), index: "runs_trigger_list", ordered: true },
        {
          what: "runs by trigger and time, next page",
          query: list({ trigger: "webhook", createdAfter: now - 3 * DAY, cursor: run.id }),
          index: "runs_trigger_list",
          ordered: true,
        },
        {
          what: "runs by time",
          query: list({ createdAfter: now - 3 * DAY, createdBefore: now - DAY }),
          index: "runs_tenant_list",
          ordered: true,
        },
        {
          what: "runs of an agent by time, next page",
          query: list({ agentId: run.agent_id, createdAfter: now - 3 * DAY, cursor: run.id }),
          index: "runs_agent_list",
          ordered: true,
        },
        {
          what: "runs of an agent by status",
          query: list({ agentId: run.agent_id, status: "failed", createdAfter: now - 3 * DAY }),
          index: ["runs_agent_list", "runs_status", "runs_tenant_list"],
          ordered: true,
        },
        {
          what: "runs by parent",
          query: list({ parentRunId: child.parent_run_id ?? "" }),
          index: "runs_parent_list",
          ordered: false,
        },
        {
          what: "runs by root",
          query: list({ rootRunId: child.root_run_id ?? "" }),
          index: "runs_root_list",
          ordered: false,
        },
        {
          what: "runs by id prefix",
          query: list({ idPrefix: run.id.slice(0, 12) }),
          index: "runs_tenant_list",
          ordered: false,
        },
        { what: "run counts", query: runs.countsQuery(big, range), index: "runs_tenant_list", ordered: false },
        {
          what: "run counts of an agent",
          query: runs.countsQuery(big, { ...range, agentId: run.agent_id }),
          index: "runs_agent_list",
          ordered: false,
        },
        {
          what: "queued runs a claim is offered",
          query: claims.offerQuery(opened.db, big, undefined, 50, false),
          index: "runs_status",
          ordered: true,
        },
        {
          what: "queued runs a claim is offered, further down",
          query: claims.offerQuery(opened.db, big, run.id, 50, false),
          index: "runs_status",
          ordered: true,
        },
        {
          what: "queued child runs a claim is offered",
          query: claims.offerQuery(opened.db, big, undefined, 50, true),
          // SQLite's planner prefers the index with more equalities: the tenant's queue, checking each run.
          index: store.name === "sqlite" ? ["runs_queue_children", "runs_status"] : "runs_queue_children",
          ordered: true,
        },
        { what: "spending", query: ledger.spentQuery(big, range), index: "credit_ledger_spend", ordered: false },
        {
          what: "spending of an agent",
          query: ledger.spentQuery(big, { ...range, agentId: run.agent_id }),
          index: "credit_ledger_spend",
          ordered: false,
        },
        { what: "model calls", query: callList("llm", {}), index: "calls_tenant", ordered: true },
        {
          what: "model calls, next page",
          query: callList("llm", { cursor: { ts: now - DAY, runId: run.id, seq: 1 } }),
          index: "calls_tenant",
          ordered: true,
        },
        {
          what: "model calls by time",
          query: callList("llm", { createdAfter: now - 3 * DAY, createdBefore: now - DAY }),
          index: "calls_tenant",
          ordered: true,
        },
        {
          what: "model calls of an agent",
          query: callList("llm", { agentId: run.agent_id }),
          index: "calls_agent",
          ordered: true,
        },
        {
          what: "model calls of an agent by time, next page",
          query: callList("llm", {
            agentId: run.agent_id,
            createdAfter: now - 3 * DAY,
            cursor: { ts: now - DAY, runId: run.id, seq: 1 },
          }),
          index: "calls_agent",
          ordered: true,
        },
        {
          what: "model calls of a provider and model",
          query: callList("llm", { target: "provider1", model: "model2" }),
          index: "calls_target",
          ordered: true,
        },
        {
          what: "failed bridge calls",
          query: callList("bridge", { outcome: "error" }),
          index: "calls_outcome",
          ordered: true,
        },
        {
          what: "bridge calls of a connection",
          query: callList("bridge", { target: "conn3" }),
          index: "calls_target",
          ordered: true,
        },
        {
          what: "failed bridge calls of a connection by time",
          query: callList("bridge", {
            target: "conn3",
            outcome: "error",
            createdAfter: now - 3 * DAY,
            createdBefore: now,
          }),
          index: ["calls_target", "calls_outcome"],
          ordered: true,
        },
        {
          what: "a run's bridge calls",
          query: callList("bridge", { runId: run.id }),
          index: store.name === "sqlite" ? "sqlite_autoindex_calls_1" : "calls_pk",
          ordered: false,
        },
      ];
    };

    const check = async (when: string) => {
      const problems: string[] = [];
      for (const c of cases()) {
        const plan = await planOf(opened.db, store.name, c.query);
        const table = c.what.includes("calls") ? "calls" : c.what.startsWith("spending") ? "credit_ledger" : "runs";
        const { fullScan, sorts, uses } = judge(store.name, plan, table);
        const indexes = Array.isArray(c.index) ? c.index : [c.index];
        const wrong = [
          ...(indexes.some(uses) ? [] : [`not ${indexes.join(" or ")}`]),
          ...(fullScan ? [`reads ${table} in full`] : []),
          ...(c.ordered && sorts ? ["sorts"] : []),
          // The events of listed calls are found by their key, never scanned.
          ...(table === "calls" && judge(store.name, plan, "e").fullScan ? ["reads events in full"] : []),
          ...(table === "calls" && judge(store.name, plan, "events").fullScan ? ["reads events in full"] : []),
        ];
        if (wrong.length > 0) problems.push(`${c.what} (${when}): ${wrong.join(", ")}\n    ${plan.join("\n    ")}`);
      }
      assert.deepEqual(problems, []);
    };

    it("reads each list, count and sum from its index on a store without statistics", {
      skip:
        store.name === "postgres" &&
        "PostgreSQL gathers statistics itself (autovacuum) soon after such writes; its plans are checked with them",
    }, async () => {
      await check("no statistics");
    });

    it("reads each from its index once the database has statistics", async () => {
      // PostgreSQL's autovacuum analyzes and vacuums (which lets scans use the index alone).
      await sql.raw(store.name === "postgres" ? "VACUUM ANALYZE" : "ANALYZE").execute(opened.db);
      await check("with statistics");
    });
  }),
);
