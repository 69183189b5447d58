import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { readSse, SseParser } from "./sse.ts";

describe("SseParser", () => {
  it("parses id, event and data fields, ignoring comments", () => {
    const parser = new SseParser();
    const messages = parser.push(': keep-alive\n\nid: 3\nevent: log\ndata: {"seq":3}\n\n');
    assert.deepEqual(messages, [{ event: "log", data: '{"seq":3}', id: "3" }]);
  });

  it("joins data lines and keeps the last id for later messages", () => {
    const parser = new SseParser();
    assert.deepEqual(parser.push("id: 7\ndata: a\ndata: b\n\ndata:c\n\n"), [
      { event: "message", data: "a\nb", id: "7" },
      { event: "message", data: "c", id: "7" },
    ]);
  });

  it("handles frames split anywhere, including inside CRLF", () => {
    const text = 'id: 1\r\nevent: user\r\ndata: {"x":1}\r\n\r\nid: 2\rdata: y\r\r';
    for (let cut = 0; cut <= text.length; cut++) {
      const parser = new SseParser();
      const got = [...parser.push(text.slice(0, cut)), ...parser.push(text.slice(cut))];
      assert.deepEqual(
        got,
        [
          { event: "user", data: '{"x":1}', id: "1" },
          { event: "message", data: "y", id: "2" },
        ],
        `cut at ${cut}`,
      );
    }
  });

  it("drops an unfinished frame at the end of the stream", async () => {
    const encoder = new TextEncoder();
    async function* body() {
      yield encoder.encode("data: done\n\ndata: part");
    }
    const got = [];
    for await (const m of readSse(body())) got.push(m.data);
    assert.deepEqual(got, ["done"]);
  });

  it("decodes UTF-8 split across chunks", async () => {
    const bytes = new TextEncoder().encode("data: café\n\n");
    async function* body() {
      yield bytes.slice(0, 10);
      yield bytes.slice(10);
    }
    const got = [];
    for await (const m of readSse(body())) got.push(m.data);
    assert.deepEqual(got, ["café"]);
  });
});
