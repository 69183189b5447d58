/**
 * The client reading events a newer host writes: a type this build does not know must neither fail
 * the event list nor be dropped from the live stream. The host here is a small HTTP server serving
 * fixed answers, since a newer host's events cannot come from this build's.
 */
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { Client } from "./client.ts";
import { Timeline } from "./format.ts";

const envelope = { run_id: "run_1", attempt: 1, time: "2026-03-01T10:00:00.000Z" };
const EVENTS = [
  { ...envelope, seq: 1, type: "log", data: { stream: "stdout", line: "hello" } },
  { ...envelope, seq: 2, type: "gpu.sampled", data: { util: 0.5 } },
  { ...envelope, seq: 3, type: "run.succeeded", data: { status: "succeeded", reason: "completed", exit_code: 0 } },
];

describe("Client reading event types it does not know", () => {
  let server: Server;
  let client: Client;

  before(async () => {
    server = createServer((req, res) => {
      if (req.headers.accept === "text/event-stream") {
        res.writeHead(200, { "content-type": "text/event-stream" });
        for (const e of EVENTS) res.write(`id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`);
        res.end();
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ data: EVENTS, next_cursor: null }));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    client = new Client({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, apiKey: null });
  });
  after(() => new Promise((resolve) => server.close(resolve)));

  it("lists them with their data as served", async () => {
    const events = await client.listEvents("run_1");
    assert.deepEqual(events, EVENTS);
  });

  it("yields them from the live stream and shows them as type and data", async () => {
    const timeline = new Timeline();
    const lines: string[] = [];
    for await (const event of client.followEvents("run_1")) lines.push(timeline.line(event));
    assert.equal(lines.length, 3);
    assert.match(lines[1] ?? "", /^\+0\.000s\s+gpu\.sampled\s+\{"util":0\.5\}$/);
  });
});
