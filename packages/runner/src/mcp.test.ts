import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { z } from "zod";
import { modelToolName, openMcp } from "./mcp.ts";

/** An MCP server built with the official SDK, answering JSON bodies or event streams. */
async function startServer(json: boolean): Promise<{ url: string; auth: string[]; server: Server }> {
  const auth: string[] = [];
  const server = createServer(async (req, res) => {
    auth.push(req.headers.authorization ?? "");
    const mcp = new McpServer({ name: "stand-in", version: "1" });
    mcp.registerTool(
      "echo",
      { description: "Echoes its text.", inputSchema: { text: z.string() } },
      async ({ text }) => ({ content: [{ type: "text", text: `echo: ${text}` }] }),
    );
    mcp.registerTool("fails", { description: "Always fails." }, async () => ({
      content: [{ type: "text", text: "it failed" }],
      isError: true,
    }));
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: json });
    res.on("close", () => void transport.close());
    await mcp.connect(transport);
    await transport.handleRequest(req, res);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`, auth, server };
}

describe("the built-in agent's MCP client", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "paddock-mcp-"));
    await writeFile(join(dir, "token"), "run-token\n");
    process.env.PADDOCK_TOKEN_FILE = join(dir, "token");
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  for (const json of [true, false]) {
    it(`lists and calls tools with the run token (${json ? "JSON bodies" : "event streams"})`, async () => {
      const s = await startServer(json);
      try {
        const { session, tools } = await openMcp(s.url);
        assert.deepEqual(tools.map((t) => t.name).sort(), ["echo", "fails"]);
        assert.equal(tools.find((t) => t.name === "echo")?.inputSchema.type, "object");
        assert.deepEqual(await session.call("echo", { text: "hi" }), { ok: true, output: "echo: hi" });
        assert.deepEqual(await session.call("fails", {}), { ok: false, output: "it failed" });
        const bad = await session.call("echo", { text: 3 });
        assert.equal(bad.ok, false);
        assert.match(bad.output, /text/);
        const unknown = await session.call("nope", {});
        assert.equal(unknown.ok, false);
        assert.match(unknown.output, /nope/);
        assert.ok(s.auth.length >= 4);
        assert.ok(s.auth.every((a) => a === "Bearer run-token"));
      } finally {
        s.server.close();
      }
    });
  }

  it("says why when the endpoint is not an MCP endpoint", async () => {
    const server = createServer((_req, res) => res.writeHead(404, { "content-type": "text/plain" }).end("no such"));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      await assert.rejects(
        openMcp(`http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`),
        /MCP initialize: HTTP 404 no such/,
      );
    } finally {
      server.close();
    }
  });

  it("gives MCP tools names a model accepts", () => {
    assert.equal(modelToolName("github__create_issue"), "github__create_issue");
    assert.equal(modelToolName("files.read/all"), "files_read_all");
    assert.equal(modelToolName("x".repeat(80)).length, 64);
  });
});
