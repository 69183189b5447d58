/**
 * The HTTP API under /v1. Every route's tenant comes from the API key (never from the request),
 * and another tenant's ids answer exactly as unknown ids do. Bodies, queries and ids are checked
 * with the protocol schemas, which also generate /v1/openapi.json.
 */
import { OpenAPIHono } from "@hono/zod-openapi";
import {
  Agent,
  AgentCreate,
  AgentUpdate,
  ApiKey,
  ApiKeyCreate,
  AppError,
  Artifact,
  ERROR_CODES,
  ErrorResponse,
  MAX_FILES_BYTES,
  Page,
  Run,
  RunCreate,
  RunEvent,
  Runner,
  RunStatus,
  Snapshot,
  TERMINAL_STATUSES,
  Tenant,
  TenantCreate,
} from "@paddock/protocol";
import type { Context, MiddlewareHandler } from "hono";
import { streamSSE } from "hono/streaming";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { Kysely } from "kysely";
import { z } from "zod";
import { type Agents, runSpec, toAgent } from "../agents/agents.ts";
import type { BlobStore } from "../artifacts/blob-store.ts";
import type { Connections } from "../bridge/connections.ts";
import type { Engine } from "../engine/engine.ts";
import type { EventLog } from "../engine/event-log.ts";
import type { RunnerRegistry } from "../engine/runner-registry.ts";
import { idempotencyKey, type RunRepository, terminalEvent, toRun } from "../engine/runs.ts";
import type { EnvSessions } from "../envs/sessions.ts";
import type { Ledger } from "../gateway/ledger.ts";
import type { Providers } from "../gateway/providers.ts";
import { type Identity, type Principal, toTenant } from "../identity/identity.ts";
import type { Secrets } from "../secrets/secrets.ts";
import type { Database } from "../store/schema.ts";
import type { Scheduler } from "../triggers/scheduler.ts";
import type { Webhooks } from "../triggers/webhooks.ts";
import { registerConnectionRoutes } from "./connections.ts";
import { registerGatewayRoutes } from "./gateway.ts";
import { check, errorResponse, json, type RouteAuth, readJson } from "./http.ts";
import { registerRunnerRoutes } from "./runners.ts";
import { registerScheduleRoutes } from "./schedules.ts";
import { registerSecretRoutes } from "./secrets.ts";
import { registerSessionRoutes } from "./sessions.ts";
import { registerSnapshotArchiveRoutes } from "./snapshot-archive.ts";
import { registerWebhookRoutes } from "./webhooks.ts";

export interface ApiDeps {
  db: Kysely<Database>;
  identity: Identity;
  agents: Agents;
  runs: RunRepository;
  events: EventLog;
  engine: Engine;
  blobs: BlobStore;
  runners: RunnerRegistry;
  sessions: EnvSessions;
  connections: Connections;
  secrets: Secrets;
  providers: Providers;
  ledger: Ledger;
  scheduler: Scheduler;
  webhooks: Webhooks;
  version: string;
  log: (msg: string) => void;
}

type Env = { Variables: { principal: Principal } };
type Method = "get" | "post" | "put" | "patch" | "delete";
type Auth = RouteAuth;

const Id = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[a-z]{3}_[0-9a-z]+$/, "an id such as run_…");
const ListQuery = z.object({
  limit: z.coerce.number().int().min(1).max(200).default(50),
  cursor: z.string().max(64).optional(),
});
const errors = {
  400: json(ErrorResponse, "Invalid request"),
  401: json(ErrorResponse, "Missing or invalid API key"),
  404: json(ErrorResponse, "Not found"),
};
const MAX_SSE_BUFFER = 1000;
/** An agent's files travel inside its JSON body; allow for their JSON escaping. */
const AGENT_BODY_LIMIT = MAX_FILES_BYTES * 2 + 1024 * 1024;
const TERMINAL_EVENTS = new Set(TERMINAL_STATUSES.map((s) => `run.${s}`));

