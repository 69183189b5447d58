/**
 * The host's Prometheus metrics, one registry per host (two hosts in one process never share
 * one). The services report to it at their seams: the event log (runs created and finished,
 * sandbox starts), the engine (queue wait, run duration), the bridge, the gateway (with the
 * OpenTelemetry GenAI client metrics' names), the ledger, the scheduler, webhooks, the SSE route
 * and every declared API route. Gauges are read when scraped, from memory, except the queued
 * count: one indexed count, given a short time limit so that a scrape under load stays quick.
 *
 * Labels are bounded: a connection or model label is only ever a configured one (a name a
 * sandbox made up is reported as ""), a route is its declared template, an outcome is an error
 * code of the registry or "ok", a tenant label is a tenant id; never a run id.
 */
import { ERROR_CODES, type RunEventData } from "@paddock/protocol";
import { Counter, Gauge, Histogram, Registry } from "prom-client";

/** Seconds, for waits and durations from milliseconds to hours. */
const SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600];
/** The buckets OpenTelemetry's GenAI conventions advise for operation durations and token counts. */
const GENAI_SECONDS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
const GENAI_TOKENS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864];
/** How long a scrape waits for the store's count of queued runs before it reports the last one. */
const STORE_COUNT_BUDGET_MS = 250;

/** What the gauges read at scrape time. */
export interface MetricSources {
  /** This node's runs going, by state. */
  active(): { starting: number; running: number; waiting: number };
  /** Warm sandboxes waiting on this node. */
  warm(): number;
  /** Runs queued in the whole store (the same on every node). */
  queued(): Promise<number>;
}

/** An event as the event log publishes it: its type and its data as stored JSON. */
interface PublishedEvent {
  type: string;
  data: string;
}

/** A run's end as its terminal event says. */
const TERMINAL = new Set(["run.succeeded", "run.failed", "run.timed_out", "run.canceled"]);

export class Metrics {
  readonly registry = new Registry();
  #sources: MetricSources | null = null;
  #queued = 0;
  readonly #created: Counter<"trigger">;
  readonly #finished: Counter<"status" | "reason">;
  readonly #queueWait: Histogram;
  readonly #sandboxStart: Histogram<"warm">;
  readonly #runDuration: Histogram<"status">;
  readonly #bridge: Histogram<"connection" | "outcome">;
  readonly #mcp: Histogram<"server" | "outcome">;
  readonly #genaiDuration: Histogram<
    "gen_ai_provider_name" | "gen_ai_request_model" | "gen_ai_operation_name" | "error_type"
  >;
  readonly #genaiTokens: Histogram<
    "gen_ai_provider_name" | "gen_ai_request_model" | "gen_ai_operation_name" | "gen_ai_token_type"
  >;
  readonly #credits: Counter<"tenant">;
  readonly #schedules: Counter<"outcome">;
  readonly #webhooks: Counter<"outcome">;
  readonly #sse: Gauge;
  readonly #http: Histogram<"method" | "route" | "status_class">;

