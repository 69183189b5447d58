/** The request schemas of agent versions: an update gives only what changes. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { AgentCreate, AgentUpdate } from "./api.ts";

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
