/**
 * Tracing over the OpenTelemetry SDK, exported as OTLP/HTTP (JSON) to the configured endpoint.
 * Imported only by openTracing, when an endpoint is set.
 *
 * A run's work never waits on the collector: ended spans go into a bounded queue, sent in
 * batches one export at a time. A batch the collector refuses or cannot take (down, timing out),
 * and a span that finds the queue full, is dropped and counted (`droppedSpans`); the first drop
 * of an outage is logged, and so is the collector's recovery.
 */
import {
  type Attributes,
  type Context,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  trace,
} from "@opentelemetry/api";
import { ExportResultCode } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from "@opentelemetry/resources";
import {
  type IdGenerator,
  RandomIdGenerator,
  type ReadableSpan,
  type SpanExporter,
  type SpanProcessor,
  TracerProvider,
} from "@opentelemetry/sdk-trace";
import type {
  FinishedSpan,
  OpenSpan,
  SpanKind as OurKind,
  SpanAttributes,
  SpanSpec,
  Tracing,
  TracingOptions,
} from "./spans.ts";
import type { SpanParent } from "./trace-context.ts";

/** Ended spans kept while an export is on its way; more are dropped. */
const MAX_QUEUE = 4096;
/** Spans per export. */
const BATCH = 512;
/** How long an ended span may wait for a batch to fill. */
const DELAY_MS = 1000;
/** How long closing waits for the last spans to go out. */
const CLOSE_WAIT_MS = 3000;
/**
 * The longest attribute value sent (prompt content above all): a span past a collector's request
 * size limit would have its whole batch refused.
 */
const MAX_ATTRIBUTE_CHARS = 128 * 1024;

const KINDS: Record<OurKind, SpanKind> = { internal: SpanKind.INTERNAL, client: SpanKind.CLIENT };

/**
 * Trace ids as the host chooses them: a root span takes the id its run's trace has (see
 * trace-context.ts) when one is pinned just before it starts, a random one otherwise.
 */
class PinnedTraceIds implements IdGenerator {
  readonly #random = new RandomIdGenerator();
  pinned: string | null = null;

  generateTraceId(): string {
    const id = this.pinned ?? this.#random.generateTraceId();
    this.pinned = null;
    return id;
  }

  generateSpanId(): string {
    return this.#random.generateSpanId();
  }
}

/** Batches ended spans to the exporter, one export at a time, counting what is dropped. */
class DroppingBatches implements SpanProcessor {
  readonly #exporter: SpanExporter;
  readonly #log: (line: string) => void;
  readonly #where: string;
  #queue: ReadableSpan[] = [];
  #sending: Promise<void> | null = null;
  #timer: NodeJS.Timeout | null = null;
  #failing = false;
  #droppedInOutage = 0;
  dropped = 0;

  constructor(exporter: SpanExporter, where: string, log: (line: string) => void) {
    this.#exporter = exporter;
    this.#where = where;
    this.#log = log;
  }

  onStart(): void {}

  onEnd(span: ReadableSpan): void {
    if ((span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return;
    if (this.#queue.length >= MAX_QUEUE) {
      this.#drop(1, "more spans were waiting than the host keeps");
      return;
    }
    this.#queue.push(span);
    if (this.#queue.length >= BATCH) this.#send();
    else this.#timer ??= setTimeout(() => this.#send(), DELAY_MS).unref();
  }

  /** Sends the next batch unless one is on its way; the next follows once it is answered. */
  #send(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#sending || this.#queue.length === 0) return;
    const batch = this.#queue.splice(0, BATCH);
    this.#sending = new Promise<void>((resolve) => {
      try {
        this.#exporter.export(batch, (result) => {
          if (result.code === ExportResultCode.SUCCESS) this.#recovered();
          else this.#drop(batch.length, result.error?.message ?? "the export failed");
          resolve();
        });
      } catch (err) {
        this.#drop(batch.length, err instanceof Error ? err.message : String(err));
        resolve();
      }
    }).finally(() => {
      this.#sending = null;
      if (this.#queue.length >= BATCH) this.#send();
      else if (this.#queue.length > 0) this.#timer ??= setTimeout(() => this.#send(), DELAY_MS).unref();
    });
  }

  #drop(count: number, why: string): void {
    this.dropped += count;
    this.#droppedInOutage += count;
    if (this.#failing) return;
    this.#failing = true;
    this.#log(`tracing: spans for ${this.#where} are dropped (${why}); runs go on, the count is kept`);
  }

  #recovered(): void {
    if (!this.#failing) return;
    this.#log(`tracing: ${this.#where} takes spans again; ${this.#droppedInOutage} were dropped meanwhile`);
    this.#failing = false;
    this.#droppedInOutage = 0;
  }

  async forceFlush(): Promise<void> {
    while (this.#sending || this.#queue.length > 0) {
      this.#send();
      await this.#sending;
    }
  }

  async shutdown(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, CLOSE_WAIT_MS).unref();
    });
    await Promise.race([this.forceFlush(), waited]);
    clearTimeout(timer);
    if (this.#queue.length > 0) this.#drop(this.#queue.splice(0).length, "the host stopped before they were sent");
    await this.#exporter.shutdown().catch(() => {});
  }
}

