/** Text formatting for terminal output: the run timeline, tables, sizes and durations. */
import { isKnownEvent, type RunEventRead } from "@paddock/protocol";

/** Width of the event-type column; fits every built-in type ("artifact.created"). */
const TYPE_WIDTH = 16;
/** Width of the relative-time column ("+123.456s"). */
const TIME_WIDTH = 9;

/** Bytes as a short human figure: 512 B, 2.1 KiB, 3.4 MiB. */
export function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** Milliseconds as seconds with millisecond precision: 1234 → "1.234s". */
export function formatSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(3)}s`;
}

/** JSON on one line (undefined → ""). */
export function compactJson(value: unknown): string {
  return value === undefined ? "" : (JSON.stringify(value) ?? "");
}

/** The outcome part of a run or attempt event: "succeeded (completed, exit 0)". */
function outcome(status: string, reason?: string, exitCode?: number | null): string {
  const details: string[] = [];
  if (reason !== undefined && reason !== status) details.push(reason);
  if (typeof exitCode === "number") details.push(`exit ${exitCode}`);
  return details.length > 0 ? `${status} (${details.join(", ")})` : status;
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point.
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;

/**
 * Text from a sandbox, made safe for a terminal: control characters (escape sequences that could
 * retitle, recolour or rewrite the operator's screen) are shown as \xNN instead.
 */
export function printable(text: string): string {
  return text.replace(CONTROL, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

/** The one-line summary of an event, as shown after its type in the timeline (terminal-safe). */
export function summarizeEvent(event: RunEventRead): string {
  return printable(rawSummary(event));
}

function rawSummary(event: RunEventRead): string {
  // A type this build does not know (a newer host's): its data as JSON, after the type column.
  if (!isKnownEvent(event)) return compactJson(event.data);
  switch (event.type) {
    case "log": {
      const { stream, line, truncated } = event.data;
      return `[${stream}] ${line}${truncated === true ? " [truncated]" : ""}`;
    }
    case "user": {
      const { type, data } = event.data;
      return data === undefined ? type : `${type} ${compactJson(data)}`;
    }
    case "artifact.created":
      return `${event.data.path} (${formatSize(event.data.size)})`;
    case "artifact.skipped":
      return "more" in event.data ? `${event.data.more} more` : `${event.data.path}: ${event.data.why}`;
    case "attempt.started":
      return `attempt ${event.attempt}`;
    case "attempt.finished":
      return `attempt ${event.attempt}: ${outcome(event.data.status, event.data.reason, event.data.exit_code)}`;
    case "attempt.error":
      return `${event.data.stage}: ${event.data.message}`;
    case "run.queued":
    case "run.starting":
    case "run.running":
    case "run.requeued":
      return event.data.status;
    case "run.succeeded":
    case "run.failed":
    case "run.timed_out":
    case "run.canceled":
      return outcome(event.data.status, event.data.reason, event.data.exit_code);
    case "run.waiting":
      return `waiting (${event.data.reason} ${event.data.approval_id})`;
    case "run.resumed":
      return `running (waited ${formatSeconds(event.data.waited_ms)})`;
    case "approval.requested": {
      const { approval_id, request } = event.data;
      return `${approval_id}: ${request.kind} ${request.target} ${request.method} ${request.path}${request.query ? `?${request.query}` : ""}`;
    }
    case "approval.decided": {
      const { approval_id, status, via, note } = event.data;
      return `${approval_id}: ${status} (${via})${note ? `: ${note}` : ""}`;
    }
    case "run.cancel_requested":
    case "run.expired":
    case "run.parent":
      return event.type.slice(4);
    case "attempt.lost":
    case "attempt.protocol_errors":
    case "retry.scheduled":
    case "runner.swapped":
    case "snapshot.created":
    case "log.truncated":
    case "log.dropped":
    case "events.truncated":
    case "bridge.call":
    case "mcp.call":
    case "llm.call":
    case "credits.exhausted":
    case "agent.call":
    case "agent.called":
    case "journal.diverged":
    case "schedule.fired":
    case "webhook.received":
    case "account.refreshed":
      return compactJson(event.data);
    default:
      return unknownType(event);
  }
}

/** Every known event type has its case above: a new type fails to compile until it has one. */
function unknownType(event: never): string {
  return compactJson((event as { data?: unknown }).data);
}

export interface TimelineOptions {
  /** Milliseconds since the epoch that "+0.000s" stands for: the run's first event. */
  origin: number;
  /** Print the event's ISO time instead of the time since origin. */
  absolute?: boolean;
}

/** One timeline line: `+1.234s  <type padded>  <summary>`. */
export function formatTimelineLine(event: RunEventRead, options: TimelineOptions): string {
  const time = Date.parse(event.time);
  const when = options.absolute
    ? event.time
    : `+${formatSeconds(Number.isNaN(time) ? 0 : Math.max(0, time - options.origin))}`.padEnd(TIME_WIDTH);
  return `${when}  ${printable(event.type).padEnd(TYPE_WIDTH)}  ${summarizeEvent(event)}`;
}

/** Formats events as a timeline, remembering the first event's time as the origin. */
export class Timeline {
  #origin: number | null = null;
  readonly #absolute: boolean;

  constructor(options: { absolute?: boolean } = {}) {
    this.#absolute = options.absolute ?? false;
  }

  line(event: RunEventRead): string {
    if (this.#origin === null) {
      const time = Date.parse(event.time);
      this.#origin = Number.isNaN(time) ? Date.now() : time;
    }
    return formatTimelineLine(event, { origin: this.#origin, absolute: this.#absolute });
  }
}

/** Left-aligned columns separated by two spaces; the last column is not padded. */
export function formatRows(rows: string[][]): string {
  const columns = Math.max(0, ...rows.map((row) => row.length));
  const widths = Array.from({ length: columns }, (_, i) => Math.max(...rows.map((row) => (row[i] ?? "").length)));
  return rows
    .map((row) =>
      row
        .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/**
 * Help rows `[name, summary]`, indented two spaces: the summaries start two spaces after the
 * longest name, or after `maxName` characters; a name longer than that has its summary on the
 * next line, at the same column, as option lists do.
 * @example formatHelpRows([["run", "start a run"], ["logs", "print a run's logs"]]) // "  run   start a run\n  logs  …"
 */
export function formatHelpRows(
  rows: readonly (readonly [string, string])[],
  maxName = Number.POSITIVE_INFINITY,
): string {
  const width = Math.min(maxName, Math.max(0, ...rows.map(([name]) => name.length))) + 2;
  return rows
    .map(([name, summary]) =>
      name.length + 2 > width ? `  ${name}\n  ${" ".repeat(width)}${summary}` : `  ${name.padEnd(width)}${summary}`,
    )
    .join("\n");
}

/** A table: a header row, then the rows, in aligned columns. */
export function formatTable(header: string[], rows: string[][]): string {
  return formatRows([header, ...rows]);
}

/** The time between two ISO timestamps, or "" when either is missing. */
export function formatDuration(from: string | null, to: string | null): string {
  if (!from || !to) return "";
  const ms = Date.parse(to) - Date.parse(from);
  return Number.isNaN(ms) ? "" : formatSeconds(ms);
}
