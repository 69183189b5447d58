import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseMarkerLine } from "./marker.ts";
import { Marker, parseMarker, RunnerFrame } from "./runner.ts";

describe("markers", () => {
  const lines = [
    '::paddock::{"type":"progress","data":{"pct":50}}',
    '::paddock::{"type":"progress"}',
    '::paddock::{"type":"a.b:c-d_e","data":null}',
    '::paddock::{"type":""}',
    '::paddock::{"type":"has space"}',
    `::paddock::{"type":"${"x".repeat(65)}"}`,
    `::paddock::{"type":"${"x".repeat(64)}"}`,
    '::paddock::{"type":"ok","extra":1}',
    '::paddock::{"type":5}',
    "::paddock::[1,2]",
    "::paddock::null",
    "::paddock::{oops",
    "::paddock::",
    'prefix ::paddock::{"type":"x"}',
    '::paddock::{"type":"ünïcode"}',
    '::paddock::{"data":1}',
  ];

  it("the runner's dependency-free check and the host's schema agree on every line", () => {
    for (const line of lines) {
      assert.deepEqual(parseMarkerLine(line), parseMarker(line), line);
    }
  });

  it("accepts well-formed markers and rejects the rest", () => {
    assert.deepEqual(parseMarkerLine(lines[0] as string), { type: "progress", data: { pct: 50 } });
    const accepted = lines.filter((l) => parseMarker(l) !== null).length;
    assert.equal(accepted, 4);
    assert.equal(Marker.safeParse({ type: "x", data: [1] }).success, true);
  });

  it("rejects runner frames that do not match the contract", () => {
    assert.equal(RunnerFrame.safeParse({ t: "exit", code: 0, signal: null }).success, true);
    assert.equal(RunnerFrame.safeParse({ t: "exit", code: "0", signal: null }).success, false);
    assert.equal(RunnerFrame.safeParse({ t: "log", stream: "stdin", line: "x" }).success, false);
    assert.equal(RunnerFrame.safeParse({ t: "nope" }).success, false);
  });
});
