/**
 * An MCP server whose credential is the run's end user's OAuth account, without root: the account
 * connected through a real OpenID Connect server on loopback, the agent's tools pinned with an
 * account of the app, and a run's call through its MCP endpoint on the host's bridge (loopback as
 * the listed sandbox) carrying that user's token; a 401 from the server refreshes it once.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { newId } from "../store/ids.ts";
import { type McpStandIn, startMcpStandIn } from "../testing/mcp-stand-in.ts";
import { apiCall, type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { browserCookies, type OidcStandIn, startOidcStandIn } from "../testing/oidc-stand-in.ts";

const ORIGIN = "http://localhost";

describe("an MCP server with the end user's OAuth account", () => {
  let h: NoRootHost;
  let idp: OidcStandIn;
  let tools: McpStandIn;
  /** Tokens the MCP server refuses (as if revoked there), each once. */
  const refuse = new Set<string>();
  const call = (method: string, path: string, body?: unknown) => apiCall(h, method, path, h.adminKey, body);

  /** Connects `endUser`'s account at the app, as the user's browser would. */
  async function connectAccount(endUser: string): Promise<void> {
    const made = await call("POST", "/v1/connect-sessions", { end_user: endUser, app: "idp" });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    const opened = await h.services.app.request(made.body.url.slice(ORIGIN.length));
    const back = await idp.authorize(opened.headers.get("location") ?? "", { login: endUser });
    const done = await h.services.app.request(back.slice(ORIGIN.length), {
      headers: { cookie: browserCookies(opened) },
    });
    assert.equal(done.status, 200, await done.text());
  }

  before(async () => {
    h = await startNoRootHost();
    idp = await startOidcStandIn({ redirectUri: `${ORIGIN}/oauth/callback` });
    tools = await startMcpStandIn({
      accept: (credential) => {
        const token = credential?.replace(/^Bearer /, "") ?? "";
        return !refuse.delete(token);
      },
    });
    assert.equal((await call("PUT", "/v1/secrets/idp-secret", { value: idp.clientSecret })).status, 201);
    assert.equal((await call("PUT", "/v1/oauth-apps/idp", idp.appBody("idp-secret"))).status, 201);
    await connectAccount("alice");
    const put = await call("PUT", "/v1/mcp-servers/tools", { url: tools.url, auth: "oauth:idp", internal: true });
    assert.equal(put.status, 201, JSON.stringify(put.body));
  });
  after(async () => {
    await tools?.close();
    await idp?.close();
    await h?.close();
  });

  it("lists the server's tools with the end user's account", async () => {
    const listed = await call("GET", "/v1/mcp-servers/tools/tools?end_user=alice");
    assert.equal(listed.status, 200, JSON.stringify(listed.body));
    assert.ok(listed.body.tools.some((t: { name: string }) => t.name === "echo"));
    const nobody = await call("GET", "/v1/mcp-servers/tools/tools?end_user=bob");
    assert.equal(nobody.body.error?.code, "account_missing");
  });

  it("a run's call carries its end user's token, refreshed once when the server refuses it", async () => {
    const created = await call("POST", "/v1/agents", {
      name: "mcp-oauth",
      instructions: "Use the tools.",
      model: "m",
      policy: { mcp: [{ server: "tools", tools: ["echo"] }] },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    // The agent's answer carries the pins of its current version.
    const got = await call("GET", `/v1/agents/${created.body.id}`);
    assert.deepEqual(Object.keys(got.body.mcp_pins.tools), ["echo"]);
    assert.match(got.body.mcp_pins.tools.echo.sha256, /^[0-9a-f]{64}$/);
    const { bridge, live, tokens } = h.services;
    const base = `http://127.0.0.1:${await bridge.listen("127.0.0.1")}`;
    const grant = {
      run: newId("run"),
      attempt: 1,
      tenant: "default",
      agent: created.body.id as string,
      addr: "127.0.0.1",
      sandbox: "sbx-oauth",
      scopes: ["mcp"],
    };
    const tenant = await h.db
      .selectFrom("tenants")
      .select("id")
      .where("name", "=", "default")
      .executeTakeFirstOrThrow();
    grant.tenant = tenant.id;
    live.add({
      address: "127.0.0.1",
      sandboxId: grant.sandbox,
      runId: grant.run,
      attempt: 1,
      tenantId: tenant.id,
      agentId: grant.agent,
      agentVersion: 1,
      endUser: "alice",
      record: () => {},
    });
    const { token } = await tokens.mint(grant);
    const client = new Client({ name: "sandbox", version: "1" });
    await client.connect(
      new StreamableHTTPClientTransport(new URL(`${base}/mcp`), {
        requestInit: { headers: { authorization: `Bearer ${token}` } },
      }),
    );
    try {
      // The server now refuses the token the host holds: the host refreshes it and calls again.
      const held = tools.seen.at(-1)?.credential ?? (await firstCredential(client));
      refuse.add(held.replace(/^Bearer /, ""));
      const refreshed = idp.counts.refreshed;
      const result = await client.callTool({ name: "tools__echo", arguments: { text: "hi" } });
      const echoed = JSON.parse((result.content as { text: string }[])[0]?.text ?? "{}");
      assert.equal(echoed.credential, "Bearer [REDACTED]", "the token never reaches the sandbox");
      assert.equal(idp.counts.refreshed, refreshed + 1);
      const sent = tools.seen.at(-1)?.credential?.replace(/^Bearer /, "") ?? "";
      assert.notEqual(`Bearer ${sent}`, held);
      assert.equal(await idp.userOf(sent), "alice");
    } finally {
      await client.close();
    }
  });

  /** The credential the host sends now: whatever reaches the server on a call. */
  async function firstCredential(client: Client): Promise<string> {
    await client.callTool({ name: "tools__echo", arguments: {} });
    return tools.seen.at(-1)?.credential ?? "";
  }
});
