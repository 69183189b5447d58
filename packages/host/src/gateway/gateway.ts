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
 * breaks off is billed for what it carried. The bridge checks the caller's address and token
 * before the gateway reads a request (see handle).
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import {
  APPROVAL_HEADER,
  ApprovalRule,
  check,
  ERROR_CODES,
  type ErrorCode,
  fromMicro,
  LlmRequest,
  type RunEventBody,
  type RunEventData,
} from "@paddock/protocol";
import type { Approvals, HoldOutcome } from "../bridge/approvals.ts";
import {
  approvalAsked,
  type ChannelCall,
  type ChannelRoute,
  parseJson,
  Refusal,
  readCapped,
  sendJson,
  sendRefusal,
  sendReplay,
  takeStep,
} from "../bridge/channel.ts";
import { type LiveSandbox, LiveSandboxes } from "../bridge/live.ts";
import type { RateLimitSpec, TokenBucket } from "../bridge/rate-limit.ts";
import { redactionNeedles } from "../bridge/redact.ts";
import { relay } from "../bridge/relay.ts";
import type { Log } from "../logs/log.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { Fence } from "../store/fence.ts";
import { type Journal, type JournalEntry, requestHash } from "../store/journal.ts";
import type { SpanParent } from "../tracing/trace-context.ts";
import { epochMs, epochOf, type Tracing } from "../tracing/tracing.ts";
import { recordChatSpan } from "./chat-span.ts";
import type { BudgetScope, Ledger, Reservation } from "./ledger.ts";
import type { ModelRoute, Providers } from "./providers.ts";
import { type AnswerFacts, type Usage, type UsageFormat, usageReader } from "./usage.ts";

/** Who a call is from and whom it bills. */
interface GatewayCaller {
  tenantId: string;
  agentId: string;
  /** The run billed: the caller's own, or for a child run the root of its tree. */
  runId: string;
  /** The caller's own run: its agent's total and rate limits are those of the version it froze. */
  ownRunId: string;
  /** Where this call stands in the caller's own run, for the journal. */
  journal?: { runId: string; attempt: number; step(): string | null; unstep(): void };
  /** The caller's attempt, which its reservations are fenced by (see store/fence.ts). */
  fence?: Fence;
  /** The caller's sandbox, which waits when a call needs approval. */
  sandbox?: LiveSandbox;
  /** The approval a request asking again says it waits on. */
  asked?: string | undefined;
  record(event: RunEventBody): void;
  /** Stops the run: its budget cannot pay for another call. */
  outOfCredits(scope: BudgetScope): void;
  /** The caller's attempt span, which the call's span goes under (when the host traces). */
  trace?: SpanParent | undefined;
}

export interface GatewayBudget {
  /** Micro-credits. */
  perRun?: number;
  agentTotal?: number;
  requestsPerMinute?: number;
  tokensPerMinute?: number;
  /** Micro-credits of the run's spending past which a call waits for a person's approval. */
  approveAbove?: number;
  /** Who approves those calls, and how long they wait. */
  approval?: ApprovalRule;
}

export interface GatewayDeps {
  /** Answers of completed calls, replayed to retried attempts (not sent, not charged again). */
  journal?: Journal;
  /** Holds model calls past a budget's approve_above until a person approves them. */
  approvals?: Approvals;
  providers: Providers;
  ledger: Ledger;
  secrets: { reveal(tenantId: string, name: string): Promise<string | null> };
  /** A run's budget and limits: those its frozen spec holds (cheap: called on every model call). */
  budgetOf(runId: string): Promise<GatewayBudget>;
  rateLimits: TokenBucket;
  /** Per-tenant LLM limits, the same for every tenant of this host. */
  tenantLimits?: { requestsPerMinute?: number; tokensPerMinute?: number };
  log: Log;
  /** Where each model call's provider, model, latency and tokens are reported. */
  metrics?: Pick<Metrics, "llmCall">;
  /** Where a `chat {model}` span of each call goes; null or absent: no spans. */
  tracing?: Tracing | null;
}

