/** The request schemas of agent versions: an update gives only what changes. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { AgentCreate, AgentReplace, AgentUpdate } from "./api.ts";
import { AgentPolicy, McpServerName } from "./bridge.ts";

test("an update takes any of AgentCreate's fields and fills in no default", () => {
  assert.deepEqual(AgentUpdate.parse({}), {});
  assert.deepEqual(AgentUpdate.parse({ limits: { timeout_s: 30 } }), { limits: { timeout_s: 30 } });
  assert.deepEqual(AgentUpdate.parse({ queue_ttl_s: null, max_concurrent_runs: null }), {
    queue_ttl_s: null,
    max_concurrent_runs: null,
  });
  // A create fills every limit in; an update must not, or it would reset the ones it does not name.
  assert.equal(AgentCreate.parse({ name: "a", command: ["x"], limits: { timeout_s: 30 } }).limits?.memory_mb, 512);
});

test("an update is checked field by field like a create", () => {
  for (const bad of [
    { surprise: 1 },
    { limits: { memory_mb: 1 } },
    { limits: { bogus: 1 } },
    { command: [] },
    { queue_ttl_s: 0 },
    { files: { "../x": "" } },
    { name: "Bad Name" },
  ]) {
    assert.equal(AgentUpdate.safeParse(bad).success, false, JSON.stringify(bad));
  }
});

test("an update is a merge patch: objects give only the keys that change, null removes one", () => {
  const patch = { budget: { total: null, per_run: 2 }, env: { A: null, B: "x" }, limits: { cpus: null }, image: null };
  assert.deepEqual(AgentUpdate.parse(patch), patch);
  assert.deepEqual(AgentUpdate.parse({ policy: { agents: null } }), { policy: { agents: null } });
  // Defaults are a create's business: an object in a patch fills none in.
  assert.deepEqual(AgentUpdate.parse({ retry: { max_attempts: 3 } }), { retry: { max_attempts: 3 } });
  for (const bad of [
    { budget: { per_run: -1 } },
    { retry: { surprise: 1 } },
    { env: { PADDOCK_X: "1" } },
    { name: null },
  ]) {
    assert.equal(AgentUpdate.safeParse(bad).success, false, JSON.stringify(bad));
  }
});

test("a replacement is a create's body whose name may be left out", () => {
  assert.equal(AgentReplace.safeParse({ command: ["x"] }).success, true);
  assert.equal(AgentReplace.safeParse({ name: "a", command: ["x"] }).success, true);
  assert.equal(AgentReplace.safeParse({}).success, false);
  assert.equal(AgentReplace.safeParse({ command: ["x"], model: "m" }).success, false);
});

test("an MCP server's name cannot hold '__' nor end in '_': its tools' names SERVER__TOOL must split one way", () => {
  assert.equal(McpServerName.safeParse("github").success, true);
  assert.equal(McpServerName.safeParse("git_hub").success, true);
  // "gh_" + "__" + "x" reads as the server "gh" and the tool "_x".
  assert.equal(McpServerName.safeParse("gh_").success, false);
  assert.equal(McpServerName.safeParse("g__h").success, false);
  assert.equal(AgentPolicy.safeParse({ mcp: [{ server: "gh_", tools: ["x"] }] }).success, false);
});
