/** `paddock connections set|list|show|delete`: the upstreams agents reach through the host bridge. */
import { readFile } from "node:fs/promises";
import { Connection, type ConnectionAuth, ConnectionName, Page, type PolicyRule } from "@paddock/protocol";
import type { z } from "zod";
import { CliError, CONNECTION_HELP, parseCommand, parseNumber, UsageError } from "../args.ts";
import { type Client, ConnectionError } from "../client.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatRows, formatTable } from "../format.ts";

const SET_OPTIONS = {
  upstream: { type: "string" },
  secret: { type: "string" },
  auth: { type: "string" },
  allow: { type: "string", multiple: true },
  approve: { type: "string", multiple: true },
  approvers: { type: "string" },
  "approval-timeout": { type: "string" },
  rate: { type: "string" },
  internal: { type: "boolean" },
  file: { type: "string" },
  json: { type: "boolean" },
} as const;

/**
 * Parses `--auth`: `bearer`, `none`, `header:NAME[:PREFIX]` (the prefix is everything after the
 * second ':', spaces included), `basic:USER`, `query:PARAM` or `oauth:APP`.
 */
export function parseAuth(text: string): ConnectionAuth {
  const colon = text.indexOf(":");
  const kind = colon < 0 ? text : text.slice(0, colon);
  const arg = colon < 0 ? "" : text.slice(colon + 1);
  if ((kind === "bearer" || kind === "none") && colon < 0) return { type: kind };
  if (kind === "header" && arg !== "") {
    const sep = arg.indexOf(":");
    if (sep < 0) return { type: "header", name: arg };
    return { type: "header", name: arg.slice(0, sep), prefix: arg.slice(sep + 1) };
  }
  if (kind === "basic" && arg !== "") return { type: "basic", username: arg };
  if (kind === "query" && arg !== "") return { type: "query", param: arg };
  if (kind === "oauth" && arg !== "") return { type: "oauth", app: arg };
  throw new UsageError(
    `--auth expects bearer, none, header:NAME[:PREFIX], basic:USER, query:PARAM or oauth:APP; got '${text}'`,
  );
}

/** Parses one `--allow 'GET,POST /repos/**'` into a rule (methods upper-cased). */
export function parseAllow(text: string): PolicyRule {
  const parts = text.trim().split(/\s+/);
  const [methods, path] = parts;
  if (parts.length !== 2 || !methods || !path) {
    throw new UsageError(`--allow expects 'METHODS PATH', such as 'GET,POST /repos/**'; got '${text}'`);
  }
  const list = methods.split(",").map((m) => m.trim().toUpperCase());
  if (list.some((m) => m === "")) throw new UsageError(`--allow: empty method in '${methods}'`);
  return { methods: [...new Set(list)], path };
}

/** Parses `--rate N/S`: at most N calls per S seconds. */
export function parseRate(text: string): { requests: number; per_s: number } {
  const match = /^(\d+)\/(\d+)$/.exec(text.trim());
  if (!match) throw new UsageError(`--rate expects N/S (N calls per S seconds), such as 100/60; got '${text}'`);
  return { requests: Number(match[1]), per_s: Number(match[2]) };
}

type SetValues = {
  upstream?: string | undefined;
  secret?: string | undefined;
  auth?: string | undefined;
  allow?: string[] | undefined;
  approve?: string[] | undefined;
  approvers?: string | undefined;
  "approval-timeout"?: string | undefined;
  rate?: string | undefined;
  internal?: boolean | undefined;
  file?: string | undefined;
};

/**
 * Builds the ConnectionPut body from --file (if any) and the flags, which override it. Without
 * --auth, a connection with a secret sends it as a bearer token, one without sends nothing.
 */
