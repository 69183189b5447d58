/** `paddock mcp-servers set|list|show|delete|tools`: remote MCP servers the host connects to for runs. */
import { McpServer, McpServerName, McpToolList, Page } from "@paddock/protocol";
import { CONNECTION_HELP, parseCommand, parseNumber, UsageError } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatRows, formatTable } from "../format.ts";
import { describeAuth, loadSpecFile, parseAuth, parseBody, parseRate } from "./connections.ts";

const SET_OPTIONS = {
  "server-url": { type: "string" },
  secret: { type: "string" },
  auth: { type: "string" },
  header: { type: "string", multiple: true },
  timeout: { type: "string" },
  rate: { type: "string" },
  internal: { type: "boolean" },
  file: { type: "string" },
  json: { type: "boolean" },
} as const;

function checkName(name: string, command: string): string {
  if (!McpServerName.safeParse(name).success) {
    throw new UsageError(
      `'${name}' is not an MCP server name (lower-case letters, digits, '-' and '_', no '__', not ending in '_')`,
      command,
    );
  }
  return name;
}

const path = (name: string) => `/mcp-servers/${encodeURIComponent(name)}`;

const set: Command = {
  name: "set",
  summary: "register an MCP server, or replace it",
  usage: `Usage: paddock mcp-servers set NAME --server-url URL [options]
       paddock mcp-servers set NAME --file spec.json [options]

Registers the MCP server NAME (streamable HTTP, or the older HTTP+SSE transport), or replaces its
whole definition. The host is the MCP client: it attaches the credential; runs of agents whose
policy.mcp names the server see its allowed tools at $PADDOCK_BRIDGE_URL/mcp as NAME__TOOL.

Options:
  --server-url URL  the server's MCP endpoint (http or https)
  --secret NAME     the secret to attach (set it first)
  --auth AUTH       how to attach it: bearer (default with --secret), header:NAME[:PREFIX],
                    basic:USER, query:PARAM, oauth:APP (the run's end user's account), or none
  --header 'NAME: VALUE'
                    an extra header sent with every request (repeatable; not for credentials)
  --timeout MS      how long one request to the server may take (default 30000)
  --rate N/S        at most N requests of runs per S seconds
  --internal        the server is on a private network (admin key only)
  --file FILE       an McpServerPut JSON body; the options above override what it says
  --json            print the server as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "mcp-servers set",
      options: SET_OPTIONS,
      positionals: { min: 1, max: 1 },
    });
    const name = checkName(positionals[0] ?? "", "mcp-servers set");
    const body: Record<string, unknown> = values.file ? await loadSpecFile(values.file) : {};
    if (values["server-url"] !== undefined) body.url = values["server-url"];
    if (values.secret !== undefined) body.secret = values.secret;
    if (values.auth !== undefined) body.auth = parseAuth(values.auth);
    else if (body.auth === undefined) body.auth = { type: body.secret === undefined ? "none" : "bearer" };
    if (values.header && values.header.length > 0) {
      body.headers = Object.fromEntries(
        values.header.map((h) => {
          const colon = h.indexOf(":");
          if (colon < 1) throw new UsageError(`--header expects 'NAME: VALUE'; got '${h}'`);
          return [h.slice(0, colon).trim(), h.slice(colon + 1).trim()];
        }),
      );
    }
    if (values.timeout !== undefined) body.timeout_ms = parseNumber(values.timeout, "timeout");
    if (values.rate !== undefined) body.rate_limit = parseRate(values.rate);
    if (values.internal) body.internal = true;
    if (body.url === undefined) throw new UsageError("give the server's URL with --server-url (or --file)");
    const client = await connect(values, ctx);
    const res = await client.request("PUT", path(name), { body });
    const server = await parseBody(res, McpServer, `PUT ${path(name)}`);
    if (values.json) {
      ctx.out(JSON.stringify(server, null, 2));
      return 0;
    }
    ctx.out(`${res.status === 201 ? "registered" : "replaced"} MCP server ${server.name} → ${server.url}`);
    ctx.out(`  auth:  ${describeAuth(server.auth)}${server.secret ? ` with secret ${server.secret}` : ""}`);
    return 0;
  },
};

const list: Command = {
  name: "list",
  summary: "list MCP servers",
  usage: `Usage: paddock mcp-servers list [--json]

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "mcp-servers list", options: { json: { type: "boolean" } } });
    const client = await connect(values, ctx);
    const page = await parseBody(await client.request("GET", "/mcp-servers"), Page(McpServer), "GET /mcp-servers");
    if (values.json) ctx.out(JSON.stringify(page.data, null, 2));
    else if (page.data.length === 0) ctx.err("no MCP servers");
    else {
      ctx.out(
        formatTable(
          ["NAME", "URL", "AUTH", "SECRET"],
          page.data.map((s) => [s.name, s.url, describeAuth(s.auth), s.secret ?? "-"]),
        ),
      );
    }
    return 0;
  },
};

