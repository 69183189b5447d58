/**
 * A small typed client for the host's HTTP API (/v1). Every response body is parsed with the
 * protocol's schemas, so a host that answers something else fails loudly here, not later.
 */
import {
  Agent,
  type AgentCreate,
  ApiKey,
  Approval,
  type ApprovalDecide,
  Artifact,
  Balance,
  Credits_,
  type CreditsView,
  EgressEntry,
  type EnvExec,
  EnvExecResult,
  type EnvFreeze,
  EnvSession,
  type EnvSessionCreate,
  ErrorResponse,
  FreezeResult,
  Model,
  NodeInfo,
  type NotificationCreateInput,
  NotificationDelivery,
  NotificationSubscription,
  Page,
  Provider,
  type ProviderPutInput,
  Run,
  RunCredits,
  RunEventRead,
  Runner,
  type RunReplay,
  type RunStatus,
  Schedule,
  type ScheduleCreateInput,
  Secret,
  Snapshot,
  TERMINAL_STATUSES,
  Tenant,
  Webhook,
  type WebhookCreate,
} from "@paddock/protocol";
import { z } from "zod";
import { readSse } from "./sse.ts";

/** An error the host answered with: `{error: {code, message, details?}}`. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: unknown;

  constructor(status: number, code: string, message: string, details?: unknown) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** The host could not be reached, or answered something that is not the API. */
export class ConnectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConnectionError";
  }
}

type Query = Record<string, string | number | undefined>;

interface RequestOptions {
  query?: Query;
  body?: unknown;
  /** A multipart/form-data body (fetch sets its content type). */
  form?: FormData;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** The path is the host's own (such as /metrics), not under /v1. */
  unversioned?: boolean;
}

export interface ClientOptions {
  /** Base URL of the host, for example http://127.0.0.1:7420 (without /v1). */
  url: string;
  apiKey: string | null;
}

const RunCreated = Run.pick({ id: true, status: true });

export const TERMINAL_EVENT_TYPES: ReadonlySet<string> = new Set(TERMINAL_STATUSES.map((s) => `run.${s}`));

