/**
 * The HTTP API under /v1. Every route's tenant comes from the API key (never from the request),
 * and another tenant's ids answer exactly as unknown ids do. Each route is declared once (see
 * http.ts): its params, query and body schemas are what is checked and what /v1/openapi.json says.
 */
import { Readable } from "node:stream";
import { OpenAPIHono } from "@hono/zod-openapi";
import {
  Agent,
  AgentCreate,
  AgentReplace,
  AgentUpdate,
  AgentVersion,
  ApiKey,
  ApiKeyCreate,
  AppError,
  Artifact,
  ErrorResponse,
  eventTypesOf,
  MAX_FILES_BYTES,
  Page,
  PageQuery,
  Run,
  RunCreate,
  RunEvent,
  RunEventsQuery,
  Runner,
  RunReplay,
  RunsQuery,
  Snapshot,
  TERMINAL_STATUSES,
  Tenant,
  TenantCreate,
} from "@paddock/protocol";
import type { Context } from "hono";
import { streamSSE } from "hono/streaming";
import { z } from "zod";
import type { CallLog } from "../activity/calls.ts";
import type { RunStats } from "../activity/stats.ts";
import { type Agents, frozenSpec, toAgent } from "../agents/agents.ts";
import type { SnapshotArchives } from "../agents/snapshot-archive.ts";
import type { Artifacts } from "../artifacts/artifacts.ts";
import type { Approvals } from "../bridge/approvals.ts";
import type { Connections } from "../bridge/connections.ts";
import type { Engine } from "../engine/engine.ts";
import { idempotencyKey, type RunFilter, type RunRepository, toRun } from "../engine/runs.ts";
import type { EnvSessions } from "../envs/sessions.ts";
import type { Ledger } from "../gateway/ledger.ts";
import type { Providers } from "../gateway/providers.ts";
import { type Identity, toTenant } from "../identity/identity.ts";
import type { UiSessions } from "../identity/ui-sessions.ts";
import type { RunnerRegistry } from "../images/runner-registry.ts";
import type { McpService } from "../mcp/service.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { Nodes } from "../nodes/nodes.ts";
import type { Notifications } from "../notifications/subscriptions.ts";
import type { Accounts } from "../oauth/accounts.ts";
import type { OAuthApps } from "../oauth/apps.ts";
import type { Secrets } from "../secrets/secrets.ts";
import type { EventLog } from "../store/event-log.ts";
import type { RunsTable } from "../store/schema.ts";
import { formatTraceparent, parseTraceparent } from "../tracing/trace-context.ts";
import type { Scheduler } from "../triggers/scheduler.ts";
import type { Webhooks } from "../triggers/webhooks.ts";
import { registerActivityRoutes } from "./activity.ts";
import { registerApprovalRoutes } from "./approvals.ts";
import { registerConnectionRoutes } from "./connections.ts";
import { registerGatewayRoutes } from "./gateway.ts";
import {
  type ApiEnv,
  errorResponse,
  Id,
  json,
  jsonBody,
  pathParam,
  routeDefiner,
  tenantOf,
  validationHook,
} from "./http.ts";
import { registerMcpRoutes } from "./mcp.ts";
import { registerMetricsRoutes } from "./metrics.ts";
import { registerNodeRoutes } from "./nodes.ts";
import { registerNotificationRoutes } from "./notifications.ts";
import { registerAccountRoutes, registerOAuthAppRoutes, registerOAuthPages } from "./oauth.ts";
import { registerRunnerRoutes } from "./runners.ts";
import { registerScheduleRoutes } from "./schedules.ts";
import { registerSecretRoutes } from "./secrets.ts";
import { registerSessionRoutes } from "./sessions.ts";
import { registerSnapshotArchiveRoutes } from "./snapshot-archive.ts";
import { registerUi } from "./ui.ts";
import { registerUiSessionRoutes } from "./ui-session.ts";
import { registerWebhookRoutes } from "./webhooks.ts";

