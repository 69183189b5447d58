/**
 * The LLM gateway, served by the bridge on the sandbox links: OpenAI-compatible
 * `/v1/chat/completions` and `/v1/responses`, Anthropic-compatible `/v1/messages`, streaming or
 * not, and `/v1/models`. The official SDKs work inside a sandbox with only their base URL and API
 * key set (the run token is the key).
 *
 * Threat model: the caller is hostile code holding one run token. It must never see a provider
 * key (the host attaches it to the upstream request only, and redacts it should a provider echo
 * it), never spend past a budget (every call reserves its worst case first, see ledger.ts, and its
 * output is clamped to what the budget allows), and never dodge metering: usage comes from the
 * provider's own figures (streams are asked for them), never from the sandbox, and a stream that
 * breaks off is billed for what it carried. The bridge has already checked the caller's address
 * and token before a request gets here.
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import { ERROR_CODES, type ErrorCode, fromMicro } from "@paddock/protocol";
import type { RateLimitSpec, TokenBucket } from "../bridge/rate-limit.ts";
import { Redactor, redactionNeedles } from "../bridge/redact.ts";
import type { BudgetScope, Ledger, Reservation } from "./ledger.ts";
import type { ModelRoute, Providers } from "./providers.ts";

export interface GatewayCaller {
  tenantId: string;
  agentId: string;
  runId: string;
  record(event: { type: string; data: unknown }): void;
  /** Stops the run: its budget cannot pay for another call. */
  outOfCredits(scope: BudgetScope): void;
}

export interface GatewayBudget {
  /** Micro-credits. */
  perRun?: number;
  agentTotal?: number;
  requestsPerMinute?: number;
  tokensPerMinute?: number;
}

export interface GatewayDeps {
  providers: Providers;
  ledger: Ledger;
  secrets: { reveal(tenantId: string, name: string): Promise<string | null> };
  /** The agent's budget and limits. */
  budgetOf(tenantId: string, agentId: string): Promise<GatewayBudget>;
  rateLimits: TokenBucket;
  /** Per-tenant LLM limits, the same for every tenant of this host. */
  tenantLimits?: { requestsPerMinute?: number; tokensPerMinute?: number };
  log: (line: string) => void;
}

const MAX_REQUEST_BYTES = 8 * 1024 * 1024;
const MAX_RESPONSE_BYTES = 32 * 1024 * 1024;
/** Chat templates add a few tokens per request beyond its bytes. */
const INPUT_OVERHEAD_TOKENS = 64;

type Api = "openai" | "anthropic";
interface Endpoint {
  api: Api;
  kind: "chat" | "responses" | "messages";
  upstreamPath: string;
}
const ENDPOINTS: Record<string, Endpoint> = {
  "/v1/chat/completions": { api: "openai", kind: "chat", upstreamPath: "/chat/completions" },
  "/v1/responses": { api: "openai", kind: "responses", upstreamPath: "/responses" },
  "/v1/messages": { api: "anthropic", kind: "messages", upstreamPath: "/v1/messages" },
};

/** Headers a client may send on to the provider; everything else (credentials above all) stays. */
const PASS_HEADERS = ["accept", "anthropic-version", "anthropic-beta", "openai-beta", "user-agent"];
const DROP_RESPONSE = new Set([
  "set-cookie",
  "connection",
  "keep-alive",
  "transfer-encoding",
  "content-length",
  "content-encoding",
  "alt-svc",
  "strict-transport-security",
]);

class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly headers: Record<string, string>;
  constructor(code: ErrorCode, message?: string, headers: Record<string, string> = {}) {
    super(message ?? ERROR_CODES[code].message);
    this.code = code;
    this.headers = headers;
  }
}

interface Usage {
  input: number;
  output: number;
  found: boolean;
}

