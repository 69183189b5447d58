/**
 * Environment edit sessions over HTTP: open, inspect, run a command, read the egress log, freeze,
 * discard. The interactive shell is a WebSocket on the same server (shell-socket.ts).
 */
import {
  EgressEntry,
  EnvExec,
  EnvExecResult,
  EnvFreeze,
  EnvSession,
  EnvSessionCreate,
  FreezeResult,
  MAX_EXEC_STDIN_BYTES,
} from "@paddock/protocol";
import type { Context } from "hono";
import { z } from "zod";
import type { EnvSessions } from "../envs/sessions.ts";
import { check, json, readJson } from "./http.ts";

const EgressQuery = z.object({
  after: z.coerce.number().int().min(0).default(0),
  limit: z.coerce.number().int().min(1).max(1000).default(200),
});

/** What the routes borrow from createApi (see app.ts). */
export interface SessionRouteHelpers<C extends Context> {
  route: (
    method: "get" | "post" | "delete",
    path: string,
    spec: {
      summary: string;
      auth: "tenant";
      body?: z.ZodType;
      query?: z.ZodObject;
      responses: Record<number, ReturnType<typeof json> | { description: string }>;
    },
    handler: (c: C) => Promise<Response> | Response,
  ) => void;
  param: (c: C, name: string) => string;
  tenantOf: (c: C) => string;
}

export function registerSessionRoutes<C extends Context>(sessions: EnvSessions, h: SessionRouteHelpers<C>): void {
  const { route, param, tenantOf } = h;
  const base = "/v1/agents/{id}/env/session";
  const conflict = json(z.object({ error: z.object({ code: z.string(), message: z.string() }) }), "Conflict");

  route(
    "post",
    base,
    {
      summary: "Open an environment edit session over the agent's current environment",
      auth: "tenant",
      body: EnvSessionCreate,
      responses: { 201: json(EnvSession, "Opened"), 409: conflict },
    },
    async (c) => {
      const id = param(c, "id");
      const body = await readJson(c, EnvSessionCreate);
      return c.json(await sessions.open(tenantOf(c), id, body), 201);
    },
  );
  route(
    "get",
    base,
    {
      summary: "The agent's open environment session",
      auth: "tenant",
      responses: { 200: json(EnvSession, "Session"), 409: conflict },
    },
    async (c) => c.json(await sessions.get(tenantOf(c), param(c, "id"))),
  );
  route(
    "delete",
    base,
    {
      summary: "Discard the open session and its changes",
      auth: "tenant",
      responses: { 200: json(EnvSession, "Discarded"), 409: conflict },
    },
    async (c) => c.json(await sessions.discard(tenantOf(c), param(c, "id"))),
  );
  route(
    "post",
    `${base}/exec`,
    {
      summary: "Run one command in the session (as its root) and return its output",
      auth: "tenant",
      body: EnvExec,
      responses: { 200: json(EnvExecResult, "Finished"), 409: conflict },
    },
    async (c) => {
      const id = param(c, "id");
      const body = await readJson(c, EnvExec, MAX_EXEC_STDIN_BYTES * 2 + 512 * 1024);
      return c.json(await sessions.exec(tenantOf(c), id, body));
    },
  );
  route(
    "get",
    `${base}/egress`,
    {
      summary: "The session's egress log: every request through its proxy, allowed or refused",
      auth: "tenant",
      query: EgressQuery,
      responses: { 200: json(z.object({ data: z.array(EgressEntry) }), "Requests, oldest first") },
    },
    async (c) => {
      const id = param(c, "id");
      const { after, limit } = check(EgressQuery, c.req.query());
      return c.json({ data: await sessions.egress(tenantOf(c), id, after, limit) });
    },
  );
  route(
    "post",
    "/v1/agents/{id}/env/freeze",
    {
      summary: "Freeze the session's changes into a new environment version (ends the session)",
      auth: "tenant",
      body: EnvFreeze,
      responses: { 201: json(FreezeResult, "Frozen"), 409: conflict },
    },
    async (c) => {
      const id = param(c, "id");
      const body = await readJson(c, EnvFreeze);
      return c.json(await sessions.freeze(tenantOf(c), id, body), 201);
    },
  );
}
