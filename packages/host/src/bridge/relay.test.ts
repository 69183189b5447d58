/**
 * The relay between real HTTP servers: an upstream (a stand-in for an external API) answers, a
 * front server relays its answer the way the bridge and the gateway do, and a client reads it.
 */
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import zlib from "node:zlib";
import { REDACTED, redactionNeedles } from "./redact.ts";
import { type Relayed, type RelayOptions, relay } from "./relay.ts";

const SECRET = "sk-relay-S3cr3t+value";

/** Upstream routes: /slow answers after 300 ms, /gzip answers gzip-compressed, /zstd in an encoding the relay does not decode, /big?n= n bytes undeclared. */
function upstreamAnswer(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = new URL(req.url ?? "/", "http://upstream");
  const echo = JSON.stringify({ key: SECRET });
  if (url.pathname === "/gzip") {
    res.writeHead(200, {
      "content-type": "application/json",
      "content-encoding": "gzip",
      "x-echo": `Bearer ${SECRET}`,
      "set-cookie": "s=1",
    });
    res.end(zlib.gzipSync(echo));
  } else if (url.pathname === "/slow") {
    setTimeout(() => res.writeHead(200, { "content-type": "text/plain" }).end("late"), 300);
  } else if (url.pathname === "/zstd") {
    res.writeHead(200, { "content-encoding": "zstd" });
    res.end("not really zstd");
  } else if (url.pathname === "/big") {
    res.writeHead(200, { "content-type": "application/octet-stream", "transfer-encoding": "chunked" });
    const n = Number(url.searchParams.get("n"));
    for (let sent = 0; sent < n; sent += 1024) res.write(Buffer.alloc(Math.min(1024, n - sent), 97));
    res.end();
  } else {
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": 4096 });
    res.end(Buffer.alloc(4096, 98));
  }
}

const listen = async (server: http.Server) => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
};

describe("relay", () => {
  const upstream = http.createServer(upstreamAnswer);
  let options: RelayOptions;
  let outcome: Promise<Relayed>;
  // Relays whatever the upstream answers to the same path, with the options the test set.
  const front = http.createServer((req, res) => {
    outcome = new Promise((resolve) => {
      http.get(`${upstreamUrl}${req.url}`, (answer) => {
        relay(answer, res, options).then((relayed) => {
          if ("refused" in relayed) res.writeHead(502).end(relayed.refused);
          resolve(relayed);
        });
      });
    });
  });
  let upstreamUrl = "";
  let frontUrl = "";
  const base: RelayOptions = {
    needles: redactionNeedles([SECRET]),
    passes: (name) => name === "content-type" || name === "x-echo",
    maxBytes: 1024 * 1024,
    keep: true,
  };

  before(async () => {
    upstreamUrl = await listen(upstream);
    frontUrl = await listen(front);
  });
  after(() => {
    front.closeAllConnections();
    upstream.closeAllConnections();
    front.close();
    upstream.close();
  });

  test("a compressed answer is decoded, its echoed secret replaced, and only the allowed headers pass", async () => {
    const chunks: string[] = [];
    options = { ...base, onChunk: (c) => chunks.push(c.toString()) };
    const res = await fetch(`${frontUrl}/gzip`);
    const body = await res.text();
    assert.equal(res.status, 200);
    assert.equal(body, JSON.stringify({ key: REDACTED }));
    assert.equal(res.headers.get("x-echo"), `Bearer ${REDACTED}`);
    assert.equal(res.headers.get("set-cookie"), null);
    assert.equal(res.headers.get("content-encoding"), null);
    assert.equal(chunks.join(""), body);
    const relayed = await outcome;
    assert.ok(!("refused" in relayed));
    assert.equal(relayed.end, "whole");
    assert.equal(relayed.redacted, 1);
    assert.equal(relayed.bytes, JSON.stringify({ key: SECRET }).length);
    assert.equal(relayed.kept?.body.toString(), body);
    assert.deepEqual(relayed.kept?.headers, { "content-type": "application/json", "x-echo": `Bearer ${REDACTED}` });
  });

  test("nothing is kept unless asked for, nor past what the journal holds", async () => {
    options = { ...base, keep: false };
    await (await fetch(`${frontUrl}/gzip`)).text();
    const unasked = await outcome;
    assert.ok(!("refused" in unasked) && unasked.end === "whole" && unasked.kept === null);
    options = { ...base, maxBytes: 4 * 1024 * 1024 };
    const large = await (await fetch(`${frontUrl}/big?n=${2 * 1024 * 1024}`)).arrayBuffer();
    assert.equal(large.byteLength, 2 * 1024 * 1024);
    const relayed = await outcome;
    assert.ok(!("refused" in relayed) && relayed.end === "whole" && relayed.kept === null);
  });

  test("an answer declaring more than the cap, or in an encoding that cannot be checked, is refused before any of it passes", async () => {
    options = { ...base, maxBytes: 1000 };
    let res = await fetch(`${frontUrl}/declared`);
    assert.equal(res.status, 502);
    assert.equal(await res.text(), "too_large");
    assert.deepEqual(await outcome, { refused: "too_large" });
    options = base;
    res = await fetch(`${frontUrl}/zstd`);
    assert.equal(await res.text(), "encoding");
    assert.deepEqual(await outcome, { refused: "encoding" });
  });

  test("an answer sending more than the cap is cut off and never reaches the client whole", async () => {
    options = { ...base, maxBytes: 8 * 1024 };
    const res = await fetch(`${frontUrl}/big?n=${64 * 1024}`);
    await assert.rejects(res.arrayBuffer());
    const relayed = await outcome;
    assert.ok(!("refused" in relayed));
    assert.equal(relayed.end, "too_large");
    assert.equal(relayed.kept, null);
    assert.ok(relayed.bytes > 8 * 1024);
  });

  test("an answer arriving after the client went away is dropped, never piped into the closed response", async () => {
    options = base;
    const gone = new AbortController();
    const asked = fetch(`${frontUrl}/slow`, { signal: gone.signal });
    setTimeout(() => gone.abort(), 50);
    await assert.rejects(asked);
    const relayed = await outcome;
    assert.ok(!("refused" in relayed));
    assert.deepEqual([relayed.status, relayed.end, relayed.bytes], [200, "broken", 0]);
  });
});
