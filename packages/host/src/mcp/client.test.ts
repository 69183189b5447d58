/**
 * The host's MCP client against the SDK-built stand-in: both transports, one initialize per pooled
 * connection, the credential attached, and each way a server misbehaves as its registered code.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { AppError } from "@paddock/protocol";
import { type McpStandIn, startMcpStandIn } from "../testing/mcp-stand-in.ts";
import { McpClients } from "./client.ts";
import type { HostMcpServer } from "./servers.ts";

const credential = { headers: { authorization: "Bearer s3cret" }, query: "" };

function serverAt(url: string, extra: Partial<HostMcpServer> = {}): HostMcpServer {
  return {
    id: `mcp_${Math.random()}`,
    tenantId: "t",
    name: "standin",
    url,
    secret: "key",
    auth: { type: "bearer" },
    headers: {},
    internal: true,
    timeoutMs: 5000,
    rateLimit: null,
    updatedAt: 1,
    ...extra,
  };
}

const rejectsWith = (promise: Promise<unknown>, code: string) =>
  assert.rejects(promise, (err: unknown) => err instanceof AppError && err.code === code);

describe("McpClients", () => {
  let standIn: McpStandIn;
  let legacy: McpStandIn;
  const clients = new McpClients({ maxResultBytes: 64 * 1024 });

  before(async () => {
    standIn = await startMcpStandIn();
    legacy = await startMcpStandIn({ legacy: true });
  });
  after(async () => {
    await clients.close();
    await standIn.close();
    await legacy.close();
  });

  for (const kind of ["streamable HTTP", "HTTP+SSE"]) {
    it(`lists and calls tools over ${kind} with the credential attached`, async () => {
      const target = kind === "HTTP+SSE" ? legacy : standIn;
      const server = serverAt(target.url);
      const tools = await clients.tools(server, credential);
      assert.ok(
        tools.some((t) => t.name === "create_issue" && (t.input_schema.required as string[]).includes("title")),
      );
      const answer = await clients.callTool(server, credential, "echo", { text: "hi" });
      const text = (answer.result.content as { text: string }[])[0]?.text ?? "";
      assert.deepEqual(JSON.parse(text), { tool: "echo", args: { text: "hi" }, credential: "Bearer s3cret" });
      assert.ok(answer.bytes > 0);
    });
  }

  it("refuses a private address for a server that is not internal", async () => {
    await rejectsWith(clients.tools(serverAt(standIn.url, { internal: false }), credential), "upstream_refused");
  });

  it("a server's own error is mcp_server_error, whatever its number (-32000 included)", async () => {
    const server = serverAt(standIn.url);
    await clients.callTool(server, credential, "echo", {});
    standIn.setMode("leaky");
    try {
      await assert.rejects(clients.callTool(server, credential, "echo", {}), (err: unknown) => {
        assert.ok(err instanceof AppError);
        assert.equal(err.code, "mcp_server_error");
        assert.match(err.message, /answered error -32000: .*Refused the credential/);
        return true;
      });
    } finally {
      standIn.setMode("normal");
    }
  });

  it("a call timing out leaves the other calls on the same connection (other runs') alone", async () => {
    const quick = serverAt(standIn.url, { timeoutMs: 300 });
    const patient = { ...quick, timeoutMs: 5000 };
    await clients.callTool(quick, credential, "echo", {});
    const [late, other] = await Promise.allSettled([
      clients.callTool(quick, credential, "slow", { ms: 1500 }),
      clients.callTool(patient, credential, "slow", { ms: 800 }),
    ]);
    assert.equal(late.status, "rejected");
    assert.equal((late as PromiseRejectedResult).reason.code, "mcp_server_timeout");
    assert.equal(other.status, "fulfilled", String((other as PromiseRejectedResult).reason));
  });

  it("an answer that trickles on and never ends is timed out and its connection closed", async () => {
    const server = serverAt(standIn.url, { timeoutMs: 300 });
    await clients.callTool(server, credential, "echo", {});
    standIn.setMode("drip");
    try {
      await rejectsWith(clients.callTool(server, credential, "echo", {}), "mcp_server_timeout");
    } finally {
      standIn.setMode("normal");
    }
    const until = Date.now() + 3000;
    while (standIn.dripping() > 0 && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(standIn.dripping(), 0, "the host hung up on the endless answer");
  });

  for (const tool of ["big", "ask_model"]) {
    it(`a server misbehaving in one call (${tool}) stops that call only, not the others on the connection`, async () => {
      const server = serverAt(standIn.url);
      await clients.callTool(server, credential, "echo", {});
      const [bad, other] = await Promise.allSettled([
        new Promise((resolve) => setTimeout(resolve, 100)).then(() =>
          clients.callTool(server, credential, tool, { bytes: 100_000 }),
        ),
        clients.callTool(server, credential, "slow", { ms: 600 }),
      ]);
      assert.equal(bad.status, "rejected");
      assert.equal(other.status, "fulfilled", String((other as PromiseRejectedResult).reason));
    });
  }

  it("a notification stream whose event never ends is hung up on at the answer cap", async () => {
    const flooding = await startMcpStandIn();
    try {
      flooding.setMode("flood");
      const server = serverAt(flooding.url);
      await clients.callTool(server, credential, "echo", {});
      const until = Date.now() + 3000;
      while (!(flooding.floods().opened > 0 && flooding.floods().open === 0) && Date.now() < until) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assert.ok(flooding.floods().opened > 0, "the client opened the notification stream");
      assert.equal(flooding.floods().open, 0, "the host hung up on the endless event");
      // Calls go on (their answers come on their own requests).
      await clients.callTool(server, credential, "echo", { n: 2 });
    } finally {
      await flooding.close();
    }
  });

  it("a full pool lets go of idle connections only, never one with a call in flight", async () => {
    const small = new McpClients({ maxClients: 1 });
    try {
      const server = serverAt(standIn.url);
      const other = { headers: { authorization: "Bearer other" }, query: "" };
      await small.callTool(server, credential, "echo", {});
      const slow = small.callTool(server, credential, "slow", { ms: 600 });
      await new Promise((resolve) => setTimeout(resolve, 100));
      await small.callTool(server, other, "echo", {});
      const answer = await slow;
      assert.equal(answer.result.isError, undefined);
    } finally {
      await small.close();
    }
  });

  it("a tool list paged on and on is capped like any answer", async () => {
    const server = serverAt(standIn.url);
    await clients.tools(server, credential);
    standIn.setMode("endless-list");
    try {
      await rejectsWith(clients.tools(server, credential), "mcp_result_too_large");
    } finally {
      standIn.setMode("normal");
    }
  });

  it("answers each misbehaviour with its code", async () => {
    const server = serverAt(standIn.url, { timeoutMs: 500 });
    await rejectsWith(clients.callTool(server, credential, "slow", { ms: 2000 }), "mcp_server_timeout");
    await rejectsWith(clients.callTool(server, credential, "big", { bytes: 100_000 }), "mcp_result_too_large");
    await rejectsWith(clients.callTool(server, credential, "ask_model", {}), "mcp_unsupported_request");
    await rejectsWith(clients.callTool(server, credential, "ask_user", {}), "mcp_unsupported_request");
    standIn.setMode("malformed");
    try {
      await rejectsWith(clients.callTool(server, credential, "echo", {}), "mcp_server_error");
    } finally {
      standIn.setMode("normal");
    }
    standIn.setMode("down");
    try {
      await rejectsWith(clients.callTool(serverAt(standIn.url), credential, "echo", {}), "mcp_server_unavailable");
    } finally {
      standIn.setMode("normal");
    }
    // Still usable afterwards.
    const answer = await clients.callTool(server, credential, "echo", { n: 1 });
    assert.equal(answer.result.isError, undefined);
  });
});