const MAX_REQUEST_BYTES = 8 * 1024 * 1024;
const MAX_RESPONSE_BYTES = 32 * 1024 * 1024;
/** Chat templates add a few tokens per request beyond its bytes. */
const INPUT_OVERHEAD_TOKENS = 64;

type Api = "openai" | "anthropic";
interface Endpoint {
  api: Api;
  kind: UsageFormat;
  upstreamPath: string;
}
const ENDPOINTS: Record<string, Endpoint> = {
  "/v1/chat/completions": { api: "openai", kind: "chat", upstreamPath: "/chat/completions" },
  "/v1/responses": { api: "openai", kind: "responses", upstreamPath: "/responses" },
  "/v1/messages": { api: "anthropic", kind: "messages", upstreamPath: "/v1/messages" },
};

/** Headers a client may send on to the provider; everything else (credentials above all) stays. */
const PASS_HEADERS = ["accept", "anthropic-version", "user-agent"];
/** Answer headers passed back (plus the providers' rate-limit headers, see passesBack). */
const PASS_RESPONSE = new Set([
  "content-type",
  "retry-after",
  "request-id",
  "x-request-id",
  "cache-control",
  "openai-processing-ms",
]);
/** How many input tokens an image, file or audio part may cost beyond its bytes (a URL is a few bytes). */
const NON_TEXT_PART_TOKENS = 2000;
/** What providers add for tool definitions. */
const TOOL_PREAMBLE_TOKENS = 1000;
/** Model calls one run may have in flight. */
const MAX_CALLS_AT_ONCE = 32;

/** Where a call stands in its caller's journal. */
interface JournalStep {
  store: Journal;
  runId: string;
  attempt: number;
  step: string;
}

/** What a model call records on its run. */
type LlmCallRecord = RunEventData<"llm.call">;

/** One model call as it goes through the gateway: who asks, for what, and where it is recorded. */
interface LlmCall {
  req: IncomingMessage;
  res: ServerResponse;
  caller: GatewayCaller;
  /** When the request arrived (performance.now()). */
  started: number;
  /** The `llm.call` event's data, filled in as the call goes. */
  record: LlmCallRecord;
  endpoint: Endpoint;
  route: ModelRoute;
  body: Record<string, unknown>;
  /** The request's bytes as received: its length bounds the input, its hash keys the journal. */
  raw: Buffer;
  stream: boolean;
  /** Its journal position, when the caller keeps a journal. */
  journal: JournalStep | null;
  /** What keys its answer in the journal ("" without one). */
  hash: string;
  /** What the answer says beyond its usage, read when the call is traced. */
  answer: AnswerFacts | null;
  /** The output limit sent to the provider, once reserved. */
  maxTokens?: number;
  /** The approval it was sent under (past the budget's approve_above), once approved. */
  approval: string | null;
}

/** A refusal because a budget ran out: the run stops once the refusal is on its record. */
class OutOfCredits extends Refusal {
  readonly scope: BudgetScope;
  constructor(scope: BudgetScope, message: string) {
    super("out_of_credits", message, { "x-paddock-budget": scope });
    this.scope = scope;
  }
}

export class Gateway implements ChannelRoute {
  readonly #deps: GatewayDeps;
  /** Calls in flight per run. */
  readonly #inFlight = new Map<string, number>();
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

  serves(target: string): boolean {
    return target.startsWith("/v1/");
  }

