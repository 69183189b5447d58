/**
 * MCP servers over HTTP: create or replace, list, show and delete a tenant's servers, list a
 * server's tools as the host sees them now, and re-pin an agent's MCP tools.
 */
import {
  AppError,
  ErrorResponse,
  McpPinDiff,
  McpPinRequest,
  McpServer,
  McpServerName,
  McpServerPut,
  McpToolList,
  Page,
} from "@paddock/protocol";
import { z } from "zod";
import type { McpService } from "../mcp/service.ts";
import { type DefineRoute, Id, json, jsonBody, pathParam, tenantOf } from "./http.ts";

const Name = z.object({ name: pathParam(McpServerName, "MCP server") });

export function registerMcpRoutes(route: DefineRoute, mcp: McpService): void {
  const one = "/v1/mcp-servers/{name}";

  route(
    {
      method: "put",
      path: one,
      summary: "Register an MCP server, or replace its whole definition",
      auth: "tenant",
      request: { params: Name, body: jsonBody(McpServerPut) },
      responses: {
        200: json(McpServer, "Replaced"),
        201: json(McpServer, "Created"),
        403: json(ErrorResponse, "Only the admin API key may mark a server internal"),
        422: json(ErrorResponse, "The named secret or OAuth app does not exist"),
      },
    },
    async (c) => {
      const body = c.req.valid("json");
      // An internal server is on the host's own networks: the operator's call, not a tenant's.
      if (body.internal && c.get("principal").role !== "admin") {
        throw new AppError(
          "forbidden",
          "Only the admin API key may mark an MCP server internal: it lets the host connect to private and loopback addresses.",
        );
      }
      const { server, created } = await mcp.servers.put(tenantOf(c), c.req.valid("param").name, body);
      return c.json(server, created ? 201 : 200);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/mcp-servers",
      summary: "List MCP servers, by name",
      auth: "tenant",
      responses: { 200: json(Page(McpServer), "MCP servers") },
    },
    async (c) => c.json({ data: await mcp.servers.list(tenantOf(c)), next_cursor: null }, 200),
  );
  route(
    {
      method: "get",
      path: one,
      summary: "Get an MCP server",
      auth: "tenant",
      request: { params: Name },
      responses: { 200: json(McpServer, "The MCP server") },
    },
    async (c) => c.json(await mcp.servers.get(tenantOf(c), c.req.valid("param").name), 200),
  );
  route(
    {
      method: "delete",
      path: one,
      summary: "Delete an MCP server that no agent's policy names",
      auth: "tenant",
      request: { params: Name },
      responses: {
        200: json(McpServer, "Deleted; the server as it was"),
        409: json(ErrorResponse, "An agent's policy names it"),
      },
    },
    async (c) => c.json(await mcp.servers.delete(tenantOf(c), c.req.valid("param").name), 200),
  );
  route(
    {
      method: "get",
      path: `${one}/tools`,
      summary: "The server's tools as the host sees them now (asked live, with the server's credential)",
      auth: "tenant",
      request: {
        params: Name,
        query: z.object({
          end_user: z.string().min(1).max(256).optional().meta({
            description: "For a server with oauth auth: whose account to attach (default the app's most recent one)",
          }),
        }),
      },
      responses: {
        200: json(McpToolList, "The tools"),
        502: json(ErrorResponse, "The server could not be reached or answered badly"),
      },
    },
    async (c) => c.json(await mcp.tools(tenantOf(c), c.req.valid("param").name, c.req.valid("query").end_user), 200),
  );
  route(
    {
      method: "post",
      path: "/v1/agents/{id}/mcp-pin",
      summary:
        "Pin the agent's MCP tools anew from their servers' current definitions; answers what changed. dry_run only shows it; pins_sha256 (a dry run's) pins only the reviewed definitions",
      auth: "tenant",
      request: { params: z.object({ id: pathParam(Id, "agent") }), body: jsonBody(McpPinRequest) },
      responses: {
        200: json(McpPinDiff, "Re-pinned (or, in a dry run, what pinning would change)"),
        409: json(ErrorResponse, "The definitions are no longer the reviewed ones (pins_sha256); nothing changed"),
        502: json(ErrorResponse, "A server could not be reached; nothing changed"),
      },
    },
    async (c) => {
      const body = c.req.valid("json");
      return c.json(
        await mcp.repin(tenantOf(c), c.req.valid("param").id, { dryRun: body.dry_run, expect: body.pins_sha256 }),
        200,
      );
    },
  );
}