const show: Command = {
  name: "show",
  summary: "show one MCP server",
  usage: `Usage: paddock mcp-servers show NAME [--json]

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "mcp-servers show",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const name = checkName(positionals[0] ?? "", "mcp-servers show");
    const client = await connect(values, ctx);
    const s = await parseBody(await client.request("GET", path(name)), McpServer, `GET ${path(name)}`);
    if (values.json) {
      ctx.out(JSON.stringify(s, null, 2));
      return 0;
    }
    ctx.out(
      formatRows([
        ["MCP server", s.name],
        ["url", `${s.url}${s.internal ? " (internal)" : ""}`],
        ["auth", describeAuth(s.auth)],
        ["secret", s.secret ?? "(none)"],
        ["headers", Object.keys(s.headers).join(", ") || "(none)"],
        ["timeout", `${s.timeout_ms} ms`],
        ["rate", s.rate_limit ? `${s.rate_limit.requests}/${s.rate_limit.per_s}s` : "none"],
        ["updated", s.updated_at],
      ]),
    );
    return 0;
  },
};

const remove: Command = {
  name: "delete",
  summary: "delete an MCP server no agent names",
  usage: `Usage: paddock mcp-servers delete NAME

Deletes the MCP server. It is refused while an agent's policy names it.

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "mcp-servers delete",
      options: {},
      positionals: { min: 1, max: 1 },
    });
    const name = checkName(positionals[0] ?? "", "mcp-servers delete");
    const client = await connect(values, ctx);
    await client.request("DELETE", path(name));
    ctx.out(`deleted MCP server ${name}`);
    return 0;
  },
};

const tools: Command = {
  name: "tools",
  summary: "list an MCP server's tools as the host sees them now",
  usage: `Usage: paddock mcp-servers tools NAME [--end-user ID] [--json]

Asks the server for its tools now, with its credential attached.

Options:
  --end-user ID     for a server with oauth auth: whose account to attach
  --json            print the tools as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "mcp-servers tools",
      options: { json: { type: "boolean" }, "end-user": { type: "string" } },
      positionals: { min: 1, max: 1 },
    });
    const name = checkName(positionals[0] ?? "", "mcp-servers tools");
    const client = await connect(values, ctx);
    const query = values["end-user"] ? `?end_user=${encodeURIComponent(values["end-user"])}` : "";
    const list = await parseBody(
      await client.request("GET", `${path(name)}/tools${query}`),
      McpToolList,
      `GET ${path(name)}/tools`,
    );
    if (values.json) ctx.out(JSON.stringify(list.tools, null, 2));
    else if (list.tools.length === 0) ctx.err(`the MCP server ${name} has no tools`);
    else
      ctx.out(
        formatTable(
          ["TOOL", "DESCRIPTION"],
          list.tools.map((t) => [t.name, (t.description ?? "").slice(0, 100)]),
        ),
      );
    return 0;
  },
};

export const mcpServers: CommandGroup = {
  name: "mcp-servers",
  summary: "remote MCP servers: URL, credential, tools",
  commands: [set, list, show, remove, tools],
};
