/**
 * The `paddock` command. Exit status: 0 success, 1 failure (an API error, an unreachable host, a
 * refused file, a run that did not succeed), 2 a usage mistake.
 */
import { AppError } from "@paddock/protocol";
import { CliError, CONNECTION_HELP, UsageError, wantsHelp } from "./args.ts";
import { ApiError, ConnectionError } from "./client.ts";
import { accounts } from "./commands/accounts.ts";
import { agents } from "./commands/agents.ts";
import { approvals } from "./commands/approvals.ts";
import { artifacts } from "./commands/artifacts.ts";
import { bench } from "./commands/bench.ts";
import { connections } from "./commands/connections.ts";
import { credits, models, providers } from "./commands/credits.ts";
import { env, runner } from "./commands/env.ts";
import { health } from "./commands/health.ts";
import { images } from "./commands/images.ts";
import { keys } from "./commands/keys.ts";
import { mcpServers } from "./commands/mcp-servers.ts";
import { nodes } from "./commands/nodes.ts";
import { notifications } from "./commands/notifications.ts";
import { oauthApps } from "./commands/oauth-apps.ts";
import { cancel, logs, run, runs } from "./commands/runs.ts";
import { schedules, webhooks } from "./commands/schedules.ts";
import { secrets } from "./commands/secrets.ts";
import { serve } from "./commands/serve.ts";
import { tenants } from "./commands/tenants.ts";
import { top } from "./commands/top.ts";
import { type Command, type CommandGroup, type Context, type Settings, settingsFromEnv } from "./context.ts";
import { formatHelpRows } from "./format.ts";

const ENTRIES: readonly (Command | CommandGroup)[] = [
  serve,
  health,
  nodes,
  top,
  images,
  tenants,
  keys,
  agents,
  connections,
  mcpServers,
  secrets,
  oauthApps,
  accounts,
  providers,
  models,
  credits,
  schedules,
  webhooks,
  notifications,
  approvals,
  run,
  runs,
  logs,
  cancel,
  artifacts,
  env,
  runner,
  bench,
];

const isGroup = (entry: Command | CommandGroup): entry is CommandGroup => "commands" in entry;

/** The widest command name the top help keeps on one line with its summary. */
const TOP_NAME_WIDTH = 34;

/** The help rows of every command: a group's name with its subcommands', and its summary. */
export function commandRows(): [string, string][] {
  return ENTRIES.map((entry) => [
    isGroup(entry) ? `${entry.name} ${entry.commands.map((c) => c.name).join("|")}` : entry.name,
    entry.summary,
  ]);
}

function topUsage(): string {
  return `Usage: paddock [connection options] <command> [arguments]

Runs AI agents unattended in disposable Linux sandboxes.

Commands:
${formatHelpRows(commandRows(), TOP_NAME_WIDTH)}

Run 'paddock <command> --help' for a command's arguments and options.

${CONNECTION_HELP}`;
}

function groupUsage(group: CommandGroup): string {
  const rows = group.commands.map((c) => [`${group.name} ${c.name}`, c.summary] as const);
  return `Usage: paddock ${group.name} <${group.commands.map((c) => c.name).join("|")}> [arguments]

${formatHelpRows(rows)}

Run 'paddock ${group.name} <command> --help' for a command's arguments and options.`;
}

/** The usage text of a command named like "agents create", "agents" or "run". */
export function usageOf(name: string): string | null {
  const [first, second] = name.split(" ");
  const entry = ENTRIES.find((e) => e.name === first);
  if (!entry) return null;
  if (!isGroup(entry)) return entry.usage;
  const command = entry.commands.find((c) => c.name === second);
  return command ? command.usage : groupUsage(entry);
}

/** Takes connection options given before the command name (`paddock --url U agents list`). */
function leadingOptions(argv: string[], settings: Settings): { settings: Settings; rest: string[] } {
  const out = { ...settings };
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (!arg.startsWith("-") || arg === "-h" || arg === "--help") break;
    const match = /^--(url|api-key|data-dir)(?:=(.*))?$/s.exec(arg);
    if (!match) throw new UsageError(`unknown option '${arg}'`);
    const value = match[2] ?? argv[++i];
    if (value === undefined) throw new UsageError(`option '--${match[1]}' needs a value`);
    if (match[1] === "url") out.url = value;
    else if (match[1] === "api-key") out.apiKey = value;
    else out.dataDir = value;
  }
  return { settings: out, rest: argv.slice(i) };
}

