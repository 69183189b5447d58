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
import type { Tracing, TracingOptions } from "./spans.ts";

export type {
  AttributeValue,
  FinishedSpan,
  OpenSpan,
  SpanAttributes,
  SpanKind,
  SpanSpec,
  Tracing,
  TracingOptions,
} from "./spans.ts";

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