export function createApi(deps: ApiDeps): OpenAPIHono<Env> {
  const app = new OpenAPIHono<Env>();

  const authenticate =
    (need: Auth): MiddlewareHandler<Env> =>
    async (c, next) => {
      if (need === "none") return next();
      const header = c.req.header("authorization") ?? "";
      const match = /^Bearer\s+(\S+)$/i.exec(header);
      const principal = match?.[1] ? await deps.identity.authenticate(match[1]) : null;
      if (!principal) return errorResponse(c, "unauthorized");
      if (need === "admin" && principal.role !== "admin") {
        return errorResponse(c, "forbidden", "This action needs the admin API key.");
      }
      c.set("principal", principal);
      return next();
    };

  /** Registers a handler and its OpenAPI description from the same schemas. */
  const route = (
    method: Method,
    path: string,
    spec: {
      summary: string;
      auth: Auth;
      body?: z.ZodType;
      query?: z.ZodObject;
      responses: Record<number, ReturnType<typeof json> | { description: string }>;
    },
    handler: (c: Context<Env>) => Promise<Response> | Response,
  ) => {
    app.openAPIRegistry.registerPath({
      method,
      path,
      summary: spec.summary,
      ...(spec.auth === "none" ? {} : { security: [{ bearer: [] }] }),
      request: {
        ...(spec.body ? { body: { content: { "application/json": { schema: spec.body } } } } : {}),
        ...(spec.query ? { query: spec.query } : {}),
      },
      responses: spec.auth === "none" ? spec.responses : { ...errors, ...spec.responses },
    });
    const honoPath = path.replace(/\{(\w+)\}/g, ":$1");
    app.on(method.toUpperCase(), honoPath, authenticate(spec.auth), handler);
  };

  const param = (c: Context<Env>, name: string) => {
    const value = c.req.param(name) ?? "";
    // A malformed id cannot exist, so it answers like an unknown one.
    if (!Id.safeParse(value).success) throw new AppError("not_found", `No resource '${value.slice(0, 80)}'.`);
    return value;
  };
  const tenantOf = (c: Context<Env>) => c.get("principal").tenantId;
  const page = <T>(rows: T[], limit: number, cursor: (row: T) => string) => ({
    data: rows,
    next_cursor: rows.length === limit && rows.length > 0 ? cursor(rows[rows.length - 1] as T) : null,
  });
  const findRun = async (c: Context<Env>) => {
    const id = param(c, "id");
    const run = await deps.runs.get(tenantOf(c), id);
    if (!run) throw new AppError("not_found", `No run '${id}'.`);
    return run;
  };

  route(
    "get",
    "/v1/health",
    { summary: "Liveness", auth: "none", responses: { 200: { description: "The host is up" } } },
    (c) => c.json({ ok: true, version: deps.version }),
  );

  // Tenants and keys (admin key only).
  route(
    "post",
    "/v1/tenants",
    { summary: "Create a tenant", auth: "admin", body: TenantCreate, responses: { 201: json(Tenant, "Created") } },
    async (c) => {
      const body = await readJson(c, TenantCreate);
      return c.json(toTenant(await deps.identity.createTenant(body.name)), 201);
    },
  );
  route(
    "get",
    "/v1/tenants",
    { summary: "List tenants", auth: "admin", responses: { 200: json(Page(Tenant), "Tenants") } },
    async (c) => c.json({ data: (await deps.identity.listTenants()).map(toTenant), next_cursor: null }),
  );
  route(
    "post",
    "/v1/tenants/{id}/keys",
    {
      summary: "Create an API key for a tenant (the key is shown once)",
      auth: "admin",
      body: ApiKeyCreate,
      responses: { 201: json(ApiKey, "Created") },
    },
    async (c) => {
      const body = await readJson(c, ApiKeyCreate);
      const ref = c.req.param("id") ?? "";
      const tenant = await deps.identity.findTenant(ref.slice(0, 64));
      return c.json(await deps.identity.createTenantKey(tenant.id, body.name ?? null), 201);
    },
  );

  // Agents.
  route(
    "post",
    "/v1/agents",
    { summary: "Create an agent", auth: "tenant", body: AgentCreate, responses: { 201: json(Agent, "Created") } },
    async (c) => {
      const body = await readJson(c, AgentCreate, AGENT_BODY_LIMIT);
      return c.json(toAgent(await deps.agents.create(tenantOf(c), body)), 201);
    },
  );
  const AgentsQuery = ListQuery.extend({
    name: z.string().max(64).optional(),
    /** true: deleted (archived) agents too. */
    archived: z.enum(["true", "false"]).optional(),
  });
  route(
    "get",
    "/v1/agents",
    {
      summary: "List agents (live ones; with archived=true, deleted ones too)",
      auth: "tenant",
      query: AgentsQuery,
      responses: { 200: json(Page(Agent), "Agents") },
    },
    async (c) => {
      const q = check(AgentsQuery, c.req.query());
      const rows = await deps.agents.list(tenantOf(c), {
        limit: q.limit,
        archived: q.archived === "true",
        ...(q.name ? { name: q.name } : {}),
        ...(q.cursor ? { cursor: q.cursor } : {}),
      });
      return c.json(page(rows.map(toAgent), q.limit, (a) => a.id));
    },
  );
  route(
    "get",
    "/v1/agents/{id}",
    { summary: "Get an agent", auth: "tenant", responses: { 200: json(Agent, "The agent") } },
    async (c) => c.json(toAgent(await deps.agents.get(tenantOf(c), param(c, "id")))),
  );
  // Agent versions and deletion: the agents service does the work.
  route(
    "patch",
    "/v1/agents/{id}",
    {
      summary:
        "Update an agent: the fields given replace its own (limits key by key) and it becomes its next version; files make a new environment version. An invalid update changes nothing",
      auth: "tenant",
      body: AgentUpdate,
      responses: {
        200: json(Agent, "The agent at its new version (as it was when nothing changed)"),
        409: json(ErrorResponse, "The agent is deleted (agent_archived) or changed meanwhile (conflict)"),
      },
    },
    async (c) => {
      const id = param(c, "id");
      const body = await readJson(c, AgentUpdate, AGENT_BODY_LIMIT);
      return c.json(toAgent(await deps.agents.update(tenantOf(c), id, body)));
    },
  );
  route(
    "delete",
    "/v1/agents/{id}",
    {
      summary:
        "Delete (archive) an agent: it starts no new runs, its schedules pause, its webhooks refuse deliveries and its name is free; runs going finish; it and its runs stay readable",
      auth: "tenant",
      responses: { 200: json(Agent, "The archived agent") },
    },
    async (c) => c.json(toAgent(await deps.agents.archive(tenantOf(c), param(c, "id")))),
  );

  // Environment versions.
  route(
    "get",
    "/v1/agents/{id}/snapshots",
    {
      summary: "An agent's environment versions, newest first",
      auth: "tenant",
      responses: { 200: json(Page(Snapshot), "Snapshots") },
    },
    async (c) => c.json({ data: await deps.agents.history(tenantOf(c), param(c, "id")), next_cursor: null }),
  );
  const Rollback = z
    .object({ version: z.number().int().min(1) })
    .strict()
    .meta({ id: "Rollback" });
  route(
    "post",
    "/v1/agents/{id}/rollback",
    {
      summary: "Make an earlier environment version current again (as a new version)",
      auth: "tenant",
      body: Rollback,
      responses: { 201: json(Snapshot, "The new current version"), 409: json(ErrorResponse, "Changed meanwhile") },
    },
    async (c) => {
      const id = param(c, "id");
      const body = await readJson(c, Rollback);
      return c.json(await deps.agents.rollback(tenantOf(c), id, body.version), 201);
    },
  );
  route(
    "get",
    "/v1/runners",
    { summary: "Runner versions (admin)", auth: "admin", responses: { 200: json(Page(Runner), "Runners") } },
    async (c) => c.json({ data: await deps.runners.list(), next_cursor: null }),
  );
  registerRunnerRoutes(app, deps.runners, { authenticate: authenticate("admin") });
  registerSnapshotArchiveRoutes(app, deps, { authenticate: authenticate("tenant"), param });
  registerSessionRoutes(deps.sessions, { route, param, tenantOf });
  registerSecretRoutes(deps.secrets, { route, tenantOf });
  registerScheduleRoutes({ scheduler: deps.scheduler, agents: deps.agents }, { route, tenantOf });
  registerWebhookRoutes({ webhooks: deps.webhooks, agents: deps.agents }, { route, tenantOf });
  registerGatewayRoutes(
    { providers: deps.providers, ledger: deps.ledger, db: deps.db, agents: deps.agents },
    { route, tenantOf, findRun: (c) => findRun(c) },
  );
  registerConnectionRoutes(deps.connections, { route, tenantOf, isAdmin: (c) => c.get("principal").role === "admin" });

  // Runs.
  route(
    "post",
    "/v1/agents/{id}/runs",
    {
      summary:
        "Trigger a run. With an Idempotency-Key header, the same key answers with the same run for 24 hours (200, Idempotent-Replayed: true)",
      auth: "tenant",
      body: RunCreate,
      responses: {
        200: json(Run, "The run this Idempotency-Key already started"),
        201: json(Run, "Queued"),
        409: json(ErrorResponse, "The agent is deleted (agent_archived)"),
        422: json(ErrorResponse, "The Idempotency-Key was used for another request (idempotency_key_reused)"),
      },
    },
    async (c) => {
      const agent = await deps.agents.get(tenantOf(c), param(c, "id"));
      const body = await readJson(c, RunCreate);
      const key = c.req.header("idempotency-key");
      const dedupe =
        key === undefined
          ? undefined
          : idempotencyKey(agent.row.tenant_id, key, `${agent.row.id}\n${JSON.stringify(body.input ?? null)}`);
      const { run, created } = await deps.runs.create(agent.row.tenant_id, agent.row.id, runSpec(agent), body.input, {
        trigger: "api",
        ...(dedupe ? { dedupe } : {}),
      });
      if (created) deps.engine.notify();
      else c.header("idempotent-replayed", "true");
      return c.json(toRun(run), created ? 201 : 200);
    },
  );
  const RunsQuery = ListQuery.extend({ agent_id: z.string().max(64).optional(), status: RunStatus.optional() });
  route(
    "get",
    "/v1/runs",
    { summary: "List runs", auth: "tenant", query: RunsQuery, responses: { 200: json(Page(Run), "Runs") } },
    async (c) => {
      const q = check(RunsQuery, c.req.query());
      const rows = await deps.runs.list(tenantOf(c), {
        limit: q.limit,
        ...(q.cursor ? { cursor: q.cursor } : {}),
        ...(q.agent_id ? { agentId: q.agent_id } : {}),
        ...(q.status ? { status: q.status } : {}),
      });
      return c.json(page(rows.map(toRun), q.limit, (r) => r.id));
    },
  );
  route(
    "get",
    "/v1/runs/{id}",
    { summary: "Get a run", auth: "tenant", responses: { 200: json(Run, "The run") } },
    async (c) => c.json(toRun(await findRun(c))),
  );
  route(
    "post",
    "/v1/runs/{id}/cancel",
    {
      summary: "Cancel a queued or running run, and the child runs it started that are still going",
      auth: "tenant",
      responses: {
        200: json(Run, "Canceled"),
        202: json(Run, "Cancel requested"),
        409: json(ErrorResponse, "Already finished"),
      },
    },
    async (c) => {
      const run = await findRun(c);
      await readJson(c, z.object({}).strict());
      /** Cancels a run and, below it, every child run still going; true when it was still queued. */
      const cancel = async (id: string): Promise<boolean> => {
        const children = await deps.db
          .selectFrom("runs")
          .select("id")
          .where("parent_run_id", "=", id)
          .where("status", "in", ["queued", "starting", "running"])
          .execute();
        for (const child of children) await cancel(child.id);
        if (
          await deps.runs.transition(id, ["queued"], "canceled", { reason: "canceled", finished_at: Date.now() }, [
            terminalEvent("canceled", "canceled", null),
          ])
        ) {
          return true;
        }
        await deps.runs.requestCancel(id);
        deps.engine.cancel(id);
        return false;
      };
      const current = await deps.runs.getById(run.id);
      if (current && (TERMINAL_STATUSES as readonly string[]).includes(current.status)) {
        throw new AppError("run_not_cancelable", `The run already ended (${current.status}).`);
      }
      const wasQueued = await cancel(run.id);
      return c.json(toRun((await deps.runs.getById(run.id)) ?? run), wasQueued ? 200 : 202);
    },
  );

  // Events: a JSON page, or live server-sent events resumable with Last-Event-ID.
  const EventsQuery = z.object({
    after: z.coerce.number().int().min(0).default(0),
    limit: z.coerce.number().int().min(1).max(1000).default(500),
  });
  route(
    "get",
    "/v1/runs/{id}/events",
    {
      summary: "A run's events (JSON, or text/event-stream to follow live)",
      auth: "tenant",
      query: EventsQuery,
      responses: { 200: json(Page(RunEvent), "Events") },
    },
    async (c) => {
      const run = await findRun(c);
      const q = check(EventsQuery, c.req.query());
      if (!(c.req.header("accept") ?? "").includes("text/event-stream")) {
        const events = await deps.events.list(run.id, q.after, q.limit);
        const last = events[events.length - 1];
        return c.json({ data: events, next_cursor: events.length === q.limit && last ? String(last.seq) : null });
      }
      const resume = Number(c.req.header("last-event-id") ?? Number.NaN);
      let after = Number.isInteger(resume) && resume >= 0 ? resume : q.after;
      return streamSSE(c, async (stream) => {
        // Live events buffer while the client reads; a slow client's buffer is bounded: on
        // overflow it is dropped and the stream catches up from the store instead.
        const live: RunEvent[] = [];
        let overflowed = false;
        let wake: (() => void) | null = null;
        const unsubscribe = deps.events.subscribe(run.id, (e) => {
          if (live.length >= MAX_SSE_BUFFER) {
            overflowed = true;
            live.length = 0;
          } else if (!overflowed) live.push(e);
          wake?.();
        });
        let closed = false;
        stream.onAbort(() => {
          closed = true;
          wake?.();
        });
        const keepalive = setInterval(() => void stream.write(": keepalive\n\n"), 15_000);
        try {
          let done = false;
          const send = async (e: RunEvent) => {
            if (e.seq <= after) return;
            after = e.seq;
            await stream.writeSSE({ id: String(e.seq), event: e.type, data: JSON.stringify(e) });
            if (TERMINAL_EVENTS.has(e.type)) done = true;
          };
          // History first (the subscription already buffers anything newer), then live events.
          for (;;) {
            const batch = await deps.events.list(run.id, after, 500);
            for (const e of batch) await send(e);
            if (batch.length < 500) break;
          }
          const current = await deps.runs.getById(run.id);
          if (current && (TERMINAL_STATUSES as readonly string[]).includes(current.status)) {
            for (const e of await deps.events.list(run.id, after, 1000)) await send(e);
            done = true;
          }
          while (!done && !closed) {
            if (live.length === 0 && !overflowed) await new Promise<void>((r) => (wake = r));
            wake = null;
            if (overflowed) {
              // Anything published from here on is buffered again; anything before is stored.
              overflowed = false;
              live.length = 0;
              for (;;) {
                const batch = await deps.events.list(run.id, after, 500);
                for (const e of batch) await send(e);
                if (batch.length < 500) break;
              }
              continue;
            }
            for (const e of live.splice(0)) await send(e);
          }
        } finally {
          clearInterval(keepalive);
          unsubscribe();
        }
      });
    },
  );

  // Artifacts.
  route(
    "get",
    "/v1/runs/{id}/artifacts",
    { summary: "List a run's artifacts", auth: "tenant", responses: { 200: json(Page(Artifact), "Artifacts") } },
    async (c) => {
      const run = await findRun(c);
      const rows = await deps.db
        .selectFrom("artifacts")
        .selectAll()
        .where("run_id", "=", run.id)
        .orderBy("attempt")
        .orderBy("path")
        .execute();
      return c.json({
        data: rows.map((r) => ({
          id: r.id,
          run_id: r.run_id,
          attempt: r.attempt,
          path: r.path,
          size: Number(r.size),
          sha256: r.sha256,
          content_type: r.content_type,
          created_at: new Date(r.created_at).toISOString(),
        })),
        next_cursor: null,
      });
    },
  );
  route(
    "get",
    "/v1/runs/{id}/artifacts/{artifact_id}/content",
    { summary: "Download an artifact", auth: "tenant", responses: { 200: { description: "The file" } } },
    async (c) => {
      const run = await findRun(c);
      const artifactId = param(c, "artifact_id");
      const row = await deps.db
        .selectFrom("artifacts")
        .selectAll()
        .where("id", "=", artifactId)
        .where("run_id", "=", run.id)
        .executeTakeFirst();
      if (!row) throw new AppError("not_found", `No artifact '${artifactId}'.`);
      const name = row.path.split("/").pop() ?? "artifact";
      const stream = deps.blobs.open(row.sha256);
      return new Response(stream as unknown as ReadableStream, {
        headers: {
          "content-type": row.content_type,
          "content-length": String(row.size),
          // Agent-made files are never rendered on the API's origin.
          "content-disposition": `attachment; filename="${name.replace(/[^\w.-]/g, "_")}"`,
          "content-security-policy": "sandbox",
          "x-content-type-options": "nosniff",
        },
      });
    },
  );

  app.doc31("/v1/openapi.json", {
    openapi: "3.1.0",
    info: { title: "Paddock API", version: deps.version },
  });
  app.openAPIRegistry.registerComponent("securitySchemes", "bearer", { type: "http", scheme: "bearer" });

  app.notFound((c) =>
    errorResponse(c, "route_not_found", `No endpoint ${c.req.method} ${new URL(c.req.url).pathname}.`),
  );
  app.onError((err, c) => {
    if (err instanceof AppError) return c.json(err.toBody(), err.status as ContentfulStatusCode);
    deps.log(`api: ${c.req.method} ${c.req.path}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return c.json(new AppError("internal").toBody(), ERROR_CODES.internal.status);
  });
  return app;
}
