/** `paddock env history|rollback|export|import`: an agent's environment versions. */
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream, openAsBlob } from "node:fs";
import { rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { CliError, CONNECTION_HELP, parseCommand, parseNumber, UsageError } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatSize, formatTable } from "../format.ts";
import { sessionCommands } from "./env-session.ts";
import { publish } from "./runner-publish.ts";

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

const exportEnv: Command = {
  name: "export",
  summary: "write an environment version to a .tar.zst file",
  usage: `Usage: paddock env export AGENT [--version N] [-o FILE] [--no-base]

Writes one environment version of the agent (default: the current one) to a .tar.zst file that
'paddock env import' reads on another host: a manifest, the environment layers and the base
image. The file is written aside and renamed into place once complete.

Options:
  --version N       the version to export (default: the current one; see 'paddock env history')
  -o, --output FILE where to write (default: AGENT-vN.tar.zst in this folder); '-' for stdout
  --no-base         leave the base image out (smaller; the importing host must already have it)

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "env export",
      options: { version: { type: "string" }, output: { type: "string", short: "o" }, "no-base": { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const asked = parseNumber(values.version, "version");
    if (asked !== undefined && asked < 1) throw new UsageError("--version must be a whole number from 1", "env export");
    const toStdout = values.output === "-";
    if (toStdout && process.stdout.isTTY) {
      throw new UsageError("refusing to write an archive to a terminal; redirect stdout or pass -o FILE", "env export");
    }
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const version = asked ?? agent.snapshot.version;
    const res = await client.exportSnapshot(agent.id, version, { includeBase: !values["no-base"] });
    if (!res.body) throw new CliError("the host sent no archive");
    const what = `version ${version} of ${agent.name}`;
    if (toStdout) {
      await pipeline(Readable.fromWeb(res.body), process.stdout, { end: false }).catch((err: unknown) => {
        throw cutOff(err, what);
      });
      return 0;
    }
    const dest = resolve(values.output ?? `${agent.name}-v${version}.tar.zst`);
    const tmp = join(dirname(dest), `.${basename(dest)}.${randomBytes(6).toString("hex")}.part`);
    const expected = /^sha-256=:([A-Za-z0-9+/=]+):$/.exec(res.headers.get("content-digest") ?? "")?.[1];
    const hash = createHash("sha256");
    try {
      try {
        await pipeline(
          Readable.fromWeb(res.body),
          async function* (chunks: AsyncIterable<Buffer>) {
            for await (const chunk of chunks) {
              hash.update(chunk);
              yield chunk;
            }
          },
          createWriteStream(tmp, { flags: "wx", mode: 0o644 }),
        );
      } catch (err) {
        throw cutOff(err, what);
      }
      const got = hash.digest("base64");
      if (expected !== undefined && got !== expected) {
        throw new CliError(
          `${what} arrived with SHA-256 ${got}, not the ${expected} the host sent; nothing was written`,
        );
      }
      await rename(tmp, dest);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    ctx.out(`${dest}  ${formatSize((await stat(dest)).size)}  (${what})`);
    return 0;
  },
};

/** A failed download as a CliError: a file error names the file, anything else is the host stopping. */
function cutOff(err: unknown, what: string): CliError {
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof Error && "syscall" in err) return new CliError(`cannot write the archive: ${message}`);
  return new CliError(`the host stopped sending ${what} midway (${message}); nothing was written`);
}

const importEnv: Command = {
  name: "import",
  summary: "make an exported environment an agent's new current version",
  usage: `Usage: paddock env import AGENT FILE [--json]

Uploads FILE, a .tar.zst written by 'paddock env export' (on this host or another), and makes
its environment AGENT's new current version (reason "import"); later runs boot it. The host
checks every digest and stores the layers and base image it lacks; a damaged or unsafe archive
is refused and changes nothing. The agent's command, variables and limits stay as they are.

Options:
  --json            print the new version as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "env import",
      options: { json: { type: "boolean" } },
      positionals: { min: 2, max: 2 },
    });
    const file = positionals[1] ?? "";
    let archive: Blob;
    try {
      if (!(await stat(file)).isFile()) throw new Error("not a file");
      archive = await openAsBlob(file);
    } catch (err) {
      throw new CliError(`cannot read ${file}: ${err instanceof Error ? err.message : String(err)}`);
    }
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const made = await client.importSnapshot(agent.id, archive);
    if (values.json) {
      ctx.out(JSON.stringify(made, null, 2));
      return 0;
    }
    const imported = (made.changes as { imported?: { version?: unknown; agent?: { name?: unknown } } } | null)
      ?.imported;
    const from =
      imported && typeof imported.version === "number" && typeof imported.agent?.name === "string"
        ? ` (version ${imported.version} of ${imported.agent.name})`
        : "";
    ctx.out(`${agent.name}: version ${made.version} is current, imported from ${basename(file)}${from}`);
    return 0;
  },
};

export const env: CommandGroup = {
  name: "env",
  summary: "an agent's environment versions",
  commands: [...sessionCommands, history, rollback, exportEnv, importEnv],
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

export const runner: CommandGroup = { name: "runner", summary: "runner versions", commands: [list, publish] };
