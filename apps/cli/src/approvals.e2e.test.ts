/** `paddock approvals` and `connections set --approve` (the real bin/paddock) against a real host. */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost, unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { hostSkipReason, IMAGES, runCli, showCli } from "./e2e-support.ts";

/** Two bridge calls through the SDK (which waits out approvals); prints each status and body. */
const AGENT = `
const { bridge } = await import(process.env.PADDOCK_SDK);
for (const body of ["first \\u001b[31m", "second"]) {
  const res = await bridge.fetch("deploy", "/releases", { method: "POST", body });
  console.log(res.status + " " + (await res.text()));
}
`;

describe("paddock approvals", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dataDir: string;
  let host: RunningHost;
  let key: string;
  const cli = (args: string[]) => runCli(args, host.url, key);
  const received: string[] = [];
  const upstream = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      received.push(Buffer.concat(chunks).toString("utf8"));
      res.writeHead(201, { "content-type": "text/plain" }).end("released");
    });
  });
  const until = async <T>(what: string, check: () => Promise<T | undefined>): Promise<T> => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const value = await check();
      if (value !== undefined) return value;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  /** The id of the one pending approval, once there is one. */
  const pending = () =>
    until("a pending approval", async () => {
      const listed = await cli(["approvals", "list", "--json"]);
      const ids = (JSON.parse(listed.stdout || "[]") as { id: string }[]).map((a) => a.id);
      return ids[0];
    });

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-approvals-"));
    host = await startHost({
      dataDir,
      port: 0,
      imagesDir: IMAGES,
      warmSandboxes: 0,
      approvalHoldMs: 300,
      log: () => {},
    });
    key = host.adminKey as string;
    await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
  });
  after(async () => {
    upstream.closeAllConnections();
    upstream.close();
    await host?.close();
    if (dataDir) {
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("lists and shows what waits, denies with a note, approves, and refuses a second decision", async () => {
    const port = (upstream.address() as AddressInfo).port;
    const set = await cli([
      "connections",
      "set",
      "deploy",
      "--upstream",
      `http://127.0.0.1:${port}`,
      "--internal",
      "--approve",
      "POST /releases",
      "--approval-timeout",
      "600",
    ]);
    assert.equal(set.code, 0, showCli(set));
    const shown = await cli(["connections", "show", "deploy"]);
    assert.match(shown.stdout, /POST\s+\/releases\s+approval by tenant, 600 s/);
    const agent = await fetch(`${host.url}/v1/agents`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({
        name: "releaser",
        command: ["/opt/paddock/runner/node", "/app/agent.mjs"],
        files: { "agent.mjs": AGENT },
        policy: { connections: ["deploy"] },
      }),
    });
    assert.equal(agent.status, 201);
    const started = await cli(["run", "releaser"]);
    assert.equal(started.code, 0, showCli(started));
    const runId = started.stdout.trim();

    const first = await pending();
    const listed = await cli(["approvals", "list"]);
    assert.match(
      listed.stdout,
      new RegExp(`${first}\\s+run_\\S+\\s+bridge deploy: POST http://127.0.0.1:${port}/releases\\s+11 B\\s+pending`),
    );
    const detail = await cli(["approvals", "show", first]);
    assert.match(detail.stdout, /body: 11 bytes, sha256 [0-9a-f]{64}/);
    // Agent-made text is shown terminal-safe.
    assert.ok(detail.stdout.includes("first \\x1b[31m") && !detail.stdout.includes("\u001b"), detail.stdout);
    const denied = await cli(["approvals", "deny", first, "--note", "not today"]);
    assert.equal(denied.code, 0, showCli(denied));
    assert.match(denied.stdout, new RegExp(`${first} denied`));
    const again = await cli(["approvals", "approve", first]);
    assert.equal(again.code, 1, showCli(again));
    assert.match(again.stderr, /approval_decided/);

    const second = await until("the second call's approval", async () => {
      const id = await pending();
      return id !== first ? id : undefined;
    });
    const approved = await cli(["approvals", "approve", second]);
    assert.equal(approved.code, 0, showCli(approved));
    await until("the approved call to arrive", async () => (received.length > 0 ? true : undefined));
    const run = await until("the run to finish", async () => {
      const shownRun = await cli(["runs", "show", runId, "--json"]);
      const r = JSON.parse(shownRun.stdout || "{}") as { status?: string };
      return r.status === "succeeded" || r.status === "failed" ? r : undefined;
    });
    assert.equal(run.status, "succeeded");
    assert.deepEqual(received, ["second"], "only the approved call reached the upstream, once");
    const logs = await cli(["logs", runId]);
    assert.match(logs.stdout, /403 .*approval_denied.*not today/);
    assert.match(logs.stdout, /201 released/);
    const decided = await cli(["approvals", "list", "--status", "denied"]);
    assert.match(decided.stdout, new RegExp(first));
  });
});
