/** `paddock agents create|update|delete|list|show`: agent definitions and their versions. */
import { type Agent, McpPinDiff } from "@paddock/protocol";
import { loadAgentFile, readFilesDir } from "../agent-files.ts";
import { CliError, CONNECTION_HELP, parseCommand, parseKeyValues, parseNumber, UsageError } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatRows, formatSize, formatTable } from "../format.ts";
import { parseBody } from "./connections.ts";

const CREATE_OPTIONS = {
  file: { type: "string" },
  dir: { type: "string" },
  env: { type: "string", multiple: true },
  memory: { type: "string" },
  timeout: { type: "string" },
  cpus: { type: "string" },
  pids: { type: "string" },
  disk: { type: "string" },
  image: { type: "string" },
  connection: { type: "string", multiple: true },
  instructions: { type: "string" },
  model: { type: "string" },
  tool: { type: "string", multiple: true },
  "max-steps": { type: "string" },
  "budget-per-run": { type: "string" },
  "budget-total": { type: "string" },
  json: { type: "boolean" },
} as const;

/** Parses the arguments of `agents create`. */
export function parseCreate(argv: string[]) {
  return parseCommand(argv, {
    command: "agents create",
    options: CREATE_OPTIONS,
    positionals: { min: 0, max: 1 },
    rest: true,
  });
}

/** Parses the arguments of `agents update` (the same options as create; AGENT is required). */
export function parseUpdate(argv: string[]) {
  return parseCommand(argv, {
    command: "agents update",
    options: CREATE_OPTIONS,
    positionals: { min: 1, max: 1 },
    rest: true,
  });
}

/**
 * Builds the AgentCreate body from --file (if any), flags, NAME and the `-- CMD` tail; for an
 * update with --file the whole definition (its name, if any, must be the agent's), without one
 * a merge patch (AgentUpdate) of only what the flags give: AGENT names the agent to change.
 */
export async function agentBody(
  parsed: ReturnType<typeof parseCreate>,
  update = false,
): Promise<Record<string, unknown>> {
  const { values, positionals, rest } = parsed;
  const body: Record<string, unknown> = values.file ? await loadAgentFile(values.file) : {};
  if (!update) {
    const name = positionals[0] ?? body.name;
    if (name === undefined) throw new UsageError("give the agent a NAME (or use --file)", "agents create");
    body.name = name;
  }
  if (rest && rest.length > 0) body.command = rest;
  if (values.instructions !== undefined) body.instructions = values.instructions;
  if (values.model !== undefined) body.model = values.model;
  if (values.tool && values.tool.length > 0) body.tools = [...new Set(values.tool)];
  const maxSteps = parseNumber(values["max-steps"], "max-steps");
  if (maxSteps !== undefined) body.max_steps = maxSteps;
  if (!update && body.command === undefined && body.instructions === undefined) {
    throw new UsageError(
      "give the command to run after '--' (for example: -- python3 main.py), or --instructions and --model for the built-in agent",
      "agents create",
    );
  }
  if (values.dir) body.files = await readFilesDir(values.dir);
  const env = parseKeyValues(values.env, "env");
  if (Object.keys(env).length > 0) body.env = { ...asRecord(body.env), ...env };
  const limits: Record<string, number> = {};
  const set = (key: string, value: number | undefined) => {
    if (value !== undefined) limits[key] = value;
  };
  set("memory_mb", parseNumber(values.memory, "memory"));
  set("timeout_s", parseNumber(values.timeout, "timeout"));
  set("cpus", parseNumber(values.cpus, "cpus", true));
  set("pids", parseNumber(values.pids, "pids"));
  set("disk_mb", parseNumber(values.disk, "disk"));
  if (Object.keys(limits).length > 0) body.limits = { ...asRecord(body.limits), ...limits };
  if (values.image) body.image = values.image;
  const budget: Record<string, number> = {};
  const perRun = parseNumber(values["budget-per-run"], "budget-per-run", true);
  const total = parseNumber(values["budget-total"], "budget-total", true);
  if (perRun !== undefined) budget.per_run = perRun;
  if (total !== undefined) budget.total = total;
  if (Object.keys(budget).length > 0) body.budget = { ...asRecord(body.budget), ...budget };
  if (values.connection && values.connection.length > 0) {
    body.policy = { connections: [...new Set(values.connection)] };
  }
  return body;
}

