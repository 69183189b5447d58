/**
 * Agent markers, checked without any dependency so that the runner (which must start fast inside
 * every sandbox) need not load zod. `Marker` in runner.ts is the same rule as a schema; a test
 * holds the two to the same answers. The host re-checks every event with the schema regardless.
 */

/** The stdout prefix by which an agent emits a structured event. */
export const MARKER_PREFIX = "::paddock::";
export const MARKER_TYPE_RE = /^[a-zA-Z0-9_.:-]{1,64}$/;

export interface MarkerValue {
  type: string;
  data?: unknown;
}

/** Parses `::paddock::{"type":…,"data":…}`. Returns null for anything malformed. */
export function parseMarkerLine(line: string): MarkerValue | null {
  if (!line.startsWith(MARKER_PREFIX)) return null;
  let value: unknown;
  try {
    value = JSON.parse(line.slice(MARKER_PREFIX.length));
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  const keys = Object.keys(value);
  if (keys.some((k) => k !== "type" && k !== "data")) return null;
  const { type, data } = value as { type?: unknown; data?: unknown };
  if (typeof type !== "string" || !MARKER_TYPE_RE.test(type)) return null;
  return keys.includes("data") ? { type, data } : { type };
}
