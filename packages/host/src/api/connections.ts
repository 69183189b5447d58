/**
 * Bridge connections over HTTP: create or replace, list, show and delete a tenant's connections.
 * A connection is addressed by its name, which is also how sandboxes name it in bridge calls.
 */
import { AppError, Connection, ConnectionName, ConnectionPut, ErrorResponse, Page } from "@paddock/protocol";
import type { Context } from "hono";
import type { Connections } from "../bridge/connections.ts";
import { json, type RouteHelpers, readJson } from "./http.ts";

/** What the routes borrow from createApi (see app.ts). */
export interface ConnectionRouteHelpers<C extends Context> extends RouteHelpers<C> {
  /** Whether the request carries the admin API key. */
  isAdmin: (c: C) => boolean;
}

/** A connection's name from the path; a malformed name cannot exist, so it answers like an unknown one. */
function nameParam(c: Context): string {
  const value = c.req.param("name") ?? "";
  if (!ConnectionName.safeParse(value).success) {
    throw new AppError("not_found", `No connection '${value.slice(0, 80)}'.`);
  }
  return value;
}

export function registerConnectionRoutes<C extends Context>(
  connections: Connections,
  h: ConnectionRouteHelpers<C>,
): void {
  const { route, tenantOf } = h;
  const one = "/v1/connections/{name}";

  route(
    "put",
    one,
    {
      summary: "Create a bridge connection, or replace its whole definition",
      auth: "tenant",
      body: ConnectionPut,
      responses: {
        200: json(Connection, "Replaced"),
        201: json(Connection, "Created"),
        422: json(ErrorResponse, "The named secret does not exist"),
      },
    },
    async (c) => {
      const name = nameParam(c);
      const body = await readJson(c, ConnectionPut);
      // An internal connection reaches the host's own networks: the operator's call, not a tenant's.
      if (body.internal && !h.isAdmin(c)) {
        throw new AppError(
          "forbidden",
          "Only the admin API key may mark a connection internal: it lets sandboxes' calls reach private and loopback addresses.",
        );
      }
      const { connection, created } = await connections.put(tenantOf(c), name, body);
      return c.json(connection, created ? 201 : 200);
    },
  );
  route(
    "get",
    "/v1/connections",
    {
      summary: "List bridge connections, by name",
      auth: "tenant",
      responses: { 200: json(Page(Connection), "Connections") },
    },
    async (c) => c.json({ data: await connections.list(tenantOf(c)), next_cursor: null }),
  );
  route(
    "get",
    one,
    { summary: "Get a bridge connection", auth: "tenant", responses: { 200: json(Connection, "The connection") } },
    async (c) => c.json(await connections.get(tenantOf(c), nameParam(c))),
  );
  route(
    "delete",
    one,
    {
      summary: "Delete a bridge connection that no agent's policy names",
      auth: "tenant",
      responses: {
        200: json(Connection, "Deleted; the connection as it was"),
        409: json(ErrorResponse, "An agent's policy names it"),
      },
    },
    async (c) => c.json(await connections.delete(tenantOf(c), nameParam(c))),
  );
}
