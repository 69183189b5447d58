import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { Run } from "@paddock/protocol";
import { renderTop, type TopSample } from "./top.ts";

const T0 = Date.parse("2030-01-01T00:00:00Z");
const run = (id: string, status: Run["status"], startedAt: string | null): Run => ({
  id,
  agent_id: "agt_1",
  end_user: null,
  status,
  reason: null,
  exit_code: null,
  attempt: 1,
  max_attempts: 1,
  trigger: "api",
  not_before: null,
  parent_run_id: null,
  root_run_id: null,
  replay_of: null,
  agent_version: 1,
  input: null,
  created_at: "2030-01-01T00:00:00Z",
  started_at: startedAt,
  finished_at: null,
});
const sample = (at: number, spent: number, admin: TopSample["admin"] = null): TopSample => ({
  at,
  runs: {
    running: [run("run_a", "running", "2029-12-31T23:59:30Z")],
    waiting: [run("run_w", "waiting", "2029-12-31T23:58:00Z")],
    starting: [],
    queued: Array.from({ length: 200 }, (_, i) => run(`run_q${i}`, "queued", null)),
  },
  credits: { spent, available: 100 - spent },
  admin,
});

describe("paddock top's frame", () => {
  test("counts runs, caps what it could not count, and lists the runs going", () => {
    const frame = renderTop("http://h", [sample(T0, 1)]);
    assert.match(frame, /^paddock top {2}http:\/\/h {2}2030-01-01 00:00:00$/m);
    assert.match(frame, /1 running {2}1 waiting {2}0 starting {2}200\+ queued/);
    // One sample: no rate yet.
    assert.match(frame, /spend {3}- credits\/min {2}\(spent 1, available 99\)/);
    assert.match(frame, /run_a\s+agt_1\s+running\s+30s/);
    assert.match(frame, /run_w\s+agt_1\s+waiting\s+2m/);
    assert.doesNotMatch(frame, /NODE/);
  });

  test("gives spend per minute over the samples, and the node's view with the admin key", () => {
    const admin = (spent: number): TopSample["admin"] => ({
      node: "n1",
      queued: 7,
      warm: 2,
      spent,
      nodes: [
        {
          id: "n1",
          version: "0.1.0",
          internal_url: "http://n1",
          sandbox_cidr: "10.0.0.0/16",
          started_at: "2030-01-01T00:00:00Z",
          heartbeat_at: "2030-01-01T00:00:00Z",
          stopped_at: null,
          live: true,
          draining: false,
          active_runs: 3,
        },
      ],
    });
    const frame = renderTop("http://h", [sample(T0, 1, admin(10)), sample(T0 + 30_000, 2.5, admin(13))]);
    assert.match(frame, /spend {3}3 credits\/min/);
    assert.match(frame, /node {4}n1: 7 queued in the store, 2 warm sandbox\(es\), 6 credits\/min on this node/);
    assert.match(frame, /^n1\s+live\s+3$/m);
  });
});
