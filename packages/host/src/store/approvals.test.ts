/**
 * Approvals in real stores (SQLite and PostgreSQL), without sandboxes: asking makes a running run
 * wait and deciding the last pending one lets it run on, each with its events; max_pending bounds
 * what one rule may have waiting; a decision is made once, however many race; the right to send
 * is taken once; time running out expires or denies; a run's end cancels what waits; and a link
 * token is the host's for one approval only.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { AppError, ApprovalRule, isEvent } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { ApprovalLinks } from "../bridge/approvals.ts";
import { parseMasterKey, Vault } from "../secrets/vault.ts";
import { forEachStore } from "../testing/stores.ts";
import { runRow, seedAgent } from "../testing/test-store.ts";
import { ApprovalStore, cancelPendingApprovals, type HeldCall } from "./approvals.ts";
import { EventLog } from "./event-log.ts";
import type { Database } from "./schema.ts";

const call = (rule: Partial<ApprovalRule> = {}, hash = "h1"): HeldCall => ({
  kind: "bridge",
  target: "up",
  ruleKey: "bridge:up:0",
  step: "bridge:up#1",
  hash,
  request: {
    kind: "bridge",
    target: "up",
    method: "POST",
    path: "/x",
    query: "",
    url: "https://up.example.com/x",
    headers: {},
    body: { size: 1, sha256: "", preview: "x", truncated: false, binary: false },
  },
  held: { method: "POST" },
  body: Buffer.from("x"),
  rule: ApprovalRule.parse(rule),
});

forEachStore((store) =>
  describe(`ApprovalStore on ${store.name}`, { skip: store.skip }, () => {
    let db: Kysely<Database>;
    let close: () => Promise<void>;
    let events: EventLog;
    let approvals: ApprovalStore;
    let tenant: string;
    let agent: string;

    before(async () => {
      const opened = await store.open();
      ({ db, close } = opened);
      ({ tenant, agent } = await seedAgent(db));
      events = new EventLog(db, { dialect: store.name });
      approvals = new ApprovalStore(db, events);
    });
    after(async () => {
      await close?.();
    });

    const newRun = async (status = "running") => {
      const row = runRow(tenant, agent, { status });
      await db.insertInto("runs").values(row).execute();
      return { runId: row.id, attempt: 1, tenantId: tenant, agentId: agent };
    };
    const runOf = (id: string) => db.selectFrom("runs").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
    const types = async (runId: string) => (await events.list(runId, 0, 100)).map((e) => e.type);
    const approve = { status: "approved", via: "api", keyId: "key_x", note: null } as const;

    test("asking makes the run wait; deciding the last pending approval lets it run on", async () => {
      const asker = await newRun();
      const a = await approvals.ask(asker, call());
      const b = await approvals.ask(asker, call({}, "h2"));
      const waiting = await runOf(asker.runId);
      assert.deepEqual([waiting.status, waiting.reason], ["waiting", "approval"]);
      assert.equal((await approvals.decide(a.id, approve)).changed, true);
      assert.equal((await runOf(asker.runId)).status, "waiting", "another call still waits");
      await approvals.decide(b.id, { status: "denied", via: "api", keyId: null, note: "no" });
      const resumed = await runOf(asker.runId);
      assert.deepEqual([resumed.status, resumed.reason, resumed.waiting_since], ["running", null, null]);
      assert.deepEqual(await types(asker.runId), [
        "approval.requested",
        "run.waiting",
        "approval.requested",
        "approval.decided",
        "approval.decided",
        "run.resumed",
      ]);
      const decided = (await events.list(asker.runId, 0, 100)).filter(isEvent("approval.decided"));
      assert.deepEqual(
        decided.map((e) => [e.data.status, e.data.note ?? null]),
        [
          ["approved", null],
          ["denied", "no"],
        ],
      );
      // The standing approval of a request is found by its hash; the denial stands too.
      assert.equal((await approvals.standing(asker.runId, "h1"))?.id, a.id);
      assert.equal((await approvals.standing(asker.runId, "h2"))?.status, "denied");
      assert.equal(await approvals.standing(asker.runId, "h3"), undefined);
    });

    test("refuses past max_pending for the rule, and decides once however many race", async () => {
      const asker = await newRun();
      const rule = { max_pending: 2 };
      const first = await approvals.ask(asker, call(rule, "m1"));
      await approvals.ask(asker, call(rule, "m2"));
      await assert.rejects(
        approvals.ask(asker, call(rule, "m3")),
        (err: unknown) => err instanceof AppError && err.code === "approval_limit",
      );
      const raced = await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          approvals.decide(first.id, i % 2 ? approve : { status: "denied", via: "api", keyId: null, note: null }),
        ),
      );
      assert.equal(raced.filter((r) => r.changed).length, 1);
      assert.equal(new Set(raced.map((r) => r.row.status)).size, 1, "every racer sees the one decision");
      // The right to send an approved call is taken once.
      if (raced[0]?.row.status === "approved") {
        const claims = await Promise.all(Array.from({ length: 8 }, () => approvals.claimForward(first.id)));
        assert.equal(claims.filter(Boolean).length, 1);
      }
      // With one decided, one more may wait.
      await approvals.ask(asker, call(rule, "m3"));
    });

    test("expires what nobody decided in time, denies past auto_deny_after_s, and cancels with the run", async () => {
      const asker = await newRun();
      const now = Date.now();
      const expiring = await approvals.ask(asker, call({ timeout_s: 10 }, "e1"), now);
      const denying = await approvals.ask(asker, call({ timeout_s: 100, auto_deny_after_s: 5 }, "e2"), now);
      const left = await approvals.ask(asker, call({ timeout_s: 100 }, "e3"), now);
      await approvals.expireDue(now + 6000);
      assert.equal((await approvals.get(denying.id))?.status, "denied");
      assert.equal((await approvals.get(expiring.id))?.status, "pending");
      // Deciding one whose time ran out records it expired, whatever was asked.
      const late = await approvals.decide(expiring.id, approve, () => {}, now + 11_000);
      assert.deepEqual([late.changed, late.row.status], [true, "expired"]);
      const canceled = await db.transaction().execute((trx) => cancelPendingApprovals(trx, asker.runId));
      assert.deepEqual(
        canceled.map((e) => e.type === "approval.decided" && e.data.status),
        ["canceled"],
      );
      assert.equal((await approvals.get(left.id))?.status, "canceled");
    });

    test("leaves a queued run queued: its approvals wait for its next attempt", async () => {
      const asker = await newRun("queued");
      const a = await approvals.ask(asker, call({}, "q1"));
      assert.equal((await runOf(asker.runId)).status, "queued");
      await approvals.decide(a.id, approve);
      assert.equal((await runOf(asker.runId)).status, "queued");
      assert.deepEqual(await types(asker.runId), ["approval.requested", "approval.decided"]);
    });
  }),
);

describe("approval links", () => {
  const vault = new Vault(parseMasterKey(Buffer.alloc(32, 7).toString("base64"), "test"));
  const links = new ApprovalLinks(vault, "https://paddock.example.com/");

  test("carry a token for one approval, which no altered or other token passes", () => {
    const id = `apr_${"1".repeat(26)}`;
    const url = new URL(links.approvalUrl(id));
    assert.equal(url.origin + url.pathname, `https://paddock.example.com/approve/${id}`);
    const token = url.searchParams.get("token") ?? "";
    assert.ok(links.verify(id, token));
    assert.ok(!links.verify(`apr_${"2".repeat(26)}`, token), "another approval's");
    const flip = (at: number) => `${token.slice(0, at)}${token[at] === "A" ? "B" : "A"}${token.slice(at + 1)}`;
    assert.ok(!links.verify(id, flip(10)), "altered");
    // The last character's lowest two bits are padding: another spelling of the same bytes is refused too.
    const digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const respelled = `${token.slice(0, 42)}${digits[digits.indexOf(token[42] ?? "A") ^ 1]}`;
    assert.deepEqual(Buffer.from(respelled, "base64url"), Buffer.from(token, "base64url"));
    assert.ok(!links.verify(id, respelled), "respelled");
    assert.ok(!links.verify(id, ""), "empty");
    const other = new ApprovalLinks(new Vault(parseMasterKey(Buffer.alloc(32, 8).toString("base64"), "t")), "x");
    assert.ok(!other.verify(id, token), "another host's key");
    // An old master key given for a rotation still checks the links it signed.
    const rotated = new ApprovalLinks(
      new Vault(parseMasterKey(Buffer.alloc(32, 8).toString("base64"), "new"), [
        parseMasterKey(Buffer.alloc(32, 7).toString("base64"), "old"),
      ]),
      "x",
    );
    assert.ok(rotated.verify(id, token));
    assert.equal(links.runUrl("run_1"), "https://paddock.example.com/ui/runs/run_1");
  });
});
