/**
 * `paddock accounts connect` and `--end-user` on the commands that trigger runs (the real
 * bin/paddock) against a real host: the connect link leads to the provider's authorization with
 * PKCE and a state; runs, schedules and webhooks carry the end user; a bad end user is refused
 * before anything is sent.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost, unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { hostSkipReason, IMAGES, runCli, showCli } from "./e2e-support.ts";

const AUTHORIZE = "https://id.example.com/authorize";

describe("paddock accounts connect and --end-user", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dataDir: string;
  let host: RunningHost;
  let key: string;
  const cli = (args: string[]) => runCli(args, host.url, key);
  // biome-ignore lint/suspicious/noExplicitAny: JSON answers.
  const api = async (method: string, path: string, body?: unknown): Promise<any> => {
    const res = await fetch(`${host.url}/v1${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return res.json();
  };

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-accounts-"));
    host = await startHost({ dataDir, port: 0, imagesDir: IMAGES, log: () => {} });
    key = host.adminKey as string;
    const app = await api("PUT", "/oauth-apps/idp", {
      authorize_url: AUTHORIZE,
      token_url: "https://id.example.com/token",
      client_id: "paddock-client",
      scopes: ["openid", "mail"],
    });
    assert.equal(app.name, "idp", JSON.stringify(app));
    const made = await cli(["agents", "create", "mailer", "--", "true"]);
    assert.equal(made.code, 0, showCli(made));
  });
  after(async () => {
    await host?.close();
    if (dataDir) {
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("prints a connect link that leads to the provider with PKCE and a state", async () => {
    const made = await cli([
      "accounts",
      "connect",
      "--end-user",
      "alice@example.com",
      "--app",
      "idp",
      "--scope",
      "mail",
      "--redirect-after",
      "https://product.example.com/connected",
    ]);
    assert.equal(made.code, 0, showCli(made));
    const link = made.stdout.trim();
    assert.ok(link.startsWith(`${host.url}/oauth/connect/`), link);
    assert.match(made.stderr, /alice@example\.com.*idp/);
    const opened = await fetch(link, { redirect: "manual" });
    assert.equal(opened.status, 302);
    const to = new URL(opened.headers.get("location") ?? "");
    assert.equal(`${to.origin}${to.pathname}`, AUTHORIZE);
    assert.equal(to.searchParams.get("client_id"), "paddock-client");
    assert.equal(to.searchParams.get("scope"), "mail");
    assert.equal(to.searchParams.get("code_challenge_method"), "S256");
    assert.ok(to.searchParams.get("state"));

    const json = await cli(["accounts", "connect", "--end-user", "bob", "--app", "idp", "--json"]);
    assert.equal(json.code, 0, showCli(json));
    assert.deepEqual(Object.keys(JSON.parse(json.stdout)).sort(), ["app", "end_user", "expires_at", "id", "url"]);
  });

  it("refuses a connect without its end user or app, a bad end user, and an unknown app", async () => {
    const missing = await cli(["accounts", "connect", "--app", "idp"]);
    assert.equal(missing.code, 2, showCli(missing));
    assert.match(missing.stderr, /--end-user/);
    const bad = await cli(["accounts", "connect", "--end-user", "a\nb", "--app", "idp"]);
    assert.equal(bad.code, 2, showCli(bad));
    assert.match(bad.stderr, /no control characters/);
    const unknown = await cli(["accounts", "connect", "--end-user", "alice", "--app", "nope"]);
    assert.notEqual(unknown.code, 0, showCli(unknown));
    assert.match(unknown.stderr, /unknown_oauth_app/);
  });

  it("runs, schedules and webhooks carry --end-user; a bad one is refused before anything is made", async () => {
    const run = await cli(["run", "mailer", "--end-user", "alice"]);
    assert.equal(run.code, 0, showCli(run));
    assert.equal((await api("GET", `/runs/${run.stdout.trim()}`)).end_user, "alice");
    const plain = await cli(["run", "mailer"]);
    assert.equal((await api("GET", `/runs/${plain.stdout.trim()}`)).end_user, null);

    const schedule = await cli(["schedules", "create", "mailer", "--cron", "0 9 * * *", "--end-user", "bob", "--json"]);
    assert.equal(schedule.code, 0, showCli(schedule));
    assert.equal(JSON.parse(schedule.stdout).end_user, "bob");

    const hook = await cli(["webhooks", "create", "mailer", "--end-user", "carol", "--json"]);
    assert.equal(hook.code, 0, showCli(hook));
    assert.equal(JSON.parse(hook.stdout).end_user, "carol");

    const before = (await api("GET", "/runs?limit=200")).data.length;
    for (const args of [
      ["run", "mailer"],
      ["schedules", "create", "mailer", "--cron", "0 9 * * *"],
      ["webhooks", "create", "mailer"],
    ]) {
      const refused = await cli([...args, "--end-user", "x\u0007y"]);
      assert.equal(refused.code, 2, showCli(refused));
      assert.match(refused.stderr, /--end-user/);
    }
    assert.equal((await api("GET", "/runs?limit=200")).data.length, before);
  });
});