export async function connectionBody(values: SetValues): Promise<Record<string, unknown>> {
  const body: Record<string, unknown> = values.file ? await loadSpecFile(values.file) : {};
  if (values.upstream !== undefined) body.base_url = values.upstream;
  if (values.secret !== undefined) body.secret = values.secret;
  if (values.auth !== undefined) body.auth = parseAuth(values.auth);
  else if (body.auth === undefined) body.auth = { type: body.secret === undefined ? "none" : "bearer" };
  const policy = asRecord(body.policy, "policy");
  // Rules that hold each call for a person's approval come first: where both match, approval wins.
  const approval = {
    ...(values.approvers !== undefined ? { approvers: values.approvers.split(",").map((a) => a.trim()) } : {}),
    ...(values["approval-timeout"] !== undefined
      ? { timeout_s: parseNumber(values["approval-timeout"], "approval-timeout") }
      : {}),
  };
  const held = (values.approve ?? []).map((text) => ({ ...parseAllow(text), approval }));
  if (held.length === 0 && Object.keys(approval).length > 0) {
    throw new UsageError("--approvers and --approval-timeout apply to --approve rules; give one");
  }
  if (held.length > 0 || (values.allow && values.allow.length > 0)) {
    policy.allow = [...held, ...(values.allow ?? []).map(parseAllow)];
  }
  if (values.rate !== undefined) policy.rate_limit = parseRate(values.rate);
  if (Object.keys(policy).length > 0) body.policy = policy;
  if (values.internal) body.internal = true;
  if (body.base_url === undefined) throw new UsageError("give the upstream's base URL with --upstream (or --file)");
  if (body.policy === undefined) {
    throw new UsageError("give at least one rule with --allow or --approve 'METHODS PATH' (or --file)");
  }
  return body;
}

export async function loadSpecFile(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  try {
    return asRecord(JSON.parse(text), file);
  } catch (err) {
    if (err instanceof CliError) throw err;
    throw new CliError(`${file} is not valid JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function asRecord(value: unknown, what: string): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new CliError(`${what} must be a JSON object`);
  }
  return { ...(value as Record<string, unknown>) };
}

function checkName(name: string, command: string): string {
  if (!ConnectionName.safeParse(name).success) {
    throw new UsageError(`'${name}' is not a connection name (lower-case letters, digits, '-' and '_')`, command);
  }
  return name;
}

export async function parseBody<S extends z.ZodType>(res: Response, schema: S, what: string): Promise<z.output<S>> {
  const parsed = schema.safeParse(await res.json().catch(() => null));
  if (!parsed.success) throw new ConnectionError(`${what}: unexpected response shape: ${parsed.error.message}`);
  return parsed.data;
}

const path = (name: string) => `/connections/${encodeURIComponent(name)}`;

export function describeAuth(auth: ConnectionAuth): string {
  switch (auth.type) {
    case "header":
      return `header ${auth.name}${auth.prefix ? ` (prefix '${auth.prefix}')` : ""}`;
    case "basic":
      return `basic (user ${auth.username})`;
    case "query":
      return `query ?${auth.param}=`;
    case "oauth":
      return `oauth (the run's end user's account at ${auth.app})`;
    default:
      return auth.type;
  }
}

const describeRate = (c: Connection) =>
  c.policy.rate_limit ? `${c.policy.rate_limit.requests}/${c.policy.rate_limit.per_s}s` : "none";

async function getConnection(client: Client, name: string): Promise<Connection> {
  return parseBody(await client.request("GET", path(name)), Connection, `GET ${path(name)}`);
}

const set: Command = {
  name: "set",
  summary: "create or replace a connection",
  usage: `Usage: paddock connections set NAME --upstream URL --allow 'METHODS PATH' [options]
       paddock connections set NAME --file spec.json [options]

Creates the connection NAME, or replaces its whole definition. Runs of agents whose policy names
it call http://<host>/bridge/NAME/<path>; the host checks the method and path against the rules,
attaches the secret and forwards the call to URL + <path>.

Options:
  --upstream URL    the upstream's base URL (http or https; a path prefix is allowed); --url
                    names the Paddock host, as for every command
  --secret NAME     the secret to attach (set it first)
  --auth AUTH       how to attach it: bearer (default with --secret), header:NAME[:PREFIX],
                    basic:USER, query:PARAM, or none (default without --secret)
  --allow RULE      'GET,POST /repos/**': methods and a path pattern (repeatable; replaces the
                    file's rules). '*' is one path segment, a final '**' any number of them.
  --approve RULE    as --allow, but each such call waits for a person's approval (paddock
                    approvals); these rules come before the --allow ones
  --approvers LIST  who may approve (comma-separated): tenant (any key of yours, the default),
                    admin, or API key names
  --approval-timeout SECONDS
                    how long a call waits for a decision before it expires (default 3600)
  --rate N/S        at most N calls per S seconds
  --internal        the upstream is on a private network (private and loopback addresses)
  --file FILE       a ConnectionPut JSON body; the options above override what it says
  --json            print the connection as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "connections set",
      options: SET_OPTIONS,
      positionals: { min: 1, max: 1 },
    });
    const name = checkName(positionals[0] ?? "", "connections set");
    const body = await connectionBody(values);
    const client = await connect(values, ctx);
    const res = await client.request("PUT", path(name), { body });
    const connection = await parseBody(res, Connection, `PUT ${path(name)}`);
    if (values.json) {
      ctx.out(JSON.stringify(connection, null, 2));
      return 0;
    }
    ctx.out(`${res.status === 201 ? "created" : "replaced"} connection ${connection.name} → ${connection.base_url}`);
    ctx.out(`  auth:  ${describeAuth(connection.auth)}${connection.secret ? ` with secret ${connection.secret}` : ""}`);
    ctx.out(`  rules: ${connection.policy.allow.length}, rate limit ${describeRate(connection)}`);
    return 0;
  },
};

