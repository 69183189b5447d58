/**
 * The real `bin/paddock` against a real host it started itself (`paddock serve` on a temporary
 * data folder, the base image from `make base-image`, real sandboxes).
 */
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { cleanEnv, hostSkipReason, IMAGES, PADDOCK, ROOT } from "./e2e-support.ts";

const EXAMPLE = join(ROOT, "examples/report-agent/agent.json");

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs bin/paddock with a clean PADDOCK_* environment plus `env`. */
function cli(args: string[], env: Record<string, string> = {}): Promise<Result> {
  return new Promise((resolve) => {
    execFile(PADDOCK, args, { env: cleanEnv(env), timeout: 180_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

const show = (r: Result) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

interface Served {
  url: string;
  /** The admin key, printed only on the first start of a data folder. */
  adminKey: string | null;
  /** Everything serve printed so far, for failure messages. */
  output(): string;
  /** Sends SIGTERM and resolves to serve's exit status. */
  stop(): Promise<number | null>;
}

/** Starts `bin/paddock serve` and waits for its banner. */
async function serve(dataDir: string, port = 0): Promise<Served> {
  const child = spawn(PADDOCK, ["serve", "--data-dir", dataDir, "--port", String(port), "--images-dir", IMAGES], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stderr.on("data", (chunk: Buffer) => {
    output += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const banner = await new Promise<string>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`serve did not start:\n${output}`)), 60_000);
    child.stdout.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      output += chunk.toString();
      if (/\n {2}pdk\.\S+\n|admin API key: in /.test(out)) {
        clearTimeout(timer);
        resolve(out);
      }
    });
    void exited.then((code) => reject(new Error(`serve exited with ${code}:\n${output}`)));
  });
  const url = /serving (http:\/\/\S+)/.exec(banner)?.[1];
  assert.ok(url, banner);
  return {
    url,
    adminKey: /\n {2}(pdk\.\S+)\n/.exec(banner)?.[1] ?? null,
    output: () => output,
    stop: async () => {
      if (child.exitCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
}

describe("paddock CLI against a real host", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dataDir: string;
  let server: Served;
  let url: string;
  let adminKey: string;
  let env: Record<string, string>;

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-e2e-"));
    server = await serve(dataDir);
    url = server.url;
    adminKey = server.adminKey ?? "";
    assert.ok(adminKey, server.output());
    env = { PADDOCK_URL: url, PADDOCK_DATA_DIR: dataDir };
  });

  after(async () => {
    if (server) assert.equal(await server.stop(), 0, `serve did not stop cleanly on SIGTERM:\n${server.output()}`);
    if (dataDir) {
      await unsealRunners(dataDir);
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("serve wrote the admin key it printed, with its dashboard and starting credits, and health answers", async () => {
    assert.equal(readFileSync(join(dataDir, "admin.key"), "utf8").trim(), adminKey);
    assert.match(server.output(), new RegExp(`^dashboard: ${url}/ui \\(sign in with the admin API key\\)$`, "m"));
    assert.match(server.output(), /^the host's own tenant starts with 10 credits /m);
    const r = await cli(["health"], { PADDOCK_URL: url });
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /"ok":true/);
  });

  it("lists this host as the one live node, reachable at its own URL", async () => {
    const list = await cli(["nodes", "list", "--json"], env);
    assert.equal(list.code, 0, show(list));
    const nodes = JSON.parse(list.stdout) as { id: string; live: boolean; draining: boolean; internal_url: string }[];
    assert.deepEqual(
      nodes.map((n) => [n.live, n.draining, n.internal_url]),
      [[true, false, url]],
    );
    const table = await cli(["nodes", "list"], env);
    assert.match(table.stdout, new RegExp(`^${nodes[0]?.id}\\s+live\\s+0\\s`, "m"), show(table));
    const unknown = await cli(["nodes", "drain", "nobody"], env);
    assert.equal(unknown.code, 1, show(unknown));
    assert.match(unknown.stderr, /error not_found: No node 'nobody'/);
  });

  it("creates tenants and keys; a tenant key is a tenant's, not an admin's", async () => {
    const created = await cli(["tenants", "create", "acme"], env);
    assert.equal(created.code, 0, show(created));
    assert.match(created.stdout, /^created tenant acme \(ten_[0-9a-z]+\)$/m);

    const list = await cli(["tenants", "list", "--json"], env);
    assert.equal(list.code, 0, show(list));
    const names = (JSON.parse(list.stdout) as { name: string }[]).map((t) => t.name).sort();
    assert.deepEqual(names, ["acme", "default"]);

    const key = await cli(["keys", "create", "--tenant", "acme", "--name", "ci"], env);
    assert.equal(key.code, 0, show(key));
    const secret = key.stdout.trim();
    assert.match(secret, /^pdk\.key_[0-9a-z]+\.\S+$/);
    assert.match(key.stderr, /not shown again/);

    const tenantEnv = { PADDOCK_URL: url, PADDOCK_API_KEY: secret };
    const agents = await cli(["agents", "list"], tenantEnv);
    assert.equal(agents.code, 0, show(agents));
    assert.match(agents.stderr, /no agents/);
    const denied = await cli(["tenants", "list"], tenantEnv);
    assert.equal(denied.code, 1, show(denied));
    assert.match(denied.stderr, /^error forbidden: /);

    const dup = await cli(["tenants", "create", "acme"], env);
    assert.equal(dup.code, 1, show(dup));
    assert.match(dup.stderr, /^error conflict: /);
  });

  let runId = "";

  it("creates the example agent from its agent.json, uploading files_dir", async () => {
    const created = await cli(["agents", "create", "--file", EXAMPLE], env);
    assert.equal(created.code, 0, show(created));
    assert.match(created.stdout, /^created agent report-demo \(agt_[0-9a-z]+\)$/m);
    assert.match(created.stdout, /command: python3 summarize\.py/);

    const shown = await cli(["agents", "show", "report-demo", "--json"], env);
    assert.equal(shown.code, 0, show(shown));
    const agent = JSON.parse(shown.stdout) as { files: { path: string }[]; limits: { timeout_s: number } };
    assert.deepEqual(agent.files.map((f) => f.path).sort(), ["data/sales.csv", "summarize.py"]);
    assert.equal(agent.limits.timeout_s, 120);
  });

  it("runs it with --follow: a live timeline with progress events, three artifacts, success", async () => {
    const r = await cli(["run", "report-demo", "--follow", "--input", '{"region": "north"}'], env);
    assert.equal(r.code, 0, show(r));
    const lines = r.stdout.trimEnd().split("\n");
    runId = /^run (run_[0-9a-z]+) \(agent report-demo\)$/.exec(lines[0] ?? "")?.[1] ?? "";
    assert.ok(runId, show(r));
    const timeline = lines.slice(1, -1);
    for (const line of timeline) assert.match(line, /^\+\d+\.\d{3}s +[a-z_.]+ {2,}/, line);
    const types = timeline.map((l) => l.split(/\s+/)[1]);
    assert.equal(types[0], "run.queued");
    assert.equal(types.at(-1), "run.succeeded");
    for (const type of ["run.starting", "run.running", "attempt.started", "attempt.finished", "log", "user"]) {
      assert.ok(types.includes(type), `no ${type} event in\n${r.stdout}`);
    }
    assert.match(r.stdout, /user +progress \{"step":"reading data","pct":10\}/);
    assert.match(r.stdout, /user +progress \{"step":"done","pct":100\}/);
    assert.match(r.stdout, /log +\[stdout\] filtered to region North: 24 rows/);
    for (const file of ["report.md", "chart.svg", "summary.json"]) {
      assert.match(r.stdout, new RegExp(`artifact\\.created +${file.replace(".", "\\.")} \\(\\d`), file);
    }
    assert.match(lines.at(-1) ?? "", new RegExp(`^run ${runId} succeeded \\(exit 0\\) in \\d+\\.\\d{3}s$`));
  });

  it("lists and downloads the run's artifacts, checked against their digests", async () => {
    const list = await cli(["artifacts", runId], env);
    assert.equal(list.code, 0, show(list));
    assert.match(list.stdout, /^PATH +SIZE +TYPE +SHA256$/m);

    const dir = join(dataDir, "download");
    const r = await cli(["artifacts", runId, "--download", dir], env);
    assert.equal(r.code, 0, show(r));
    assert.deepEqual((await readdir(dir)).sort(), ["chart.svg", "report.md", "summary.json"]);
    assert.match(await readFile(join(dir, "report.md"), "utf8"), /^# Sales report: North region\n/);
    assert.match(await readFile(join(dir, "chart.svg"), "utf8"), /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    const summary = JSON.parse(await readFile(join(dir, "summary.json"), "utf8"));
    assert.equal(summary.scope, "North");
    assert.equal(summary.period.months, 24);
  });

  it("shows the run, lists it, and prints its logs plainly", async () => {
    const shown = await cli(["runs", "show", runId, "--json"], env);
    assert.equal(shown.code, 0, show(shown));
    const run = JSON.parse(shown.stdout);
    assert.equal(run.status, "succeeded");
    assert.deepEqual(run.input, { region: "north" });

    const list = await cli(["runs", "list", "--agent", "report-demo", "--status", "succeeded"], env);
    assert.equal(list.code, 0, show(list));
    assert.match(list.stdout, new RegExp(`^${runId} +report-demo +succeeded +0 `, "m"));

    const logs = await cli(["logs", runId], env);
    assert.equal(logs.code, 0, show(logs));
    assert.match(logs.stdout, /^loaded 96 rows: 4 regions, 24 months$/m);
    assert.match(logs.stdout, /^\+\d+\.\d{3}s +run\.succeeded /m);
  });

  it("replays the run with an edited input: a run of its own that names the run it replays", async () => {
    const replayed = await cli(["runs", "replay", runId, "--input", '{"region": "south"}', "--follow"], env);
    assert.equal(replayed.code, 0, show(replayed));
    const lines = replayed.stdout.trimEnd().split("\n");
    const replayId = /^run (run_[0-9a-z]+) \(replays run_[0-9a-z]+\)$/.exec(lines[0] ?? "")?.[1];
    assert.ok(replayId, show(replayed));
    assert.match(lines.at(-1) ?? "", new RegExp(`^run ${replayId} succeeded`));
    const shown = JSON.parse((await cli(["runs", "show", replayId, "--json"], env)).stdout);
    assert.equal(shown.trigger, "replay");
    assert.equal(shown.replay_of, runId);
    assert.deepEqual(shown.input, { region: "south" });

    // Without an input it runs again with the run's own; only replays are listed with --trigger replay.
    const again = await cli(["runs", "replay", replayId], env);
    assert.equal(again.code, 0, show(again));
    const list = await cli(["runs", "list", "--trigger", "replay", "--json"], env);
    const replays = JSON.parse(list.stdout) as { id: string; input: unknown; replay_of: string }[];
    assert.deepEqual(
      replays.map((r) => [r.id, r.replay_of, r.input]),
      [
        [again.stdout.trim(), replayId, { region: "south" }],
        [replayId, runId, { region: "south" }],
      ],
    );
    const unknown = await cli(["runs", "replay", `run_${"z".repeat(26)}`], env);
    assert.equal(unknown.code, 1, show(unknown));
    assert.match(unknown.stderr, /error not_found: No run 'run_z+'/);
  });

  it("updates an agent to a new version and deletes it; its runs stay readable", async () => {
    // The demo's update: the example's own definition again saves no new version.
    const same = await cli(["agents", "update", "report-demo", "--file", EXAMPLE], env);
    assert.equal(same.code, 0, show(same));
    assert.equal(same.stdout.trim(), "agent report-demo unchanged (version 1)");

    const created = await cli(
      ["agents", "create", "versioned", "--env", "KEEP=1", "--budget-total", "10", "--", "sh", "-c", "echo one"],
      env,
    );
    assert.equal(created.code, 0, show(created));
    const updated = await cli(
      ["agents", "update", "versioned", "--env", "MODE=two", "--budget-per-run", "2", "--", "sh", "-c", "echo $MODE"],
      env,
    );
    assert.equal(updated.code, 0, show(updated));
    assert.match(updated.stdout, /^updated agent versioned \(agt_[0-9a-z]+\) to version 2$/m);
    // Flags change what they name: the other variable and the total budget stay.
    const merged = JSON.parse((await cli(["agents", "show", "versioned", "--json"], env)).stdout);
    assert.deepEqual(merged.env, { KEEP: "1", MODE: "two" });
    assert.deepEqual(merged.budget, { total: 10, per_run: 2 });
    const refused = await cli(["agents", "update", "versioned", "--memory", "1"], env);
    assert.equal(refused.code, 1, show(refused));
    assert.match(refused.stderr, /^error validation_failed: /);
    assert.match(refused.stderr, /^ {2}- limits\.memory_mb: /m);

    const ran = await cli(["run", "versioned", "--follow"], env);
    assert.equal(ran.code, 0, show(ran));
    assert.match(ran.stdout, /log +\[stdout\] two/);
    const id = /^run (run_[0-9a-z]+) /.exec(ran.stdout)?.[1] ?? "";
    const shown = await cli(["runs", "show", id], env);
    assert.match(shown.stdout, /^agent +versioned \(agt_[0-9a-z]+\), version 2$/m);

    const deleted = await cli(["agents", "delete", "versioned"], env);
    assert.equal(deleted.code, 0, show(deleted));
    assert.match(deleted.stdout, /^deleted agent versioned \(agt_[0-9a-z]+\); its runs stay readable$/m);
    const again = await cli(["run", "versioned"], env);
    assert.equal(again.code, 1, show(again));
    assert.match(again.stderr, /^error agent_archived: The agent 'versioned' was deleted/);
    assert.doesNotMatch((await cli(["agents", "list"], env)).stdout, /versioned/);
    assert.match((await cli(["agents", "list", "--archived"], env)).stdout, /versioned \(deleted\) +2 /);
    assert.match((await cli(["agents", "show", "versioned"], env)).stdout, /^deleted +\d{4}-/m);
    assert.equal((await cli(["runs", "show", id], env)).code, 0);
  });

  it("exits 1 for a run that fails, with the exit code in the final line", async () => {
    const created = await cli(["agents", "create", "fails", "--", "python3", "-c", "import sys; sys.exit(3)"], env);
    assert.equal(created.code, 0, show(created));
    const r = await cli(["run", "fails", "--follow"], env);
    assert.equal(r.code, 1, show(r));
    assert.match(r.stdout, /run\.failed +failed \(exit_code, exit 3\)/);
    assert.match(r.stdout.trimEnd().split("\n").at(-1) ?? "", /^run run_[0-9a-z]+ failed \(exit_code, exit 3\)/);
  });

  it("cancels a running run", async () => {
    const created = await cli(["agents", "create", "sleeper", "--", "sleep", "60"], env);
    assert.equal(created.code, 0, show(created));
    const started = await cli(["run", "sleeper"], env);
    assert.equal(started.code, 0, show(started));
    const id = started.stdout.trim();
    assert.match(id, /^run_[0-9a-z]+$/);
    const followed = spawn(PADDOCK, ["logs", id, "--follow"], { env: cleanEnv(env) });
    let log = "";
    followed.stdout.on("data", (chunk: Buffer) => {
      log += chunk.toString();
    });
    const followExit = new Promise<number | null>((resolve) => followed.once("exit", (code) => resolve(code)));
    for (let waited = 0; !log.includes("run.running"); waited += 50) {
      assert.ok(waited < 60_000, `the run did not start:\n${log}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const canceled = await cli(["cancel", id, "--wait"], env);
    assert.equal(canceled.code, 0, show(canceled));
    assert.match(canceled.stdout.trim(), new RegExp(`^run ${id} canceled`));
    assert.equal(await followExit, 0, log);
    assert.match(log, /run\.canceled +canceled/);
    const again = await cli(["cancel", id], env);
    assert.equal(again.code, 1, show(again));
    assert.match(again.stderr, /^error run_not_cancelable: /);
  });

  it("reports API errors with their code: unknown agent, invalid agent", async () => {
    const unknown = await cli(["run", "no-such-agent"], env);
    assert.equal(unknown.code, 1, show(unknown));
    assert.match(unknown.stderr, /^error not_found: no agent with the name or id 'no-such-agent'$/m);

    const invalid = await cli(["agents", "create", "Bad_Name", "--memory", "1", "--", "true"], env);
    assert.equal(invalid.code, 1, show(invalid));
    assert.match(invalid.stderr, /^error validation_failed: /);
    assert.match(invalid.stderr, /^ {2}- name: /m);
    assert.match(invalid.stderr, /^ {2}- limits\.memory_mb: /m);

    const unauthorized = await cli(["agents", "list"], { PADDOCK_URL: url, PADDOCK_API_KEY: "pdk.key_x.nope" });
    assert.equal(unauthorized.code, 1, show(unauthorized));
    assert.match(unauthorized.stderr, /^error unauthorized: /);
  });

  it("shapes an environment: env exec, env edit on a terminal, env freeze, history", async () => {
    const created = await cli(["agents", "create", "shaped", "--", "cat", "/etc/motd-paddock"], env);
    assert.equal(created.code, 0, show(created));

    const exec = await cli(
      ["env", "exec", "shaped", "--", "sh", "-c", "echo made > /etc/motd-paddock; echo out; exit 3"],
      env,
    );
    assert.equal(exec.code, 3, show(exec));
    assert.equal(exec.stdout, "out\n");
    assert.match(exec.stderr, /opened session ses_\w+ over version 1/);

    // Piped input ends with the terminal's end-of-file, which ends the shell.
    const edit = await withInput(["env", "edit", "shaped"], env, "tty; cat /etc/motd-paddock; exit 4\n");
    assert.equal(edit.code, 4, show(edit));
    assert.match(edit.stdout, /\/dev\/(pts\/\d+|console)\r?\n/);
    assert.match(edit.stdout, /made\r?\n/);

    const status = await cli(["env", "session", "shaped"], env);
    assert.equal(status.code, 0, show(status));
    assert.match(status.stdout, /2 command\(s\)/);

    const frozen = await cli(["env", "freeze", "shaped"], env);
    assert.equal(frozen.code, 0, show(frozen));
    assert.match(frozen.stdout, /^shaped: version 2 is current \(layer [0-9a-f]{12}, .*1 added/m);

    const again = await cli(["env", "freeze", "shaped"], env);
    assert.equal(again.code, 1, show(again));
    assert.match(again.stderr, /^error no_session: /m);

    const run = await cli(["run", "shaped", "--follow"], env);
    assert.equal(run.code, 0, show(run));
    assert.match(run.stdout, /made/);
    const history = await cli(["env", "history", "shaped"], env);
    assert.match(history.stdout, /^2\s+\*\s+freeze/m);
  });
});

/** Runs bin/paddock with `input` on its stdin (a pipe, not a terminal). */
function withInput(args: string[], env: Record<string, string>, input: string): Promise<Result> {
  return new Promise((resolve) => {
    const child = spawn(PADDOCK, args, { env: cleanEnv(env), stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on("data", (c: Buffer) => {
      stderr += c.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, stdout, stderr });
    });
    child.stdin.end(input);
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

describe("following a run across a host restart", { skip: e2eSkip(hostSkipReason()) }, () => {
  it("reconnects with Last-Event-ID and prints every event exactly once", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-restart-"));
    const port = await freePort();
    let server = await serve(dataDir, port);
    try {
      const env = { PADDOCK_URL: server.url, PADDOCK_DATA_DIR: dataDir };
      const created = await cli(
        ["agents", "create", "slow", "--", "sh", "-c", "echo first; sleep 3; echo second"],
        env,
      );
      assert.equal(created.code, 0, show(created));
      const started = await cli(["run", "slow"], env);
      assert.equal(started.code, 0, show(started));
      const runId = started.stdout.trim();

      const follower = spawn(PADDOCK, ["logs", runId, "--follow", "--json"], { env: cleanEnv(env) });
      let out = "";
      let err = "";
      follower.stderr.on("data", (chunk: Buffer) => {
        err += chunk.toString();
      });
      const exited = new Promise<number | null>((resolve) => follower.once("exit", (code) => resolve(code)));
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the run never printed 'first':\n${out}\n${err}`)), 60_000);
        follower.stdout.on("data", (chunk: Buffer) => {
          out += chunk.toString();
          if (out.includes('"line":"first"')) {
            clearTimeout(timer);
            resolve();
          }
        });
      });

      assert.equal(await server.stop(), 0, server.output());
      server = await serve(dataDir, port);
      assert.doesNotMatch(server.output(), /starts with/, "the starting credits are granted once");
      const code = await exited;
      assert.equal(code, 0, `logs --follow exited ${code}:\n${out}\n${err}`);

      const events = out
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line) as { seq: number; type: string; data: { line?: string } });
      assert.deepEqual(
        events.map((e) => e.seq),
        events.map((_, i) => i + 1),
        "every event once, in order",
      );
      assert.ok(
        events.some((e) => e.type === "run.requeued"),
        out,
      );
      assert.ok(
        events.some((e) => e.type === "log" && e.data.line === "second"),
        out,
      );
      assert.equal(events.at(-1)?.type, "run.succeeded", out);
    } finally {
      await server.stop();
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
