/**
 * Approvals survive a host killed with SIGKILL while runs wait on them. The next host recovers the
 * runs (their attempts lost, retried per policy); the retried attempts ask about the same calls
 * again and get the same approvals, not new ones. Deciding one then completes its run; an approval
 * decided before the retry asked is sent when it does. Each call reaches the upstream once.
 */
import assert from "node:assert/strict";
import { mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { startHost } from "../host.ts";
import { unsealRunners } from "../images/runner-registry.ts";
import { CALLS_AGENT } from "../testing/approval-support.ts";
import { startStandIn } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, testImagesDir } from "../testing/harness.ts";
import { spawnHost } from "../testing/host-child.ts";
import { waitFor } from "../testing/wait.ts";

const NODE = "/opt/paddock/runner/node";

describe("approvals across a host crash", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("keeps pending approvals; the retried attempts wait on them, and each approved call is sent once", async (t) => {
    const dataDir = await realpath(await mkdtemp(join(tmpdir(), "paddock-approval-crash-")));
    const upstream = await startStandIn();
    const config = { dataDir, port: 0, imagesDir: testImagesDir(), approvalHoldMs: 300 };
    const first = await spawnHost(config);
    let second: Awaited<ReturnType<typeof startHost>> | null = null;
    t.after(async () => {
      if (first.child.exitCode === null) first.child.kill("SIGKILL");
      await second?.close();
      await upstream.close();
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    });
    // biome-ignore lint/suspicious/noExplicitAny: JSON answers.
    const call = async (url: string, method: string, path: string, body?: unknown): Promise<any> => {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: { authorization: `Bearer ${first.adminKey}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      return res.json();
    };
    await call(first.url, "PUT", "/v1/connections/up", {
      base_url: upstream.url,
      auth: { type: "none" },
      internal: true,
      policy: { allow: [{ methods: ["POST"], path: "/send/**", approval: { timeout_s: 600 } }] },
    });
    const start = async (name: string, backoff: number) => {
      const agent = await call(first.url, "POST", "/v1/agents", {
        name,
        command: [NODE, "/app/calls.mjs"],
        files: { "calls.mjs": CALLS_AGENT },
        policy: { connections: ["up"] },
        retry: { max_attempts: 3, backoff_s: backoff, jitter: 0, on: ["lost"] },
      });
      const input = { calls: [{ connection: "up", path: `/send/${name}`, body: `held by ${name}` }] };
      return (await call(first.url, "POST", `/v1/agents/${agent.id}/runs`, { input })).id as string;
    };
    const pending = (url: string, runId: string) =>
      waitFor(async () => (await call(url, "GET", `/v1/approvals?status=pending&run_id=${runId}`)).data[0], {
        what: `run ${runId}'s approval`,
        timeoutMs: 60_000,
      });
    // `later` is decided only once its retry asked again; `sooner` as soon as the host is back.
    const later = await start("later", 1);
    const sooner = await start("sooner", 8);
    const [laterApproval, soonerApproval] = await Promise.all([pending(first.url, later), pending(first.url, sooner)]);
    assert.equal((await call(first.url, "GET", `/v1/runs/${later}`)).status, "waiting");

    first.child.kill("SIGKILL");
    await new Promise((r) => first.child.once("exit", r));
    second = await startHost({ ...config, log: () => {} });
    const url = second.url;

    // Still pending, the very same approvals: the crash decided nothing.
    const kept = await call(url, "GET", `/v1/approvals/${soonerApproval.id}`);
    assert.deepEqual([kept.status, kept.attempt], ["pending", 1]);
    assert.equal(
      (await call(url, "POST", `/v1/approvals/${soonerApproval.id}`, { decision: "approve" })).status,
      "approved",
    );
    const asked = await waitFor(
      async () => {
        const a = await call(url, "GET", `/v1/approvals/${laterApproval.id}`);
        return a.attempt === 2 && a;
      },
      { what: "the retried attempt to ask again", timeoutMs: 60_000 },
    );
    assert.equal(asked.status, "pending");
    assert.equal((await call(url, "GET", `/v1/runs/${later}`)).status, "waiting");
    assert.equal(upstream.seen.length, 0, "nothing was sent before a decision");
    assert.equal(
      (await call(url, "POST", `/v1/approvals/${laterApproval.id}`, { decision: "approve" })).status,
      "approved",
    );

    for (const runId of [later, sooner]) {
      const done = await waitFor(
        async () => {
          const run = await call(url, "GET", `/v1/runs/${runId}`);
          return ["succeeded", "failed", "timed_out", "canceled"].includes(run.status) && run;
        },
        { what: `run ${runId} to finish`, timeoutMs: 60_000 },
      );
      assert.deepEqual([done.status, done.attempt], ["succeeded", 2]);
      // One approval per call across both attempts.
      const approvals = (await call(url, "GET", `/v1/approvals?run_id=${runId}`)).data;
      assert.equal(approvals.length, 1);
    }
    assert.deepEqual(
      ["/send/later", "/send/sooner"].map((p) => upstream.seen.filter((r) => r.url === p).map((r) => r.body)),
      [["held by later"], ["held by sooner"]],
    );
  });
});