  /**
   * A call from a sandbox, behind the bridge's checks: a live sandbox's address and its own run
   * token (sent where the SDKs put an API key), scoped `llm`. A child run's calls are billed to
   * the root of its tree.
   */
  async handle(call: ChannelCall): Promise<void> {
    const { req, res } = call;
    let sandbox: LiveSandbox;
    try {
      sandbox = await call.authorize("llm", "The agent's policy does not allow LLM calls.");
    } catch (err) {
      const denial = Refusal.from(err);
      sendRefusal(res, denial);
      req.resume();
      call.sandbox?.record({
        type: "llm.call",
        data: { path: call.target.split("?")[0]?.slice(0, 128), status: denial.status, code: denial.code },
      });
      return;
    }
    await this.#serve(req, res, {
      ...(sandbox.journaled
        ? {
            journal: {
              runId: sandbox.runId,
              attempt: sandbox.attempt,
              // Taken only by a call the gateway accepted, and given back if it is refused before upstream.
              step: () => takeStep(sandbox, req, "llm"),
              unstep: () => LiveSandboxes.unstep(sandbox, "llm"),
            },
          }
        : {}),
      tenantId: sandbox.tenantId,
      agentId: sandbox.agentId,
      runId: sandbox.billRunId ?? sandbox.runId,
      ownRunId: sandbox.runId,
      sandbox,
      asked: approvalAsked(req),
      ...(sandbox.workerId !== undefined
        ? { fence: { runId: sandbox.runId, attempt: sandbox.attempt, workerId: sandbox.workerId } }
        : {}),
      record: (event) => {
        sandbox.record(event);
        if (event.type === "llm.call") this.#deps.metrics?.llmCall(event.data);
      },
      outOfCredits: (scope) => sandbox.outOfCredits?.(scope),
      trace: sandbox.trace,
    });
  }

  async #serve(req: IncomingMessage, res: ServerResponse, caller: GatewayCaller): Promise<void> {
    const started = performance.now();
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    const record: LlmCallRecord = { path };
    let call: LlmCall | undefined;
    try {
      if (path === "/v1/models" && req.method === "GET") return await this.#models(res);
      const endpoint = ENDPOINTS[path];
      if (!endpoint)
        throw new Refusal(
          "route_not_found",
          "The gateway serves /v1/chat/completions, /v1/responses, /v1/messages and /v1/models.",
        );
      if (req.method !== "POST") throw new Refusal("method_not_allowed");
      const raw = await readCapped(req, MAX_REQUEST_BYTES);
      const body: Record<string, unknown> = check(LlmRequest, parseJson(raw));
      const model = body.model as string;
      record.model = model;
      const route = await this.#deps.providers.route(model);
      if (!route) throw new Refusal("unknown_model", `No provider serves the model '${model.slice(0, 128)}'.`);
      record.provider = route.provider;
      if (route.api !== endpoint.api) throw new Refusal("model_wrong_api");
      const stream = body.stream === true;
      record.stream = stream;
      checkBody(endpoint, body);
      const journal = this.#journalStep(caller);
      const hash = journal ? requestHash([endpoint.upstreamPath, raw]) : "";
      const tracing = caller.trace ? this.#deps.tracing : null;
      const answer: AnswerFacts | null = tracing
        ? { finishReasons: [], ...(tracing.content ? { output: { text: "", toolCalls: [] } } : {}) }
        : null;
      call = {
        req,
        res,
        caller,
        started,
        record,
        endpoint,
        route,
        body,
        raw,
        stream,
        journal,
        hash,
        answer,
        approval: null,
      };
      await this.#call(call);
    } catch (err) {
      const e = Refusal.from(err);
      if (e.code === "internal") this.#deps.log(`gateway: ${err instanceof Error ? err.stack : String(err)}`);
      if (!res.headersSent) sendError(res, e);
      else res.destroy();
      record.status = ERROR_CODES[e.code].status;
      record.code = e.code;
      record.latency_ms = round(performance.now() - started);
      // A call held back for credits in flight, or told to ask again for its approval, is a signal to
      // wait, not a call: retries would flood the record.
      record.approval ??= e.headers[APPROVAL_HEADER];
      if (path !== "/v1/models" && e.code !== "credits_held" && e.code !== "approval_pending")
        this.#recorded(caller, record, started, call);
      if (e instanceof OutOfCredits) caller.outOfCredits(e.scope);
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
    sendJson(res, 200, { object: "list", data, has_more: false });
  }

  /** The position a call accepted for the gateway takes in the caller's journal, when it keeps one. */
  #journalStep(caller: GatewayCaller): JournalStep | null {
    const store = this.#deps.journal;
    const step = store && caller.journal ? caller.journal.step() : null;
    return store && caller.journal && step
      ? { store, runId: caller.journal.runId, attempt: caller.journal.attempt, step }
      : null;
  }

  async #call(call: LlmCall): Promise<void> {
    const { caller, journal, record, res } = call;
    if (journal) {
      record.step = journal.step;
      const found = await journal.store.lookup(journal.runId, journal.attempt, journal.step, call.hash);
      if (found && "replay" in found) {
        sendReplay(res, found.replay);
        Object.assign(record, {
          status: found.replay.status,
          replayed: true,
          from_attempt: found.replay.attempt,
          cost: 0,
        });
        record.latency_ms = round(performance.now() - call.started);
        this.#recorded(caller, record, call.started, call);
        return;
      }
      if (found) caller.record({ type: "journal.diverged", data: { step: journal.step, kind: "llm" } });
    }
    const own = await this.#deps.budgetOf(caller.ownRunId);
    // A child run spends from the root run's budget (and asks past the root's approve_above); its
    // own agent's total and rate limits still hold.
    const billed = caller.runId !== caller.ownRunId ? await this.#deps.budgetOf(caller.runId) : own;
    const { perRun: _perRun, approveAbove: _approveAbove, approval: _approval, ...ownRest } = own;
    const budget: GatewayBudget = {
      ...ownRest,
      ...(billed.perRun !== undefined ? { perRun: billed.perRun } : {}),
      ...(billed.approveAbove !== undefined ? { approveAbove: billed.approveAbove } : {}),
      ...(billed.approval !== undefined ? { approval: billed.approval } : {}),
    };
    try {
      await this.#admit(call, budget);
    } catch (err) {
      // Refused before it went upstream: its journal position is free again.
      if (journal && err instanceof Refusal) caller.journal?.unstep();
      throw err;
    }
  }

  /**
   * Holds a model call past the budget's approve_above for a person's approval. The approvers see
   * the request as sent and what it may cost; the request's bytes bind the approval.
   */
  async #approval(
    call: LlmCall,
    budget: GatewayBudget,
    cost: { amount: number; runSpent: number },
  ): Promise<HoldOutcome> {
    const { caller, endpoint, route, raw, req } = call;
    const approvals = this.#deps.approvals;
    if (!approvals || !caller.sandbox) throw new Refusal("policy_denied", "This host cannot hold calls for approval.");
    const headers: Record<string, string> = { "content-type": "application/json" };
    for (const name of PASS_HEADERS) {
      const v = req.headers[name];
      if (typeof v === "string") headers[name] = v;
    }
    headers[endpoint.api === "anthropic" ? "x-api-key" : "authorization"] = `<key of provider ${route.provider}>`;
    return approvals.hold({
      sandbox: caller.sandbox,
      kind: "llm",
      target: String(call.record.model),
      ruleKey: "llm:approve_above",
      rule: budget.approval ?? ApprovalRule.parse({}),
      hash: requestHash(["llm", endpoint.upstreamPath, raw]),
      request: {
        kind: "llm",
        target: String(call.record.model),
        method: "POST",
        path: endpoint.upstreamPath,
        query: "",
        url: `${route.baseUrl}${endpoint.upstreamPath}`,
        headers,
        credits: {
          reserve: fromMicro(cost.amount),
          run_spent: fromMicro(cost.runSpent),
          approve_above: fromMicro(budget.approveAbove ?? 0),
        },
      },
      held: {},
      body: raw,
      takeStep: () => call.journal?.step ?? null,
      res: call.res,
      asked: caller.asked,
    });
  }

  /** Reserves the call's worst case within its budget and limits, then sends it and records it. */
  async #admit(call: LlmCall, budget: GatewayBudget): Promise<void> {
    const { caller, endpoint, route, body, record, journal } = call;
    // Every token is at least one byte of the request, but images, files and tool preambles cost more.
    const inputUpper = call.raw.length + INPUT_OVERHEAD_TOKENS + surcharge(endpoint, body);
    const asked = askedOutput(body) ?? route.price.max_output_tokens;
    if (!(asked >= 1)) throw new Refusal("validation_failed", "The output token limit must be at least 1.");
    const wantOut = Math.min(asked, route.price.max_output_tokens);
    this.#rateLimit(caller, budget, inputUpper + wantOut);
    const inFlight = this.#inFlight.get(caller.runId) ?? 0;
    if (inFlight >= MAX_CALLS_AT_ONCE) {
      throw new Refusal("llm_rate_limited", `A run may have at most ${MAX_CALLS_AT_ONCE} model calls at once.`, {
        "retry-after": "1",
      });
    }

    const reserve = (approveAbove: number | undefined) =>
      this.#deps.ledger.reserve({
        tenantId: caller.tenantId,
        agentId: caller.agentId,
        runId: caller.runId,
        inputMicro: inputUpper * route.price.input,
        outputMicroPerToken: route.price.output,
        maxOutputTokens: wantOut,
        ...(caller.fence ? { fence: caller.fence } : {}),
        ...(budget.agentTotal !== undefined ? { agentTotal: budget.agentTotal } : {}),
        ...(budget.perRun !== undefined ? { perRun: budget.perRun } : {}),
        ...(approveAbove !== undefined ? { approveAbove } : {}),
      });
    let reserved = await reserve(budget.approveAbove);
    if (!reserved.ok && reserved.approve) {
      // Past the budget's approve_above: nothing is reserved while a person decides.
      const outcome = await this.#approval(call, budget, reserved.approve);
      if ("replay" in outcome) {
        sendReplay(call.res, { ...outcome.replay, attempt: outcome.approval.attempt });
        Object.assign(record, {
          status: outcome.replay.status,
          replayed: true,
          cost: 0,
          approval: outcome.approval.id,
        });
        record.latency_ms = round(performance.now() - call.started);
        caller.record({ type: "llm.call", data: record });
        return;
      }
      call.approval = outcome.send.id;
      record.approval = outcome.send.id;
      reserved = await reserve(undefined).catch(async (err: unknown) => {
        await this.#deps.approvals?.unsent(outcome.send.id);
        throw err;
      });
      if (!reserved.ok) await this.#deps.approvals?.unsent(outcome.send.id);
    }
    if (!reserved.ok) {
      if (!reserved.exhausted) {
        // Other calls' reservations hold the rest for now: it comes back as they settle.
        throw new Refusal(
          "credits_held",
          `The ${reserved.scope}'s remaining credits are held by calls in flight; retry when they finish.`,
          { "retry-after": "1" },
        );
      }
      throw new OutOfCredits(
        reserved.scope,
        `The ${reserved.scope}'s budget has ${fromMicro(reserved.availableMicro)} credits left, less than this call's input may cost; the run stops with reason out_of_credits.`,
      );
    }
    const reservation = reserved.reservation;
    call.maxTokens = reservation.maxOutputTokens;
    record.call_id = reservation.callId;
    if (reservation.maxOutputTokens < asked) record.clamped_max_tokens = reservation.maxOutputTokens;
    this.#inFlight.set(caller.runId, inFlight + 1);
    try {
      const answer = await this.#forward(call, reservation, inputUpper);
      if (journal && answer) {
        await journal.store
          .record(caller.fence ?? journal, journal.step, call.hash, answer)
          .catch((err: unknown) => this.#deps.log(`gateway: journal: ${String(err)}`));
      }
      // The approved call went: an identical repeat gets this answer, never a second call.
      if (call.approval) await this.#deps.approvals?.sent(call.approval, answer);
    } finally {
      const left = (this.#inFlight.get(caller.runId) ?? 1) - 1;
      if (left > 0) this.#inFlight.set(caller.runId, left);
      else this.#inFlight.delete(caller.runId);
    }
    record.latency_ms ??= round(performance.now() - call.started);
    this.#recorded(caller, record, call.started, call);
  }

  /** Records the call on its run and, when the host traces, as a `chat` span under the caller's attempt. */
  #recorded(caller: GatewayCaller, record: LlmCallRecord, started: number, call: LlmCall | undefined): void {
    caller.record({ type: "llm.call", data: record });
    const tracing = this.#deps.tracing;
    if (!tracing || !caller.trace) return;
    recordChatSpan(tracing, caller.trace, {
      record,
      runId: caller.ownRunId,
      startMs: epochOf(started),
      endMs: epochMs(),
      ...(call
        ? {
            route: call.route,
            format: call.endpoint.kind,
            body: call.body,
            ...(call.answer ? { answer: call.answer } : {}),
            ...(call.maxTokens !== undefined ? { maxTokens: call.maxTokens } : {}),
          }
        : {}),
    });
  }

  /**
   * Sends the call and its answer on; settles or releases the reservation exactly once, whatever
   * happens: released only when nothing reached the provider or the provider refused; billed at the
   * provider's usage, at what a broken-off stream carried, or else at the reserved worst case.
   */
  async #forward(
    call: LlmCall,
    reservation: Reservation,
    inputUpper: number,
  ): Promise<Omit<JournalEntry, "attempt"> | null> {
    const { res, endpoint, route, record } = call;
    const usage: Usage = { input: 0, output: 0, found: false };
    let closed = false;
    const close = async (how: "usage" | "worst" | "release", reason = "") => {
      if (closed) return;
      closed = true;
      try {
        if (how === "release") {
          await this.#deps.ledger.release(reservation, reason);
          return;
        }
        let input = usage.found || usage.input > 0 ? usage.input : inputUpper;
        let output = usage.output;
        let cost = input * route.price.input + output * route.price.output;
        if (how === "worst") {
          cost = reservation.amount;
          input = inputUpper;
          output = reservation.maxOutputTokens;
        }
        const source = how === "worst" ? "reserved" : usage.found ? "usage" : "counted";
        await this.#deps.ledger.settle(reservation, cost, {
          provider: route.provider,
          model: String(record.model),
          input_tokens: input,
          output_tokens: output,
          source,
        });
        record.input_tokens = input;
        record.output_tokens = output;
        record.cost = fromMicro(Math.ceil(cost));
        if (source !== "usage") record.usage = source;
      } catch (err) {
        this.#deps.log(`gateway: closing ${reservation.callId}: ${err instanceof Error ? err.message : String(err)}`, {
          run_id: reservation.runId,
          tenant_id: reservation.tenantId,
        });
      }
    };
    let key: string | null;
    try {
      key = route.secret === null ? null : await this.#deps.secrets.reveal(route.ownerTenant, route.secret);
    } catch {
      key = null;
    }
    if (route.secret !== null && key === null) {
      await close("release", "provider key missing");
      throw new Refusal(
        "provider_error",
        `The key of provider '${route.provider}' is missing; the host's admin must set it again.`,
      );
    }
    const needles = key ? redactionNeedles([key]) : [];
    const { url, headers, payload } = upstreamRequest(call, reservation, key);
    const secure = url.protocol === "https:";

    let answered: Omit<JournalEntry, "attempt"> | null = null;
    await new Promise<void>((resolve) => {
      let ttft = 0;
      let sent = false;
      let upstream: http.ClientRequest;
      try {
        upstream = (secure ? https : http).request(url, {
          method: "POST",
          headers,
          agent: secure ? this.#agents.https : this.#agents.http,
          timeout: route.timeoutMs,
        });
      } catch {
        close("release", "bad provider URL").finally(() => {
          sendError(res, new Refusal("provider_error", "The provider's base URL cannot be called."));
          resolve();
        });
        return;
      }
      upstream.on("finish", () => {
        sent = true;
      });
      const fail = (code: ErrorCode, message?: string) => {
        if (closed) return;
        upstream.destroy();
        // Nothing reached the provider: nothing to bill. Otherwise what it reported, what came, or the worst case.
        const how = !sent ? "release" : usage.found || (call.stream && usage.output > 0) ? "usage" : "worst";
        close(how, code).finally(() => {
          if (!res.headersSent) sendError(res, new Refusal(code, message));
          else res.destroy();
          record.status ??= ERROR_CODES[code].status;
          record.code = code;
          resolve();
        });
      };
      upstream.on("timeout", () => fail("provider_error", "The model provider did not answer in time."));
      upstream.on("error", (err: NodeJS.ErrnoException) =>
        fail("provider_error", `The model provider could not be reached${err.code ? ` (${err.code})` : ""}.`),
      );
      // The caller hung up: stop the provider too; a stream is billed for what it carried.
      res.on("close", () => {
        if (res.writableFinished || closed) return;
        record.aborted = true;
        upstream.destroy();
        close(usage.found || (call.stream && usage.output > 0) ? "usage" : "worst").finally(resolve);
      });
      upstream.on("response", (answer) => {
        const status = answer.statusCode ?? 502;
        record.status = status;
        const events = status < 300 && String(answer.headers["content-type"] ?? "").includes("text/event-stream");
        const reader = usageReader(endpoint.kind, events, usage, call.answer ?? undefined);
        const onChunk = (chunk: Buffer) => {
          if (!ttft) ttft = performance.now() - call.started;
          reader.push(chunk);
        };
        const keep = call.journal !== null || call.approval !== null;
        relay(answer, res, { needles, passes: passesBack, maxBytes: MAX_RESPONSE_BYTES, keep, onChunk }).then(
          (relayed) => {
            if ("refused" in relayed) {
              fail(
                "provider_error",
                relayed.refused === "encoding"
                  ? "The model provider answered in an encoding the gateway cannot check."
                  : "The model provider's answer is larger than the gateway passes on.",
              );
              return;
            }
            // Closed already: the caller hung up, or the call failed on the way (see above).
            if (closed) return;
            if (relayed.end !== "whole") {
              fail("provider_error", "The model provider broke off its answer.");
              return;
            }
            if (status >= 300) {
              // The provider's own error and status passed on: the SDKs know what to do with them.
              record.code = status === 429 ? "provider_rate_limited" : "provider_error";
              close("release", `provider ${status}`).finally(resolve);
              return;
            }
            reader.end();
            answered = relayed.kept;
            record.ttft_ms = round(ttft);
            record.latency_ms = round(performance.now() - call.started);
            // The answer went first: its reservation still held the worst case until settled here.
            close(usage.found || (events && usage.output > 0) ? "usage" : "worst").finally(resolve);
          },
        );
      });
      upstream.end(payload);
    });
    return answered;
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
        throw new Refusal(
          "llm_rate_limited",
          `This call may use ${cost} tokens, more than the ${limit.requests} per minute allowed.`,
        );
      }
      const taken = this.#deps.rateLimits.take(key, limit, undefined, cost);
      if (!taken.ok) throw new Refusal("llm_rate_limited", undefined, { "retry-after": String(taken.retryAfterS) });
    }
  }
}

