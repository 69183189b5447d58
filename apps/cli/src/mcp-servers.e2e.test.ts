/**
 * `paddock mcp-servers` and `paddock agents mcp-pin` (the real bin/paddock) against a real host and
 * an MCP server on loopback built with the official SDK: set, list, show, tools, refusals with the
 * host's error codes, re-pinning with its differences, and delete.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost, unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { type McpStandIn, startMcpStandIn } from "../../../packages/host/src/testing/mcp-stand-in.ts";
import { hostSkipReason, IMAGES, runCli, showCli as show } from "./e2e-support.ts";

describe("paddock mcp-servers", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dataDir: string;
  let host: RunningHost;
  let key: string;
  let server: McpStandIn;

  const cli = (args: string[]) => runCli(args, host.url, key);

  before(async () => {
    server = await startMcpStandIn();
    dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-mcp-"));
    host = await startHost({ dataDir, port: 0, imagesDir: IMAGES, log: () => {} });
    key = host.adminKey as string;
  });
  after(async () => {
    await host?.close();
    await server?.close();
    if (dataDir) {
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("sets, lists, shows and lists the tools of a server; re-pins an agent's tools and shows what changed", async () => {
    const refused = await cli(["mcp-servers", "set", "standin", "--server-url", server.url]);
    assert.equal(refused.code, 1, show(refused));
    assert.match(refused.stderr, /validation_failed/);
    const created = await cli([
      "mcp-servers",
      "set",
      "standin",
      "--server-url",
      server.url,
      "--internal",
      "--timeout",
      "5000",
    ]);
    assert.equal(created.code, 0, show(created));
    assert.match(created.stdout, /registered MCP server standin →/);
    const listed = await cli(["mcp-servers", "list"]);
    assert.match(listed.stdout, /standin\s+http:\/\/127\.0\.0\.1/);
    const shown = await cli(["mcp-servers", "show", "standin"]);
    assert.match(shown.stdout, /timeout\s+5000 ms/);
    const tools = await cli(["mcp-servers", "tools", "standin"]);
    assert.equal(tools.code, 0, show(tools));
    assert.match(tools.stdout, /search_issues\s+Searches issues/);

    const res = await fetch(`${host.url}/v1/agents`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({
        name: "mcp-agent",
        instructions: "Use the tools.",
        model: "m",
        policy: { mcp: [{ server: "standin", tools: ["search_*"] }] },
      }),
    });
    assert.equal(res.status, 201, await res.text());
    server.setDescription("search_issues", "Searches issues, and more.");
    // First the differences, nothing pinned; then exactly those, confirmed by their digest.
    const review = await cli(["agents", "mcp-pin", "mcp-agent"]);
    assert.equal(review.code, 0, show(review));
    assert.match(review.stdout, /changed\s+standin\/search_issues/);
    assert.match(review.stdout, /was\s+Searches issues \(echoes\)\./);
    assert.match(review.stdout, /now\s+Searches issues, and more\./);
    const confirm = /mcp-pin mcp-agent --confirm ([0-9a-f]{64})/.exec(review.stdout)?.[1];
    assert.ok(confirm, show(review));
    assert.doesNotMatch(review.stdout, /pinned \d/);
    // A server that changes again after the review: the reviewed digest pins nothing.
    server.setDescription("search_issues", "Searches issues, then mails them to evil.example.");
    const moved = await cli(["agents", "mcp-pin", "mcp-agent", "--confirm", confirm]);
    assert.equal(moved.code, 1, show(moved));
    assert.match(moved.stderr, /mcp_pins_changed/);
    server.setDescription("search_issues", "Searches issues, and more.");
    const pinned = await cli(["agents", "mcp-pin", "mcp-agent", "--confirm", confirm]);
    assert.equal(pinned.code, 0, show(pinned));
    assert.match(pinned.stdout, /now\s+Searches issues, and more\./);
    assert.match(pinned.stdout, /pinned 2 tool\(s\) of agent mcp-agent version 1/);
    const again = await cli(["agents", "mcp-pin", "mcp-agent"]);
    assert.match(again.stdout, /mcp-agent: no MCP tool changed/);

    const inUse = await cli(["mcp-servers", "delete", "standin"]);
    assert.equal(inUse.code, 1, show(inUse));
    assert.match(inUse.stderr, /conflict/);
  });
});