export class Gateway {
  readonly #deps: GatewayDeps;
  readonly #agents = {
    http: new http.Agent({ keepAlive: true, maxSockets: 256 }),
    https: new https.Agent({ keepAlive: true, maxSockets: 256 }),
  };

  constructor(deps: GatewayDeps) {
    this.#deps = deps;
  }

  close(): void {
    this.#agents.http.destroy();
    this.#agents.https.destroy();
  }

  /** Whether `path` is the gateway's. */
  static serves(path: string): boolean {
    return path.startsWith("/v1/");
  }

  async handle(req: IncomingMessage, res: ServerResponse, caller: GatewayCaller): Promise<void> {
    const started = performance.now();
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    const record: Record<string, unknown> = { path };
    try {
      if (path === "/v1/models" && req.method === "GET") return await this.#models(res);
      const endpoint = ENDPOINTS[path];
      if (!endpoint)
        throw new GatewayError(
          "route_not_found",
          "The gateway serves /v1/chat/completions, /v1/responses, /v1/messages and /v1/models.",
        );
      if (req.method !== "POST") throw new GatewayError("method_not_allowed");
      const body = await readBody(req);
      const model = typeof body.model === "string" ? body.model : "";
      record.model = model.slice(0, 128);
      if (!model) throw new GatewayError("validation_failed", "The request names no model.");
      const route = await this.#deps.providers.route(model);
      if (!route) throw new GatewayError("unknown_model", `No provider serves the model '${model.slice(0, 128)}'.`);
      record.provider = route.provider;
      if (route.api !== endpoint.api) throw new GatewayError("model_wrong_api");
      await this.#call(req, res, caller, endpoint, route, body, record, started);
    } catch (err) {
      const e = err instanceof GatewayError ? err : new GatewayError("internal");
      if (!(err instanceof GatewayError)) this.#deps.log(`gateway: ${err instanceof Error ? err.stack : String(err)}`);
      if (!res.headersSent) sendError(res, e);
      else res.destroy();
      record.status = ERROR_CODES[e.code].status;
      record.code = e.code;
      record.latency_ms = round(performance.now() - started);
      if (path !== "/v1/models") caller.record({ type: "llm.call", data: record });
    }
  }

  async #models(res: ServerResponse): Promise<void> {
    const data = (await this.#deps.providers.models()).map(([id, r]) => ({
      id,
      object: "model",
      created: 0,
      owned_by: r.provider,
      /** Which wire format the model takes here: /v1/chat/completions (openai) or /v1/messages. */
      api: r.api,
      type: "model",
      display_name: id,
    }));
    const text = JSON.stringify({ object: "list", data, has_more: false });
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
  }

  async #call(
    req: IncomingMessage,
    res: ServerResponse,
    caller: GatewayCaller,
    endpoint: Endpoint,
    route: ModelRoute,
    body: Record<string, unknown>,
    record: Record<string, unknown>,
    started: number,
  ): Promise<void> {
    const stream = body.stream === true;
    record.stream = stream;
    const budget = await this.#deps.budgetOf(caller.tenantId, caller.agentId);
    const bodyBytes = Buffer.byteLength(JSON.stringify(body));
    const inputUpper = bodyBytes + INPUT_OVERHEAD_TOKENS;
    const maxField = maxTokensField(endpoint, body);
    const asked =
      typeof body[maxField] === "number" ? Math.floor(body[maxField] as number) : route.price.max_output_tokens;
    if (!(asked >= 1)) throw new GatewayError("validation_failed", `${maxField} must be at least 1.`);
    const wantOut = Math.min(asked, route.price.max_output_tokens);
    this.#rateLimit(caller, budget, inputUpper + wantOut);

    const reserved = await this.#deps.ledger.reserve({
      tenantId: caller.tenantId,
      agentId: caller.agentId,
      runId: caller.runId,
      inputMicro: inputUpper * route.price.input,
      outputMicroPerToken: route.price.output,
      maxOutputTokens: wantOut,
      ...(budget.agentTotal !== undefined ? { agentTotal: budget.agentTotal } : {}),
      ...(budget.perRun !== undefined ? { perRun: budget.perRun } : {}),
    });
    if (!reserved.ok) {
      caller.outOfCredits(reserved.scope);
      throw new GatewayError(
        "out_of_credits",
        `The ${reserved.scope}'s budget has ${fromMicro(reserved.availableMicro)} credits left, less than this call's input may cost; the run stops with reason out_of_credits.`,
        { "x-paddock-budget": reserved.scope },
      );
    }
    const reservation = reserved.reservation;
    record.call_id = reservation.callId;
    if (reservation.maxOutputTokens < asked) record.clamped_max_tokens = reservation.maxOutputTokens;
    // The request as sent upstream: output clamped to the budget, and streams asked for usage.
    const out: Record<string, unknown> = { ...body, [maxField]: reservation.maxOutputTokens };
    if (stream && endpoint.kind === "chat") {
      const options =
        typeof body.stream_options === "object" && body.stream_options !== null ? body.stream_options : {};
      out.stream_options = { ...options, include_usage: true };
    }
    const key = route.secret === null ? null : await this.#deps.secrets.reveal(route.ownerTenant, route.secret);
    if (route.secret !== null && key === null) {
      await this.#deps.ledger.release(reservation, "provider key missing");
      throw new GatewayError(
        "provider_error",
        `The key of provider '${route.provider}' is missing; the host's admin must set it again.`,
      );
    }
    const needles = key ? redactionNeedles([key]) : [];
    const payload = Buffer.from(JSON.stringify(out));
    const headers: Record<string, string> = {
      "content-type": "application/json",
      "content-length": String(payload.length),
      "accept-encoding": "identity",
    };
    for (const name of PASS_HEADERS) {
      const v = req.headers[name];
      if (typeof v === "string") headers[name] = v;
    }
    if (endpoint.api === "anthropic") {
      headers["anthropic-version"] ??= "2023-06-01";
      if (key) headers["x-api-key"] = key;
    } else if (key) headers.authorization = `Bearer ${key}`;

    const url = new URL(`${route.baseUrl}${endpoint.upstreamPath}`);
    const secure = url.protocol === "https:";
    const usage: Usage = { input: 0, output: 0, found: false };
    let settled = false;
    const finish = async (how: "settle" | "release", reason = "") => {
      if (settled) return;
      settled = true;
      if (how === "release") await this.#deps.ledger.release(reservation, reason);
      else {
        const input = usage.found || usage.input > 0 ? usage.input : inputUpper;
        const cost = input * route.price.input + usage.output * route.price.output;
        await this.#deps.ledger.settle(reservation, cost, {
          provider: route.provider,
          model: String(record.model),
          input_tokens: input,
          output_tokens: usage.output,
          source: usage.found ? "usage" : "counted",
        });
        record.input_tokens = input;
        record.output_tokens = usage.output;
        record.cost = fromMicro(Math.ceil(cost));
        if (!usage.found) record.usage = "counted";
      }
    };

    await new Promise<void>((resolve) => {
      let ttft = 0;
      const upstream = (secure ? https : http).request(url, {
        method: "POST",
        headers,
        agent: secure ? this.#agents.https : this.#agents.http,
        timeout: route.timeoutMs,
      });
      const fail = (code: ErrorCode, message?: string) => {
        upstream.destroy();
        // Nothing billable reached the caller: give the reservation back; else bill what came.
        const done = usage.output > 0 || usage.found ? finish("settle") : finish("release", code);
        done
          .catch((e: unknown) => this.#deps.log(`gateway: settling ${reservation.callId}: ${String(e)}`))
          .finally(() => {
            if (!res.headersSent) sendError(res, new GatewayError(code, message));
            else res.destroy();
            record.status = record.status ?? ERROR_CODES[code].status;
            record.code = code;
            resolve();
          });
      };
      upstream.on("timeout", () => fail("provider_error", "The model provider did not answer in time."));
      upstream.on("error", (err: NodeJS.ErrnoException) =>
        fail("provider_error", `The model provider could not be reached${err.code ? ` (${err.code})` : ""}.`),
      );
      // The caller hung up: stop the provider too, and bill what it produced up to then.
      res.on("close", () => {
        if (!res.writableFinished && !settled) {
          record.aborted = true;
          upstream.destroy();
          finish("settle")
            .catch((e: unknown) => this.#deps.log(`gateway: settling ${reservation.callId}: ${String(e)}`))
            .finally(resolve);
        }
      });
      upstream.on("response", (answer) => {
        const status = answer.statusCode ?? 502;
        record.status = status;
        const outHeaders: Record<string, string | string[]> = {};
        for (const [k, v] of Object.entries(answer.headers))
          if (v !== undefined && !DROP_RESPONSE.has(k)) outHeaders[k] = v;
        const redactor = new Redactor(needles);
        const parse = status < 300 ? (stream ? sseUsage(endpoint, usage) : null) : null;
        const chunks: Buffer[] = [];
        let size = 0;
        res.writeHead(status, outHeaders);
        redactor.on("data", (chunk: Buffer) => {
          if (!ttft) ttft = performance.now() - started;
          if (parse) parse(chunk);
          else chunks.push(chunk);
          res.write(chunk);
        });
        redactor.on("end", () => {
          if (status >= 300) {
            // The provider's own error, status and Retry-After passed on: the SDKs know what to do.
            record.code = status === 429 ? "provider_rate_limited" : "provider_error";
            res.end();
            finish("release", `provider ${status}`).finally(resolve);
            return;
          }
          if (!parse) jsonUsage(endpoint, Buffer.concat(chunks), usage);
          record.ttft_ms = round(ttft);
          record.latency_ms = round(performance.now() - started);
          // The answer goes first: its reservation still holds the worst case until settled.
          res.end();
          finish("settle")
            .catch((e: unknown) => this.#deps.log(`gateway: settling ${reservation.callId}: ${String(e)}`))
            .finally(resolve);
        });
        answer.on("data", (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) answer.destroy(new Error("too large"));
        });
        answer.on("error", () => fail("provider_error", "The model provider broke off its answer."));
        answer.pipe(redactor);
      });
      upstream.end(payload);
    });
    record.latency_ms ??= round(performance.now() - started);
    caller.record({ type: "llm.call", data: record });
  }

  #rateLimit(caller: GatewayCaller, budget: GatewayBudget, tokens: number): void {
    const checks: [string, RateLimitSpec, number][] = [];
    const tenant = this.#deps.tenantLimits;
    if (tenant?.requestsPerMinute)
      checks.push([`llm-rpm:t:${caller.tenantId}`, { requests: tenant.requestsPerMinute, per_s: 60 }, 1]);
    if (tenant?.tokensPerMinute)
      checks.push([`llm-tpm:t:${caller.tenantId}`, { requests: tenant.tokensPerMinute, per_s: 60 }, tokens]);
    if (budget.requestsPerMinute)
      checks.push([`llm-rpm:a:${caller.agentId}`, { requests: budget.requestsPerMinute, per_s: 60 }, 1]);
    if (budget.tokensPerMinute)
      checks.push([`llm-tpm:a:${caller.agentId}`, { requests: budget.tokensPerMinute, per_s: 60 }, tokens]);
    for (const [key, limit, cost] of checks) {
      if (cost > limit.requests) {
        throw new GatewayError(
          "llm_rate_limited",
          `This call may use ${cost} tokens, more than the ${limit.requests} per minute allowed.`,
        );
      }
      const taken = this.#deps.rateLimits.take(key, limit, undefined, cost);
      if (!taken.ok)
        throw new GatewayError("llm_rate_limited", undefined, { "retry-after": String(taken.retryAfterS) });
    }
  }
}

