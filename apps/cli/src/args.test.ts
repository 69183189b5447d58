import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, it } from "node:test";
import { parseCommand, parseKeyValues, parseNumber, UsageError, wantsHelp } from "./args.ts";
import { agentBody, parseCreate, parseUpdate } from "./commands/agents.ts";
import type { Context } from "./context.ts";
import { commandRows, main } from "./main.ts";

function capture(): Context & { stdout: string[]; stderr: string[] } {
  const stdout: string[] = [];
  const stderr: string[] = [];
  return { settings: {}, stdout, stderr, out: (l) => stdout.push(l), err: (l) => stderr.push(l) };
}

describe("parseCommand", () => {
  it("splits positionals from the tail after --", () => {
    const { values, positionals, rest } = parseCommand(["hello", "--json", "--", "python3", "-u", "x.py"], {
      command: "t",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
      rest: true,
    });
    assert.equal(values.json, true);
    assert.deepEqual(positionals, ["hello"]);
    assert.deepEqual(rest, ["python3", "-u", "x.py"]);
  });

  it("accepts the connection options on every command", () => {
    const { values } = parseCommand(["--url", "http://h:1", "--api-key=k", "--data-dir", "/d"], {
      command: "t",
      options: {},
    });
    assert.deepEqual({ ...values }, { url: "http://h:1", "api-key": "k", "data-dir": "/d" });
  });

  it("refuses unknown options, missing and extra positionals", () => {
    const spec = { command: "agents show", options: {}, positionals: { min: 1, max: 1 } };
    assert.throws(
      () => parseCommand(["x", "--nope"], spec),
      (e: unknown) => {
        assert.ok(e instanceof UsageError);
        assert.equal(e.message, "unknown option '--nope'");
        assert.equal(e.command, "agents show");
        return true;
      },
    );
    assert.throws(() => parseCommand([], spec), /missing argument/);
    assert.throws(() => parseCommand(["a", "b"], spec), /unexpected argument 'b'/);
  });

  it("treats words after -- as positionals when the command takes no tail", () => {
    const { positionals, rest } = parseCommand(["--", "-x"], {
      command: "t",
      options: {},
      positionals: { min: 1, max: 1 },
    });
    assert.deepEqual(positionals, ["-x"]);
    assert.deepEqual(rest, []);
  });
});

describe("flag values", () => {
  it("parses repeatable K=V pairs", () => {
    assert.deepEqual(parseKeyValues(["A=1", "B=x=y", "A=2", "EMPTY="], "env"), { A: "2", B: "x=y", EMPTY: "" });
    assert.throws(() => parseKeyValues(["novalue"], "env"), /--env expects KEY=VALUE/);
    assert.throws(() => parseKeyValues(["=v"], "env"), UsageError);
  });

  it("parses numbers, integers unless fractional", () => {
    assert.equal(parseNumber("512", "memory"), 512);
    assert.equal(parseNumber(undefined, "memory"), undefined);
    assert.equal(parseNumber("0.5", "cpus", true), 0.5);
    assert.throws(() => parseNumber("1.5", "memory"), /--memory expects an integer/);
    assert.throws(() => parseNumber("lots", "cpus", true), /expects a number/);
    assert.throws(() => parseNumber("", "pids"), UsageError);
  });

  it("finds --help only before --", () => {
    assert.equal(wantsHelp(["x", "-h"]), true);
    assert.equal(wantsHelp(["--", "cmd", "--help"]), false);
  });
});

describe("agents create arguments", () => {
  it("builds an AgentCreate body from NAME, flags and the command", async () => {
    const body = await agentBody(
      parseCreate([
        "my-agent",
        "--env",
        "MODE=fast",
        "--env",
        "LEVEL=2",
        "--memory",
        "256",
        "--timeout",
        "30",
        "--cpus",
        "0.5",
        "--pids",
        "64",
        "--disk",
        "100",
        "--",
        "python3",
        "main.py",
        "--verbose",
      ]),
    );
    assert.deepEqual(body, {
      name: "my-agent",
      command: ["python3", "main.py", "--verbose"],
      env: { MODE: "fast", LEVEL: "2" },
      limits: { memory_mb: 256, timeout_s: 30, cpus: 0.5, pids: 64, disk_mb: 100 },
    });
  });

  it("lets NAME, flags and the command override an agent file", async () => {
    const file = new URL("../../../examples/report-agent/agent.json", import.meta.url).pathname;
    const body = await agentBody(parseCreate(["other", "--file", file, "--timeout", "60", "--", "python3", "-V"]));
    assert.equal(body.name, "other");
    assert.deepEqual(body.command, ["python3", "-V"]);
    assert.deepEqual(body.limits, { memory_mb: 256, timeout_s: 60 });
    assert.ok(Object.hasOwn(body.files as object, "summarize.py"));
  });

  it("builds an update from the whole file (its name checked by the host), or from only the flags given", async () => {
    const file = new URL("../../../examples/report-agent/agent.json", import.meta.url).pathname;
    const fromFile = await agentBody(parseUpdate(["report", "--file", file, "--memory", "512"]), true);
    assert.equal(fromFile.name, "report-demo");
    assert.deepEqual(fromFile.command, ["python3", "summarize.py"]);
    assert.deepEqual(fromFile.limits, { memory_mb: 512, timeout_s: 120 });
    assert.deepEqual(await agentBody(parseUpdate(["report", "--timeout", "30"]), true), { limits: { timeout_s: 30 } });
    assert.throws(() => parseUpdate(["--timeout", "30"]), /missing argument/);
  });

  it("refuses a missing name or command", async () => {
    await assert.rejects(agentBody(parseCreate(["--", "true"])), /give the agent a NAME/);
    await assert.rejects(agentBody(parseCreate(["x"])), /give the command to run after '--'/);
    await assert.rejects(agentBody(parseCreate(["x", "--memory", "big", "--", "true"])), /--memory expects an integer/);
  });

  it("builds a built-in agent from --instructions, --model, --tool, --max-steps and budgets", async () => {
    const body = await agentBody(
      parseCreate([
        "triage",
        "--instructions",
        "Sort the issues.",
        "--model",
        "gpt-test",
        "--tool",
        "shell",
        "--tool",
        "finish",
        "--max-steps",
        "5",
        "--budget-per-run",
        "0.5",
      ]),
    );
    assert.deepEqual(body, {
      name: "triage",
      instructions: "Sort the issues.",
      model: "gpt-test",
      tools: ["shell", "finish"],
      max_steps: 5,
      budget: { per_run: 0.5 },
    });
  });
});

