import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  BuiltinAgentEvent,
  isEvent,
  isKnownEvent,
  RUN_EVENT_TYPES,
  RunEvent,
  RunEventBody,
  RunEventRead,
} from "./events.ts";

const envelope = { seq: 1, run_id: "run_1", attempt: 1, time: "2026-03-01T10:00:00.000Z" };
const call = { connection: "gh", method: "GET", path: "/x", status: 403, bytes_in: 0, bytes_out: 0, ms: 1 };

describe("run events", () => {
  it("takes each type with its own data and nothing else", () => {
    const ok = (type: string, data: unknown) => RunEventBody.safeParse({ type, data }).success;
    assert.ok(ok("log", { stream: "stdout", line: "hi" }));
    assert.ok(ok("log", { stream: "runner", line: "hi", truncated: true }));
    assert.ok(!ok("log", { stream: "stdin", line: "hi" }), "an unknown stream");
    assert.ok(!ok("log", { stream: "stdout" }), "a missing field");
    assert.ok(!ok("log", { stream: "stdout", line: "hi", extra: 1 }), "a field the schema does not declare");
    assert.ok(!ok("run.queued", { stream: "stdout", line: "hi" }), "another type's data");
    assert.ok(!ok("progress", {}), "a type the protocol does not know");
    assert.ok(ok("artifact.skipped", { more: 3 }));
    assert.ok(!ok("artifact.skipped", { more: 3, path: "x" }));
    assert.ok(ok("run.cancel_requested", {}));
  });

  it("carries only registered error codes", () => {
    assert.ok(RunEventBody.safeParse({ type: "bridge.call", data: { ...call, code: "policy_denied" } }).success);
    assert.ok(!RunEventBody.safeParse({ type: "bridge.call", data: { ...call, code: "made_up" } }).success);
    assert.ok(
      RunEventBody.safeParse({ type: "llm.call", data: { code: "provider_rate_limited", status: 429 } }).success,
    );
  });

  it("keeps an agent's marker as a user event with any data, under the marker's type rule", () => {
    const user = (data: unknown) => RunEventBody.safeParse({ type: "user", data }).success;
    assert.ok(user({ type: "progress", data: { pct: [1, { deep: null }] } }));
    assert.ok(user({ type: "tool.call", data: "whatever an agent sends" }));
    assert.ok(!user({ type: "has space", data: null }));
    assert.ok(!user({ type: "progress" }), "the host always records data, null when the marker had none");
  });

  it("lets readers drop data fields a newer host added instead of failing", () => {
    const parsed = RunEvent.parse({ ...envelope, type: "log", data: { stream: "stdout", line: "hi", colour: "red" } });
    assert.deepEqual(parsed.data, { stream: "stdout", line: "hi" });
    assert.ok(!RunEvent.safeParse({ ...envelope, type: "nope", data: {} }).success);
  });

  it("lets readers keep a type they do not know, checking every known one", () => {
    const other = { ...envelope, type: "gpu.sampled", data: { util: [0.5] } };
    const read = RunEventRead.parse(other);
    assert.deepEqual(read, other);
    assert.equal(isKnownEvent(read), false);
    const log = RunEventRead.parse({ ...envelope, type: "log", data: { stream: "stdout", line: "hi", colour: "red" } });
    assert.ok(isKnownEvent(log) && isEvent("log")(log));
    assert.deepEqual(log.data, { stream: "stdout", line: "hi" });
    assert.ok(!RunEventRead.safeParse({ ...envelope, type: "log", data: { stream: "stdout" } }).success);
    assert.ok(!RunEventRead.safeParse({ type: "gpu.sampled", data: {} }).success, "the envelope is required");
  });

  it("narrows by type", () => {
    const events = [
      RunEvent.parse({ ...envelope, type: "log", data: { stream: "stdout", line: "a" } }),
      RunEvent.parse({ ...envelope, seq: 2, type: "log.dropped", data: { lines: 4 } }),
    ];
    assert.deepEqual(
      events.filter(isEvent("log")).map((e) => e.data.line),
      ["a"],
    );
    assert.equal(new Set(RUN_EVENT_TYPES).size, RUN_EVENT_TYPES.length);
    assert.ok(RUN_EVENT_TYPES.includes("llm.call") && RUN_EVENT_TYPES.includes("user"));
  });

  it("describes the built-in agent's markers", () => {
    assert.ok(
      BuiltinAgentEvent.safeParse({ type: "tool.call", data: { step: 1, id: "c1", name: "shell", args: {} } }).success,
    );
    assert.ok(
      BuiltinAgentEvent.safeParse({ type: "tool.call", data: { step: 1, id: "c1", name: "shell", args: "{…" } })
        .success,
    );
    assert.ok(
      !BuiltinAgentEvent.safeParse({ type: "tool.result", data: { step: 1, id: "c1", name: "shell" } }).success,
    );
    assert.ok(BuiltinAgentEvent.safeParse({ type: "agent.step_limit", data: { max_steps: 20 } }).success);
  });
});
