/**
 * The host's traces, as the rest of the host sees them: spans started and ended, or recorded once
 * they are over, under a parent given as plain ids (see trace-context.ts). The OpenTelemetry SDK
 * and its OTLP/HTTP exporter sit behind this interface in otel.ts, which is imported only when
 * an OTLP endpoint is configured: a host without one loads none of it, and its services get
 * `null` instead of a Tracing, so a call on their path costs one comparison.
 *
 * What the spans say (names, attributes) is decided where the work happens: the engine's
 * attempts, the gateway's model calls, the bridge's calls. This module only carries spans out.
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

/**
 * The host's tracing when an endpoint is configured, else null. The SDK is loaded here, on
 * first use, and only then.
 * @example const tracing = await openTracing({ endpoint: "http://127.0.0.1:4318", content: false, version, nodeId, log });
 */
export async function openTracing(
  options: Omit<TracingOptions, "endpoint"> & { endpoint?: string | undefined },
): Promise<Tracing | null> {
  const { endpoint } = options;
  if (!endpoint) return null;
  const { OtelTracing } = await import("./otel.ts");
  return new OtelTracing({ ...options, endpoint });
}

/** Epoch milliseconds now, to a microsecond. */
export const epochMs = (): number => performance.timeOrigin + performance.now();

/** Epoch milliseconds of a `performance.now()` reading. */
export const epochOf = (perfMs: number): number => performance.timeOrigin + perfMs;
