/**
 * The span of one bridge call, after the OpenTelemetry HTTP client conventions, plus the
 * connection it went through and, for a call the host refused, the refusal's code. The upstream's
 * query is left out (a connection may carry its secret there), like every header.
 */
import type { ErrorCode, RunEventData } from "@paddock/protocol";
import type { SpanParent } from "../tracing/trace-context.ts";
import type { Tracing } from "../tracing/tracing.ts";

const METHODS = new Set(["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]);
/** Codes of calls that reached the upstream or tried to: every other code is the host refusing the call. */
const UPSTREAM_FAILURES: ReadonlySet<ErrorCode> = new Set([
  "upstream_error",
  "upstream_timeout",
  "upstream_too_large",
  "internal",
]);

/** What a finished bridge call tells its span. */
export interface BridgeCallSpan {
  /** The `bridge.call` event's data, as recorded. */
  record: RunEventData<"bridge.call">;
  runId: string;
  startMs: number;
  endMs: number;
  /** The connection's upstream base URL, once the connection was found. */
  upstream: string | null;
}

/** Records the call's span under `parent`. */
export function recordBridgeSpan(tracing: Tracing, parent: SpanParent, call: BridgeCallSpan): void {
  const { record } = call;
  const method = METHODS.has(record.method) ? record.method : "_OTHER";
  const base = call.upstream ? new URL(call.upstream) : null;
  const denied = record.code !== undefined && !UPSTREAM_FAILURES.has(record.code);
  const error = record.code ?? (record.status >= 400 ? String(record.status) : undefined);
  tracing.record(parent, {
    name: record.rule ? `${method} ${record.rule}` : method,
    kind: "client",
    startMs: call.startMs,
    endMs: call.endMs,
    attributes: {
      "http.request.method": method,
      "http.request.method_original": method === record.method ? undefined : record.method.slice(0, 32),
      "http.response.status_code": record.status,
      "http.request.body.size": record.bytes_in,
      "http.response.body.size": record.bytes_out,
      "url.template": record.rule,
      "url.full":
        base && record.path ? `${base.origin}${base.pathname === "/" ? "" : base.pathname}${record.path}` : undefined,
      "server.address": base?.hostname,
      "server.port": base ? Number(base.port || (base.protocol === "https:" ? 443 : 80)) : undefined,
      "paddock.run.id": call.runId,
      "paddock.bridge.connection": record.connection,
      "paddock.bridge.denied": denied,
      "paddock.bridge.denial": denied ? record.code : undefined,
      "paddock.bridge.redacted": record.redacted,
      "paddock.bridge.replayed": record.replayed,
    },
    ...(error ? { error } : {}),
  });
}

/** What a finished MCP request through a run's endpoint tells its span. */
export interface McpCallSpan {
  record: RunEventData<"mcp.call">;
  runId: string;
  startMs: number;
  endMs: number;
  /** The server's URL, once the server was found. */
  url: string | null;
}

/** Records the span of one MCP request (`tools/call {tool}`, after the OpenTelemetry MCP conventions) under `parent`. */
export function recordMcpSpan(tracing: Tracing, parent: SpanParent, call: McpCallSpan): void {
  const { record } = call;
  const base = call.url ? new URL(call.url) : null;
  const denied = record.code !== undefined && !MCP_SERVER_FAILURES.has(record.code);
  tracing.record(parent, {
    name: `${record.method} ${record.tool}`,
    kind: "client",
    startMs: call.startMs,
    endMs: call.endMs,
    attributes: {
      "mcp.method.name": record.method,
      "gen_ai.tool.name": record.method === "tools/call" ? record.tool : undefined,
      "server.address": base?.hostname,
      "paddock.run.id": call.runId,
      "paddock.mcp.server": record.server,
      "paddock.mcp.bytes": record.bytes,
      "paddock.mcp.denied": denied,
      "paddock.mcp.denial": denied ? record.code : undefined,
      "paddock.mcp.replayed": record.replayed,
    },
    ...(record.code ? { error: record.code } : record.status === "tool_error" ? { error: "tool_error" } : {}),
  });
}

/** Codes of MCP requests that reached the server or tried to. */
const MCP_SERVER_FAILURES: ReadonlySet<ErrorCode> = new Set([
  "mcp_server_unavailable",
  "mcp_server_timeout",
  "mcp_server_error",
  "mcp_result_too_large",
  "mcp_unsupported_request",
  "internal",
]);
