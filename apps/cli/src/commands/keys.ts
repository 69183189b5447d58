/** `paddock keys create`: API keys for a tenant. */
import { CONNECTION_HELP, parseCommand, UsageError } from "../args.ts";
import { ApiError, type Client } from "../client.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";

/** Finds a tenant by id or name; an unknown reference is passed on as an id for the host to judge. */
async function resolveTenantId(client: Client, ref: string): Promise<string> {
  try {
    const tenants = await client.listTenants();
    const match = tenants.find((t) => t.id === ref) ?? tenants.find((t) => t.name === ref);
    if (match) return match.id;
  } catch (err) {
    // A key that may not list tenants can still name its own tenant by id.
    if (!(err instanceof ApiError && err.code === "forbidden")) throw err;
  }
  return ref;
}

const create: Command = {
  name: "create",
  summary: "create an API key for a tenant",
  usage: `Usage: paddock keys create --tenant TENANT [--name NAME] [--json]

Creates an API key for a tenant and prints it. The key is shown only this once.

Options:
  --tenant TENANT   the tenant's id or name (required)
  --name NAME       a label for the key
  --json            print the key record (including the key) as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, {
      command: "keys create",
      options: { tenant: { type: "string" }, name: { type: "string" }, json: { type: "boolean" } },
    });
    if (!values.tenant) throw new UsageError("--tenant is required", "keys create");
    const client = await connect(values, ctx);
    const tenantId = await resolveTenantId(client, values.tenant);
    const key = await client.createKey(tenantId, values.name);
    if (values.json) {
      ctx.out(JSON.stringify(key, null, 2));
      return 0;
    }
    if (!key.key) {
      ctx.err(`created key ${key.id}, but the host did not return its secret`);
      return 1;
    }
    ctx.err(
      `created key ${key.id}${key.name ? ` (${key.name})` : ""} for tenant ${key.tenant_id}; it is not shown again:`,
    );
    ctx.out(key.key);
    return 0;
  },
};

export const keys: CommandGroup = { name: "keys", summary: "create API keys", commands: [create] };