/** Answer headers the caller may see: the provider's account names stay here. */
const passesBack = (name: string): boolean =>
  PASS_RESPONSE.has(name) || name.startsWith("x-ratelimit-") || name.startsWith("anthropic-ratelimit-");

/**
 * The request as sent to the provider: one output limit (clamped to the budget), streams asked for
 * usage, only the client headers that are safe to pass and the provider's key attached.
 */
function upstreamRequest(
  call: LlmCall,
  reservation: Reservation,
  key: string | null,
): { url: URL; headers: Record<string, string>; payload: Buffer } {
  const { endpoint, route, body } = call;
  const out: Record<string, unknown> = { ...body };
  for (const field of OUTPUT_LIMIT_FIELDS) delete out[field];
  out[outputField(endpoint, route)] = reservation.maxOutputTokens;
  if (call.stream && endpoint.kind === "chat") {
    const options = typeof body.stream_options === "object" && body.stream_options !== null ? body.stream_options : {};
    out.stream_options = { ...options, include_usage: true };
  }
  const payload = Buffer.from(JSON.stringify(out));
  const headers: Record<string, string> = {
    "content-type": "application/json",
    "content-length": String(payload.length),
    "accept-encoding": "identity",
  };
  for (const name of PASS_HEADERS) {
    const v = call.req.headers[name];
    if (typeof v === "string") headers[name] = v;
  }
  if (endpoint.api === "anthropic") {
    headers["anthropic-version"] ??= "2023-06-01";
    if (key) headers["x-api-key"] = key;
  } else if (key) headers.authorization = `Bearer ${key}`;
  return { url: new URL(`${route.baseUrl}${endpoint.upstreamPath}`), headers, payload };
}