function maxTokensField(endpoint: Endpoint, body: Record<string, unknown>): string {
  if (endpoint.kind === "responses") return "max_output_tokens";
  if (endpoint.kind === "messages") return "max_tokens";
  return "max_completion_tokens" in body ? "max_completion_tokens" : "max_tokens";
}

async function readBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > MAX_REQUEST_BYTES) throw new GatewayError("body_too_large");
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_REQUEST_BYTES) throw new GatewayError("body_too_large");
    chunks.push(chunk as Buffer);
  }
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new GatewayError("invalid_json");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new GatewayError("validation_failed", "The request body must be a JSON object.");
  }
  return body as Record<string, unknown>;
}

/** Usage of a whole JSON answer. */
function jsonUsage(endpoint: Endpoint, text: Buffer, usage: Usage): void {
  try {
    const u = (JSON.parse(text.toString("utf8")) as { usage?: Record<string, unknown> }).usage;
    if (u) {
      takeUsage(endpoint, u, usage);
      usage.found = true;
    }
  } catch {}
}

function takeUsage(endpoint: Endpoint, u: Record<string, unknown>, usage: Usage): void {
  const n = (v: unknown) => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? Math.floor(v) : 0);
  if (endpoint.kind === "chat") {
    usage.input = n(u.prompt_tokens);
    usage.output = n(u.completion_tokens);
    usage.found = true;
  } else if (endpoint.kind === "responses") {
    usage.input = n(u.input_tokens);
    usage.output = n(u.output_tokens);
    usage.found = true;
  } else {
    // Anthropic: input at message_start, output (cumulative) at message_start and each message_delta.
    const input = n(u.input_tokens) + n(u.cache_creation_input_tokens) + n(u.cache_read_input_tokens);
    if (input > 0) usage.input = input;
    if ("output_tokens" in u) usage.output = Math.max(usage.output, n(u.output_tokens));
  }
}

