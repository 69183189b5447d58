/**
 * Bridge connections over HTTP: create or replace, list, show and delete a tenant's connections.
 * A connection is addressed by its name, which is also how sandboxes name it in bridge calls.
 */
import { AppError, Connection, ConnectionName, ConnectionPut, ErrorResponse, Page } from "@paddock/protocol";
import { z } from "zod";
import type { Connections } from "../bridge/connections.ts";
import { type DefineRoute, json, jsonBody, pathParam, tenantOf } from "./http.ts";

const Name = z.object({ name: pathParam(ConnectionName, "connection") });

export function registerConnectionRoutes(route: DefineRoute, connections: Connections): void {
  const one = "/v1/connections/{name}";

  route(
    {
      method: "put",
      path: one,
      summary: "Create a bridge connection, or replace its whole definition",
      auth: "tenant",
      request: { params: Name, body: jsonBody(ConnectionPut) },
      responses: {
        200: json(Connection, "Replaced"),
        201: json(Connection, "Created"),
        403: json(ErrorResponse, "Only the admin API key may mark a connection internal"),
        422: json(ErrorResponse, "The named secret does not exist"),
      },
    },
    async (c) => {
      const body = c.req.valid("json");
      // An internal connection reaches the host's own networks: the operator's call, not a tenant's.
      if (body.internal && c.get("principal").role !== "admin") {
        throw new AppError(
          "forbidden",
          "Only the admin API key may mark a connection internal: it lets sandboxes' calls reach private and loopback addresses.",
        );
      }
      const { connection, created } = await connections.put(tenantOf(c), c.req.valid("param").name, body);
      return c.json(connection, created ? 201 : 200);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/connections",
      summary: "List bridge connections, by name",
      auth: "tenant",
      responses: { 200: json(Page(Connection), "Connections") },
    },
    async (c) => c.json({ data: await connections.list(tenantOf(c)), next_cursor: null }, 200),
  );
  route(
    {
      method: "get",
      path: one,
      summary: "Get a bridge connection",
      auth: "tenant",
      request: { params: Name },
      responses: { 200: json(Connection, "The connection") },
    },
    async (c) => c.json(await connections.get(tenantOf(c), c.req.valid("param").name), 200),
  );
  route(
    {
      method: "delete",
      path: one,
      summary: "Delete a bridge connection that no agent's policy names",
      auth: "tenant",
      request: { params: Name },
      responses: {
        200: json(Connection, "Deleted; the connection as it was"),
        409: json(ErrorResponse, "An agent's policy names it"),
      },
    },
    async (c) => c.json(await connections.delete(tenantOf(c), c.req.valid("param").name), 200),
  );
}
