/**
 * The host's log: every part writes a line of text, with the run, tenant or trace it concerns
 * when known; the sink writes it as one JSON object a line (pino) or as text for people
 * (`<ISO time> <line>`). Threat model: a line may quote an error whose message carries a key or
 * token the host was handed. Call sites never log secret values; as a second line of defence the
 * sink replaces what has the shape of an API key, a run token (a JWT) or a bearer credential.
 */
import { pino } from "pino";

/** What a line concerns, when the caller knows it. */
export interface LogFields {
  run_id?: string;
  tenant_id?: string;
  agent_id?: string;
  attempt?: number;
  trace_id?: string;
}

/** Where the host's parts write their lines. */
export type Log = (line: string, fields?: LogFields) => void;

export type LogFormat = "json" | "pretty";

/** API keys (pdk.<id>.<secret>), JWTs (run tokens) and bearer credentials, wherever they appear. */
const SECRET_SHAPES: [RegExp, string][] = [
  [/\bpdk\.[\w-]+\.[\w-]+/g, "pdk.[redacted]"],
  [/\beyJ[\w-]*\.[\w-]+\.[\w-]*/g, "[redacted token]"],
  [/\b(bearer|basic)\s+[\w.~+/=-]+/gi, "$1 [redacted]"],
];

/** `text` with anything shaped like a key or token replaced. */
export function scrub(text: string): string {
  let out = text;
  for (const [shape, replacement] of SECRET_SHAPES) out = out.replace(shape, replacement);
  return out;
}

/**
 * A log sink: JSON lines with `node` and the line's fields, or today's text lines, written to
 * `destination` (default stderr, synchronously, so nothing is lost when the process ends).
 * @example const log = createLog({ format: "json", node: "n1" }); log("run x: started", { run_id: "x" });
 */
export function createLog(options: {
  format: LogFormat;
  node: string;
  destination?: { write(chunk: string): unknown };
}): Log {
  const destination = options.destination ?? pino.destination({ dest: 2, sync: true });
  if (options.format === "pretty") {
    return (line) => void destination.write(`${new Date().toISOString()} ${scrub(line)}\n`);
  }
  const logger = pino(
    {
      base: { node: options.node },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
  return (line, fields) => {
    if (!fields) return logger.info(scrub(line));
    const safe: Record<string, string | number> = {};
    for (const [key, value] of Object.entries(fields)) {
      if (value !== undefined) safe[key] = typeof value === "string" ? scrub(value) : value;
    }
    logger.info(safe, scrub(line));
  };
}

/** The default format: JSON for machines, text when a person watches stderr. */
export const defaultLogFormat = (): LogFormat => (process.stderr.isTTY ? "pretty" : "json");
