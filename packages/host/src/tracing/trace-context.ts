/**
 * Where a run's spans belong, without any tracing library: W3C `traceparent` values read and
 * written, and the trace of a run. A run keeps one trace for its whole tree and every attempt,
 * on any node and after any restart: the `traceparent` stored on its row when it has one (a
 * caller's, given on the API, or for a child run the span of the parent's attempt that started
 * it), else a trace id derived from the root run's id.
 */
import { createHash } from "node:crypto";

/** Where a span hangs: its trace, and the span it is a child of (null: a root span of that trace). */
export interface SpanParent {
  /** 32 lowercase hex digits, not all zero. */
  traceId: string;
  /** 16 lowercase hex digits, not all zero; null for a root span. */
  spanId: string | null;
  /** Whether the parent is sampled (a caller may say it is not); default true. */
  sampled?: boolean;
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
const ZERO_TRACE = "0".repeat(32);
const ZERO_SPAN = "0".repeat(16);

/**
 * A W3C `traceparent` header (version 00) as a span parent; null for anything else, which the
 * W3C Trace Context recommendation says to ignore (a new trace starts).
 * @example parseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")?.spanId // "00f067aa0ba902b7"
 */
export function parseTraceparent(header: string | null | undefined): (SpanParent & { spanId: string }) | null {
  const match = TRACEPARENT.exec(header?.trim().toLowerCase() ?? "");
  if (!match) return null;
  const [, traceId, spanId, flags] = match as unknown as [string, string, string, string];
  if (traceId === ZERO_TRACE || spanId === ZERO_SPAN) return null;
  return { traceId, spanId, sampled: (Number.parseInt(flags, 16) & 1) === 1 };
}

/** A span's context as a W3C `traceparent` value. */
export function formatTraceparent(span: { traceId: string; spanId: string; sampled?: boolean }): string {
  return `00-${span.traceId}-${span.spanId}-${span.sampled === false ? "00" : "01"}`;
}

/** The trace id of a root run that was given none: the same on every node, for every attempt. */
export function traceIdOfRun(rootRunId: string): string {
  const id = createHash("sha256").update(`paddock-trace:${rootRunId}`).digest("hex").slice(0, 32);
  return id === ZERO_TRACE ? `${id.slice(0, 31)}1` : id;
}

/** Where the spans of a run's attempts hang: under its stored `traceparent`, or as roots of its tree's trace. */
export function runTraceParent(run: {
  id: string;
  root_run_id: string | null;
  trace_parent: string | null;
}): SpanParent {
  return parseTraceparent(run.trace_parent) ?? { traceId: traceIdOfRun(run.root_run_id ?? run.id), spanId: null };
}
