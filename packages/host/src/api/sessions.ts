/**
 * Environment edit sessions over HTTP: open, inspect, run a command, read the egress log, freeze,
 * discard. The interactive shell is a WebSocket on the same server (shell-socket.ts). A session
 * lives on the node that opened it; another node passes its requests there (node-proxy.ts).
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import {
  EgressEntry,
  EnvExec,
  EnvExecResult,
  EnvFreeze,
  EnvSession,
  EnvSessionCreate,
  ErrorResponse,
  FreezeResult,
  MAX_EXEC_STDIN_BYTES,
} from "@paddock/protocol";
import { z } from "zod";
import type { EnvSessions } from "../envs/sessions.ts";
import type { Identity } from "../identity/identity.ts";
import { type ApiEnv, bearerPrincipal, type DefineRoute, Id, json, jsonBody, pathParam, tenantOf } from "./http.ts";
import { nodeUnavailable, PROXIED_HEADER, proxyRequest } from "./node-proxy.ts";

const AgentId = z.object({ id: pathParam(Id, "agent") });
const conflict = json(ErrorResponse, "Conflict");
/** The node-bound routes: the session and what is done in it, and the freeze that ends it. */
const SESSION_PATH = /^\/v1\/agents\/([^/]+)\/env\/(session(?:\/.*)?|freeze)$/;

export interface SessionRouteDeps {
  sessions: EnvSessions;
  identity: Identity;
  /** The node serving this API. */
  nodeId: string;
}

export function registerSessionRoutes(app: OpenAPIHono<ApiEnv>, route: DefineRoute, deps: SessionRouteDeps): void {
  const { sessions } = deps;
  const base = "/v1/agents/{id}/env/session";

  // Before the routes: a session another node holds is answered by that node. A caller without a
  // valid key, or a request already passed on once, goes on to the routes here.
  app.use("/v1/agents/*", async (c, next) => {
    const path = SESSION_PATH.exec(c.req.path);
    if (!path?.[1] || c.req.header(PROXIED_HEADER) !== undefined) return next();
    const principal = await bearerPrincipal(deps.identity, c.req.header("authorization"));
    const owner = principal ? await sessions.owner(principal.tenantId, path[1]) : null;
    if (!owner) return next();
    if (owner.live) return proxyRequest(c.req.raw, owner, deps.nodeId);
    // A session whose node is down can still be discarded (here); nothing else can be done with it.
    if (c.req.method === "DELETE" && path[2] === "session") return next();
    throw nodeUnavailable(owner, "is down");
  });

  route(
    {
      method: "post",
      path: base,
      summary: "Open an environment edit session over the agent's current environment",
      auth: "tenant",
      request: { params: AgentId, body: jsonBody(EnvSessionCreate) },
      responses: { 201: json(EnvSession, "Opened"), 409: conflict },
    },
    async (c) => c.json(await sessions.open(tenantOf(c), c.req.valid("param").id, c.req.valid("json")), 201),
  );
  route(
    {
      method: "get",
      path: base,
      summary: "The agent's open environment session",
      auth: "tenant",
      request: { params: AgentId },
      responses: { 200: json(EnvSession, "Session"), 409: conflict },
    },
    async (c) => c.json(await sessions.get(tenantOf(c), c.req.valid("param").id), 200),
  );
  route(
    {
      method: "delete",
      path: base,
      summary: "Discard the open session and its changes",
      auth: "tenant",
      request: { params: AgentId },
      responses: { 200: json(EnvSession, "Discarded"), 409: conflict },
    },
    async (c) => c.json(await sessions.discard(tenantOf(c), c.req.valid("param").id), 200),
  );
  route(
    {
      method: "post",
      path: `${base}/exec`,
      summary: "Run one command in the session (as its root) and return its output",
      auth: "tenant",
      request: { params: AgentId, body: jsonBody(EnvExec) },
      bodyLimit: MAX_EXEC_STDIN_BYTES * 2 + 512 * 1024,
      responses: { 200: json(EnvExecResult, "Finished"), 409: conflict },
    },
    async (c) => c.json(await sessions.exec(tenantOf(c), c.req.valid("param").id, c.req.valid("json")), 200),
  );
  route(
    {
      method: "get",
      path: `${base}/egress`,
      summary: "The session's egress log: every request through its proxy, allowed or refused",
      auth: "tenant",
      request: {
        params: AgentId,
        query: z.object({
          after: z.coerce.number().int().min(0).default(0),
          limit: z.coerce.number().int().min(1).max(1000).default(200),
        }),
      },
      responses: { 200: json(z.object({ data: z.array(EgressEntry) }), "Requests, oldest first") },
    },
    async (c) => {
      const { after, limit } = c.req.valid("query");
      return c.json({ data: await sessions.egress(tenantOf(c), c.req.valid("param").id, after, limit) }, 200);
    },
  );
  route(
    {
      method: "post",
      path: "/v1/agents/{id}/env/freeze",
      summary: "Freeze the session's changes into a new environment version (ends the session)",
      auth: "tenant",
      request: { params: AgentId, body: jsonBody(EnvFreeze) },
      responses: { 201: json(FreezeResult, "Frozen"), 409: conflict },
    },
    async (c) => c.json(await sessions.freeze(tenantOf(c), c.req.valid("param").id, c.req.valid("json")), 201),
  );
}