async function dispatch(argv: string[], base: Context): Promise<number> {
  const { settings, rest } = leadingOptions(argv, base.settings);
  const ctx: Context = { ...base, settings };
  const [name, ...args] = rest;
  if (name === undefined) {
    ctx.err(topUsage());
    return 2;
  }
  if (name === "-h" || name === "--help") {
    ctx.out(topUsage());
    return 0;
  }
  if (name === "help") {
    const usage = args.length > 0 ? usageOf(args.join(" ")) : topUsage();
    if (usage === null) throw new UsageError(`unknown command '${args.join(" ")}'`);
    ctx.out(usage);
    return 0;
  }
  const entry = ENTRIES.find((e) => e.name === name);
  if (!entry) throw new UsageError(`unknown command '${name}'`);
  if (!isGroup(entry)) {
    if (wantsHelp(args)) {
      ctx.out(entry.usage);
      return 0;
    }
    return runCommand(entry, entry.name, args, ctx);
  }
  const [sub, ...subArgs] = args;
  if (sub === undefined) {
    ctx.err(groupUsage(entry));
    return 2;
  }
  if (sub === "-h" || sub === "--help") {
    ctx.out(groupUsage(entry));
    return 0;
  }
  const command = entry.commands.find((c) => c.name === sub);
  if (!command) throw new UsageError(`unknown command '${name} ${sub}'`, name);
  if (wantsHelp(subArgs)) {
    ctx.out(command.usage);
    return 0;
  }
  return runCommand(command, `${name} ${sub}`, subArgs, ctx);
}

/** Runs a command; a usage mistake found inside it is reported against that command. */
async function runCommand(command: Command, fullName: string, argv: string[], ctx: Context): Promise<number> {
  try {
    return await command.run(argv, ctx);
  } catch (err) {
    if (err instanceof UsageError && err.command === null) throw new UsageError(err.message, fullName);
    throw err;
  }
}

/** Prints an error's details: one line per validation problem, else indented JSON. */
function formatDetails(details: unknown): string[] {
  if (details === undefined || details === null) return [];
  if (Array.isArray(details) && details.every((d) => d && typeof d === "object" && "message" in d)) {
    return details.map((d: { path?: unknown; message: unknown }) => {
      const path = typeof d.path === "string" && d.path !== "" ? `${d.path}: ` : "";
      return `  - ${path}${String(d.message)}`;
    });
  }
  return JSON.stringify(details, null, 2)
    .split("\n")
    .map((line) => `  ${line}`);
}

/** Maps an error to its message on stderr and the exit status. */
function report(err: unknown, ctx: Context): number {
  if (err instanceof UsageError) {
    ctx.err(`paddock: ${err.message}`);
    const usage = err.command ? usageOf(err.command) : null;
    const first = usage?.split("\n").find((line) => line.startsWith("Usage:"));
    if (first) ctx.err(first);
    ctx.err(`Run 'paddock ${err.command ? `${err.command} ` : ""}--help' for help.`);
    return 2;
  }
  if (err instanceof ApiError || err instanceof AppError) {
    ctx.err(`error ${err.code}: ${err.message}`);
    for (const line of formatDetails(err.details)) ctx.err(line);
    return 1;
  }
  if (err instanceof CliError || err instanceof ConnectionError) {
    ctx.err(`error: ${err.message}`);
    return 1;
  }
  ctx.err(`error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  return 1;
}

/** Runs the CLI with `argv` (without the program name); resolves to the exit status. */
export async function main(argv: string[], ctx: Context): Promise<number> {
  try {
    return await dispatch(argv, ctx);
  } catch (err) {
    return report(err, ctx);
  }
}

if (import.meta.main) {
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(0);
    throw err;
  });
  const ctx: Context = {
    settings: settingsFromEnv(process.env),
    out: (line) => process.stdout.write(`${line}\n`),
    err: (line) => process.stderr.write(`${line}\n`),
  };
  process.exitCode = await main(process.argv.slice(2), ctx);
}