function asRecord(value: unknown): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new CliError("env, limits and budget in the agent file must be JSON objects");
  }
  return value as Record<string, unknown>;
}

function filesSummary(agent: Agent): string {
  const bytes = agent.files.reduce((n, f) => n + f.size, 0);
  return `${agent.files.length} file${agent.files.length === 1 ? "" : "s"} (${formatSize(bytes)})`;
}

function quoteArg(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`;
}

export function formatCommand(command: readonly string[]): string {
  return command.map(quoteArg).join(" ");
}

/** The options of `agents create` and `agents update`, and what files become. */
const CREATE_HELP = `Options:
  --file FILE       an agent definition: an AgentCreate JSON body; its "files_dir" key (a folder
                    relative to FILE, inside FILE's folder) is uploaded as the agent's files.
                    NAME, the flags below and '-- CMD' override what the file says.
  --dir DIR         upload the text files below DIR as the agent's files
  --env K=V         an environment variable for the command (repeatable)
  --memory MB       memory limit
  --timeout S       wall-clock limit of each run, in seconds
  --cpus N          CPU share (fractions allowed)
  --pids N          most processes at once
  --disk MB         size limit of the sandbox's writable layer
  --image IMAGE     base image (default: the host's default image)
  --connection NAME a bridge connection its runs may call (repeatable; replaces the file's list)
  --instructions T  the built-in agent (an LLM tool loop) with these instructions, instead of a command
  --model MODEL     the built-in agent's model (see 'paddock models')
  --tool NAME       a built-in agent tool: shell, read_file, write_file, http, call_agent, finish (repeatable; default all)
  --max-steps N     the most model calls of one run of the built-in agent (default 20)
  --budget-per-run C  the most credits one run may spend on model calls
  --budget-total C  the most credits the agent may spend in all
  --json            print the agent as JSON

Files: every regular file below the folder, as UTF-8 text (binary files are refused); folders
named .git and __pycache__ are skipped.`;

const create: Command = {
  name: "create",
  summary: "create an agent",
  usage: `Usage: paddock agents create NAME [options] -- CMD [ARGS...]
       paddock agents create NAME --instructions TEXT --model MODEL [options]
       paddock agents create --file agent.json [NAME] [options] [-- CMD [ARGS...]]

Creates an agent: a command that runs in a fresh sandbox for each run, with its files in /app
(its working folder), the run's input at /inputs/input.json, and whatever it writes to /outputs
kept as the run's artifacts.

${CREATE_HELP}

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const parsed = parseCreate(argv);
    const { values } = parsed;
    const body = await agentBody(parsed);
    const client = await connect(values, ctx);
    const agent = await client.createAgent(body);
    if (values.json) {
      ctx.out(JSON.stringify(agent, null, 2));
    } else {
      ctx.out(`created agent ${agent.name} (${agent.id})`);
      if (agent.builtin) ctx.out(`  built-in agent: ${agent.builtin.model}, tools ${agent.builtin.tools.join(", ")}`);
      else ctx.out(`  command: ${formatCommand(agent.command)}`);
      ctx.out(`  files:   ${filesSummary(agent)}`);
    }
    return 0;
  },
};

const update: Command = {
  name: "update",
  summary: "save a new version of an agent",
  usage: `Usage: paddock agents update AGENT [options] [-- CMD [ARGS...]]
       paddock agents update AGENT --file agent.json [options] [-- CMD [ARGS...]]

Saves the next version of an agent (AGENT is its name or id). With --file, the file (with the
options and '-- CMD' over it) is the agent's whole new definition: what it leaves out takes its
default, as in create, and its name, if it gives one, must be AGENT's. Without --file, what the
options and '-- CMD' give changes and the rest stays: --memory and the other limits, --env
variables and the budgets one by one; --connection replaces the list of connections (the
agents it may call stay); --dir replaces the agent's files. New files make a new environment
version. Runs already queued or retrying keep the version they were triggered with. An update
the host refuses changes nothing; one that changes nothing saves no version.

${CREATE_HELP}

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const parsed = parseUpdate(argv);
    const { values, positionals } = parsed;
    const body = await agentBody(parsed, true);
    const client = await connect(values, ctx);
    const before = await client.resolveAgent(positionals[0] ?? "");
    const agent = values.file ? await client.replaceAgent(before.id, body) : await client.updateAgent(before.id, body);
    if (values.json) ctx.out(JSON.stringify(agent, null, 2));
    else if (agent.version === before.version) ctx.out(`agent ${agent.name} unchanged (version ${agent.version})`);
    else ctx.out(`updated agent ${agent.name} (${agent.id}) to version ${agent.version}`);
    return 0;
  },
};

const remove: Command = {
  name: "delete",
  summary: "delete (archive) an agent",
  usage: `Usage: paddock agents delete AGENT [--json]

Deletes an agent (AGENT is its name or id) by archiving it: it starts no new runs, its schedules
pause and its webhooks refuse deliveries; runs already queued or running finish. The agent and
its runs stay readable (agents list --archived, runs list --agent ID), and its name is free for
a new agent.

Options:
  --json            print the archived agent as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "agents delete",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const found = await client.resolveAgent(positionals[0] ?? "");
    const agent = await client.deleteAgent(found.id);
    if (values.json) ctx.out(JSON.stringify(agent, null, 2));
    else ctx.out(`deleted agent ${agent.name} (${agent.id}); its runs stay readable`);
    return 0;
  },
};

const list: Command = {
  name: "list",
  summary: "list agents",
  usage: `Usage: paddock agents list [--name NAME] [--archived] [--json]

Options:
  --name NAME       only the agent with this name
  --archived        deleted (archived) agents too
  --json            print the agents as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, {
      command: "agents list",
      options: { name: { type: "string" }, archived: { type: "boolean" }, json: { type: "boolean" } },
    });
    const client = await connect(values, ctx);
    const query = { ...(values.name ? { name: values.name } : {}), ...(values.archived ? { archived: true } : {}) };
    const agents = (await client.listAgents(query)).filter((a) => !values.name || a.name === values.name);
    if (values.json) {
      ctx.out(JSON.stringify(agents, null, 2));
    } else if (agents.length === 0) {
      ctx.err("no agents");
    } else {
      ctx.out(
        formatTable(
          ["ID", "NAME", "VERSION", "COMMAND", "FILES", "CREATED"],
          agents.map((a) => [
            a.id,
            a.archived_at ? `${a.name} (deleted)` : a.name,
            String(a.version),
            formatCommand(a.command),
            String(a.files.length),
            a.created_at,
          ]),
        ),
      );
    }
    return 0;
  },
};

const show: Command = {
  name: "show",
  summary: "show one agent",
  usage: `Usage: paddock agents show AGENT [--json]

AGENT is the agent's id or name.

Options:
  --json            print the agent as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "agents show",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    if (values.json) {
      ctx.out(JSON.stringify(agent, null, 2));
      return 0;
    }
    const { limits } = agent;
    ctx.out(`agent    ${agent.name} (${agent.id})`);
    ctx.out(`version  ${agent.version}`);
    ctx.out(`created  ${agent.created_at}`);
    if (agent.archived_at) ctx.out(`deleted  ${agent.archived_at} (archived: it starts no new runs)`);
    ctx.out(`command  ${formatCommand(agent.command)}`);
    ctx.out(
      `limits   memory ${limits.memory_mb} MB, cpus ${limits.cpus}, pids ${limits.pids}, ` +
        `timeout ${limits.timeout_s}s, disk ${limits.disk_mb} MB`,
    );
    ctx.out(
      `image    ${agent.snapshot.base}${agent.snapshot.layers.length ? ` + ${agent.snapshot.layers.length} layer(s)` : ""}`,
    );
    const env = Object.entries(agent.env);
    ctx.out(`env      ${env.length === 0 ? "(none)" : env.map(([k]) => k).join(", ")}`);
    ctx.out(
      `bridge   ${agent.policy.connections.length === 0 ? "(no connections)" : agent.policy.connections.join(", ")}`,
    );
    const mcp = agent.policy.mcp ?? [];
    if (mcp.length > 0) ctx.out(`mcp      ${mcp.map((e) => `${e.server} (${e.tools.join(", ")})`).join("; ")}`);
    ctx.out(`files    ${filesSummary(agent)}`);
    if (agent.files.length > 0) {
      ctx.out(formatRows(agent.files.map((f) => [`  ${f.path}`, formatSize(f.size)])));
    }
    return 0;
  },
};

