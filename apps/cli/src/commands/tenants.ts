/** `paddock tenants create|list`: tenants, managed with the admin key. */
import { CONNECTION_HELP, parseCommand } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatTable } from "../format.ts";

const create: Command = {
  name: "create",
  summary: "create a tenant",
  usage: `Usage: paddock tenants create NAME [--json]

Creates a tenant (admin key required). NAME: lower-case letters, digits, '-' and '_'.

Options:
  --json            print the tenant as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "tenants create",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const tenant = await client.createTenant(positionals[0] ?? "");
    if (values.json) ctx.out(JSON.stringify(tenant, null, 2));
    else ctx.out(`created tenant ${tenant.name} (${tenant.id})`);
    return 0;
  },
};

const list: Command = {
  name: "list",
  summary: "list tenants",
  usage: `Usage: paddock tenants list [--json]

Lists every tenant (admin key required).

Options:
  --json            print the tenants as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "tenants list", options: { json: { type: "boolean" } } });
    const client = await connect(values, ctx);
    const tenants = await client.listTenants();
    if (values.json) {
      ctx.out(JSON.stringify(tenants, null, 2));
    } else if (tenants.length === 0) {
      ctx.err("no tenants");
    } else {
      ctx.out(
        formatTable(
          ["ID", "NAME", "CREATED"],
          tenants.map((t) => [t.id, t.name, t.created_at]),
        ),
      );
    }
    return 0;
  },
};

export const tenants: CommandGroup = { name: "tenants", summary: "create and list tenants", commands: [create, list] };
