/**
 * `paddock runner publish` (the real bin/paddock) against a real host: a published bundle becomes
 * current, the next run of an agent whose snapshot names the old runner boots the new one
 * (runner.swapped names both), and whatever is not a working runner is refused with a stable code
 * and stores nothing.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { e2eSkip } from "@paddock/host/e2e-skip";
import {
  hostSkipReason,
  startTestHost,
  type TestHost,
  waitForRun,
} from "../../../packages/host/src/testing/harness.ts";
import { PADDOCK, ROOT } from "./e2e-support.ts";

const BUNDLE = join(ROOT, "packages/runner/dist/runner.mjs");

// biome-ignore lint/suspicious/noExplicitAny: JSON.
type Json = any;

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

describe("paddock runner publish", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  let scratch: string;
  let bundle: string;

  before(async () => {
    t = await startTestHost();
    scratch = await mkdtemp(join(tmpdir(), "paddock-publish-"));
    if (!existsSync(BUNDLE)) await import("../../../packages/runner/build.ts");
    bundle = await readFile(BUNDLE, "utf8");
  });
  after(async () => {
    await t?.close();
    await rm(scratch, { recursive: true, force: true });
  });

  /** Runs bin/paddock against the test host with its admin key, nothing else of PADDOCK_* inherited. */
  const cli = (args: string[]) =>
    new Promise<Result>((resolve) => {
      const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("PADDOCK_")));
      execFile(
        PADDOCK,
        args,
        { env: { ...env, PADDOCK_URL: t.host.url, PADDOCK_API_KEY: t.adminKey }, timeout: 120_000 },
        (err, stdout, stderr) =>
          resolve({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr }),
      );
    });
  const show = (r: Result) => `exit ${r.code}\n${r.stdout}\n${r.stderr}`;
  const runOnce = async (agentId: string) => {
    const started = await t.api("POST", `/v1/agents/${agentId}/runs`, {});
    const run = await waitForRun(t, started.body.id);
    const events: Json[] = (await t.api("GET", `/v1/runs/${run.id}/events`)).body.data;
    return {
      run,
      swap: events.find((e) => e.type === "runner.swapped")?.data,
      logs: events.filter((e) => e.type === "log").map((e) => e.data.line as string),
    };
  };
  const layers = async () => (await readdir(join(t.dataDir, "runners"))).sort();

  it("makes a bundle current; the next run of an agent made with the old runner boots it", async () => {
    const agent = await t.api("POST", "/v1/agents", {
      name: "publish-probe",
      command: ["sh", "-c", "tail -n 1 /opt/paddock/runner/runner.mjs"],
    });
    assert.equal(agent.status, 201, JSON.stringify(agent.body));
    const old = agent.body.snapshot.runner;
    const first = await runOnce(agent.body.id);
    assert.equal(first.run.status, "succeeded");
    assert.equal(first.swap, undefined);

    const file = join(scratch, "runner-next.mjs");
    await writeFile(file, `${bundle}\n// published-next\n`);
    const published = await cli(["runner", "publish", file, "--json"]);
    assert.equal(published.code, 0, show(published));
    const runner = JSON.parse(published.stdout);
    assert.notEqual(runner.digest, old);
    assert.equal(runner.current, true);

    const listed = await cli(["runner", "list", "--json"]);
    assert.equal(listed.code, 0, show(listed));
    const current = JSON.parse(listed.stdout).filter((r: Json) => r.current);
    assert.deepEqual(
      current.map((r: Json) => r.digest),
      [runner.digest],
    );

    const next = await runOnce(agent.body.id);
    assert.equal(next.run.status, "succeeded", JSON.stringify(next));
    assert.deepEqual([next.swap?.from, next.swap?.to], [old, runner.digest]);
    assert.deepEqual(next.logs, ["// published-next"], "the sandbox mounted the published bundle");
    const text = await cli(["runner", "publish", file]);
    assert.equal(text.code, 0, show(text));
    assert.equal(
      text.stdout.trim(),
      `runner ${runner.digest} is current`,
      "publishing the same files again is a no-op",
    );

    // A Node binary sent along (here: a copy of this Node) is uploaded and becomes the layer's.
    const withNode = join(scratch, "runner-with-node.mjs");
    await writeFile(withNode, `${bundle}\n// published-with-node\n`);
    const nodeCopy = join(scratch, "node");
    await copyFile(process.execPath, nodeCopy);
    const uploaded = await cli(["runner", "publish", withNode, "--node", nodeCopy, "--json"]);
    assert.equal(uploaded.code, 0, show(uploaded));
    const layer = join(t.dataDir, "runners", JSON.parse(uploaded.stdout).digest);
    assert.deepEqual(await readFile(join(layer, "node")), await readFile(process.execPath));
    const last = await runOnce(agent.body.id);
    assert.deepEqual(last.logs, ["// published-with-node"]);
  });

  it("refuses missing files, folders and bundles that are not a runner, storing nothing", async () => {
    const before = await layers();
    const runnersBefore = (await t.api("GET", "/v1/runners")).body.data;
    await mkdir(join(scratch, "a-folder"));
    const files: [string, string][] = [
      ["syntax.mjs", "export const = ;\n"],
      ["not-runner.mjs", "export {};\n"],
      ["fake-node", "#!/bin/sh\nexit 0\n"],
    ];
    for (const [name, content] of files) await writeFile(join(scratch, name), content);
    const cases: [string[], RegExp][] = [
      [["runner", "publish", join(scratch, "missing.mjs")], /^error validation_failed: .*bundle: no such file/],
      [["runner", "publish", join(scratch, "a-folder")], /^error validation_failed: .*bundle: not a file/],
      [
        ["runner", "publish", BUNDLE, "--node", join(scratch, "nope")],
        /^error validation_failed: .*node: no such file/,
      ],
      [["runner", "publish", join(scratch, "syntax.mjs")], /^error runner_invalid: .*\n[\s\S]*SyntaxError/],
      [["runner", "publish", join(scratch, "not-runner.mjs")], /^error runner_invalid: .*no hello frame/],
      [["runner", "publish", BUNDLE, "--node", join(scratch, "fake-node")], /^error runner_invalid: /],
    ];
    for (const [args, pattern] of cases) {
      const r = await cli(args);
      assert.equal(r.code, 1, show(r));
      assert.match(r.stderr, pattern, show(r));
    }
    assert.deepEqual(await layers(), before, "no layer and no work in progress left");
    assert.deepEqual((await t.api("GET", "/v1/runners")).body.data, runnersBefore, "the current runner is unchanged");
  });

  it("answers the API's own refusals with stable codes", async () => {
    const post = (body: string | FormData, headers: Record<string, string>, key: string | null = t.adminKey) =>
      fetch(`${t.host.url}/v1/runners`, {
        method: "POST",
        headers: { ...(key ? { authorization: `Bearer ${key}` } : {}), ...headers },
        body,
      }).then(async (r) => [r.status, ((await r.json()) as Json).error?.code]);
    assert.deepEqual(await post("{}", { "content-type": "application/json" }), [415, "unsupported_media_type"]);
    const empty = new FormData();
    empty.append("node", new Blob(["x"]), "node");
    assert.deepEqual(await post(empty, {}), [400, "validation_failed"]);
    const extra = new FormData();
    extra.append("bundle", new Blob([bundle]), "runner.mjs");
    extra.append("other", "x");
    assert.deepEqual(await post(extra, {}), [400, "validation_failed"]);
    assert.deepEqual(await post(new FormData(), {}, null), [401, "unauthorized"]);
    const tenant = await t.api("POST", "/v1/tenants", { name: "publish-tenant" });
    const key = (await t.api("POST", `/v1/tenants/${tenant.body.id}/keys`, {})).body.key;
    assert.deepEqual(await post(new FormData(), {}, key), [403, "forbidden"]);
    const doc = (await t.api("GET", "/v1/openapi.json", undefined, null)).body;
    const form = doc.paths["/v1/runners"].post.requestBody.content["multipart/form-data"].schema;
    assert.equal(form.$ref, "#/components/schemas/RunnerPublish");
    assert.deepEqual(doc.components.schemas.RunnerPublish.required, ["bundle"]);
    assert.equal(doc.components.schemas.RunnerPublish.properties.bundle.format, "binary");
  });
});
