/** The credits ledger against real stores (SQLite and PostgreSQL): hard caps under concurrency, clamping, settlement. */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { Kysely } from "kysely";
import { newId } from "../store/ids.ts";
import type { Dialect } from "../store/portable.ts";
import type { Database } from "../store/schema.ts";
import { forEachStore } from "../testing/stores.ts";
import { Ledger } from "./ledger.ts";

forEachStore((store) =>
  describe(`Ledger on ${store.name}`, { skip: store.skip }, () => {
    let db: Kysely<Database>;
    let close: () => Promise<void>;
    let dialect: Dialect;
    let ledger: Ledger;
    const tenant = newId("ten");
    const detail = { provider: "p", model: "m", input_tokens: 0, output_tokens: 0, source: "usage" as const };

    before(async () => {
      ({ db, close, dialect } = await store.open());
      await db.insertInto("tenants").values({ id: tenant, name: "t", created_at: 0 }).execute();
      ledger = new Ledger(db, { dialect });
    });
    after(async () => {
      await close?.();
    });

    /** Sums of the ledger's own lines for a key, to check the running totals against. */
    async function fromLines(column: "run_id" | "agent_id", id: string) {
      const rows = await db.selectFrom("credit_ledger").selectAll().where(column, "=", id).execute();
      return rows.filter((r) => r.kind === "settle").reduce((n, r) => n + Number(r.amount), 0);
    }

    test("a tenant without credits cannot reserve; a grant makes room; an unknown tenant is refused", async () => {
      const r = await ledger.reserve({
        tenantId: tenant,
        agentId: "agt_a",
        runId: "run_a",
        inputMicro: 10,
        outputMicroPerToken: 1,
        maxOutputTokens: 10,
      });
      assert.deepEqual(r, { ok: false, scope: "tenant", availableMicro: 0, exhausted: true });
      const balance = await ledger.grant(tenant, 5_000_000, "start");
      assert.equal(balance.available, 5);
      await assert.rejects(ledger.grant("ten_missing", 1), /No tenant/);
    });

    test("output is clamped to what the tightest budget allows, and refused when not one token fits", async () => {
      const r = await ledger.reserve({
        tenantId: tenant,
        agentId: "agt_b",
        runId: "run_b",
        inputMicro: 100,
        outputMicroPerToken: 10,
        maxOutputTokens: 1000,
        perRun: 1000,
      });
      assert.ok(r.ok);
      assert.equal(r.reservation.maxOutputTokens, 90);
      assert.equal(r.reservation.amount, 1000);
      const refused = await ledger.reserve({
        tenantId: tenant,
        agentId: "agt_b",
        runId: "run_b",
        inputMicro: 1,
        outputMicroPerToken: 10,
        maxOutputTokens: 1,
        perRun: 1000,
      });
      assert.deepEqual(refused, { ok: false, scope: "run", availableMicro: 0, exhausted: false });
      // Settling for less frees the rest; settling twice changes nothing.
      await ledger.settle(r.reservation, 250, detail);
      await ledger.settle(r.reservation, 999, detail);
      await ledger.release(r.reservation, "late");
      const totals = await ledger.totals("run", ["run_b"]);
      assert.deepEqual(totals.get("run_b"), { spent: 250, reserved: 0 });
    });

    test("100 concurrent calls never settle more than the budget; every refusal names it", async () => {
      const budget = 50_000;
      const results = await Promise.all(
        Array.from({ length: 100 }, async (_, i) => {
          const r = await ledger.reserve({
            tenantId: tenant,
            agentId: "agt_c",
            runId: "run_c",
            inputMicro: 1200 + i,
            outputMicroPerToken: 3,
            maxOutputTokens: 2000,
            perRun: budget,
            agentTotal: 10 * budget,
          });
          if (!r.ok) return r;
          // The provider's figures: some use all of their output, some little.
          await new Promise((resolve) => setTimeout(resolve, i % 7));
          const out = i % 3 === 0 ? r.reservation.maxOutputTokens : Math.floor(r.reservation.maxOutputTokens / 4);
          await ledger.settle(r.reservation, 1000 + out * 3, { ...detail, output_tokens: out });
          return r;
        }),
      );
      const refused = results.filter((r) => !r.ok);
      const passed = results.filter((r) => r.ok);
      assert.ok(passed.length >= 5, `passed ${passed.length}`);
      assert.ok(refused.length > 0);
      for (const r of refused) assert.equal(r.scope, "run");
      const spent = await fromLines("run_id", "run_c");
      assert.ok(spent <= budget, `settled ${spent} of ${budget}`);
      const totals = await ledger.totals("run", ["run_c"]);
      assert.deepEqual(totals.get("run_c"), { spent, reserved: 0 }, "running totals equal the ledger's lines");
      assert.equal((await ledger.totals("agent", ["agt_c"])).get("agt_c")?.spent, await fromLines("agent_id", "agt_c"));
    });

    test("a tenant's balance bounds every agent together", async () => {
      const other = newId("ten");
      await db.insertInto("tenants").values({ id: other, name: "o", created_at: 0 }).execute();
      await ledger.grant(other, 10_000);
      const results = await Promise.all(
        Array.from({ length: 40 }, async (_, i) => {
          const r = await ledger.reserve({
            tenantId: other,
            agentId: `agt_${i % 4}`,
            runId: `run_${i}`,
            inputMicro: 500,
            outputMicroPerToken: 1,
            maxOutputTokens: 500,
          });
          if (r.ok) await ledger.settle(r.reservation, r.reservation.amount, detail);
          return r.ok;
        }),
      );
      const balance = await ledger.balance(other);
      assert.equal(results.filter(Boolean).length, 10);
      assert.equal(balance.spent, 0.01);
      assert.equal(balance.available, 0);
      assert.equal(balance.reserved, 0);
    });

    test("reservations a dead host left open are billed at their worst case by the next one", async () => {
      const t2 = newId("ten");
      await db.insertInto("tenants").values({ id: t2, name: "dead", created_at: 0 }).execute();
      await ledger.grant(t2, 100_000);
      const r = await ledger.reserve({
        tenantId: t2,
        agentId: "agt_dead",
        runId: "run_dead",
        inputMicro: 1000,
        outputMicroPerToken: 10,
        maxOutputTokens: 100,
      });
      assert.ok(r.ok);
      // A new ledger over the same store, as after a restart.
      assert.equal(await new Ledger(db, { dialect }).settleAbandoned(), 1);
      assert.equal(await new Ledger(db, { dialect }).settleAbandoned(), 0);
      assert.deepEqual((await ledger.totals("run", ["run_dead"])).get("run_dead"), { spent: 2000, reserved: 0 });
      // The store itself refuses a second close of the same call.
      await assert.rejects(
        db
          .insertInto("credit_ledger")
          .values({
            id: newId("led"),
            tenant_id: t2,
            agent_id: null,
            run_id: "run_dead",
            call_id: r.reservation.callId,
            kind: "release",
            amount: 0,
            detail: null,
            created_at: 0,
          })
          .execute(),
        /UNIQUE|unique constraint/,
      );
    });

    test("a refusal says whether calls in flight hold the rest or the budget is spent", async () => {
      const t3 = newId("ten");
      await db.insertInto("tenants").values({ id: t3, name: "held", created_at: 0 }).execute();
      await ledger.grant(t3, 10_000);
      const req = {
        tenantId: t3,
        agentId: "agt_h",
        runId: "run_h",
        inputMicro: 4000,
        outputMicroPerToken: 1,
        maxOutputTokens: 4000,
      };
      const first = await ledger.reserve(req);
      assert.ok(first.ok);
      const held = await ledger.reserve(req);
      assert.equal(held.ok, false);
      assert.equal(!held.ok && held.exhausted, false, "the first call's reservation holds the rest");
      await ledger.settle(first.reservation, 8000, { ...detail });
      const spent = await ledger.reserve(req);
      assert.equal(!spent.ok && spent.exhausted, true);
    });
  }),
);
