/**
 * The host's calls to OAuth providers against misbehaving servers on loopback: an answer that
 * trickles in is cut at the call's deadline, an answer too large is cut at the cap, a redirect is
 * not followed, and a name resolving to loopback is refused unless the app is internal.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { ProviderHttp, ProviderUnreachable } from "./provider-http.ts";

describe("calls to OAuth providers", () => {
  let server: http.Server;
  let base = "";
  const drips = new Set<NodeJS.Timeout>();

  before(async () => {
    server = http.createServer((req, res) => {
      if (req.url === "/trickle") {
        // A byte every 20 ms for 5 s: never silent long enough for a socket timeout.
        res.writeHead(200, { "content-type": "application/json" });
        let left = 250;
        const drip = setInterval(() => {
          if (--left === 0) {
            clearInterval(drip);
            res.end("{}");
          } else res.write(" ");
        }, 20);
        drips.add(drip);
        res.on("close", () => clearInterval(drip));
        return;
      }
      if (req.url === "/huge") return void res.end(`{"a":"${"x".repeat(300 * 1024)}"}`);
      if (req.url === "/moved") return void res.writeHead(302, { location: "http://169.254.169.254/" }).end();
      res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => {
    for (const drip of drips) clearInterval(drip);
    server.closeAllConnections();
    server.close();
  });

  it("cuts an answer that trickles in at the call's deadline", async () => {
    const providers = new ProviderHttp(undefined, { timeoutMs: 300 });
    const started = Date.now();
    await assert.rejects(providers.getJson(`${base}/trickle`, true), (err) => {
      assert.ok(err instanceof ProviderUnreachable);
      assert.match(err.message, /did not answer in time/);
      return true;
    });
    assert.ok(Date.now() - started < 3000, `cut after ${Date.now() - started} ms`);
  });

  it("cuts an answer over the cap, does not follow a redirect, refuses loopback for an app not internal", async () => {
    const providers = new ProviderHttp(undefined, { timeoutMs: 5000 });
    await assert.rejects(providers.getJson(`${base}/huge`, true), ProviderUnreachable);
    assert.deepEqual(await providers.getJson(`${base}/moved`, true), { status: 302, json: null });
    assert.deepEqual(await providers.getJson(`${base}/fine`, true), { status: 200, json: { ok: true } });
    await assert.rejects(providers.getJson(`${base}/fine`, false), ProviderUnreachable);
  });
});
