/**
 * The log sink: JSON lines carry the node and the line's fields; text lines are today's
 * `<ISO time> <line>`; in both, what is shaped like an API key, a run token or a bearer
 * credential never gets through.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createLog } from "./log.ts";

const capture = () => {
  const lines: string[] = [];
  return { lines, destination: { write: (chunk: string) => lines.push(chunk) } };
};
const KEY = "pdk.key_0123abc.c2VjcmV0LXNlY3JldC1zZWNyZXQ";
const JWT = "eyJhbGciOiJFZERTQSJ9.eyJydW4iOiJydW5fMSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

describe("log sink", () => {
  it("writes one JSON object a line with the node, the line's fields and the message", () => {
    const out = capture();
    const log = createLog({ format: "json", node: "n1", destination: out.destination });
    log("run run_1: sandbox boot failed: no space", { run_id: "run_1", tenant_id: "ten_1", attempt: 2 });
    log("master key k1 from file");
    assert.equal(out.lines.length, 2);
    const [first, second] = out.lines.map((l) => JSON.parse(l));
    assert.equal(first.level, "info");
    assert.equal(first.node, "n1");
    assert.equal(first.run_id, "run_1");
    assert.equal(first.tenant_id, "ten_1");
    assert.equal(first.attempt, 2);
    assert.equal(first.msg, "run run_1: sandbox boot failed: no space");
    assert.ok(!Number.isNaN(Date.parse(first.time)), first.time);
    assert.equal(second.run_id, undefined);
    assert.ok(out.lines.every((l) => l.endsWith("\n") && !l.slice(0, -1).includes("\n")));
  });

  it("writes text lines for people as the time and the line", () => {
    const out = capture();
    createLog({ format: "pretty", node: "n1", destination: out.destination })("engine: claiming", { run_id: "run_1" });
    assert.match(out.lines[0] ?? "", /^\d{4}-\d\d-\d\dT[\d:.]+Z engine: claiming\n$/);
  });

  it("never lets an API key, a run token or a bearer credential through, in either format", () => {
    for (const format of ["json", "pretty"] as const) {
      const out = capture();
      const log = createLog({ format, node: "n1", destination: out.destination });
      log(`api: GET /v1/runs: key ${KEY} token ${JWT}`);
      log("upstream said: Authorization: Bearer abc.def-ghi~jkl", { trace_id: `Basic ${JWT}` });
      const text = out.lines.join("");
      for (const canary of [KEY, "c2VjcmV0LXNlY3JldC1zZWNyZXQ", JWT, "abc.def-ghi~jkl"]) {
        assert.ok(!text.includes(canary), `${format}: ${canary} in ${text}`);
      }
      assert.match(text, /pdk\.\[redacted\]/);
      assert.match(text, /Bearer \[redacted\]/);
    }
  });
});
