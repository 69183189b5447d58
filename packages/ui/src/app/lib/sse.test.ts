import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SseParser } from "./sse.ts";

describe("reading an event stream", () => {
  it("completes messages across chunks, with ids and event names, skipping comments", () => {
    const p = new SseParser();
    assert.deepEqual(p.push(': keepalive\n\nid: 1\nevent: log\ndata: {"a"'), []);
    assert.deepEqual(p.push(":1}\n\nid: 2\r\ndata: x\r\ndata: y\r\n\r\nid: 3\ndata"), [
      { id: "1", event: "log", data: '{"a":1}' },
      { id: "2", event: "message", data: "x\ny" },
    ]);
    assert.deepEqual(p.push(":z\n\n"), [{ id: "3", event: "message", data: "z" }]);
  });
});
