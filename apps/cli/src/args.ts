/**
 * Argument parsing shared by every command: `node:util` parseArgs with the connection options
 * every command accepts, positional-count checks, and the `-- CMD ARGS...` tail.
 */
import { type ParseArgsOptionsConfig, parseArgs } from "node:util";
import { EndUser } from "@paddock/protocol";

/** A mistake in how the command was called. Printed with a pointer to --help; exit status 2. */
export class UsageError extends Error {
  /** The command whose usage to point at, for example "agents create". */
  readonly command: string | null;

  constructor(message: string, command: string | null = null) {
    super(message);
    this.name = "UsageError";
    this.command = command;
  }
}

/** A failure on this side (a file that cannot be read, a refused path). Exit status 1. */
export class CliError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CliError";
  }
}

/** Options every command accepts: where the host is and how to authenticate. */
export const CONNECTION_OPTIONS = {
  url: { type: "string" },
  "api-key": { type: "string" },
  "data-dir": { type: "string" },
} as const satisfies ParseArgsOptionsConfig;

export interface CommandArgs<O extends ParseArgsOptionsConfig> {
  /** The command's name, for error messages ("agents create"). */
  command: string;
  options: O;
  /** How many positionals the command takes (before any `--`). */
  positionals?: { min: number; max: number };
  /** Whether the command takes a `-- CMD ARGS...` tail. */
  rest?: boolean;
}

/** Parses argv for a command that needs no host (no connection options). */
export function parseLocalCommand<const O extends ParseArgsOptionsConfig>(argv: string[], spec: CommandArgs<O>) {
  const parsed = (() => {
    try {
      return parseArgs({ args: argv, options: spec.options, allowPositionals: true, strict: true, tokens: true });
    } catch (err) {
      // parseArgs appends advice about '--' that does not fit most commands.
      const message = (err instanceof Error ? err.message : String(err)).split(". To specify")[0] ?? "";
      throw new UsageError(message.replace(/^Unknown option/, "unknown option"), spec.command);
    }
  })();
  return { values: parsed.values, ...splitPositionals(parsed.tokens, spec) };
}

/** Parses argv for one command; throws UsageError on unknown flags or a wrong positional count. */
export function parseCommand<const O extends ParseArgsOptionsConfig>(argv: string[], spec: CommandArgs<O>) {
  return parseLocalCommand(argv, { ...spec, options: { ...CONNECTION_OPTIONS, ...spec.options } });
}

type Token = ReturnType<typeof parseArgs<{ tokens: true; allowPositionals: true; strict: false }>>["tokens"][number];

/** Positionals before `--`, and the tail after it (for commands that take one). */
function splitPositionals(tokens: Token[], spec: CommandArgs<ParseArgsOptionsConfig>) {
  const terminator = tokens.find((t) => t.kind === "option-terminator");
  const before: string[] = [];
  const after: string[] = [];
  for (const token of tokens) {
    if (token.kind !== "positional") continue;
    (terminator && token.index > terminator.index ? after : before).push(token.value);
  }
  if (terminator && !spec.rest) {
    before.push(...after);
    after.length = 0;
  }
  const { min, max } = spec.positionals ?? { min: 0, max: 0 };
  if (before.length < min) {
    throw new UsageError(`missing argument${min - before.length > 1 ? "s" : ""}`, spec.command);
  }
  if (before.length > max) {
    throw new UsageError(`unexpected argument '${before[max]}'`, spec.command);
  }
  return { positionals: before, rest: terminator ? after : null };
}

/** True when argv asks for help (-h/--help before any `--`). */
export function wantsHelp(argv: readonly string[]): boolean {
  for (const arg of argv) {
    if (arg === "--") return false;
    if (arg === "-h" || arg === "--help") return true;
  }
  return false;
}

/** Parses `K=V` pairs (repeatable --env) into a record; later pairs win. */
export function parseKeyValues(pairs: readonly string[] | undefined, flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs ?? []) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new UsageError(`--${flag} expects KEY=VALUE, got '${pair}'`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

/** Parses a numeric flag value; integers only unless `fractional`. */
export function parseNumber(value: string | undefined, flag: string, fractional = false): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || (!fractional && !Number.isInteger(n))) {
    throw new UsageError(`--${flag} expects ${fractional ? "a number" : "an integer"}, got '${value}'`);
  }
  return n;
}

/** The --end-user flag: the product's own id for one of its users, checked as the host checks it. */
export function parseEndUser(value: string | undefined, command: string): string | undefined {
  if (value !== undefined && !EndUser.safeParse(value).success) {
    throw new UsageError("--end-user: 1 to 256 characters, no control characters", command);
  }
  return value;
}

/** Parses a JSON flag value (for example --input). */
export function parseJsonFlag(value: string, flag: string): unknown {
  try {
    return JSON.parse(value);
  } catch (err) {
    throw new UsageError(`--${flag} is not valid JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** The help text for CONNECTION_OPTIONS, appended to every command's usage. */
export const CONNECTION_HELP = `Connection options:
  --url URL         the host (env PADDOCK_URL; default http://127.0.0.1:7420)
  --api-key KEY     API key (env PADDOCK_API_KEY; default: the admin key in <data-dir>/admin.key)
  --data-dir DIR    data folder (env PADDOCK_DATA_DIR; default ./.paddock)`;
