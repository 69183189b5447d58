/** `paddock accounts list|revoke`: end users' connected OAuth accounts (never their tokens). */
import { Account, EndUser, Page } from "@paddock/protocol";
import { CONNECTION_HELP, parseCommand, UsageError } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatTable } from "../format.ts";
import { parseBody } from "./connections.ts";

const list: Command = {
  name: "list",
  summary: "list connected accounts",
  usage: `Usage: paddock accounts list [--end-user ID] [--app NAME] [--json]

Options:
  --end-user ID     only this end user's accounts
  --app NAME        only accounts at this OAuth app
  --json            print the accounts as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, {
      command: "accounts list",
      options: { "end-user": { type: "string" }, app: { type: "string" }, json: { type: "boolean" } },
    });
    const endUser = values["end-user"];
    if (endUser !== undefined && !EndUser.safeParse(endUser).success) {
      throw new UsageError("--end-user: at most 256 characters, no control characters", "accounts list");
    }
    const client = await connect(values, ctx);
    const query = { end_user: endUser, app: values.app };
    const res = await client.request("GET", "/accounts", { query });
    const page = await parseBody(res, Page(Account), "GET /accounts");
    if (values.json) ctx.out(JSON.stringify(page.data, null, 2));
    else if (page.data.length === 0) ctx.err("no accounts");
    else {
      ctx.out(
        formatTable(
          ["ID", "END USER", "APP", "STATUS", "EXPIRES", "REFRESHED"],
          page.data.map((a) => [a.id, a.end_user, a.app, a.status, a.expires_at ?? "-", a.refreshed_at ?? "-"]),
        ),
      );
    }
    return 0;
  },
};

const revoke: Command = {
  name: "revoke",
  summary: "delete an account, revoking it at the provider",
  usage: `Usage: paddock accounts revoke ID

Deletes the account; its tokens are revoked at the provider when the app has a revocation endpoint.

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "accounts revoke",
      options: {},
      positionals: { min: 1, max: 1 },
    });
    const id = positionals[0] ?? "";
    await (await connect(values, ctx)).request("DELETE", `/accounts/${encodeURIComponent(id)}`);
    ctx.out(`revoked account ${id}`);
    return 0;
  },
};

export const accounts: CommandGroup = {
  name: "accounts",
  summary: "end users' connected OAuth accounts (tokens never shown)",
  commands: [list, revoke],
};