export interface ApiDeps {
  identity: Identity;
  uiSessions: UiSessions;
  agents: Agents;
  runs: RunRepository;
  events: EventLog;
  engine: Engine;
  artifacts: Artifacts;
  archives: SnapshotArchives;
  runners: RunnerRegistry;
  sessions: EnvSessions;
  connections: Connections;
  mcp: McpService;
  secrets: Secrets;
  oauthApps: OAuthApps;
  accounts: Accounts;
  providers: Providers;
  ledger: Ledger;
  scheduler: Scheduler;
  webhooks: Webhooks;
  notifications: Notifications;
  approvals: Approvals;
  nodes: Nodes;
  calls: CallLog;
  stats: RunStats;
  /** The node serving this API. */
  nodeId: string;
  version: string;
  /** The built dashboard (index.html and assets/), served under /ui; none: no /ui. */
  uiDir?: string;
  log: (msg: string) => void;
  /** This node's metrics, and the token that may read them beside the admin key (null: none). */
  metrics: Metrics;
  metricsToken: string | null;
}

const AgentId = z.object({ id: pathParam(Id, "agent") });
/** A tenant by id or name. */
const TenantRef = pathParam(z.string().min(1).max(64), "tenant");
const RunId = z.object({ id: pathParam(Id, "run") });
const AgentsQuery = PageQuery.extend({
  name: z.string().max(64).optional(),
  /** true: deleted (archived) agents too. */
  archived: z.enum(["true", "false"]).optional(),
});
/** The answers of a route that starts a run (a trigger, a replay). */
const RUN_STARTED = {
  200: json(Run, "The run this Idempotency-Key already started (also once the agent is deleted)"),
  201: json(Run, "Queued"),
  409: json(ErrorResponse, "The agent is deleted (agent_archived)"),
  422: json(ErrorResponse, "The Idempotency-Key was used for another request (idempotency_key_reused)"),
};
const IdempotencyHeader = z.object({
  "idempotency-key": z.string().optional().meta({ description: "1 to 255 printable ASCII characters, no spaces" }),
});
/** An agent's files travel inside its JSON body; allow for their JSON escaping. */
const AGENT_BODY_LIMIT = MAX_FILES_BYTES * 2 + 1024 * 1024;
const MAX_SSE_BUFFER = 1000;
const TERMINAL_EVENTS = new Set(TERMINAL_STATUSES.map((s) => `run.${s}`));

