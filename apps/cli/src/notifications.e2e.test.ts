/** `paddock notifications` (the real bin/paddock) against a real host and an endpoint on loopback. */
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost, unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { hostSkipReason, IMAGES, runCli, showCli } from "./e2e-support.ts";

interface Hit {
  headers: http.IncomingHttpHeaders;
  body: string;
}

describe("paddock notifications", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dataDir: string;
  let host: RunningHost;
  let key: string;
  const cli = (args: string[]) => runCli(args, host.url, key);
  /** The endpoint: answers 500 to its first request, 200 after. */
  const hits: Hit[] = [];
  const endpoint = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      hits.push({ headers: req.headers, body: Buffer.concat(chunks).toString("utf8") });
      res.writeHead(hits.length === 1 ? 500 : 200).end();
    });
  });
  const until = async (what: string, check: () => boolean | Promise<boolean>) => {
    const deadline = Date.now() + 60_000;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-notifications-"));
    host = await startHost({
      dataDir,
      port: 0,
      imagesDir: IMAGES,
      warmSandboxes: 0,
      notificationBackoffMs: 50,
      log: () => {},
    });
    key = host.adminKey as string;
    await new Promise<void>((resolve) => endpoint.listen(0, "127.0.0.1", resolve));
    const made = await cli(["agents", "create", "notified", "--", "true"]);
    assert.equal(made.code, 0, showCli(made));
  });
  after(async () => {
    endpoint.closeAllConnections();
    endpoint.close();
    await host?.close();
    if (dataDir) {
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("subscribes, shows each delivery and attempt, sends one again, rotates and deletes", async () => {
    const url = `http://127.0.0.1:${(endpoint.address() as AddressInfo).port}/hook`;
    const refused = await cli(["notifications", "create", url, "--events", "run.finished"]);
    assert.equal(refused.code, 1, showCli(refused));
    assert.match(refused.stderr, /notification_url_refused/);
    const unknown = await cli(["notifications", "create", url, "--events", "run.exploded"]);
    assert.equal(unknown.code, 2, showCli(unknown));

    const made = await cli([
      "notifications",
      "create",
      url,
      "--events",
      "run.succeeded,run.failed",
      "--internal",
      "--json",
    ]);
    assert.equal(made.code, 0, showCli(made));
    const sub = JSON.parse(made.stdout) as { id: string; secret: string; events: string[] };
    assert.deepEqual(sub.events, ["run.succeeded", "run.failed"]);
    const ran = await cli(["run", "notified", "--follow"]);
    assert.equal(ran.code, 0, showCli(ran));
    await until("two attempts", () => hits.length === 2);
    const [first, second] = hits as [Hit, Hit];
    assert.equal(second.body, first.body);
    const ts = String(second.headers["x-paddock-timestamp"]);
    const id = String(second.headers["x-paddock-delivery"]);
    const mac = createHmac("sha256", sub.secret).update(`${ts}.${id}.${second.body}`).digest("hex");
    assert.equal(second.headers["x-paddock-signature"], `sha256=${mac}`);

    let deliveries = await cli(["notifications", "deliveries", sub.id]);
    await until("the delivery recorded as delivered", async () => {
      deliveries = await cli(["notifications", "deliveries", sub.id]);
      return /delivered/.test(deliveries.stdout);
    });
    assert.match(deliveries.stdout, new RegExp(`${id}\\s+run\\.succeeded\\s+delivered\\s+2\\s+200 in`));
    const attempts = await cli(["notifications", "deliveries", sub.id, "--attempts"]);
    assert.match(attempts.stdout, new RegExp(`${id}\\s+1\\s+\\S+\\s+500\\s+\\S+\\s+\\S+\\s+the endpoint answered 500`));
    assert.match(attempts.stdout, new RegExp(`${id}\\s+2\\s+\\S+\\s+200\\s`));

    const resent = await cli(["notifications", "resend", sub.id, id]);
    assert.equal(resent.code, 0, showCli(resent));
    await until("the delivery sent again", () => hits.length === 3);
    assert.equal(hits[2]?.headers["x-paddock-delivery"], id);

    const rotated = await cli(["notifications", "rotate", sub.id, "--overlap", "60"]);
    assert.match(rotated.stdout, /secret: whsec_\S+ \(shown only now\)/);
    assert.match(rotated.stdout, /the old secret also signs until/);
    assert.match(
      (await cli(["notifications", "list"])).stdout,
      new RegExp(`${sub.id}\\s+\\S+\\s+run.succeeded,run.failed\\s+active\\s+yes`),
    );
    assert.match((await cli(["notifications", "delete", sub.id])).stdout, /deleted subscription/);
    assert.match((await cli(["notifications", "list"])).stderr, /no notification subscriptions/);
  });
});
