/** Text formatting for terminal output: the run timeline, tables, sizes and durations. */
import type { RunEvent } from "@paddock/protocol";

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

function record(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

/** The outcome part of a run or attempt event: "succeeded (completed, exit 0)". */
function outcome(data: Record<string, unknown>, fallback: string): string {
  const status = typeof data.status === "string" ? data.status : fallback;
  const details: string[] = [];
  if (typeof data.reason === "string" && data.reason !== status) details.push(data.reason);
  if (typeof data.exit_code === "number") details.push(`exit ${data.exit_code}`);
  if (typeof data.signal === "string") details.push(data.signal);
  if (typeof data.message === "string") details.push(data.message);
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
export function summarizeEvent(event: RunEvent): string {
  return printable(rawSummary(event));
}

function rawSummary(event: RunEvent): string {
  const data = record(event.data);
  switch (event.type) {
    case "log": {
      const stream = typeof data.stream === "string" ? data.stream : "log";
      const line = typeof data.line === "string" ? data.line : compactJson(event.data);
      return `[${stream}] ${line}${data.truncated === true ? " [truncated]" : ""}`;
    }
    case "user": {
      const type = typeof data.type === "string" ? data.type : "event";
      return data.data === undefined ? type : `${type} ${compactJson(data.data)}`;
    }
    case "artifact.created": {
      const path = typeof data.path === "string" ? data.path : "?";
      return typeof data.size === "number" ? `${path} (${formatSize(data.size)})` : path;
    }
    case "artifact.skipped":
      return `${typeof data.path === "string" ? data.path : "?"}: ${typeof data.why === "string" ? data.why : "skipped"}`;
    case "attempt.started":
      return `attempt ${event.attempt}`;
    case "attempt.finished":
      return `attempt ${event.attempt}: ${outcome(data, "finished")}`;
    case "attempt.error":
      return `${typeof data.stage === "string" ? `${data.stage}: ` : ""}${typeof data.message === "string" ? data.message : compactJson(event.data)}`;
    default:
      if (event.type.startsWith("run.")) return outcome(data, event.type.slice(4));
      return compactJson(event.data);
  }
}

export interface TimelineOptions {
  /** Milliseconds since the epoch that "+0.000s" stands for: the run's first event. */
  origin: number;
  /** Print the event's ISO time instead of the time since origin. */
  absolute?: boolean;
}

/** One timeline line: `+1.234s  <type padded>  <summary>`. */
export function formatTimelineLine(event: RunEvent, options: TimelineOptions): string {
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

  line(event: RunEvent): string {
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