const list: Command = {
  name: "list",
  summary: "list connections",
  usage: `Usage: paddock connections list [--json]

Options:
  --json            print the connections as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "connections list", options: { json: { type: "boolean" } } });
    const client = await connect(values, ctx);
    const page = await parseBody(await client.request("GET", "/connections"), Page(Connection), "GET /connections");
    if (values.json) {
      ctx.out(JSON.stringify(page.data, null, 2));
    } else if (page.data.length === 0) {
      ctx.err("no connections");
    } else {
      ctx.out(
        formatTable(
          ["NAME", "UPSTREAM", "AUTH", "SECRET", "RULES", "RATE"],
          page.data.map((c) => [
            c.name,
            c.base_url,
            describeAuth(c.auth),
            c.secret ?? "-",
            String(c.policy.allow.length),
            describeRate(c),
          ]),
        ),
      );
    }
    return 0;
  },
};

const show: Command = {
  name: "show",
  summary: "show one connection and its rules",
  usage: `Usage: paddock connections show NAME [--json]

Options:
  --json            print the connection as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "connections show",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const name = checkName(positionals[0] ?? "", "connections show");
    const c = await getConnection(await connect(values, ctx), name);
    if (values.json) {
      ctx.out(JSON.stringify(c, null, 2));
      return 0;
    }
    ctx.out(`connection ${c.name}`);
    ctx.out(`upstream   ${c.base_url}${c.internal ? " (internal)" : ""}`);
    ctx.out(`auth       ${describeAuth(c.auth)}`);
    ctx.out(`secret     ${c.secret ?? "(none)"}`);
    ctx.out(`rate       ${describeRate(c)}`);
    ctx.out(
      `limits     timeout ${c.timeout_ms} ms, request ${c.max_request_bytes} B, response ${c.max_response_bytes} B`,
    );
    ctx.out(`updated    ${c.updated_at}`);
    ctx.out("rules");
    ctx.out(
      formatRows(
        c.policy.allow.map((r) => [
          `  ${r.methods.join(",")}`,
          r.path,
          r.approval ? `approval by ${r.approval.approvers.join(", ")}, ${r.approval.timeout_s} s` : "",
        ]),
      ),
    );
    return 0;
  },
};

const remove: Command = {
  name: "delete",
  summary: "delete a connection no agent names",
  usage: `Usage: paddock connections delete NAME

Deletes the connection. It is refused while an agent's policy names it.

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "connections delete",
      options: {},
      positionals: { min: 1, max: 1 },
    });
    const name = checkName(positionals[0] ?? "", "connections delete");
    const client = await connect(values, ctx);
    await client.request("DELETE", path(name));
    ctx.out(`deleted connection ${name}`);
    return 0;
  },
};

export const connections: CommandGroup = {
  name: "connections",
  summary: "bridge connections: upstreams, secrets, policies",
  commands: [set, list, show, remove],
};
