/** `paddock oauth-apps set|list|delete`: the OAuth apps end users connect their accounts through. */
import { OAuthApp, OAuthAppName, Page } from "@paddock/protocol";
import { CONNECTION_HELP, parseCommand, UsageError } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatTable } from "../format.ts";
import { loadSpecFile, parseBody } from "./connections.ts";

function checkName(name: string, command: string): string {
  if (!OAuthAppName.safeParse(name).success) {
    throw new UsageError(`'${name}' is not an OAuth app name (lower-case letters, digits, '-' and '_')`, command);
  }
  return name;
}

const path = (name: string) => `/oauth-apps/${encodeURIComponent(name)}`;

const SET_OPTIONS = {
  file: { type: "string" },
  issuer: { type: "string" },
  "authorize-url": { type: "string" },
  "token-url": { type: "string" },
  "revoke-url": { type: "string" },
  "client-id": { type: "string" },
  "client-secret": { type: "string" },
  scope: { type: "string", multiple: true },
  internal: { type: "boolean" },
  json: { type: "boolean" },
} as const;

const set: Command = {
  name: "set",
  summary: "create or replace an OAuth app",
  usage: `Usage: paddock oauth-apps set NAME --file app.json [options]
       paddock oauth-apps set NAME --issuer URL --client-id ID [--client-secret SECRET] [options]

Creates the OAuth app NAME, or replaces it. Give the provider's endpoints, or an OpenID Connect
issuer whose endpoints the host discovers now. The client secret is the name of a secret (set it
first with 'paddock secrets set'). README "End users' accounts" has files for GitHub, Google,
Slack and Microsoft.

Options:
  --file FILE             an OAuthAppPut JSON body; the options below override what it says
  --issuer URL            an OpenID Connect issuer
  --authorize-url URL     the authorization endpoint
  --token-url URL         the token endpoint
  --revoke-url URL        the revocation endpoint (accounts are revoked there when deleted)
  --client-id ID          the app's client id at the provider
  --client-secret SECRET  the name of the secret holding the client secret
  --scope SCOPE           a scope asked for by default (repeatable; replaces the file's)
  --internal              endpoints on private or loopback addresses (admin key only)
  --json                  print the app as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "oauth-apps set",
      options: SET_OPTIONS,
      positionals: { min: 1, max: 1 },
    });
    const name = checkName(positionals[0] ?? "", "oauth-apps set");
    const body: Record<string, unknown> = values.file ? await loadSpecFile(values.file) : {};
    const flags = {
      issuer: values.issuer,
      authorize_url: values["authorize-url"],
      token_url: values["token-url"],
      revoke_url: values["revoke-url"],
      client_id: values["client-id"],
      client_secret: values["client-secret"],
    };
    for (const [key, value] of Object.entries(flags)) if (value !== undefined) body[key] = value;
    if (values.scope && values.scope.length > 0) body.scopes = values.scope;
    if (values.internal) body.internal = true;
    if (body.client_id === undefined) throw new UsageError("give the app's client id with --client-id (or --file)");
    const res = await (await connect(values, ctx)).request("PUT", path(name), { body });
    const app = await parseBody(res, OAuthApp, `PUT ${path(name)}`);
    if (values.json) ctx.out(JSON.stringify(app, null, 2));
    else ctx.out(`${res.status === 201 ? "created" : "replaced"} OAuth app ${app.name} → ${app.authorize_url}`);
    return 0;
  },
};

const list: Command = {
  name: "list",
  summary: "list OAuth apps",
  usage: `Usage: paddock oauth-apps list [--json]

Options:
  --json            print the apps as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "oauth-apps list", options: { json: { type: "boolean" } } });
    const client = await connect(values, ctx);
    const page = await parseBody(await client.request("GET", "/oauth-apps"), Page(OAuthApp), "GET /oauth-apps");
    if (values.json) ctx.out(JSON.stringify(page.data, null, 2));
    else if (page.data.length === 0) ctx.err("no OAuth apps");
    else {
      ctx.out(
        formatTable(
          ["NAME", "AUTHORIZE", "CLIENT", "SECRET", "SCOPES"],
          page.data.map((a) => [a.name, a.authorize_url, a.client_id, a.client_secret ?? "-", a.scopes.join(" ")]),
        ),
      );
    }
    return 0;
  },
};

const remove: Command = {
  name: "delete",
  summary: "delete an OAuth app no account uses",
  usage: `Usage: paddock oauth-apps delete NAME

Deletes the app. It is refused (conflict) while end users' accounts are connected through it.

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "oauth-apps delete",
      options: {},
      positionals: { min: 1, max: 1 },
    });
    const name = checkName(positionals[0] ?? "", "oauth-apps delete");
    await (await connect(values, ctx)).request("DELETE", path(name));
    ctx.out(`deleted OAuth app ${name}`);
    return 0;
  },
};

export const oauthApps: CommandGroup = {
  name: "oauth-apps",
  summary: "OAuth apps end users connect their accounts through",
  commands: [set, list, remove],
};
