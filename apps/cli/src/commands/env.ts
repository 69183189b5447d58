/** `paddock env history|rollback`: an agent's environment versions. */
import { CONNECTION_HELP, parseCommand, parseNumber, UsageError } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatSize, formatTable } from "../format.ts";

const short = (digest: string) => (digest ? digest.replace(/^sha256-/, "").slice(0, 12) : "-");

const history: Command = {
  name: "history",
  summary: "list an agent's environment versions",
  usage: `Usage: paddock env history AGENT [--json]

Lists the agent's environment versions, newest first: the base image, environment layers and
runner each names, why it was made, and what changed.

Options:
  --json            print the versions as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "env history",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const versions = await client.listSnapshots(agent.id);
    if (values.json) {
      ctx.out(JSON.stringify(versions, null, 2));
      return 0;
    }
    ctx.out(
      formatTable(
        ["VERSION", "", "REASON", "BASE", "LAYERS", "RUNNER", "SIZE", "CREATED"],
        versions.map((s) => [
          String(s.version),
          s.current ? "*" : "",
          s.reason,
          short(s.base),
          s.layers.map(short).join(",") || "-",
          short(s.runner),
          formatSize(s.env_bytes),
          s.created_at,
        ]),
      ),
    );
    return 0;
  },
};

const rollback: Command = {
  name: "rollback",
  summary: "make an earlier environment version current again",
  usage: `Usage: paddock env rollback AGENT VERSION [--json]

Makes VERSION's environment current again, as a new version; later runs boot it.

Options:
  --json            print the new version as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "env rollback",
      options: { json: { type: "boolean" } },
      positionals: { min: 2, max: 2 },
    });
    const version = parseNumber(positionals[1], "VERSION");
    if (version === undefined || version < 1)
      throw new UsageError("VERSION must be a whole number from 1", "env rollback");
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const made = await client.rollback(agent.id, version);
    if (values.json) ctx.out(JSON.stringify(made, null, 2));
    else ctx.out(`${agent.name}: version ${made.version} is current (the environment of version ${version})`);
    return 0;
  },
};

export const env: CommandGroup = {
  name: "env",
  summary: "an agent's environment versions",
  commands: [history, rollback],
};

const list: Command = {
  name: "list",
  summary: "list runner versions",
  usage: `Usage: paddock runner list [--json]

Lists runner versions (admin key required); the one published last is current, and every host
publishes its own runner when it starts.

Options:
  --json            print the runners as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "runner list", options: { json: { type: "boolean" } } });
    const client = await connect(values, ctx);
    const runners = await client.listRunners();
    if (values.json) ctx.out(JSON.stringify(runners, null, 2));
    else
      ctx.out(
        formatTable(
          ["DIGEST", "", "PUBLISHED", "CREATED"],
          runners.map((r) => [r.digest, r.current ? "*" : "", r.published_at ?? "-", r.created_at]),
        ),
      );
    return 0;
  },
};

export const runner: CommandGroup = { name: "runner", summary: "runner versions", commands: [list] };
