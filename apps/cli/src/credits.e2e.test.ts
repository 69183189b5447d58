/**
 * `paddock providers`, `paddock models` and `paddock credits` (the real bin/paddock) against a
 * real host: an admin sets a provider and grants credits, a tenant sees models and its balance.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost, unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { parseModelFlag } from "./commands/credits.ts";
import { hostSkipReason, IMAGES, runCli, showCli } from "./e2e-support.ts";

const show = showCli;

describe("paddock --model flags", () => {
  it("reads NAME=IN/OUT[/MAX] and refuses anything else", () => {
    assert.deepEqual(parseModelFlag("gpt-4o=2.5/10"), ["gpt-4o", { input: 2.5, output: 10 }]);
    assert.deepEqual(parseModelFlag("m=1/2/512"), ["m", { input: 1, output: 2, max_output_tokens: 512 }]);
    for (const bad of ["m", "m=1", "m=a/b", "=1/2", "m=1/2/x"]) assert.throws(() => parseModelFlag(bad), /--model/);
  });
});

describe("paddock providers, models and credits", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dataDir: string;
  let host: RunningHost;
  let admin: string;

  const cli = (args: string[], key = admin) => runCli(args, host.url, key);

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-credits-"));
    host = await startHost({ dataDir, port: 0, imagesDir: IMAGES, log: () => {} });
    admin = host.adminKey as string;
  });
  after(async () => {
    await host?.close();
    if (dataDir) {
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("sets a provider, lists it and its models, and refuses bad ones with the host's codes", async () => {
    const set = await cli([
      "providers",
      "set",
      "local",
      "--kind",
      "openai_compatible",
      "--base-url",
      "http://127.0.0.1:9/v1",
      "--model",
      "small=0.5/1.5",
      "--model",
      "big=3/15/8192",
    ]);
    assert.equal(set.code, 0, show(set));
    assert.match(set.stdout, /created provider local \(2 models\)/);
    assert.equal(set.stderr, "", "the host's own tenant has its starting credits");
    const list = await cli(["providers", "list"]);
    assert.match(list.stdout, /local\s+openai_compatible\s+http:\/\/127\.0\.0\.1:9\/v1\s+-\s+small,big/);
    const models = await cli(["models", "--json"]);
    assert.deepEqual(
      JSON.parse(models.stdout).map((m: { model: string; price: { max_output_tokens: number } }) => [
        m.model,
        m.price.max_output_tokens,
      ]),
      [
        ["big", 8192],
        ["small", 4096],
      ],
    );
    const noUrl = await cli(["providers", "set", "x", "--kind", "openai_compatible", "--model", "m=1/1"]);
    assert.equal(noUrl.code, 1, show(noUrl));
    assert.match(noUrl.stderr, /validation_failed/);
    const badKind = await cli(["providers", "set", "x", "--kind", "azure", "--model", "m=1/1"]);
    assert.equal(badKind.code, 2, show(badKind));
  });

  it("providers set notes that the tenant has no credits once its starting grant is taken back", async () => {
    const start = await cli(["credits", "--json"]);
    assert.deepEqual(JSON.parse(start.stdout).tenant, { granted: 10, spent: 0, reserved: 0, available: 10 });
    const args = ["providers", "set", "local", "--kind", "openai_compatible", "--base-url", "http://127.0.0.1:9/v1"];
    const taken = await cli(["credits", "grant", "default", "--", "-10"]);
    assert.equal(taken.code, 0, show(taken));
    const set = await cli([...args, "--model", "small=0.5/1.5"]);
    assert.equal(set.code, 0, show(set));
    assert.match(set.stdout, /updated provider local \(1 models\)/);
    assert.match(
      set.stderr,
      /^note: this tenant has no credits available .*out_of_credits.*paddock credits grant default/,
    );
    assert.equal((await cli(["credits", "grant", "default", "10"])).code, 0);
    assert.equal((await cli([...args, "--model", "small=0.5/1.5"])).stderr, "");
  });

  it("grants credits (admin only) and shows a tenant its balance", async () => {
    assert.equal((await cli(["tenants", "create", "acme"])).code, 0);
    const keyOut = await cli(["keys", "create", "--tenant", "acme", "--json"]);
    assert.equal(keyOut.code, 0, show(keyOut));
    const key = JSON.parse(keyOut.stdout).key as string;
    const granted = await cli(["credits", "grant", "acme", "12.5", "--note", "trial"]);
    assert.equal(granted.code, 0, show(granted));
    assert.match(granted.stdout, /acme: 12\.5 credits available/);
    const refused = await cli(["credits", "grant", "acme", "100"], key);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /forbidden/);
    const balance = await cli(["credits", "--json"], key);
    assert.equal(balance.code, 0, show(balance));
    assert.deepEqual(JSON.parse(balance.stdout).tenant, { granted: 12.5, spent: 0, reserved: 0, available: 12.5 });
    const human = await cli(["credits"], key);
    assert.match(human.stdout, /available 12\.5 credits/);
    const unknownRun = await cli(["credits", "run_0000"], key);
    assert.equal(unknownRun.code, 1);
    assert.match(unknownRun.stderr, /not_found/);
  });
});
