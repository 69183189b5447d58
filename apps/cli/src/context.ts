/** What a command runs with: settings from the environment, output streams, and the connection. */
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { CliError } from "./args.ts";
import { Client } from "./client.ts";

export const DEFAULT_URL = "http://127.0.0.1:7420";
export const DEFAULT_DATA_DIR = ".paddock";

/** Connection settings from PADDOCK_* variables and options given before the command name. */
export interface Settings {
  url?: string;
  apiKey?: string;
  dataDir?: string;
  /** `serve`'s PostgreSQL URL (PADDOCK_DATABASE). */
  database?: string;
  /** Where `serve` sends traces (OTEL_EXPORTER_OTLP_ENDPOINT, unless OTEL_SDK_DISABLED=true). */
  otlpEndpoint?: string;
}

export interface Context {
  settings: Settings;
  /** Writes a line to stdout. */
  out(line: string): void;
  /** Writes a line to stderr. */
  err(line: string): void;
}

/** One command: `paddock <name> ...` or, inside a group, `paddock <group> <name> ...`. */
export interface Command {
  name: string;
  summary: string;
  usage: string;
  /** Runs the command; resolves to the exit status. */
  run(argv: string[], ctx: Context): Promise<number>;
}

/** A command with subcommands, such as `paddock agents`. */
export interface CommandGroup {
  name: string;
  summary: string;
  commands: Command[];
}

/** Reads the settings from the environment; the only place the CLI reads process.env. */
export function settingsFromEnv(env: NodeJS.ProcessEnv): Settings {
  const settings: Settings = {};
  if (env.PADDOCK_URL) settings.url = env.PADDOCK_URL;
  if (env.PADDOCK_API_KEY) settings.apiKey = env.PADDOCK_API_KEY;
  if (env.PADDOCK_DATA_DIR) settings.dataDir = env.PADDOCK_DATA_DIR;
  if (env.PADDOCK_DATABASE) settings.database = env.PADDOCK_DATABASE;
  if (env.OTEL_EXPORTER_OTLP_ENDPOINT && env.OTEL_SDK_DISABLED?.trim().toLowerCase() !== "true") {
    settings.otlpEndpoint = env.OTEL_EXPORTER_OTLP_ENDPOINT;
  }
  return settings;
}

interface ConnectionValues {
  url?: string | undefined;
  "api-key"?: string | undefined;
  "data-dir"?: string | undefined;
}

/** The data folder: --data-dir, else PADDOCK_DATA_DIR, else ./.paddock. */
export function dataDirOf(values: ConnectionValues, ctx: Context): string {
  return resolve(values["data-dir"] ?? ctx.settings.dataDir ?? DEFAULT_DATA_DIR);
}

/** The host URL: --url, else PADDOCK_URL, else the local default. */
export function urlOf(values: ConnectionValues, ctx: Context): string {
  const url = values.url ?? ctx.settings.url ?? DEFAULT_URL;
  try {
    const parsed = new URL(url);
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new Error(parsed.protocol);
  } catch {
    throw new CliError(`'${url}' is not an http(s) URL`);
  }
  return url;
}

/**
 * A client for the host. The API key is --api-key, else PADDOCK_API_KEY, else the admin key the
 * host wrote to <data-dir>/admin.key on its first start.
 */
export async function connect(values: ConnectionValues, ctx: Context, auth = true): Promise<Client> {
  const url = urlOf(values, ctx);
  let apiKey = values["api-key"] ?? ctx.settings.apiKey ?? null;
  if (apiKey === null && auth) {
    const keyFile = join(dataDirOf(values, ctx), "admin.key");
    try {
      apiKey = (await readFile(keyFile, "utf8")).trim() || null;
    } catch {
      apiKey = null;
    }
    if (apiKey === null) {
      throw new CliError(
        `no API key: pass --api-key or set PADDOCK_API_KEY (no admin key found at ${keyFile}; ` +
          "'paddock serve --data-dir DIR' writes one there on its first start)",
      );
    }
  }
  return new Client({ url, apiKey });
}