/** Consecutive failed reconnects after which following a run gives up (about a minute). */
const MAX_STREAM_RETRIES = 15;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class Client {
  readonly baseUrl: string;
  readonly #apiKey: string | null;

  constructor(options: ClientOptions) {
    this.baseUrl = options.url.replace(/\/+$/, "");
    this.#apiKey = options.apiKey;
  }

  /** The full URL of an API path such as `/agents`. */
  url(path: string, query?: Query): string {
    const url = new URL(`${this.baseUrl}/v1${path}`);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }
    return url.toString();
  }

  /** Sends one request; throws ApiError for any non-2xx answer, ConnectionError if unreachable. */
  async request(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const headers: Record<string, string> = { accept: "application/json", ...options.headers };
    if (this.#apiKey) headers.authorization = `Bearer ${this.#apiKey}`;
    let body: string | FormData | undefined = options.form;
    if (options.body !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    const url = options.unversioned ? `${this.baseUrl}${path}` : this.url(path, options.query);
    let res: Response;
    try {
      res = await fetch(url, { method, headers, body, signal: options.signal ?? null, redirect: "error" });
    } catch (err) {
      if (options.signal?.aborted) throw err;
      throw new ConnectionError(`cannot reach the host at ${this.baseUrl}: ${describeFetchError(err)}`);
    }
    if (!res.ok) throw await errorFrom(res);
    return res;
  }

  async #json<S extends z.ZodType>(
    schema: S,
    method: string,
    path: string,
    options?: RequestOptions,
  ): Promise<z.output<S>> {
    const res = await this.request(method, path, options);
    let value: unknown;
    try {
      value = await res.json();
    } catch {
      throw new ConnectionError(`${method} ${path}: the host answered ${res.status} with a body that is not JSON`);
    }
    const parsed = schema.safeParse(value);
    if (!parsed.success) {
      throw new ConnectionError(`${method} ${path}: unexpected response shape: ${parsed.error.message}`);
    }
    return parsed.data;
  }

  /** Walks every page of a list endpoint (`{data, next_cursor}`), up to `limit` items. */
  async #list<S extends z.ZodType>(
    item: S,
    path: string,
    query: Query = {},
    limit = Number.POSITIVE_INFINITY,
  ): Promise<z.output<S>[]> {
    const schema = Page(item);
    const out: z.output<S>[] = [];
    const seen = new Set<string>();
    let cursor: string | undefined;
    do {
      const page = await this.#json(schema, "GET", path, { query: { ...query, cursor } });
      out.push(...page.data);
      cursor = page.next_cursor ?? undefined;
      if (cursor !== undefined && seen.has(cursor)) {
        throw new ConnectionError(`GET ${path}: the host repeated the page cursor '${cursor}'`);
      }
      if (cursor !== undefined) seen.add(cursor);
    } while (cursor && out.length < limit);
    return out.slice(0, limit);
  }

  async health(): Promise<unknown> {
    const res = await this.request("GET", "/health");
    return res.json().catch(() => null);
  }

  /** The answering node's metrics in the Prometheus text format (the admin key or the metrics token). */
  async metrics(): Promise<string> {
    const res = await this.request("GET", "/metrics", { unversioned: true, headers: { accept: "text/plain" } });
    return res.text();
  }

  listNodes(): Promise<NodeInfo[]> {
    return this.#list(NodeInfo, "/nodes");
  }

  drainNode(id: string): Promise<NodeInfo> {
    return this.#json(NodeInfo, "POST", `/nodes/${enc(id)}/drain`);
  }

  listTenants(): Promise<Tenant[]> {
    return this.#list(Tenant, "/tenants");
  }

  createTenant(name: string): Promise<Tenant> {
    return this.#json(Tenant, "POST", "/tenants", { body: { name } });
  }

  createKey(tenantId: string, name?: string): Promise<ApiKey> {
    return this.#json(ApiKey, "POST", `/tenants/${enc(tenantId)}/keys`, { body: name ? { name } : {} });
  }

  createAgent(body: AgentCreate | Record<string, unknown>): Promise<Agent> {
    return this.#json(Agent, "POST", "/agents", { body });
  }

  /** The tenant's agents; deleted (archived) ones too with `archived`. */
  listAgents(query: { name?: string; archived?: boolean } = {}): Promise<Agent[]> {
    const { archived, ...rest } = query;
    return this.#list(Agent, "/agents", { ...rest, ...(archived ? { archived: "true" } : {}) });
  }

  /** Saves the agent's next version from the fields given (an AgentUpdate body). */
  /** A merge patch of the agent's definition (the fields given change, the rest stays). */
  updateAgent(id: string, body: Record<string, unknown>): Promise<Agent> {
    return this.#json(Agent, "PATCH", `/agents/${enc(id)}`, { body });
  }

  /** The agent's whole new definition (what it leaves out takes its default). */
  replaceAgent(id: string, body: Record<string, unknown>): Promise<Agent> {
    return this.#json(Agent, "PUT", `/agents/${enc(id)}`, { body });
  }

  /** Deletes (archives) the agent: no new runs; it and its runs stay readable. */
  deleteAgent(id: string): Promise<Agent> {
    return this.#json(Agent, "DELETE", `/agents/${enc(id)}`);
  }

  getAgent(id: string): Promise<Agent> {
    return this.#json(Agent, "GET", `/agents/${enc(id)}`);
  }

  /**
   * Finds an agent by name (the live one, else the one deleted last), else by id; throws the
   * host's not_found if neither matches.
   */
  async resolveAgent(ref: string): Promise<Agent> {
    if (/^[a-z0-9][a-z0-9_-]*$/.test(ref)) {
      const named = (await this.listAgents({ name: ref, archived: true })).filter((a) => a.name === ref);
      // The live one ("~" sorts after any time), else the one deleted last.
      const latest = [...named].sort((a, b) => (b.archived_at ?? "~").localeCompare(a.archived_at ?? "~"));
      const byName = latest[0];
      if (byName) return byName;
    }
    try {
      return await this.getAgent(ref);
    } catch (err) {
      if (err instanceof ApiError && err.code === "not_found") {
        throw new ApiError(err.status, err.code, `no agent with the name or id '${ref}'`);
      }
      throw err;
    }
  }

  listSnapshots(agentId: string): Promise<Snapshot[]> {
    return this.#list(Snapshot, `/agents/${enc(agentId)}/snapshots`);
  }

  rollback(agentId: string, version: number): Promise<Snapshot> {
    return this.#json(Snapshot, "POST", `/agents/${enc(agentId)}/rollback`, { body: { version } });
  }

  /** Sets a secret's value (in the body, never the URL); `created` tells a new secret from a new version. */
  async setSecret(name: string, value: string): Promise<{ secret: Secret; created: boolean }> {
    const path = `/secrets/${enc(name)}`;
    const res = await this.request("PUT", path, { body: { value } });
    const parsed = Secret.safeParse(await res.json().catch(() => null));
    if (!parsed.success) throw new ConnectionError(`PUT ${path}: unexpected response shape: ${parsed.error.message}`);
    return { secret: parsed.data, created: res.status === 201 };
  }

  listSecrets(): Promise<Secret[]> {
    return this.#list(Secret, "/secrets");
  }

  async deleteSecret(name: string): Promise<void> {
    await this.request("DELETE", `/secrets/${enc(name)}`);
  }

  /** Creates or replaces a model provider (admin key); `created` tells which. */
  async putProvider(name: string, body: ProviderPutInput): Promise<{ provider: Provider; created: boolean }> {
    const path = `/providers/${enc(name)}`;
    const res = await this.request("PUT", path, { body });
    const parsed = Provider.safeParse(await res.json().catch(() => null));
    if (!parsed.success) throw new ConnectionError(`PUT ${path}: unexpected response shape: ${parsed.error.message}`);
    return { provider: parsed.data, created: res.status === 201 };
  }

  listProviders(): Promise<Provider[]> {
    return this.#list(Provider, "/providers");
  }

  deleteProvider(name: string): Promise<Provider> {
    return this.#json(Provider, "DELETE", `/providers/${enc(name)}`);
  }

  listModels(): Promise<Model[]> {
    return this.#list(Model, "/models");
  }

  grantCredits(tenant: string, credits: number, note?: string): Promise<Balance> {
    return this.#json(Balance, "POST", "/credits/grants", { body: { tenant, credits, ...(note ? { note } : {}) } });
  }

  credits(): Promise<CreditsView> {
    return this.#json(Credits_, "GET", "/credits");
  }

  runCredits(runId: string): Promise<RunCredits> {
    return this.#json(RunCredits, "GET", `/runs/${enc(runId)}/credits`);
  }

  createSchedule(body: ScheduleCreateInput): Promise<Schedule> {
    return this.#json(Schedule, "POST", "/schedules", { body });
  }

  listSchedules(): Promise<Schedule[]> {
    return this.#list(Schedule, "/schedules");
  }

  setSchedulePaused(id: string, paused: boolean): Promise<Schedule> {
    return this.#json(Schedule, "POST", `/schedules/${enc(id)}/${paused ? "pause" : "resume"}`);
  }

  deleteSchedule(id: string): Promise<Schedule> {
    return this.#json(Schedule, "DELETE", `/schedules/${enc(id)}`);
  }

  createWebhook(agent: string, body: WebhookCreate = {}): Promise<Webhook> {
    return this.#json(Webhook, "POST", `/agents/${enc(agent)}/webhooks`, { body });
  }

  listWebhooks(agent: string): Promise<Webhook[]> {
    return this.#list(Webhook, `/agents/${enc(agent)}/webhooks`);
  }

  deleteWebhook(id: string): Promise<Webhook> {
    return this.#json(Webhook, "DELETE", `/webhooks/${enc(id)}`);
  }

  /** Subscribes an endpoint; the answer holds its signing secret, shown this once. */
  createNotification(body: NotificationCreateInput): Promise<NotificationSubscription> {
    return this.#json(NotificationSubscription, "POST", "/notifications", { body });
  }

  listNotifications(): Promise<NotificationSubscription[]> {
    return this.#list(NotificationSubscription, "/notifications");
  }

  deleteNotification(id: string): Promise<NotificationSubscription> {
    return this.#json(NotificationSubscription, "DELETE", `/notifications/${enc(id)}`);
  }

  /** A new signing secret (shown this once); the old one also signs for `overlapS` seconds. */
  rotateNotification(id: string, overlapS?: number): Promise<NotificationSubscription> {
    const body = overlapS === undefined ? {} : { overlap_s: overlapS };
    return this.#json(NotificationSubscription, "POST", `/notifications/${enc(id)}/rotate`, { body });
  }

  /** A subscription's deliveries, newest first, each with its attempts. */
  listNotificationDeliveries(id: string, limit: number): Promise<NotificationDelivery[]> {
    return this.#list(NotificationDelivery, `/notifications/${enc(id)}/deliveries`, {}, limit);
  }

  resendNotificationDelivery(id: string, deliveryId: string): Promise<NotificationDelivery> {
    return this.#json(NotificationDelivery, "POST", `/notifications/${enc(id)}/deliveries/${enc(deliveryId)}/resend`, {
      body: {},
    });
  }

  /** Approvals the key may see, newest first (`status`: pending, approved, denied, expired, canceled). */
  listApprovals(
    query: { status?: string | undefined; run_id?: string | undefined } = {},
    limit = 50,
  ): Promise<Approval[]> {
    return this.#list(Approval, "/approvals", { ...query, limit: Math.min(limit, 200) }, limit);
  }

  getApproval(id: string): Promise<Approval> {
    return this.#json(Approval, "GET", `/approvals/${enc(id)}`);
  }

  /** Approves (the held call is sent once) or denies (the agent is shown the note) a pending approval. */
  decideApproval(id: string, body: ApprovalDecide): Promise<Approval> {
    return this.#json(Approval, "POST", `/approvals/${enc(id)}`, { body });
  }

  listRunners(): Promise<z.output<typeof Runner>[]> {
    return this.#list(Runner, "/runners");
  }

  /** Publishes a runner (admin key); `node` defaults to the host's own Node binary. */
  publishRunner(files: { bundle: Blob; node?: Blob }): Promise<z.output<typeof Runner>> {
    const form = new FormData();
    form.append("bundle", files.bundle, "runner.mjs");
    if (files.node) form.append("node", files.node, "node");
    return this.#json(Runner, "POST", "/runners", { form });
  }

  /** Starts a run of the agent, for `endUser` when given (its OAuth connections attach that user's accounts). */
  createRun(agentId: string, input: unknown, endUser?: string): Promise<{ id: string; status: RunStatus }> {
    const body = { ...(input === undefined ? {} : { input }), ...(endUser === undefined ? {} : { end_user: endUser }) };
    return this.#json(RunCreated, "POST", `/agents/${enc(agentId)}/runs`, { body });
  }

  getRun(id: string): Promise<Run> {
    return this.#json(Run, "GET", `/runs/${enc(id)}`);
  }

  /** The runs the filters select (each a RunsQuery field; undefined ones are left out), newest first. */
  listRuns(query: Query = {}, limit = 50): Promise<Run[]> {
    return this.#list(Run, "/runs", { ...query, limit: Math.min(limit, 200) }, limit);
  }

  /** A new run of the run's agent version, with its input, or with `body.input` when given. */
  replayRun(id: string, body: RunReplay, options: { idempotencyKey?: string } = {}): Promise<Run> {
    return this.#json(Run, "POST", `/runs/${enc(id)}/replay`, {
      body,
      ...(options.idempotencyKey ? { headers: { "idempotency-key": options.idempotencyKey } } : {}),
    });
  }

  cancelRun(id: string): Promise<{ id: string; status: RunStatus }> {
    return this.#json(RunCreated, "POST", `/runs/${enc(id)}/cancel`);
  }

  /** Every event of a run after seq `after`, in order (pages are walked by seq). */
  async listEvents(runId: string, after = 0): Promise<RunEventRead[]> {
    const schema = Page(RunEventRead);
    const out: RunEventRead[] = [];
    let last = after;
    for (;;) {
      const page = await this.#json(schema, "GET", `/runs/${enc(runId)}/events`, { query: { after: last } });
      const fresh = page.data.filter((e) => e.seq > last);
      out.push(...fresh);
      last = fresh.at(-1)?.seq ?? last;
      if (page.next_cursor === null || fresh.length === 0) return out;
    }
  }

  listArtifacts(runId: string): Promise<Artifact[]> {
    return this.#list(Artifact, `/runs/${enc(runId)}/artifacts`);
  }

  /** The raw content response of one artifact (stream its body). */
  downloadArtifact(runId: string, artifactId: string): Promise<Response> {
    return this.request("GET", `/runs/${enc(runId)}/artifacts/${enc(artifactId)}/content`, {
      headers: { accept: "*/*" },
    });
  }

  /**
   * Streams a run's events live over SSE, starting after `after`, until the run's terminal event.
   * A dropped stream is resumed with Last-Event-ID; every event is yielded once, in seq order.
   */
  async *followEvents(runId: string, options: { after?: number; signal?: AbortSignal } = {}) {
    let last = options.after ?? 0;
    let failures = 0;
    for (;;) {
      try {
        const headers: Record<string, string> = { accept: "text/event-stream" };
        if (last > 0) headers["last-event-id"] = String(last);
        const res = await this.request("GET", `/runs/${enc(runId)}/events`, { headers, signal: options.signal });
        if (!res.body || !(res.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
          await res.body?.cancel();
          throw new ConnectionError(`GET /runs/${runId}/events did not answer with an event stream`);
        }
        for await (const message of readSse(res.body)) {
          failures = 0;
          if (!message.data) continue;
          const event = parseEvent(message.data);
          if (!event || event.seq <= last) continue;
          last = event.seq;
          yield event;
          if (TERMINAL_EVENT_TYPES.has(event.type)) return;
        }
        // The stream closed before the run's end: if the run has finished meanwhile, take what
        // is left from the event list; otherwise reconnect where it left off.
        const run = await this.getRun(runId);
        if (TERMINAL_STATUSES.includes(run.status)) {
          for (const event of await this.listEvents(runId, last)) {
            last = event.seq;
            yield event;
          }
          return;
        }
      } catch (err) {
        if (options.signal?.aborted || err instanceof ApiError) throw err;
        if (!(err instanceof ConnectionError) && !isStreamError(err)) throw err;
        if (++failures > MAX_STREAM_RETRIES) throw err;
      }
      await sleep(Math.min(200 * 2 ** failures, 5000));
    }
  }

  /**
   * The .tar.zst of one environment version, as a streaming response (read its body); without
   * its base image when `includeBase` is false.
   */
  exportSnapshot(agentId: string, version: number, options: { includeBase?: boolean } = {}): Promise<Response> {
    return this.request("GET", `/agents/${enc(agentId)}/snapshots/${version}/export`, {
      query: options.includeBase === false ? { include_base: "false" } : {},
      headers: { accept: "application/zstd, application/json" },
    });
  }

  /** Uploads a .tar.zst written by an export; the host makes it the agent's new current version. */
  async importSnapshot(agentId: string, archive: Blob): Promise<Snapshot> {
    const path = `/agents/${enc(agentId)}/snapshots/import`;
    const headers: Record<string, string> = { accept: "application/json", "content-type": "application/zstd" };
    if (this.#apiKey) headers.authorization = `Bearer ${this.#apiKey}`;
    let res: Response;
    try {
      res = await fetch(this.url(path), { method: "POST", headers, body: archive, redirect: "error" });
    } catch (err) {
      throw new ConnectionError(`cannot reach the host at ${this.baseUrl}: ${describeFetchError(err)}`);
    }
    if (!res.ok) throw await errorFrom(res);
    const parsed = Snapshot.safeParse(await res.json().catch(() => null));
    if (!parsed.success) throw new ConnectionError(`POST ${path}: unexpected response shape: ${parsed.error.message}`);
    return parsed.data;
  }

  // Environment edit sessions.

  openSession(agentId: string, body: EnvSessionCreate): Promise<EnvSession> {
    return this.#json(EnvSession, "POST", `/agents/${enc(agentId)}/env/session`, { body });
  }

  getSession(agentId: string): Promise<EnvSession> {
    return this.#json(EnvSession, "GET", `/agents/${enc(agentId)}/env/session`);
  }

  discardSession(agentId: string): Promise<EnvSession> {
    return this.#json(EnvSession, "DELETE", `/agents/${enc(agentId)}/env/session`);
  }

  execInSession(agentId: string, body: EnvExec): Promise<EnvExecResult> {
    return this.#json(EnvExecResult, "POST", `/agents/${enc(agentId)}/env/session/exec`, { body });
  }

  sessionEgress(agentId: string, after = 0): Promise<EgressEntry[]> {
    return this.#json(z.object({ data: z.array(EgressEntry) }), "GET", `/agents/${enc(agentId)}/env/session/egress`, {
      query: { after, limit: 1000 },
    }).then((r) => r.data);
  }

  freeze(agentId: string, body: EnvFreeze = {}) {
    return this.#json(FreezeResult, "POST", `/agents/${enc(agentId)}/env/freeze`, { body });
  }

  /** The WebSocket URL and headers of the session's interactive shell. */
  shellSocket(agentId: string, size: { rows: number; cols: number; term?: string }) {
    const url = new URL(this.url(`/agents/${enc(agentId)}/env/session/shell`, size));
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const headers: Record<string, string> = {};
    if (this.#apiKey) headers.authorization = `Bearer ${this.#apiKey}`;
    return { url: url.toString(), headers };
  }
}

function parseEvent(data: string): RunEventRead | null {
  try {
    const parsed = RunEventRead.safeParse(JSON.parse(data));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

function enc(segment: string): string {
  return encodeURIComponent(segment);
}

async function errorFrom(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => "");
  try {
    const parsed = ErrorResponse.safeParse(JSON.parse(text));
    if (parsed.success) {
      const { code, message, details } = parsed.data.error;
      return new ApiError(res.status, code, message, details);
    }
  } catch {
    // Not JSON: reported below with the status line.
  }
  const snippet = text.trim().slice(0, 200);
  return new ApiError(
    res.status,
    `http_${res.status}`,
    `${res.statusText || "HTTP error"}${snippet ? `: ${snippet}` : ""}`,
  );
}

function describeFetchError(err: unknown): string {
  if (err instanceof Error) {
    const cause = err.cause as { code?: string; message?: string } | undefined;
    return cause?.code ?? cause?.message ?? err.message;
  }
  return String(err);
}

function isStreamError(err: unknown): boolean {
  // undici reports a connection dropped mid-body as a TypeError ("terminated") with a cause.
  return err instanceof TypeError || (err instanceof Error && "code" in err);
}
