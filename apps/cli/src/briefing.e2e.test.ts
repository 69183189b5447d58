/**
 * The AI part of `make demo`, as the demo does it, through the real bin/paddock against a real
 * host: the report agent's summary becomes the input of the example built-in agent
 * (examples/briefing-agent), whose model is a local stand-in registered as a provider; the run
 * writes the briefing the model gave, and the host's own tenant pays for its calls out of its
 * starting credits.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost, unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { type LlmStandIn, startLlmStandIn } from "../../../packages/host/src/testing/llm-stand-in.ts";
import { hostSkipReason, IMAGES, ROOT, runCli, showCli as show } from "./e2e-support.ts";

const REPORT = join(ROOT, "examples/report-agent/agent.json");
const BRIEFING = join(ROOT, "examples/briefing-agent/agent.json");
/** The model the example names, at the prices the demo registers for it (credits per million tokens). */
const MODEL = "gpt-4.1-mini";
const PRICE = { input: 0.4, output: 1.6 };
const TEXT = "# Sales up 7.4% year over year\n\n- Revenue: 16.8 M\n- South grew fastest\n";

describe("the example briefing agent (the demo's AI part)", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dataDir: string;
  let host: RunningHost;
  let stand: LlmStandIn;
  const cli = (args: string[]) => runCli(args, host.url, host.adminKey ?? "");

  before(async () => {
    stand = await startLlmStandIn();
    dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-briefing-"));
    host = await startHost({ dataDir, port: 0, imagesDir: IMAGES, log: () => {} });
  });
  after(async () => {
    await host?.close();
    await stand?.close();
    if (dataDir) {
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("reads the report's summary, writes the model's briefing and is paid from the starting credits", async () => {
    assert.equal(host.startingCredits, 10);
    assert.equal((await cli(["agents", "create", "--file", REPORT])).code, 0);
    const report = await cli(["run", "report-demo", "--follow"]);
    assert.equal(report.code, 0, show(report));
    const reportRun = /^run (\S+) /.exec(report.stdout)?.[1] ?? "";
    const reportDir = join(dataDir, "report");
    assert.equal((await cli(["artifacts", reportRun, "--download", reportDir])).code, 0);
    const summary = JSON.parse(await readFile(join(reportDir, "summary.json"), "utf8"));

    const provider = await cli([
      ...["providers", "set", "stand-in", "--kind", "openai_compatible", "--base-url", `${stand.url}/v1`],
      ...["--model", `${MODEL}=${PRICE.input}/${PRICE.output}`],
    ]);
    assert.equal(provider.code, 0, show(provider));
    assert.equal((await cli(["agents", "create", "--file", BRIEFING])).code, 0);
    stand.script(MODEL, [
      { tools: [{ id: "w1", name: "write_file", arguments: { path: "/outputs/briefing.md", content: TEXT } }] },
      { tools: [{ id: "f1", name: "finish", arguments: { summary: "Sales up 7.4% year over year" } }] },
    ]);
    const seenBefore = stand.seen.length;
    const briefing = await cli(["run", "briefing-demo", "--input-file", join(reportDir, "summary.json"), "--follow"]);
    assert.equal(briefing.code, 0, show(briefing));
    assert.match(briefing.stdout, /llm\.call/);
    const runId = /^run (\S+) /.exec(briefing.stdout)?.[1] ?? "";

    // The model was given the example's instructions and the report's summary as the run's input.
    const calls = stand.seen.slice(seenBefore);
    assert.equal(calls.length, 2);
    const definition = JSON.parse(await readFile(BRIEFING, "utf8"));
    const [system, task] = (calls[0]?.body.messages ?? []) as { role: string; content: string }[];
    assert.deepEqual(system, { role: "system", content: definition.instructions });
    assert.deepEqual(JSON.parse(task?.content.replace(/^The run's input \(JSON\):\n/, "") ?? ""), summary);

    const out = join(dataDir, "briefing");
    assert.equal((await cli(["artifacts", runId, "--download", out])).code, 0);
    assert.equal(await readFile(join(out, "briefing.md"), "utf8"), TEXT);

    // Its two calls, billed at the provider's figures, out of the tenant's 10 starting credits.
    const bill = JSON.parse((await cli(["credits", runId, "--json"])).stdout);
    const usage = stand.usage.slice(-2);
    const micro = usage.map((u) => Math.ceil(u.input * PRICE.input + u.output * PRICE.output));
    assert.deepEqual(
      bill.calls.map((c: { model: string; status: string; cost: number }) => [c.model, c.status, c.cost]),
      micro.map((m) => [MODEL, "settled", m / 1e6]),
    );
    const spentMicro = micro.reduce((a, b) => a + b, 0);
    const spent = spentMicro / 1e6;
    assert.equal(bill.spent, spent);
    const balance = JSON.parse((await cli(["credits", "--json"])).stdout).tenant;
    assert.deepEqual(balance, { granted: 10, spent, reserved: 0, available: (10e6 - spentMicro) / 1e6 });
    const table = await cli(["credits", runId]);
    assert.match(table.stdout, new RegExp(`^run ${runId}: ${spent} credits spent`, "m"));
  });
});
