import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AppError, ERROR_CODES, isErrorCode } from "./errors.ts";
import { parseMarkerLine } from "./marker.ts";
import { Marker, parseMarker, RunnerFrame } from "./runner.ts";

describe("error catalogue", () => {
  it("gives every code an HTTP error status and a sentence a person can act on", () => {
    for (const [code, entry] of Object.entries(ERROR_CODES)) {
      assert.match(code, /^[a-z_]+$/, code);
      assert.ok(entry.status >= 400 && entry.status <= 599, `${code} status ${entry.status}`);
      assert.ok(entry.message.length > 10 && entry.message.endsWith("."), `${code} message`);
    }
  });

  it("puts code, message and details on the wire shape", () => {
    const err = new AppError("validation_failed", "bad name", [{ path: "name" }]);
    assert.equal(err.status, 400);
    assert.deepEqual(err.toBody(), {
      error: { code: "validation_failed", message: "bad name", details: [{ path: "name" }] },
    });
    assert.deepEqual(new AppError("not_found").toBody(), {
      error: { code: "not_found", message: ERROR_CODES.not_found.message },
    });
    assert.ok(isErrorCode("conflict"));
    assert.ok(!isErrorCode("toString"));
  });
});

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