const mcpPin: Command = {
  name: "mcp-pin",
  summary: "show what re-pinning an agent's MCP tools would change, and pin the reviewed definitions",
  usage: `Usage: paddock agents mcp-pin AGENT [--confirm SHA256 | --yes] [--json]

AGENT is the agent's id or name. Reads the current definitions of the MCP tools its policy allows
and shows what pinning them would change (tools added and removed, and old against new
description), pinning nothing. Pinning is what makes a changed tool callable again, so read the
new descriptions: they are what the model will be told. Then pin exactly what was shown with the
--confirm value printed: if a server changed its definitions again meanwhile, nothing is pinned.

Options:
  --confirm SHA256  pin, only if the definitions are still those shown with this value
  --yes             pin the definitions as they are now, unseen (for scripts)
  --json            print the differences and the pins as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "agents mcp-pin",
      options: { json: { type: "boolean" }, confirm: { type: "string" }, yes: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    if (values.confirm !== undefined && values.yes)
      throw new UsageError("give --confirm or --yes, not both", "agents mcp-pin");
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const path = `/agents/${agent.id}/mcp-pin`;
    const body = values.confirm !== undefined ? { pins_sha256: values.confirm } : values.yes ? {} : { dry_run: true };
    const diff = await parseBody(await client.request("POST", path, { body }), McpPinDiff, `POST ${path}`);
    if (values.json) {
      ctx.out(JSON.stringify(diff, null, 2));
      return 0;
    }
    const lines: string[][] = [
      ...diff.added.map((t) => ["added", `${t.server}/${t.tool}`, t.description ?? ""]),
      ...diff.removed.map((t) => ["removed", `${t.server}/${t.tool}`, t.description ?? ""]),
      ...diff.changed.flatMap((t) => [
        ["changed", `${t.server}/${t.tool}`, t.schema_changed ? "(input schema changed)" : ""],
        ["  was", "", t.old_description ?? ""],
        ["  now", "", t.new_description ?? ""],
      ]),
    ];
    ctx.out(lines.length === 0 ? `${agent.name}: no MCP tool changed` : formatRows(lines));
    const count = Object.values(diff.pins).reduce((n, tools) => n + Object.keys(tools).length, 0);
    if (diff.applied) ctx.out(`pinned ${count} tool(s) of agent ${agent.name} version ${diff.version}`);
    else if (lines.length > 0)
      ctx.out(`nothing pinned yet; to pin these: paddock agents mcp-pin ${agent.name} --confirm ${diff.pins_sha256}`);
    return 0;
  },
};

export const agents: CommandGroup = {
  name: "agents",
  summary: "create, update, delete, list and show agents; re-pin their MCP tools",
  commands: [create, update, remove, list, show, mcpPin],
};
