/**
 * `paddock top --once` (the real bin/paddock) against a real host with a run going: the admin
 * sees its run, the node's queue, warm pool and nodes; a tenant sees its own runs and spend only.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost, unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { hostSkipReason, IMAGES, runCli, showCli } from "./e2e-support.ts";

describe("paddock top", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dataDir: string;
  let host: RunningHost;
  let admin: string;
  let runId: string;

  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers.
  const api = async (method: string, path: string, body?: unknown): Promise<any> => {
    const res = await fetch(`${host.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const answer = await res.json();
    assert.ok(res.status < 300, `${path}: ${res.status} ${JSON.stringify(answer)}`);
    return answer;
  };

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-top-"));
    host = await startHost({ dataDir, port: 0, imagesDir: IMAGES, log: () => {} });
    admin = host.adminKey as string;
    const agent = await api("POST", "/v1/agents", {
      name: "waiter",
      command: ["/opt/paddock/runner/node", "-e", "setTimeout(() => {}, 120000)"],
    });
    runId = (await api("POST", `/v1/agents/${agent.id}/runs`, {})).id;
    for (let i = 0; i < 600; i++) {
      if ((await api("GET", `/v1/runs/${runId}`)).status === "running") break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal((await api("GET", `/v1/runs/${runId}`)).status, "running");
  });
  after(async () => {
    if (runId) await api("POST", `/v1/runs/${runId}/cancel`, {}).catch(() => {});
    await host?.close();
    if (dataDir) {
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("prints one frame with the run going, the node's queue and warm pool, and the nodes", async () => {
    const once = await runCli(["top", "--once", "--interval", "0.2"], host.url, admin);
    assert.equal(once.code, 0, showCli(once));
    const frame = once.stdout;
    assert.match(frame, new RegExp(`^paddock top  ${host.url.replace(/[.]/g, "\\.")}  \\d{4}-`, "m"));
    assert.match(frame, /^runs {4}1 running {2}0 waiting {2}0 starting {2}0 queued {2}\(this tenant\)$/m);
    assert.match(frame, /^spend {3}0 credits\/min/m);
    assert.match(frame, /^node {4}\S+: 0 queued in the store, \d+ warm sandbox\(es\), 0 credits\/min on this node$/m);
    assert.match(frame, /^\S+\s+live\s+1$/m);
    assert.match(frame, new RegExp(`^${runId}\\s+agt_\\w+\\s+running\\s+\\d+s$`, "m"));
    assert.ok(!frame.includes("\x1b"), "one frame for a script: no escape sequences");
  });

  it("shows a tenant its own runs and spend only", async () => {
    await api("POST", "/v1/tenants", { name: "viewer" });
    const key = (await api("POST", "/v1/tenants/viewer/keys", {})).key as string;
    const once = await runCli(["top", "--once", "--interval", "0.2"], host.url, key);
    assert.equal(once.code, 0, showCli(once));
    assert.match(once.stdout, /^runs {4}0 running {2}0 waiting {2}0 starting {2}0 queued/m);
    assert.doesNotMatch(once.stdout, /^node /m);
    assert.ok(!once.stdout.includes(runId));
  });
});
