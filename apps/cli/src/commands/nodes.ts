/** `paddock nodes list|drain`: the nodes sharing one store, managed with the admin key. */
import { CONNECTION_HELP, parseCommand } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatTable } from "../format.ts";

const list: Command = {
  name: "list",
  summary: "list the nodes",
  usage: `Usage: paddock nodes list [--json]

Lists the nodes (paddock serve processes) sharing this host's store, live ones first, with the
runs each holds (admin key required).

Options:
  --json            print the nodes as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "nodes list", options: { json: { type: "boolean" } } });
    const client = await connect(values, ctx);
    const nodes = await client.listNodes();
    if (values.json) {
      ctx.out(JSON.stringify(nodes, null, 2));
    } else {
      const state = (n: (typeof nodes)[number]) =>
        n.stopped_at ? "stopped" : !n.live ? "lost" : n.draining ? "draining" : "live";
      ctx.out(
        formatTable(
          ["ID", "STATE", "RUNS", "VERSION", "URL", "SANDBOX CIDR", "HEARTBEAT"],
          nodes.map((n) => [
            n.id,
            state(n),
            String(n.active_runs),
            n.version,
            n.internal_url,
            n.sandbox_cidr,
            n.heartbeat_at,
          ]),
        ),
      );
    }
    return 0;
  },
};

const drain: Command = {
  name: "drain",
  summary: "stop a node from claiming runs; its runs finish",
  usage: `Usage: paddock nodes drain NAME [--json]

Drains node NAME (admin key required): it claims no new runs and lets the runs it holds finish.
Restarting the node undoes it.

Options:
  --json            print the node as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "nodes drain",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const node = await client.drainNode(positionals[0] ?? "");
    if (values.json) ctx.out(JSON.stringify(node, null, 2));
    else ctx.out(`node ${node.id} is draining (${node.active_runs} run(s) going)`);
    return 0;
  },
};

export const nodes: CommandGroup = {
  name: "nodes",
  summary: "list and drain the nodes sharing the store",
  commands: [list, drain],
};