/** A span as the host's code holds it. */
class Open implements OpenSpan {
  readonly #span: Span;
  readonly ref: SpanParent & { spanId: string };

  constructor(span: Span) {
    this.#span = span;
    const context = span.spanContext();
    this.ref = {
      traceId: context.traceId,
      spanId: context.spanId,
      sampled: (context.traceFlags & TraceFlags.SAMPLED) !== 0,
    };
  }

  rename(name: string): void {
    this.#span.updateName(name);
  }

  set(attributes: SpanAttributes): void {
    this.#span.setAttributes(clean(attributes));
  }

  fail(errorType: string, message?: string): void {
    this.#span.setAttribute("error.type", errorType);
    this.#span.setStatus({ code: SpanStatusCode.ERROR, ...(message ? { message } : {}) });
  }

  end(endMs?: number): void {
    this.#span.end(endMs);
  }
}

/** Attributes without the empty ones. */
function clean(attributes: SpanAttributes | undefined): Attributes {
  const out: Attributes = {};
  for (const [key, value] of Object.entries(attributes ?? {}))
    if (value !== null && value !== undefined) out[key] = value;
  return out;
}

export class OtelTracing implements Tracing {
  readonly content: boolean;
  readonly #ids = new PinnedTraceIds();
  readonly #batches: DroppingBatches;
  readonly #provider: TracerProvider;
  readonly #tracer: ReturnType<TracerProvider["getTracer"]>;

  constructor(options: TracingOptions) {
    this.content = options.content;
    const url = `${options.endpoint.replace(/\/+$/, "")}/v1/traces`;
    const exporter = new OTLPTraceExporter({
      url,
      ...(options.exportTimeoutMs ? { timeoutMillis: options.exportTimeoutMs } : {}),
    });
    this.#batches = new DroppingBatches(exporter, url, options.log);
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, say more than these defaults.
    const resource = defaultResource()
      .merge(
        resourceFromAttributes({
          "service.name": "paddock",
          "service.version": options.version,
          "service.instance.id": options.nodeId,
        }),
      )
      .merge(detectResources({ detectors: [envDetector] }));
    this.#provider = new TracerProvider({
      resource,
      idGenerator: this.#ids,
      spanProcessors: [this.#batches],
      spanLimits: { attributeValueLengthLimit: MAX_ATTRIBUTE_CHARS },
    });
    this.#tracer = this.#provider.getTracer("paddock", options.version);
  }

  get droppedSpans(): number {
    return this.#batches.dropped;
  }

  start(parent: SpanParent, spec: SpanSpec): OpenSpan {
    return new Open(this.#begin(parent, spec));
  }

  record(parent: SpanParent, spec: FinishedSpan): void {
    const span = this.#begin(parent, spec);
    if (spec.error) {
      span.setAttribute("error.type", spec.error);
      span.setStatus({ code: SpanStatusCode.ERROR, ...(spec.message ? { message: spec.message } : {}) });
    }
    span.end(spec.endMs);
  }

  #begin(parent: SpanParent, spec: SpanSpec): Span {
    let context: Context = ROOT_CONTEXT;
    if (parent.spanId) {
      context = trace.setSpanContext(ROOT_CONTEXT, {
        traceId: parent.traceId,
        spanId: parent.spanId,
        traceFlags: parent.sampled === false ? TraceFlags.NONE : TraceFlags.SAMPLED,
        isRemote: true,
      });
    } else this.#ids.pinned = parent.traceId;
    try {
      return this.#tracer.startSpan(
        spec.name,
        {
          kind: KINDS[spec.kind ?? "internal"],
          attributes: clean(spec.attributes),
          ...(spec.startMs !== undefined ? { startTime: spec.startMs } : {}),
        },
        context,
      );
    } finally {
      this.#ids.pinned = null;
    }
  }

  flush(): Promise<void> {
    return this.#batches.forceFlush();
  }

  close(): Promise<void> {
    return this.#provider.shutdown();
  }
}
