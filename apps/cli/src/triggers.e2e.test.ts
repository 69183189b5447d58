/** `paddock schedules` and `paddock webhooks` (the real bin/paddock) against a real host. */
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost, unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { hostSkipReason, IMAGES, runCli, showCli } from "./e2e-support.ts";

describe("paddock schedules and webhooks", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dataDir: string;
  let host: RunningHost;
  let key: string;
  const cli = (args: string[]) => runCli(args, host.url, key);

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-triggers-"));
    host = await startHost({ dataDir, port: 0, imagesDir: IMAGES, log: () => {} });
    key = host.adminKey as string;
    const made = await cli(["agents", "create", "nightly", "--", "true"]);
    assert.equal(made.code, 0, showCli(made));
  });
  after(async () => {
    await host?.close();
    if (dataDir) {
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("creates, lists, pauses, resumes and deletes a schedule; refuses a bad expression", async () => {
    const made = await cli([
      "schedules",
      "create",
      "nightly",
      "--cron",
      "0 9 * * 1-5",
      "--tz",
      "Europe/Paris",
      "--json",
    ]);
    assert.equal(made.code, 0, showCli(made));
    const schedule = JSON.parse(made.stdout) as { id: string; next_at: string; timezone: string };
    assert.equal(schedule.timezone, "Europe/Paris");
    // 09:00 in Paris is 07:00 or 08:00 UTC, on a weekday.
    const next = new Date(schedule.next_at);
    assert.ok([7, 8].includes(next.getUTCHours()) && next.getUTCMinutes() === 0, schedule.next_at);
    assert.ok(next.getUTCDay() >= 1 && next.getUTCDay() <= 5);
    const list = await cli(["schedules", "list"]);
    assert.match(
      list.stdout,
      new RegExp(`${schedule.id}\\s+\\S+\\s+0 9 \\* \\* 1-5\\s+Europe/Paris\\s+skip\\s+active`),
    );
    assert.match((await cli(["schedules", "pause", schedule.id])).stdout, /paused schedule/);
    assert.match((await cli(["schedules", "list"])).stdout, /paused/);
    assert.match((await cli(["schedules", "resume", schedule.id])).stdout, /resumed schedule/);
    assert.match((await cli(["schedules", "delete", schedule.id])).stdout, /deleted schedule/);
    const bad = await cli(["schedules", "create", "nightly", "--cron", "99 * * * *"]);
    assert.equal(bad.code, 1, showCli(bad));
    assert.match(bad.stderr, /validation_failed/);
    assert.match(bad.stderr, /minute/);
    const badTz = await cli(["schedules", "create", "nightly", "--cron", "0 * * * *", "--tz", "Nowhere/Land"]);
    assert.equal(badTz.code, 1);
    assert.match(badTz.stderr, /time zone/);
  });

  it("creates a webhook whose printed secret signs a delivery that starts a run", async () => {
    const made = await cli(["webhooks", "create", "nightly", "--json"]);
    assert.equal(made.code, 0, showCli(made));
    const hook = JSON.parse(made.stdout) as { id: string; path: string; secret: string };
    const body = JSON.stringify({ hello: "hook" });
    const ts = String(Math.floor(Date.now() / 1000));
    const signature = `sha256=${createHmac("sha256", hook.secret).update(`${ts}.cli-1.${body}`).digest("hex")}`;
    const res = await fetch(`${host.url}${hook.path}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-paddock-timestamp": ts,
        "x-paddock-delivery": "cli-1",
        "x-paddock-signature": signature,
      },
      body,
    });
    assert.equal(res.status, 202);
    const list = await cli(["webhooks", "list", "nightly"]);
    assert.match(list.stdout, new RegExp(hook.id));
    assert.ok(!list.stdout.includes(hook.secret), "the secret is never listed");
    assert.match((await cli(["webhooks", "delete", hook.id])).stdout, /deleted webhook/);
  });
});
