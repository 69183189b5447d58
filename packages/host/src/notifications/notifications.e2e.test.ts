/**
 * Notifications of real runs in real sandboxes: a run that succeeds is announced, signed; and a
 * host SIGKILLed while it sends a run's notification (right after the run finished) sends it
 * after its restart, with the same delivery id, having recorded the interrupted attempt.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { unsealRunners } from "../images/runner-registry.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, testImagesDir, uniqueName } from "../testing/harness.ts";
import { spawnHost } from "../testing/host-child.ts";
import { type Received, signedWith, startNotificationReceiver } from "../testing/notification-receiver.ts";
import { waitFor } from "../testing/wait.ts";

describe("notifications of real runs", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("announces a run that succeeded in its sandbox, signed", async (t) => {
    const h = await startTestHost({ warmSandboxes: 0 });
    t.after(() => h.close());
    const receiver = await startNotificationReceiver();
    t.after(() => receiver.close());
    const sub = await h.api("POST", "/v1/notifications", {
      url: receiver.url,
      events: ["run.succeeded"],
      internal: true,
    });
    assert.equal(sub.status, 201, JSON.stringify(sub.body));
    const { run } = await runAgent(h, { name: uniqueName("hello"), command: ["sh", "-c", "echo hi"] });
    assert.equal(run.status, "succeeded");
    await waitFor(() => receiver.received.length === 1, { what: "the notification" });
    const got = receiver.received[0] as Received;
    assert.deepEqual(signedWith(got, [sub.body.secret]), [sub.body.secret]);
    assert.equal(got.payload.type, "run.succeeded");
    assert.equal(got.payload.data.run_id, run.id);
    assert.equal(got.payload.data.exit_code, 0);
  });

  it("sends the notification of a run that finished just before a SIGKILL, after the restart", async (t) => {
    const dataDir = await realpath(await mkdtemp(join(tmpdir(), "paddock-notify-crash-")));
    const config = { dataDir, port: 0, imagesDir: testImagesDir(), warmSandboxes: 0 };
    const receiver = await startNotificationReceiver();
    // The first request is held unanswered: the host dies while sending it.
    receiver.answer("hold");
    const first = await spawnHost(config);
    let current = first.child;
    t.after(async () => {
      if (current.exitCode === null && current.signalCode === null) {
        current.kill("SIGTERM");
        await new Promise((r) => current.once("exit", r));
      }
      await receiver.close();
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    });
    // biome-ignore lint/suspicious/noExplicitAny: JSON answers.
    const call = async (url: string, method: string, path: string, body?: unknown): Promise<any> => {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: { authorization: `Bearer ${first.adminKey}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      return res.json();
    };
    const sub = await call(first.url, "POST", "/v1/notifications", {
      url: receiver.url,
      events: ["run.finished"],
      internal: true,
    });
    const agent = await call(first.url, "POST", "/v1/agents", { name: "quick", command: ["true"] });
    const arrived = new Promise<Received>((resolve) => {
      receiver.onRequest = resolve;
    });
    const run = await call(first.url, "POST", `/v1/agents/${agent.id}/runs`, {});
    const held = await arrived;
    first.child.kill("SIGKILL");
    await new Promise((r) => first.child.once("exit", r));
    assert.equal(held.payload.data.run_id, run.id);

    const second = await spawnHost(config);
    current = second.child;
    assert.equal(second.adminKey, null, "the same data folder");
    assert.equal((await readFile(join(dataDir, "admin.key"), "utf8")).trim(), first.adminKey);
    await waitFor(() => receiver.received.length === 2, { what: "the notification sent again" });
    const again = receiver.received[1] as Received;
    assert.equal(again.headers["x-paddock-delivery"], held.headers["x-paddock-delivery"]);
    assert.equal(again.body, held.body);
    assert.deepEqual(signedWith(again, [sub.secret]), [sub.secret]);
    assert.equal(again.payload.type, "run.succeeded");
    const [d] = await waitFor(
      async () => {
        const list = (await call(second.url, "GET", `/v1/notifications/${sub.id}/deliveries`)).data;
        return list[0]?.status === "delivered" && list;
      },
      { what: "the delivery recorded as delivered" },
    );
    assert.deepEqual(
      d.attempts.map((a: { n: number; status: number | null; error: string | null }) => [a.n, a.status, a.error]),
      [
        [1, null, "no outcome: the host stopped during the attempt"],
        [2, 200, null],
      ],
    );
  });
});