export function createApi(deps: ApiDeps): OpenAPIHono<ApiEnv> {
  const app = new OpenAPIHono<ApiEnv>({ defaultHook: validationHook });
  const route = routeDefiner(app, deps.identity, {
    metrics: deps.metrics,
    metricsToken: deps.metricsToken,
    uiSessions: deps.uiSessions,
  });

  const page = <T>(rows: T[], limit: number, cursor: (row: T) => string) => ({
    data: rows,
    next_cursor: rows.length === limit && rows.length > 0 ? cursor(rows[rows.length - 1] as T) : null,
  });
  /** The answer of a route that starts a run: 201 for a new one, 200 for the one its Idempotency-Key started. */
  const answerStarted = (c: Context<ApiEnv>, { run, created }: { run: RunsTable; created: boolean }) => {
    if (created) deps.engine.notify();
    else c.header("idempotent-replayed", "true");
    return c.json(toRun(run), created ? 201 : 200);
  };
  const findRun = async (c: Context<ApiEnv>, id: string) => {
    const run = await deps.runs.get(tenantOf(c), id);
    if (!run) throw new AppError("not_found", `No run '${id}'.`);
    return run;
  };

  route(
    {
      method: "get",
      path: "/v1/health",
      summary: "Liveness",
      auth: "none",
      responses: {
        200: json(
          z.object({
            ok: z.literal(true),
            version: z.string(),
            node: z.string(),
            /** The node claims no new runs (see POST /v1/nodes/{id}/drain); known within a second of the drain. */
            draining: z.boolean(),
            /**
             * Whether the node reached its database at its last try (heartbeat or claim). While it
             * cannot, the node claims nothing and routes that need the store answer 503 database_unavailable.
             */
            database: z.enum(["ok", "unavailable"]),
          }),
          "The host is up (it answers even while its database cannot be reached)",
        ),
      },
    },
    (c) =>
      c.json(
        {
          ok: true as const,
          version: deps.version,
          node: deps.nodeId,
          draining: deps.engine.draining,
          database: deps.engine.databaseReachable ? ("ok" as const) : ("unavailable" as const),
        },
        200,
      ),
  );
  registerNodeRoutes(route, deps.nodes);

  // Tenants and keys (admin key only).
  route(
    {
      method: "post",
      path: "/v1/tenants",
      summary: "Create a tenant",
      auth: "admin",
      request: { body: jsonBody(TenantCreate) },
      responses: { 201: json(Tenant, "Created") },
    },
    async (c) => c.json(toTenant(await deps.identity.createTenant(c.req.valid("json").name)), 201),
  );
  route(
    {
      method: "get",
      path: "/v1/tenants",
      summary: "List tenants",
      auth: "admin",
      responses: { 200: json(Page(Tenant), "Tenants") },
    },
    async (c) => c.json({ data: (await deps.identity.listTenants()).map(toTenant), next_cursor: null }, 200),
  );
  route(
    {
      method: "post",
      path: "/v1/tenants/{id}/keys",
      summary: "Create an API key for a tenant (the key is shown once)",
      auth: "admin",
      request: {
        params: z.object({ id: TenantRef }),
        body: jsonBody(ApiKeyCreate),
      },
      responses: { 201: json(ApiKey, "Created") },
    },
    async (c) => {
      const tenant = await deps.identity.findTenant(c.req.valid("param").id);
      return c.json(await deps.identity.createTenantKey(tenant.id, c.req.valid("json").name ?? null), 201);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/tenants/{id}/keys",
      summary: "List a tenant's API keys, revoked ones included (never their secrets)",
      auth: "admin",
      request: { params: z.object({ id: TenantRef }) },
      responses: { 200: json(Page(ApiKey), "Keys") },
    },
    async (c) => {
      const tenant = await deps.identity.findTenant(c.req.valid("param").id);
      return c.json({ data: await deps.identity.listKeys(tenant.id), next_cursor: null }, 200);
    },
  );
  route(
    {
      method: "delete",
      path: "/v1/tenants/{id}/keys/{key_id}",
      summary:
        "Revoke a tenant's API key: it authenticates nothing from now on and the dashboard sessions it signed in end (not the admin key)",
      auth: "admin",
      request: { params: z.object({ id: TenantRef, key_id: pathParam(Id, "key") }) },
      responses: { 200: json(ApiKey, "Revoked") },
    },
    async (c) => {
      const { id, key_id } = c.req.valid("param");
      const tenant = await deps.identity.findTenant(id);
      return c.json(await deps.identity.revokeKey(tenant.id, key_id), 200);
    },
  );
  registerUiSessionRoutes(route, { uiSessions: deps.uiSessions, identity: deps.identity });

  // Agents.
  route(
    {
      method: "post",
      path: "/v1/agents",
      summary: "Create an agent",
      auth: "tenant",
      request: { body: jsonBody(AgentCreate) },
      bodyLimit: AGENT_BODY_LIMIT,
      responses: { 201: json(Agent, "Created") },
    },
    async (c) => c.json(toAgent(await deps.agents.create(tenantOf(c), c.req.valid("json"))), 201),
  );
  route(
    {
      method: "get",
      path: "/v1/agents",
      summary: "List agents (live ones; with archived=true, deleted ones too)",
      auth: "tenant",
      request: { query: AgentsQuery },
      responses: { 200: json(Page(Agent), "Agents") },
    },
    async (c) => {
      const q = c.req.valid("query");
      const rows = await deps.agents.list(tenantOf(c), {
        limit: q.limit,
        archived: q.archived === "true",
        ...(q.name ? { name: q.name } : {}),
        ...(q.cursor ? { cursor: q.cursor } : {}),
      });
      return c.json(
        page(rows.map(toAgent), q.limit, (a) => a.id),
        200,
      );
    },
  );
  route(
    {
      method: "get",
      path: "/v1/agents/{id}",
      summary: "Get an agent, with the MCP tools its current version is pinned to (mcp_pins)",
      auth: "tenant",
      request: { params: AgentId },
      responses: { 200: json(Agent, "The agent") },
    },
    async (c) => {
      const agent = toAgent(await deps.agents.get(tenantOf(c), c.req.valid("param").id));
      // Only an agent whose policy names MCP servers has pins: other agents' answers are as before.
      if (!agent.policy.mcp?.length) return c.json(agent, 200);
      return c.json({ ...agent, mcp_pins: await deps.agents.pins(agent) }, 200);
    },
  );
  // Agent versions and deletion: the agents service does the work.
  route(
    {
      method: "patch",
      path: "/v1/agents/{id}",
      summary:
        "Update an agent with a JSON merge patch (RFC 7396) of its definition: the fields given replace its own, objects (limits, budget, policy, retry, env) merge key by key, null removes a key or clears a field, arrays replace; it becomes its next version, and files (which replace all its files) or an image make a new environment version. The result is checked as a create is; an invalid update changes nothing",
      auth: "tenant",
      request: { params: AgentId, body: jsonBody(AgentUpdate) },
      bodyLimit: AGENT_BODY_LIMIT,
      responses: {
        200: json(Agent, "The agent at its new version (as it was when nothing changed)"),
        409: json(ErrorResponse, "The agent is deleted (agent_archived) or changed meanwhile (conflict)"),
      },
    },
    async (c) =>
      c.json(toAgent(await deps.agents.update(tenantOf(c), c.req.valid("param").id, c.req.valid("json"))), 200),
  );
  route(
    {
      method: "put",
      path: "/v1/agents/{id}",
      summary:
        "Replace an agent's whole definition (a create's body; the name, if given, must be its own): what it leaves out takes its default, as in a create. It becomes the agent's next version; an invalid definition changes nothing",
      auth: "tenant",
      request: { params: AgentId, body: jsonBody(AgentReplace) },
      bodyLimit: AGENT_BODY_LIMIT,
      responses: {
        200: json(Agent, "The agent at its new version (as it was when nothing changed)"),
        409: json(ErrorResponse, "The agent is deleted (agent_archived) or changed meanwhile (conflict)"),
      },
    },
    async (c) =>
      c.json(toAgent(await deps.agents.replace(tenantOf(c), c.req.valid("param").id, c.req.valid("json"))), 200),
  );
  route(
    {
      method: "delete",
      path: "/v1/agents/{id}",
      summary:
        "Delete (archive) an agent: it starts no new runs, its schedules pause, its webhooks refuse deliveries and its name is free; runs going finish; it and its runs stay readable",
      auth: "tenant",
      request: { params: AgentId },
      responses: { 200: json(Agent, "The archived agent") },
    },
    async (c) => c.json(toAgent(await deps.agents.archive(tenantOf(c), c.req.valid("param").id)), 200),
  );

  route(
    {
      method: "get",
      path: "/v1/agents/{id}/versions",
      summary: "Every version of an agent's definition, newest first (a run records the version it was triggered with)",
      auth: "tenant",
      request: { params: AgentId },
      responses: { 200: json(Page(AgentVersion), "Versions") },
    },
    async (c) =>
      c.json({ data: await deps.agents.versions(tenantOf(c), c.req.valid("param").id), next_cursor: null }, 200),
  );

  // Environment versions.
  route(
    {
      method: "get",
      path: "/v1/agents/{id}/snapshots",
      summary: "An agent's environment versions, newest first",
      auth: "tenant",
      request: { params: AgentId },
      responses: { 200: json(Page(Snapshot), "Snapshots") },
    },
    async (c) =>
      c.json({ data: await deps.agents.history(tenantOf(c), c.req.valid("param").id), next_cursor: null }, 200),
  );
  const Rollback = z
    .object({ version: z.number().int().min(1) })
    .strict()
    .meta({ id: "Rollback" });
  route(
    {
      method: "post",
      path: "/v1/agents/{id}/rollback",
      summary: "Make an earlier environment version current again (as a new version)",
      auth: "tenant",
      request: { params: AgentId, body: jsonBody(Rollback) },
      responses: {
        201: json(Snapshot, "The new current version"),
        409: json(ErrorResponse, "The agent is deleted (agent_archived) or changed meanwhile (conflict)"),
      },
    },
    async (c) =>
      c.json(await deps.agents.rollback(tenantOf(c), c.req.valid("param").id, c.req.valid("json").version), 201),
  );
  route(
    {
      method: "get",
      path: "/v1/runners",
      summary: "Runner versions (admin)",
      auth: "admin",
      responses: { 200: json(Page(Runner), "Runners") },
    },
    async (c) => c.json({ data: await deps.runners.list(), next_cursor: null }, 200),
  );
  registerRunnerRoutes(route, deps.runners);
  registerSnapshotArchiveRoutes(route, { archives: deps.archives, agents: deps.agents });
  registerSessionRoutes(app, route, { sessions: deps.sessions, identity: deps.identity, nodeId: deps.nodeId });
  registerSecretRoutes(route, deps.secrets);
  registerScheduleRoutes(route, { scheduler: deps.scheduler, agents: deps.agents });
  registerWebhookRoutes(route, { webhooks: deps.webhooks, agents: deps.agents });
  registerNotificationRoutes(route, { notifications: deps.notifications, identity: deps.identity });
  registerGatewayRoutes(route, {
    providers: deps.providers,
    ledger: deps.ledger,
    identity: deps.identity,
    agents: deps.agents,
    findRun,
  });
  registerConnectionRoutes(route, deps.connections);
  registerMcpRoutes(route, deps.mcp);
  registerOAuthAppRoutes(route, deps.oauthApps);
  registerAccountRoutes(route, deps.accounts);
  registerOAuthPages(app, deps.accounts);
  registerApprovalRoutes(app, route, deps.approvals);
  registerMetricsRoutes(route, deps.metrics);
  registerActivityRoutes(route, { calls: deps.calls, stats: deps.stats });

  // Runs.
  route(
    {
      method: "post",
      path: "/v1/agents/{id}/runs",
      summary:
        "Trigger a run. With an Idempotency-Key header, the same key answers with the same run for 24 hours (200, Idempotent-Replayed: true)",
      auth: "tenant",
      request: {
        params: AgentId,
        headers: IdempotencyHeader.extend({
          traceparent: z.string().optional().meta({
            description:
              "A W3C Trace Context traceparent: the run's spans continue that trace, under that span (a malformed one is ignored)",
          }),
        }),
        body: jsonBody(RunCreate),
      },
      responses: RUN_STARTED,
    },
    async (c) => {
      const agent = await deps.agents.get(tenantOf(c), c.req.valid("param").id);
      const body = c.req.valid("json");
      const { "idempotency-key": key, traceparent } = c.req.valid("header");
      const dedupe =
        key === undefined
          ? undefined
          : idempotencyKey(
              agent.row.tenant_id,
              key,
              `${agent.row.id}\n${JSON.stringify(body.input ?? null)}${body.end_user === undefined ? "" : `\n${body.end_user}`}`,
            );
      // The Idempotency-Key's run answers even once the agent is archived; a new run is refused then.
      const spec = frozenSpec(agent);
      const parent = parseTraceparent(traceparent);
      const started = await deps.runs.create(agent.row.tenant_id, agent.row.id, spec, body.input, {
        trigger: "api",
        endUser: body.end_user ?? null,
        ...(dedupe ? { dedupe } : {}),
        ...(parent ? { traceParent: formatTraceparent(parent) } : {}),
      });
      return answerStarted(c, started);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/runs",
      summary:
        "List runs, newest first: by agent, status, trigger, parent or root run, creation time (created_after inclusive, created_before exclusive) and id prefix",
      auth: "tenant",
      request: { query: RunsQuery },
      responses: { 200: json(Page(Run), "Runs") },
    },
    async (c) => {
      const q = c.req.valid("query");
      const filter: RunFilter = { limit: q.limit };
      if (q.cursor) filter.cursor = q.cursor;
      if (q.agent_id) filter.agentId = q.agent_id;
      if (q.status) filter.status = q.status;
      if (q.trigger) filter.trigger = q.trigger;
      if (q.parent_run_id) filter.parentRunId = q.parent_run_id;
      if (q.root_run_id) filter.rootRunId = q.root_run_id;
      if (q.created_after) filter.createdAfter = Date.parse(q.created_after);
      if (q.created_before) filter.createdBefore = Date.parse(q.created_before);
      if (q.id_prefix) filter.idPrefix = q.id_prefix;
      const rows = await deps.runs.list(tenantOf(c), filter);
      return c.json(
        page(rows.map(toRun), q.limit, (r) => r.id),
        200,
      );
    },
  );
  route(
    {
      method: "get",
      path: "/v1/runs/{id}",
      summary: "Get a run",
      auth: "tenant",
      request: { params: RunId },
      responses: { 200: json(Run, "The run") },
    },
    async (c) => c.json(toRun(await findRun(c, c.req.valid("param").id)), 200),
  );
  route(
    {
      method: "post",
      path: "/v1/runs/{id}/cancel",
      summary: "Cancel a queued or running run, and the child runs it started that are still going",
      auth: "tenant",
      // No options yet: an empty body, or {}.
      request: { params: RunId, body: jsonBody(z.object({}).strict().meta({ id: "RunCancel" })) },
      responses: {
        200: json(Run, "Canceled"),
        202: json(Run, "Cancel requested"),
        409: json(ErrorResponse, "Already finished"),
      },
    },
    async (c) => {
      const { run, wasQueued } = await deps.engine.cancel(tenantOf(c), c.req.valid("param").id);
      return c.json(toRun(run), wasQueued ? 200 : 202);
    },
  );

  route(
    {
      method: "post",
      path: "/v1/runs/{id}/replay",
      summary:
        "Replay a run: a new run (trigger replay, replay_of naming this one) of the same agent version and environment, with the same input or the input given. With an Idempotency-Key header, the same key answers with the same run for 24 hours (200, Idempotent-Replayed: true)",
      auth: "tenant",
      request: {
        params: RunId,
        headers: IdempotencyHeader,
        body: jsonBody(RunReplay),
      },
      responses: RUN_STARTED,
    },
    async (c) => {
      const key = c.req.valid("header")["idempotency-key"];
      return answerStarted(c, await deps.runs.replay(tenantOf(c), c.req.valid("param").id, c.req.valid("json"), key));
    },
  );

  // Events: a JSON page, or live server-sent events resumable with Last-Event-ID.
  route(
    {
      method: "get",
      path: "/v1/runs/{id}/events",
      summary: "A run's events (JSON, or text/event-stream to follow live); with types=a,b only events of those types",
      auth: "tenant",
      request: { params: RunId, query: RunEventsQuery },
      responses: {
        200: {
          description: "Events",
          content: {
            "application/json": { schema: Page(RunEvent) },
            "text/event-stream": { schema: z.string().meta({ description: "One SSE message per event" }) },
          },
        },
      },
    },
    async (c) => {
      const run = await findRun(c, c.req.valid("param").id);
      const q = c.req.valid("query");
      const types = q.types === undefined ? undefined : eventTypesOf(q.types);
      const wanted = types === undefined ? () => true : (e: RunEvent) => types.includes(e.type);
      if (!(c.req.header("accept") ?? "").includes("text/event-stream")) {
        const events = await deps.events.list(run.id, q.after, q.limit, types);
        const last = events[events.length - 1];
        return c.json({ data: events, next_cursor: events.length === q.limit && last ? String(last.seq) : null }, 200);
      }
      const resume = Number(c.req.header("last-event-id") ?? Number.NaN);
      let after = Number.isInteger(resume) && resume >= 0 ? resume : q.after;
      return streamSSE(c, async (stream) => {
        // Live events buffer while the client reads; a slow client's buffer is bounded: on
        // overflow it is dropped and the stream catches up from the store instead. Events another
        // host wrote are caught up from the store the same way when the log says it may hold some.
        const live: RunEvent[] = [];
        let overflowed = false;
        let wake: (() => void) | null = null;
        const unsubscribe = deps.events.subscribe(
          run.id,
          (e) => {
            if (live.length >= MAX_SSE_BUFFER) {
              overflowed = true;
              live.length = 0;
            } else if (!overflowed) live.push(e);
            wake?.();
          },
          () => {
            overflowed = true;
            live.length = 0;
            wake?.();
          },
        );
        let closed = false;
        stream.onAbort(() => {
          closed = true;
          wake?.();
        });
        const keepalive = setInterval(() => void stream.write(": keepalive\n\n"), 15_000);
        const left = deps.metrics.sseOpened();
        try {
          let done = false;
          // Events of other types than asked for are passed over, the run's end included.
          const send = async (e: RunEvent) => {
            if (e.seq <= after) return;
            after = e.seq;
            if (wanted(e)) await stream.writeSSE({ id: String(e.seq), event: e.type, data: JSON.stringify(e) });
            if (TERMINAL_EVENTS.has(e.type)) done = true;
          };
          // History first (the subscription already buffers anything newer), then live events.
          for (;;) {
            const batch = await deps.events.list(run.id, after, 500, types);
            for (const e of batch) await send(e);
            if (batch.length < 500) break;
          }
          const current = await deps.runs.getById(run.id);
          if (current && (TERMINAL_STATUSES as readonly string[]).includes(current.status)) {
            for (const e of await deps.events.list(run.id, after, 1000, types)) await send(e);
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
                const batch = await deps.events.list(run.id, after, 500, types);
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
          left();
        }
      });
    },
  );

  // Artifacts.
  route(
    {
      method: "get",
      path: "/v1/runs/{id}/artifacts",
      summary: "List a run's artifacts",
      auth: "tenant",
      request: { params: RunId },
      responses: { 200: json(Page(Artifact), "Artifacts") },
    },
    async (c) => {
      const run = await findRun(c, c.req.valid("param").id);
      return c.json({ data: await deps.artifacts.list(run.id), next_cursor: null }, 200);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/runs/{id}/artifacts/{artifact_id}/content",
      summary: "Download an artifact",
      auth: "tenant",
      request: { params: z.object({ id: pathParam(Id, "run"), artifact_id: pathParam(Id, "artifact") }) },
      responses: { 200: { description: "The file, as its content type" } },
    },
    async (c) => {
      const { id, artifact_id } = c.req.valid("param");
      const run = await findRun(c, id);
      const artifact = await deps.artifacts.get(run.id, artifact_id);
      const name = artifact.path.split("/").pop() ?? "artifact";
      // A web stream of its own (as the snapshot export gives): a Node stream handed to undici to
      // iterate once threw "ReadableStream is already closed" outside any handler, ending the host.
      return new Response(Readable.toWeb(await deps.artifacts.open(artifact)) as unknown as ReadableStream, {
        headers: {
          "content-type": artifact.content_type,
          "content-length": String(artifact.size),
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
  app.openAPIRegistry.registerComponent("securitySchemes", "bearer", {
    type: "http",
    scheme: "bearer",
    description: "Any API key: a tenant's, or the admin key (which is its own tenant's too)",
  });
  app.openAPIRegistry.registerComponent("securitySchemes", "admin", {
    type: "http",
    scheme: "bearer",
    description: "The admin API key",
  });
  app.openAPIRegistry.registerComponent("securitySchemes", "metrics", {
    type: "http",
    scheme: "bearer",
    description: "The metrics token (serve --metrics-token-file), for GET /metrics only",
  });

  if (deps.uiDir) registerUi(app, deps.uiDir);

  app.notFound((c) =>
    errorResponse(
      c,
      new AppError("route_not_found", `No endpoint ${c.req.method} ${new URL(c.req.url).pathname}.`),
      deps.log,
    ),
  );
  app.onError((err, c) => errorResponse(c, err, deps.log));
  return app;
}
