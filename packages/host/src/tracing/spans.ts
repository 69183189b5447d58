/**
 * What the host's code and the OpenTelemetry side (otel.ts) agree on: spans, their attributes,
 * and the Tracing service. No tracing library is imported here.
 */
import type { SpanParent } from "./trace-context.ts";

/** An attribute's value as OpenTelemetry takes it; null and undefined leave the attribute out. */
export type AttributeValue = string | number | boolean | string[] | number[];
export type SpanAttributes = Record<string, AttributeValue | null | undefined>;

/** OpenTelemetry's span kinds used here. */
export type SpanKind = "internal" | "client";

/** A span's name and what it says, and when it started (epoch milliseconds, fractions allowed; default now). */
export interface SpanSpec {
  name: string;
  kind?: SpanKind;
  attributes?: SpanAttributes;
  startMs?: number;
}

/** A span that is over: when it ended (default now), and its error type when it failed. */
export interface FinishedSpan extends SpanSpec {
  endMs?: number;
  /** Sets `error.type` and the span's status to error. */
  error?: string;
  /** The status message beside an error (never a secret: spans leave the host). */
  message?: string;
}

/** A span going on: children hang under `ref` until it ends. */
export interface OpenSpan {
  /** The span's own ids, the parent of spans made under it. */
  readonly ref: SpanParent & { spanId: string };
  rename(name: string): void;
  set(attributes: SpanAttributes): void;
  /** Marks it failed: `error.type` and an error status. */
  fail(errorType: string, message?: string): void;
  /** Ends it (at `endMs`, default now); later calls do nothing. */
  end(endMs?: number): void;
}

export interface Tracing {
  /** Whether prompt and completion content go into spans (`serve --trace-content`). */
  readonly content: boolean;
  /**
   * Spans that never reached the collector: it could not be reached or refused them, or more were
   * waiting than the host keeps. Runs never wait on the collector.
   */
  readonly droppedSpans: number;
  /** Starts a span under `parent`. */
  start(parent: SpanParent, span: SpanSpec): OpenSpan;
  /** Records a span that is over already. */
  record(parent: SpanParent, span: FinishedSpan): void;
  /** Sends every ended span now; resolves once the collector answered or the export gave up. */
  flush(): Promise<void>;
  /** Sends what is left (waiting a few seconds at most) and stops. */
  close(): Promise<void>;
}

export interface TracingOptions {
  /** The OTLP/HTTP endpoint's base URL (OTEL_EXPORTER_OTLP_ENDPOINT); traces go to its /v1/traces. */
  endpoint: string;
  /** Prompt and completion content in spans. */
  content: boolean;
  /** The resource: service.version and service.instance.id (the node). */
  version: string;
  nodeId: string;
  log: (line: string) => void;
  /** How long one export may take, retries included (default the exporter's, 10 s). */
  exportTimeoutMs?: number;
}
