/** `paddock accounts list|revoke`: end users' connected OAuth accounts (never their tokens). */
import { Account, AccountDeleted, ConnectSession, Page } from "@paddock/protocol";
import { CONNECTION_HELP, parseCommand, parseEndUser, UsageError } from "../args.ts";
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
    const endUser = parseEndUser(values["end-user"], "accounts list");
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

const connectCommand: Command = {
  name: "connect",
  summary: "a link for an end user to connect their account at an OAuth app",
  usage: `Usage: paddock accounts connect --end-user ID --app NAME [--scope SCOPE]... [--redirect-after URL] [--json]

Prints a connect URL, good once for a few minutes: send the end user to it. They sign in at the
provider and grant access; their tokens stay on the host, sealed, and their browser goes back to
--redirect-after (with account= and status=, or error=).

Options:
  --end-user ID         the product's own id for the user
  --app NAME            the OAuth app (see paddock oauth-apps)
  --scope SCOPE         a scope to ask for instead of the app's (repeat for more)
  --redirect-after URL  where the user's browser goes afterwards
  --json                print the connect session as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, {
      command: "accounts connect",
      options: {
        "end-user": { type: "string" },
        app: { type: "string" },
        scope: { type: "string", multiple: true },
        "redirect-after": { type: "string" },
        json: { type: "boolean" },
      },
    });
    const endUser = parseEndUser(values["end-user"], "accounts connect");
    if (endUser === undefined || !values.app) {
      throw new UsageError("give the end user with --end-user and the app with --app", "accounts connect");
    }
    const client = await connect(values, ctx);
    const body = {
      end_user: endUser,
      app: values.app,
      ...(values.scope ? { scopes: values.scope } : {}),
      ...(values["redirect-after"] ? { redirect_after: values["redirect-after"] } : {}),
    };
    const res = await client.request("POST", "/connect-sessions", { body });
    const session = await parseBody(res, ConnectSession, "POST /connect-sessions");
    if (values.json) ctx.out(JSON.stringify(session, null, 2));
    else {
      ctx.out(session.url);
      ctx.err(
        `send ${session.end_user} to this link to connect their ${session.app} account (good once, until ${session.expires_at})`,
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
    const res = await (await connect(values, ctx)).request("DELETE", `/accounts/${encodeURIComponent(id)}`);
    const deleted = await parseBody(res, AccountDeleted, `DELETE /accounts/${id}`);
    ctx.out(`revoked account ${id}`);
    if (deleted.provider_revocation === "failed") {
      ctx.err(
        `the provider's revocation endpoint failed: the account is deleted here, but its tokens may stay good at ${deleted.app} until they expire`,
      );
    }
    return 0;
  },
};

export const accounts: CommandGroup = {
  name: "accounts",
  summary: "end users' connected OAuth accounts (tokens never shown)",
  commands: [list, connectCommand, revoke],
};
