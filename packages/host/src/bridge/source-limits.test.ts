import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SourceLimits } from "./source-limits.ts";

describe("SourceLimits", () => {
  const make = (clock = { ms: 0 }) =>
    new SourceLimits({ requestsPerSandbox: 3, connectionsPerSandbox: 2, reportEveryMs: 1000, now: () => clock.ms });

  it("lets a source hold up to its cap and refuses the next until one is given back", () => {
    const limits = make();
    for (let i = 0; i < 3; i++) assert.equal(limits.take("10.0.0.2", "requests"), null);
    assert.notEqual(limits.take("10.0.0.2", "requests"), null);
    assert.deepEqual(limits.holding("10.0.0.2"), { requests: 3, connections: 0 });
    limits.release("10.0.0.2", "requests");
    assert.equal(limits.take("10.0.0.2", "requests"), null);
    assert.notEqual(limits.take("10.0.0.2", "requests"), null);
  });

  it("counts each source and each kind apart", () => {
    const limits = make();
    for (let i = 0; i < 3; i++) limits.take("10.0.0.2", "requests");
    assert.notEqual(limits.take("10.0.0.2", "requests"), null);
    assert.equal(limits.take("10.0.0.3", "requests"), null, "another sandbox is not held back");
    assert.equal(limits.take("10.0.0.2", "connections"), null);
    assert.equal(limits.take("10.0.0.2", "connections"), null);
    assert.notEqual(limits.take("10.0.0.2", "connections"), null);
  });

  it("reports the first refusal, then at most once per period with the count since", () => {
    const clock = { ms: 0 };
    const limits = make(clock);
    for (let i = 0; i < 3; i++) limits.take("s", "requests");
    assert.deepEqual(limits.take("s", "requests"), { report: { held: "requests", limit: 3, refused: 1 } });
    for (let i = 0; i < 500; i++) assert.deepEqual(limits.take("s", "requests"), { report: null });
    clock.ms = 999;
    assert.deepEqual(limits.take("s", "requests"), { report: null });
    clock.ms = 1000;
    assert.deepEqual(limits.take("s", "requests"), { report: { held: "requests", limit: 3, refused: 502 } });
    // Each kind is reported on its own.
    for (let i = 0; i < 2; i++) limits.take("s", "connections");
    assert.deepEqual(limits.take("s", "connections"), { report: { held: "connections", limit: 2, refused: 1 } });
  });

  it("forgets a source once it holds nothing and nothing is left to report", () => {
    const clock = { ms: 0 };
    const limits = make(clock);
    limits.take("a", "connections");
    limits.take("a", "requests");
    limits.release("a", "requests");
    assert.equal(limits.size, 1, "still holds a connection");
    limits.release("a", "connections");
    assert.equal(limits.size, 0);
    // Giving back more than was taken never goes below zero or lets a source past its cap.
    limits.release("a", "requests");
    for (let i = 0; i < 3; i++) assert.equal(limits.take("a", "requests"), null);
    assert.notEqual(limits.take("a", "requests"), null);
    for (let i = 0; i < 3; i++) limits.release("a", "requests");
    assert.equal(limits.size, 1, "a refusal just reported keeps its source until the period is over");
    clock.ms = 1000;
    limits.take("a", "requests");
    limits.release("a", "requests");
    assert.equal(limits.size, 0);
  });
});
