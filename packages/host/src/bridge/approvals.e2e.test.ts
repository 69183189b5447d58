/**
 * Approvals at the bridge end to end: real host, real sandboxes, an agent on the SDK, and a local
 * stand-in upstream that counts what reaches it. A held call reaches the upstream exactly once and
 * only once approved, with the very body the approvers were shown; denied, expired or canceled,
 * never. Decisions come from approvers' keys or a signed one-time link, and nothing else.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { isEvent } from "@paddock/protocol";
import { CALLS_AGENT, type CallResult, pendingApprovals, startRun } from "../testing/approval-support.ts";
import { artifactJson, type StandIn, startStandIn } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runEvents, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { type NotificationReceiver, startNotificationReceiver } from "../testing/notification-receiver.ts";
import { waitFor } from "../testing/wait.ts";

const NODE = "/opt/paddock/runner/node";
const SECRET = "up-secret-value-123456";

describe("approvals at the bridge", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  let upstream: StandIn;
  let receiver: NotificationReceiver;
  /** A second key of the default tenant, named in one rule's approvers; and one that is not. */
  let named = "";
  let other = "";
  /** A key of another tenant. */
  let stranger = "";

  before(async () => {
    upstream = await startStandIn();
    receiver = await startNotificationReceiver();
    // Held requests answer `approval_pending` after 300 ms, so the SDK's asking again is exercised.
    t = await startTestHost({ approvalHoldMs: 300 });
    await t.api("PUT", "/v1/secrets/up-key", { value: SECRET });
    const tenant = (await t.api("GET", "/v1/tenants")).body.data[0].id;
    named = (await t.api("POST", `/v1/tenants/${tenant}/keys`, { name: "release-manager" })).body.key;
    other = (await t.api("POST", `/v1/tenants/${tenant}/keys`, { name: "intern" })).body.key;
    const acme = await t.api("POST", "/v1/tenants", { name: "acme" });
    stranger = (await t.api("POST", `/v1/tenants/${acme.body.id}/keys`, {})).body.key;
    const put = await t.api("PUT", "/v1/connections/up", {
      base_url: upstream.url,
      secret: "up-key",
      auth: { type: "bearer" },
      internal: true,
      policy: {
        allow: [
          { methods: ["POST"], path: "/send/**", approval: { timeout_s: 120, approvers: ["tenant"] } },
          { methods: ["POST"], path: "/quick/**", approval: { timeout_s: 2 } },
          { methods: ["POST"], path: "/named/**", approval: { approvers: ["release-manager"] } },
          { methods: ["GET", "POST"], path: "/echo/**" },
        ],
      },
    });
    assert.equal(put.status, 201, JSON.stringify(put.body));
    const sub = await t.api("POST", "/v1/notifications", {
      url: receiver.url,
      events: ["approval.requested"],
      internal: true,
    });
    assert.equal(sub.status, 201, JSON.stringify(sub.body));
  });
  after(async () => {
    await t?.close();
    await upstream?.close();
    await receiver?.close();
  });

  const agent = () => ({
    name: uniqueName("approver-probe"),
    command: [NODE, "/app/calls.mjs"],
    files: { "calls.mjs": CALLS_AGENT },
    policy: { connections: ["up"] },
  });
  const seen = (path: string) => upstream.seen.filter((r) => r.url === path);
  const decide = (id: string, decision: "approve" | "deny", note?: string, key?: string) =>
    t.api("POST", `/v1/approvals/${id}`, { decision, ...(note ? { note } : {}) }, key);

  it("sends an approved call once with the held body, replays an identical repeat, asks anew for a changed one", async () => {
    const { runId } = await startRun(t, agent(), {
      calls: [
        { connection: "up", path: "/send/a?x=1", body: "held body", headers: { "x-note": "one" } },
        { connection: "up", path: "/send/a?x=1", body: "held body", headers: { "x-note": "one" } },
        { connection: "up", path: "/send/a?x=1", body: "changed body", headers: { "x-note": "one" } },
      ],
    });
    const [first] = await pendingApprovals(t, runId);
    // The run waits, and the approvers see exactly what would be sent (the credential by name only).
    const run = (await t.api("GET", `/v1/runs/${runId}`)).body;
    assert.deepEqual([run.status, run.reason], ["waiting", "approval"]);
    assert.equal(first.request.kind, "bridge");
    assert.equal(first.request.method, "POST");
    assert.equal(first.request.path, "/send/a");
    assert.equal(first.request.query, "x=1");
    assert.equal(first.request.url, `${upstream.url}/send/a?x=1`);
    assert.equal(first.request.headers.authorization, "Bearer <secret up-key>");
    assert.equal(first.request.headers["x-note"], "one");
    assert.deepEqual(first.request.body, {
      size: 9,
      sha256: createHash("sha256").update("held body").digest("hex"),
      preview: "held body",
      truncated: false,
      binary: false,
    });
    assert.ok(!JSON.stringify(first).includes(SECRET), "the secret is never shown");
    assert.equal(seen("/send/a?x=1").length, 0, "nothing reaches the upstream before a decision");

    const approved = await decide(first.id, "approve");
    assert.equal(approved.status, 200, JSON.stringify(approved.body));
    assert.equal(approved.body.status, "approved");
    // The changed request is a new approval: denied with a note.
    const [second] = await pendingApprovals(t, runId);
    assert.notEqual(second.id, first.id);
    assert.equal(second.request.body.preview, "changed body");
    assert.equal((await decide(second.id, "deny", "Not that text, please.")).status, 200);

    const done = await waitForRun(t, runId);
    assert.equal(done.status, "succeeded");
    const results: CallResult[] = await artifactJson(t, runId, "result.json");
    assert.equal(results[0]?.status, 200);
    assert.equal(JSON.parse(results[0]?.body ?? "{}").body, "held body");
    assert.equal(results[1]?.status, 200);
    assert.equal(results[1]?.replayed, true, "the identical repeat got the approved call's answer");
    assert.equal(results[2]?.status, 403);
    const denial = JSON.parse(results[2]?.body ?? "{}").error;
    assert.equal(denial.code, "approval_denied");
    assert.match(denial.message, /Not that text, please\./);
    // The upstream got the approved call once, with its body and the real credential; never the denied one.
    const sent = seen("/send/a?x=1");
    assert.equal(sent.length, 1);
    assert.equal(sent[0]?.body, "held body");
    assert.equal(sent[0]?.headers.authorization, `Bearer ${SECRET}`);
    assert.equal(sent[0]?.headers["x-note"], "one");

    const events = await runEvents(t, runId);
    assert.deepEqual(
      events.filter(isEvent("approval.decided")).map((e) => [e.data.approval_id, e.data.status, e.data.via]),
      [
        [first.id, "approved", "api"],
        [second.id, "denied", "api"],
      ],
    );
    assert.equal(events.filter(isEvent("run.waiting")).length, 2);
    assert.equal(events.filter(isEvent("run.resumed")).length, 2);
    const calls = events.filter(isEvent("bridge.call"));
    assert.deepEqual(
      calls.map((e) => [e.data.status, e.data.approval ?? null, e.data.replayed ?? false]),
      [
        [200, first.id, false],
        [200, first.id, true],
        [403, second.id, false],
      ],
    );
    const waited = events.filter(isEvent("run.resumed"))[0]?.data.waited_ms ?? 0;
    assert.ok(waited > 0, "the wait is on the record");
  });

  it("sends nothing for a call nobody decides in time: the sandbox gets approval_expired", async () => {
    const { runId } = await startRun(t, agent(), { calls: [{ connection: "up", path: "/quick/x", body: "late" }] });
    const [pending] = await pendingApprovals(t, runId);
    const done = await waitForRun(t, runId);
    assert.equal(done.status, "succeeded");
    const results: CallResult[] = await artifactJson(t, runId, "result.json");
    assert.equal(results[0]?.status, 403);
    assert.equal(JSON.parse(results[0]?.body ?? "{}").error.code, "approval_expired");
    assert.equal(seen("/quick/x").length, 0);
    const expired = (await t.api("GET", `/v1/approvals/${pending.id}`)).body;
    assert.deepEqual([expired.status, expired.decided_by.via], ["expired", "auto"]);
    // Deciding it now is refused, and sends nothing.
    const late = await decide(pending.id, "approve");
    assert.deepEqual([late.status, late.body.error.code], [403, "approval_expired"]);
    assert.equal(seen("/quick/x").length, 0);
  });

  it("cancels a waiting run's approvals with it, and sends nothing", async () => {
    const { runId } = await startRun(t, agent(), { calls: [{ connection: "up", path: "/send/canceled", body: "x" }] });
    const [pending] = await pendingApprovals(t, runId);
    assert.equal((await t.api("POST", `/v1/runs/${runId}/cancel`, {})).status, 202);
    const done = await waitForRun(t, runId);
    assert.equal(done.status, "canceled");
    const canceled = (await t.api("GET", `/v1/approvals/${pending.id}`)).body;
    assert.deepEqual([canceled.status, canceled.decided_by.via], ["canceled", "host"]);
    const late = await decide(pending.id, "approve");
    assert.deepEqual([late.status, late.body.error.code], [409, "approval_decided"]);
    assert.equal(seen("/send/canceled").length, 0);
  });

  it("decides through the one-time link once, and refuses it used, altered or expired", async () => {
    const { runId } = await startRun(t, agent(), {
      calls: [
        { connection: "up", path: "/send/link", body: "<b>by link</b>" },
        { connection: "up", path: "/quick/link", body: "too late" },
      ],
    });
    const [pending] = await pendingApprovals(t, runId);
    const delivery = await waitFor(() => receiver.received.find((r) => r.payload.data.approval_id === pending.id), {
      what: "the approval.requested notification",
    });
    const link = String(delivery.payload.data.approval_url);
    assert.equal(delivery.payload.data.run_url, `${t.host.url}/ui/runs/${runId}`);
    assert.equal(delivery.payload.data.run_id, runId);
    assert.equal(delivery.payload.data.request ? "request" : "", "request");
    // Tenant keys reading the deliveries never see the link.
    const subs = (await t.api("GET", "/v1/notifications")).body.data;
    const listed = (await t.api("GET", `/v1/notifications/${subs[0].id}/deliveries`)).body.data;
    assert.ok(
      !JSON.stringify(listed).includes(link.split("token=")[1] ?? "?"),
      "the link's token is the endpoint's alone",
    );

    const url = new URL(link);
    const token = url.searchParams.get("token") ?? "";
    // Opening it shows the request, escaped, and decides nothing.
    const opened = await fetch(link);
    const html = await opened.text();
    assert.equal(opened.status, 200);
    assert.match(opened.headers.get("content-security-policy") ?? "", /default-src 'self'/);
    assert.ok(html.includes("&lt;b&gt;by link&lt;/b&gt;") && !html.includes("<b>by link</b>"), "the body is escaped");
    assert.equal((await t.api("GET", `/v1/approvals/${pending.id}`)).body.status, "pending");
    const post = (id: string, tok: string, decision = "approve") =>
      fetch(`${url.origin}/approve/${id}`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ token: tok, decision }).toString(),
      });
    // Altered: another token, or the token of this approval on another one.
    const flipped = `${token.slice(0, 5)}${token[5] === "A" ? "B" : "A"}${token.slice(6)}`;
    const altered = await post(pending.id, flipped);
    assert.equal(altered.status, 403);
    assert.match(await altered.text(), /approval_link_invalid/);
    const used = await post(pending.id, token);
    assert.equal(used.status, 200, await used.text());
    // The run goes on to its second call, which waits for an approval of its own.
    const laterPending = await pendingApprovals(t, runId);
    assert.notEqual(laterPending[0].id, pending.id);
    // Used once: refused.
    const again = await post(pending.id, token, "deny");
    assert.equal(again.status, 403);
    assert.match(await again.text(), /approval_link_invalid/);
    const wrongOne = await post(laterPending[0].id, token);
    assert.equal(wrongOne.status, 403, "a link decides its own approval only");
    assert.equal(seen("/send/link").length, 1);
    const decided = (await t.api("GET", `/v1/approvals/${pending.id}`)).body;
    assert.deepEqual([decided.status, decided.decided_by.via], ["approved", "link"]);
    // The second call's approval expires: its link is refused then.
    await waitForRun(t, runId);
    const laterDelivery = receiver.received.find((r) => r.payload.data.approval_id === laterPending[0].id);
    const expiredLink = new URL(String(laterDelivery?.payload.data.approval_url));
    const expired = await post(laterPending[0].id, expiredLink.searchParams.get("token") ?? "");
    assert.equal(expired.status, 403);
    assert.match(await expired.text(), /approval_expired/);
    assert.equal(seen("/quick/link").length, 0);
  });

  it("does not count waiting against timeout_s, up to max_wait_s", async () => {
    // Both runs may run 2 s; each call waits about 3 s for its approval. Only the one whose
    // max_wait_s covers the wait finishes.
    const waiting = async (maxWait: number) => {
      const { runId } = await startRun(
        t,
        { ...agent(), limits: { timeout_s: 2, max_wait_s: maxWait } },
        {
          calls: [{ connection: "up", path: `/send/wait-${maxWait}`, body: "w" }],
        },
      );
      return { runId, approval: (await pendingApprovals(t, runId))[0] };
    };
    const [patient, hasty] = await Promise.all([waiting(60), waiting(1)]);
    const hastyDone = await waitForRun(t, hasty.runId);
    assert.equal(hastyDone.status, "timed_out", "waiting past max_wait_s counts again");
    await waitFor(() => Date.now() - Date.parse(patient.approval.created_at) > 3000, {
      what: "the patient run to wait longer than its timeout",
      intervalMs: 100,
    });
    assert.equal((await t.api("GET", `/v1/runs/${patient.runId}`)).body.status, "waiting");
    assert.equal((await decide(patient.approval.id, "approve")).status, 200);
    const done = await waitForRun(t, patient.runId);
    assert.equal(done.status, "succeeded");
    assert.equal(seen("/send/wait-60").length, 1);
    assert.equal(seen("/send/wait-1").length, 0);
  });

  it("lets only approvers decide, once; refuses unknown approvals, other tenants and bad rules", async () => {
    const { runId } = await startRun(t, agent(), { calls: [{ connection: "up", path: "/named/x", body: "n" }] });
    const [pending] = await pendingApprovals(t, runId);
    const refused = [
      [await decide(pending.id, "approve", undefined, other), 403, "not_an_approver"],
      [await decide(pending.id, "approve", undefined, stranger), 404, "not_found"],
      [await t.api("GET", `/v1/approvals/${pending.id}`, undefined, stranger), 404, "not_found"],
      [await decide(`apr_${"0".repeat(26)}`, "approve", undefined, named), 404, "not_found"],
    ] as const;
    for (const [res, status, code] of refused) assert.deepEqual([res.status, res.body.error.code], [status, code]);
    assert.equal(seen("/named/x").length, 0);
    const ok = await decide(pending.id, "approve", "ship it", named);
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.deepEqual([ok.body.decided_by.key_name, ok.body.note], ["release-manager", "ship it"]);
    const twice = await decide(pending.id, "deny", undefined, named);
    assert.deepEqual([twice.status, twice.body.error.code], [409, "approval_decided"]);
    await waitForRun(t, runId);
    assert.equal(seen("/named/x").length, 1);

    // Rules are checked when the connection is saved.
    const rule = (approval: unknown) => ({
      base_url: upstream.url,
      auth: { type: "none" },
      internal: true,
      policy: { allow: [{ methods: ["POST"], path: "/x", approval }] },
    });
    for (const approval of [
      { timeout_s: 0 },
      { timeout_s: 10, auto_deny_after_s: 20 },
      { approvers: ["nobody-by-that-name"] },
      { approvers: [] },
    ]) {
      const res = await t.api("PUT", "/v1/connections/bad-rule", rule(approval));
      assert.deepEqual([res.status, res.body.error.code], [400, "validation_failed"], JSON.stringify(approval));
    }
    assert.equal((await t.api("GET", "/v1/connections/bad-rule")).status, 404);
  });
});