/**
 * Reads a stream's server-sent events as they pass, for the provider's usage figures. Until they
 * come, each content delta counts as one output token (what a stream cut short is billed for).
 */
function sseUsage(endpoint: Endpoint, usage: Usage): (chunk: Buffer) => void {
  let buffer = "";
  return (chunk) => {
    buffer += chunk.toString("utf8");
    let nl = buffer.indexOf("\n");
    while (nl >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      nl = buffer.indexOf("\n");
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]" || data === "") continue;
      let event: Record<string, unknown>;
      try {
        event = JSON.parse(data) as Record<string, unknown>;
      } catch {
        continue;
      }
      if (endpoint.kind === "chat") {
        if (event.usage && typeof event.usage === "object")
          takeUsage(endpoint, event.usage as Record<string, unknown>, usage);
        else if (!usage.found && Array.isArray(event.choices) && event.choices.length > 0) usage.output += 1;
      } else if (endpoint.kind === "responses") {
        const type = event.type;
        if (type === "response.completed" || type === "response.incomplete") {
          const u = (event.response as { usage?: Record<string, unknown> } | undefined)?.usage;
          if (u) takeUsage(endpoint, u, usage);
        } else if (!usage.found && typeof type === "string" && type.endsWith(".delta")) usage.output += 1;
      } else {
        const type = event.type;
        if (type === "message_start") {
          const u = (event.message as { usage?: Record<string, unknown> } | undefined)?.usage;
          if (u) takeUsage(endpoint, u, usage);
        } else if (type === "message_delta") {
          // The final, cumulative output count replaces what was counted from the deltas.
          const u = event.usage as Record<string, unknown> | undefined;
          if (u && typeof u.output_tokens === "number") {
            usage.output = 0;
            takeUsage(endpoint, u, usage);
            usage.found = true;
          }
        } else if (type === "content_block_delta" && !usage.found) usage.output += 1;
      }
    }
  };
}

function sendError(res: ServerResponse, e: GatewayError): void {
  // Both SDKs read `error.message`; `type` is what Anthropic's clients expect beside it.
  const body = JSON.stringify({ type: "error", error: { code: e.code, type: e.code, message: e.message } });
  res.writeHead(ERROR_CODES[e.code].status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    ...e.headers,
  });
  res.end(body);
}

const round = (ms: number) => Math.round(ms * 1000) / 1000;

export type { Reservation };