describe("main", () => {
  it("prints usage for --help and for 'help <command>'", async () => {
    const ctx = capture();
    assert.equal(await main(["--help"], ctx), 0);
    assert.match(ctx.stdout.join("\n"), /^Usage: paddock/);
    const sub = capture();
    assert.equal(await main(["help", "agents", "create"], sub), 0);
    assert.match(sub.stdout.join("\n"), /^Usage: paddock agents create NAME/);
    const group = capture();
    assert.equal(await main(["agents", "--help"], group), 0);
    assert.match(group.stdout.join("\n"), /agents show/);
  });

  it("keeps every command name in the help apart from its summary, in one column", async () => {
    /** Where each row's summary starts: two spaces or more after its name, or on the next line. */
    const columns = (text: string, rows: readonly (readonly [string, string])[]) =>
      rows.map(([name, summary]) => {
        const lines = text.split("\n");
        const at = lines.findIndex((line) => line === `  ${name}` || line.startsWith(`  ${name}  `));
        assert.ok(at >= 0, `'${name}' has a line of its own:\n${text}`);
        const own = lines[at] === `  ${name}`;
        const line = own ? (lines[at + 1] ?? "") : (lines[at] ?? "");
        const column = line.indexOf(summary, own ? 0 : name.length + 4);
        assert.ok(column > 0 && line.slice(own ? 0 : name.length + 2, column).trim() === "", `${name}: ${line}`);
        return column;
      });
    const top = capture();
    await main(["--help"], top);
    const rows = commandRows();
    assert.equal(new Set(columns(top.stdout.join("\n"), rows)).size, 1);
    for (const [name] of rows.filter(([n]) => n.includes(" "))) {
      const [group = "", subs = ""] = name.split(" ");
      const help = capture();
      await main([group, "--help"], help);
      const text = help.stdout.join("\n");
      const subRows = subs.split("|").map((sub) => {
        const line = text.split("\n").find((l) => l.startsWith(`  ${group} ${sub} `)) ?? "";
        return [`${group} ${sub}`, line.slice(group.length + sub.length + 3).trim()] as const;
      });
      assert.equal(new Set(columns(text, subRows)).size, 1, text);
    }
  });

  it("exits 2 on an unknown command, subcommand or flag", async () => {
    for (const argv of [
      ["frobnicate"],
      ["agents", "frobnicate"],
      ["runs", "list", "--colour"],
      ["--bogus", "agents"],
      [],
    ]) {
      const ctx = capture();
      assert.equal(await main(argv, ctx), 2, argv.join(" "));
      assert.ok(ctx.stderr.length > 0);
    }
  });

  it("reports a usage mistake inside a command against that command", async () => {
    const ctx = capture();
    assert.equal(await main(["run", "agent", "--input", "{nope"], ctx), 2);
    assert.match(ctx.stderr[0] ?? "", /--input is not valid JSON/);
    assert.match(ctx.stderr.join("\n"), /Usage: paddock run AGENT/);
  });

  it("exits 1 with a clear message when the host cannot be reached", async () => {
    const ctx = capture();
    const code = await main(["--url", "http://127.0.0.1:9", "--api-key", "k", "agents", "list"], ctx);
    assert.equal(code, 1);
    assert.match(ctx.stderr.join("\n"), /^error: cannot reach the host at http:\/\/127\.0\.0\.1:9/);
  });

  it("serve exits 1 with database_unavailable when its database cannot be reached, creating nothing", async () => {
    const dataDir = join(tmpdir(), `paddock-no-db-${process.pid}`, "data");
    const ctx = capture();
    const args = ["serve", "--data-dir", dataDir, "--port", "0", "--database", "postgres://nobody@127.0.0.1:1/none"];
    assert.equal(await main(args, ctx), 1);
    assert.match(
      ctx.stderr.join("\n"),
      /^error database_unavailable: Cannot connect to the database at postgres:\/\/nobody@127\.0\.0\.1:1\/none/,
    );
    assert.equal(existsSync(dirname(dataDir)), false);
    const notUrl = capture();
    assert.equal(await main(["serve", "--database", "mysql://h/db"], notUrl), 2);
    assert.match(notUrl.stderr.join("\n"), /--database must be a postgres:\/\/ URL/);
  });

  it("exits 1 when no API key can be found", async () => {
    const ctx = capture();
    assert.equal(await main(["agents", "list", "--data-dir", "/nonexistent/paddock"], ctx), 1);
    assert.match(ctx.stderr.join("\n"), /no API key/);
  });
});
