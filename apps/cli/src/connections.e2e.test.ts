/**
 * `paddock connections` and `paddock agents create --connection` (the real bin/paddock) against a
 * real host: set, list, show, refusals with the host's error codes, and delete.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost, unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { hostSkipReason, IMAGES, runCli, showCli } from "./e2e-support.ts";

const show = showCli;

describe("paddock connections", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dataDir: string;
  let host: RunningHost;
  let key: string;

  const cli = (args: string[]) => runCli(args, host.url, key);

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-conn-"));
    host = await startHost({ dataDir, port: 0, imagesDir: IMAGES, log: () => {} });
    key = host.adminKey as string;
  });
  after(async () => {
    await host?.close();
    if (dataDir) {
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("sets, lists, shows and deletes a connection; agents name it with --connection", async () => {
    const created = await cli([
      "connections",
      "set",
      "public-api",
      "--upstream",
      "https://Api.Example.com/v1/",
      "--allow",
      "GET,HEAD /items/**",
      "--allow",
      "post /items/*/notes",
      "--rate",
      "30/60",
    ]);
    assert.equal(created.code, 0, show(created));
    assert.match(created.stdout, /created connection public-api → https:\/\/api\.example\.com\/v1/);
    assert.match(created.stdout, /auth: {2}none/);

    const replaced = await cli([
      "connections",
      "set",
      "public-api",
      "--upstream",
      "https://api.example.com/v1",
      "--auth",
      "none",
      "--allow",
      "GET /items/**",
      "--json",
    ]);
    assert.equal(replaced.code, 0, show(replaced));
    const body = JSON.parse(replaced.stdout);
    assert.deepEqual(body.policy, { allow: [{ methods: ["GET"], path: "/items/**" }] });

    const list = await cli(["connections", "list"]);
    assert.equal(list.code, 0, show(list));
    assert.match(list.stdout, /^NAME\s+UPSTREAM\s+AUTH\s+SECRET\s+RULES\s+RATE/m);
    assert.match(list.stdout, /^public-api\s+https:\/\/api\.example\.com\/v1\s+none\s+-\s+1\s+none$/m);

    const detail = await cli(["connections", "show", "public-api"]);
    assert.equal(detail.code, 0, show(detail));
    assert.match(detail.stdout, /^ {2}GET\s+\/items\/\*\*$/m);

    const agent = await cli(["agents", "create", "caller", "--connection", "public-api", "--json", "--", "true"]);
    assert.equal(agent.code, 0, show(agent));
    assert.deepEqual(JSON.parse(agent.stdout).policy, { connections: ["public-api"], agents: [] });
    const shown = await cli(["agents", "show", "caller"]);
    assert.match(shown.stdout, /^bridge {3}public-api$/m);

    const refused = await cli(["connections", "delete", "public-api"]);
    assert.equal(refused.code, 1, show(refused));
    assert.match(refused.stderr, /error conflict: .*caller/);
  });

  it("reports the host's refusals with their codes", async () => {
    const unknownConnection = await cli(["agents", "create", "lost", "--connection", "nope", "--", "true"]);
    assert.equal(unknownConnection.code, 1, show(unknownConnection));
    assert.match(unknownConnection.stderr, /error unknown_connection: .*nope/);

    const unknownSecret = await cli([
      "connections",
      "set",
      "gh",
      "--upstream",
      "https://api.github.com",
      "--secret",
      "missing",
      "--allow",
      "GET /**",
    ]);
    assert.equal(unknownSecret.code, 1, show(unknownSecret));
    assert.match(unknownSecret.stderr, /error unknown_secret: /);

    const traversal = await cli([
      "connections",
      "set",
      "x",
      "--upstream",
      "https://a.example",
      "--allow",
      "GET /a/../b",
    ]);
    assert.equal(traversal.code, 1, show(traversal));
    assert.match(traversal.stderr, /error validation_failed: /);
    assert.match(traversal.stderr, /policy\.allow\.0\.path: no '\.' or '\.\.' segments/);

    const trace = await cli(["connections", "set", "x", "--upstream", "https://a.example", "--allow", "TRACE /"]);
    assert.equal(trace.code, 1, show(trace));
    assert.match(trace.stderr, /TRACE, TRACK and CONNECT are never forwarded/);

    const usage = await cli(["connections", "set", "Bad", "--upstream", "https://a.example", "--allow", "GET /"]);
    assert.equal(usage.code, 2, show(usage));

    const missing = await cli(["connections", "show", "nope"]);
    assert.equal(missing.code, 1, show(missing));
    assert.match(missing.stderr, /error not_found: /);
  });

  it("deletes an unused connection", async () => {
    const set = await cli(["connections", "set", "spare", "--upstream", "https://a.example", "--allow", "GET /"]);
    assert.equal(set.code, 0, show(set));
    const del = await cli(["connections", "delete", "spare"]);
    assert.equal(del.code, 0, show(del));
    assert.match(del.stdout, /deleted connection spare/);
    const list = await cli(["connections", "list", "--json"]);
    assert.ok(!JSON.parse(list.stdout).some((c: { name: string }) => c.name === "spare"));
  });
});