  constructor(info: { version: string; node: string }) {
    // prom-client's default Node metrics are left out: some of their names fail promtool's lint.
    const registers = [this.registry];
    new Gauge({
      name: "paddock_build_info",
      help: "This node's version and id (always 1)",
      labelNames: ["version", "node"],
      registers,
    }).set({ version: info.version, node: info.node }, 1);
    this.#created = new Counter({
      name: "paddock_runs_created_total",
      help: "Runs queued through this node, by trigger",
      labelNames: ["trigger"],
      registers,
    });
    this.#finished = new Counter({
      name: "paddock_runs_finished_total",
      help: "Runs this node recorded as ended, by status and reason",
      labelNames: ["status", "reason"],
      registers,
    });
    this.#queueWait = new Histogram({
      name: "paddock_run_queue_wait_seconds",
      help: "From queued to claimed by this node, for first attempts",
      buckets: SECONDS,
      registers,
    });
    this.#sandboxStart = new Histogram({
      name: "paddock_sandbox_start_seconds",
      help: "How long a sandbox took to be ready for its run on this node; warm=true when a spare served",
      labelNames: ["warm"],
      buckets: SECONDS,
      registers,
    });
    this.#runDuration = new Histogram({
      name: "paddock_run_duration_seconds",
      help: "How long an attempt ran on this node, from claim to its recorded outcome, by outcome status",
      labelNames: ["status"],
      buckets: SECONDS,
      registers,
    });
    const sources = () => this.#sources;
    new Gauge({
      name: "paddock_runs_active",
      help: "Runs this node executes, by state",
      labelNames: ["state"],
      registers,
      collect() {
        const active = sources()?.active() ?? { starting: 0, running: 0, waiting: 0 };
        this.set({ state: "starting" }, active.starting);
        this.set({ state: "running" }, active.running);
        this.set({ state: "waiting" }, active.waiting);
      },
    });
    const queued = () => this.#countQueued();
    new Gauge({
      name: "paddock_runs_queued",
      help: "Runs queued in the store, waiting for any node (the same on every node)",
      registers,
      async collect() {
        this.set(await queued());
      },
    });
    new Gauge({
      name: "paddock_warm_sandboxes",
      help: "Sandboxes booted ahead and waiting for runs on this node",
      registers,
      collect() {
        this.set(sources()?.warm() ?? 0);
      },
    });
    this.#bridge = new Histogram({
      name: "paddock_bridge_call_duration_seconds",
      help: "Calls through the bridge to connections, by connection and outcome (ok or the refusal's code); _count counts them",
      labelNames: ["connection", "outcome"],
      buckets: SECONDS,
      registers,
    });
    this.#mcp = new Histogram({
      name: "paddock_mcp_call_duration_seconds",
      help: "Requests of runs to MCP servers (tools/call, resources/read, prompts/get), by server and outcome (ok or the error's code); _count counts them",
      labelNames: ["server", "outcome"],
      buckets: SECONDS,
      registers,
    });
    const genai = ["gen_ai_provider_name", "gen_ai_request_model", "gen_ai_operation_name"] as const;
    this.#genaiDuration = new Histogram({
      name: "gen_ai_client_operation_duration_seconds",
      help: "GenAI operation duration: model calls through the gateway (error_type: the refusal's code)",
      labelNames: [...genai, "error_type"],
      buckets: GENAI_SECONDS,
      registers,
    });
    this.#genaiTokens = new Histogram({
      name: "gen_ai_client_token_usage",
      help: "Tokens used per model call through the gateway, by token type (input, output)",
      labelNames: [...genai, "gen_ai_token_type"],
      buckets: GENAI_TOKENS,
      registers,
    });
    this.#credits = new Counter({
      name: "paddock_credits_spent_total",
      help: "Credits this node charged for model calls, by tenant",
      labelNames: ["tenant"],
      registers,
    });
    this.#schedules = new Counter({
      name: "paddock_schedule_fires_total",
      help: "Schedule slots this node handled: started a run, or skipped (overlap) or missed",
      labelNames: ["outcome"],
      registers,
    });
    this.#webhooks = new Counter({
      name: "paddock_webhook_deliveries_total",
      help: "Webhook deliveries received: accepted, duplicate (a delivery id seen before), or the refusal's code",
      labelNames: ["outcome"],
      registers,
    });
    this.#sse = new Gauge({
      name: "paddock_sse_clients",
      help: "Clients following a run's events over server-sent events on this node",
      registers,
    });
    this.#http = new Histogram({
      name: "paddock_http_request_duration_seconds",
      help: "API requests served by this node, by method, declared route and status class",
      labelNames: ["method", "route", "status_class"],
      buckets: SECONDS,
      registers,
    });
  }

  /** Gives the gauges what they read at scrape time (the engine is made after the metrics). */
  watch(sources: MetricSources): void {
    this.#sources = sources;
  }

  /** The registry in Prometheus text format. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The store's count of queued runs, or the last one when it does not answer in time. */
  async #countQueued(): Promise<number> {
    const sources = this.#sources;
    if (!sources) return this.#queued;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), STORE_COUNT_BUDGET_MS);
    });
    const counted = await Promise.race([sources.queued().catch(() => null), late]);
    clearTimeout(timer);
    if (counted !== null) this.#queued = counted;
    return this.#queued;
  }

  /** Events this node committed: runs queued and ended, sandboxes started. */
  published(rows: readonly PublishedEvent[]): void {
    for (const row of rows) {
      if (row.type === "run.queued") {
        this.#created.inc({ trigger: (JSON.parse(row.data) as RunEventData<"run.queued">).trigger ?? "api" });
      } else if (row.type === "run.running") {
        const data = JSON.parse(row.data) as RunEventData<"run.running">;
        this.#sandboxStart.observe({ warm: String(data.warm) }, data.boot_ms / 1000);
      } else if (TERMINAL.has(row.type)) {
        const data = JSON.parse(row.data) as RunEventData<"run.succeeded">;
        this.#finished.inc({ status: data.status, reason: data.reason });
      }
    }
  }

  /** A run's first attempt was claimed by this node, `waitedMs` after it was queued. */
  runClaimed(waitedMs: number): void {
    this.#queueWait.observe(Math.max(0, waitedMs) / 1000);
  }

  /** An attempt on this node ended with `status` after `ms`. */
  attemptEnded(status: string, ms: number): void {
    this.#runDuration.observe({ status }, ms / 1000);
  }

  /**
   * A bridge call ended: `connection` is null when no configured connection was resolved (the
   * name came from the caller), `code` the refusal's code when it was refused.
   */
  bridgeCall(connection: string | null, code: string | undefined, ms: number): void {
    this.#bridge.observe({ connection: connection ?? "", outcome: outcome(code) }, ms / 1000);
  }

  /** A request of a run to an MCP server; `server` null when the run's policy names no such server. */
  mcpCall(server: string | null, code: string | undefined, ms: number): void {
    this.#mcp.observe({ server: server ?? "", outcome: outcome(code) }, ms / 1000);
  }

  /** A model call through the gateway, as its `llm.call` record says. */
  llmCall(call: RunEventData<"llm.call">): void {
    // The model is the caller's text until a provider serves it: only a served model is a label.
    const labels = {
      gen_ai_provider_name: call.provider ?? "",
      gen_ai_request_model: call.provider ? (call.model ?? "") : "",
      gen_ai_operation_name: "chat",
    };
    if (call.latency_ms !== undefined) {
      this.#genaiDuration.observe({ ...labels, error_type: call.code ?? "" }, call.latency_ms / 1000);
    }
    if (call.input_tokens !== undefined) {
      this.#genaiTokens.observe({ ...labels, gen_ai_token_type: "input" }, call.input_tokens);
    }
    if (call.output_tokens !== undefined) {
      this.#genaiTokens.observe({ ...labels, gen_ai_token_type: "output" }, call.output_tokens);
    }
  }

  /** Micro-credits charged to a tenant. */
  creditsSpent(tenantId: string, micro: number): void {
    if (micro > 0) this.#credits.inc({ tenant: tenantId }, micro / 1_000_000);
  }

  scheduleFired(outcome: "started" | "skipped" | "missed"): void {
    this.#schedules.inc({ outcome });
  }

  webhookDelivery(outcome: string): void {
    this.#webhooks.inc({ outcome });
  }

  /** A client started following events; the returned function says it stopped. */
  sseOpened(): () => void {
    this.#sse.inc();
    let open = true;
    return () => {
      if (open) this.#sse.dec();
      open = false;
    };
  }

  /** An API request to a declared route (its template, never the URL) answered `status`. */
  httpRequest(method: string, route: string, status: number, ms: number): void {
    this.#http.observe(
      { method: method.toUpperCase(), route, status_class: `${Math.floor(status / 100)}xx` },
      ms / 1000,
    );
  }
}

/** An outcome label: "ok", or a registered error code (anything else is "internal"). */
function outcome(code: string | undefined): string {
  if (code === undefined) return "ok";
  return code in ERROR_CODES ? code : "internal";
}
