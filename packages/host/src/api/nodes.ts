/**
 * The nodes sharing this store (admin key): `GET /v1/nodes` lists them, `POST /v1/nodes/{id}/drain`
 * stops one from claiming runs while its runs going finish. The nodes service does the work.
 */
import { NodeInfo, Page } from "@paddock/protocol";
import { z } from "zod";
import type { Nodes } from "../nodes/nodes.ts";
import { type DefineRoute, json, pathParam } from "./http.ts";

const NodeId = z.object({ id: pathParam(z.string().min(1).max(63), "node") });

/**
 * Adds the node routes and their OpenAPI entries to the API.
 * @example registerNodeRoutes(route, deps.nodes);
 */
export function registerNodeRoutes(route: DefineRoute, nodes: Nodes): void {
  route(
    {
      method: "get",
      path: "/v1/nodes",
      summary: "List the nodes sharing this store, live ones first (admin)",
      auth: "admin",
      responses: { 200: json(Page(NodeInfo), "Nodes") },
    },
    async (c) => c.json({ data: await nodes.list(), next_cursor: null }, 200),
  );
  route(
    {
      method: "post",
      path: "/v1/nodes/{id}/drain",
      summary: "Drain a node: it claims no new runs and lets its runs going finish (admin)",
      auth: "admin",
      request: { params: NodeId },
      responses: { 200: json(NodeInfo, "The node, draining") },
    },
    async (c) => c.json(await nodes.drain(c.req.valid("param").id), 200),
  );
}