/** Every field by which one provider or another limits output: all are dropped, one is set. */
const OUTPUT_LIMIT_FIELDS = ["max_tokens", "max_completion_tokens", "max_output_tokens", "n_predict", "max_new_tokens"];

/** The output limit the caller asked for, by whichever field it used (the largest if several). */
function askedOutput(body: Record<string, unknown>): number | undefined {
  const asked = OUTPUT_LIMIT_FIELDS.map((f) => body[f]).filter((v): v is number => typeof v === "number");
  return asked.length > 0 ? Math.floor(Math.max(...asked)) : undefined;
}

/** The field the provider reads: OpenAI's own chat API wants max_completion_tokens, compatible servers max_tokens. */
function outputField(endpoint: Endpoint, route: ModelRoute): string {
  if (endpoint.kind === "responses") return "max_output_tokens";
  if (endpoint.kind === "messages") return "max_tokens";
  return route.kind === "openai" ? "max_completion_tokens" : "max_tokens";
}

/**
 * Refuses what the gateway cannot meter or what would reach outside the sandbox's policy: several
 * choices per call, context stored at the provider, background runs, and the providers' own
 * server-side tools (web search and fetch, MCP servers, code execution), which fetch for the caller.
 */
function checkBody(endpoint: Endpoint, body: Record<string, unknown>): void {
  const refuse = (message: string) => {
    throw new Refusal("validation_failed", message);
  };
  for (const field of ["n", "best_of"]) {
    if (body[field] !== undefined && body[field] !== 1) refuse(`${field} must be 1 through the gateway.`);
  }
  for (const field of ["previous_response_id", "conversation", "prompt", "background", "mcp_servers", "container"]) {
    if (body[field] !== undefined && body[field] !== null && body[field] !== false) {
      refuse(`'${field}' is not supported through the gateway: send the whole context with each call.`);
    }
  }
  if (body.tools !== undefined) {
    if (!Array.isArray(body.tools)) refuse("tools must be a list.");
    for (const tool of body.tools as { type?: unknown }[]) {
      const type = tool?.type;
      const ok =
        endpoint.kind === "messages"
          ? type === undefined || type === "custom"
          : type === "function" || type === "custom";
      if (!ok) {
        refuse(
          `The gateway forwards only the caller's own tools (function, custom), not '${String(type).slice(0, 64)}': a provider's server-side tools would reach outside the sandbox's policy.`,
        );
      }
    }
  }
}

/** Extra input tokens to reserve beyond the request's bytes: images, files and audio, and tool preambles. */
function surcharge(endpoint: Endpoint, body: Record<string, unknown>): number {
  let parts = 0;
  const visit = (value: unknown, depth: number): void => {
    if (depth > 8 || typeof value !== "object" || value === null) return;
    if (Array.isArray(value)) {
      for (const v of value) visit(v, depth + 1);
      return;
    }
    const type = (value as { type?: unknown }).type;
    if (typeof type === "string" && /image|document|file|audio|input_image|input_file/.test(type)) parts++;
    for (const v of Object.values(value)) visit(v, depth + 1);
  };
  visit(endpoint.kind === "responses" ? body.input : body.messages, 0);
  return parts * NON_TEXT_PART_TOKENS + (Array.isArray(body.tools) && body.tools.length > 0 ? TOOL_PREAMBLE_TOKENS : 0);
}

function sendError(res: ServerResponse, e: Refusal): void {
  // Both SDKs read `error.message`; `type` is what Anthropic's clients expect beside it.
  sendJson(res, e.status, { type: "error", error: { code: e.code, type: e.code, message: e.message } }, e.headers);
}

const round = (ms: number) => Math.round(ms * 1000) / 1000;
