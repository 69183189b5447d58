/**
 * The host⇄runner contract. The host writes one RunnerSpec to the runner's stdin; the runner
 * writes RunnerFrame JSON lines to its stdout. The host parses every frame with these schemas and
 * trusts none of it: a frame can only describe the run it came from.
 */
import { z } from "zod";
import { MARKER_PREFIX, MARKER_TYPE_RE } from "./marker.ts";

export const RunnerSpec = z.object({
  command: z.array(z.string()).min(1),
  env: z.record(z.string(), z.string()),
  cwd: z.string(),
  heartbeat_ms: z.number().int().positive(),
  max_line_bytes: z.number().int().positive(),
});
export type RunnerSpec = z.infer<typeof RunnerSpec>;

/** What follows the marker prefix. `type` names the event; `data` is any JSON. */
export const Marker = z
  .object({
    type: z.string().regex(MARKER_TYPE_RE, "1 to 64 letters, digits and _ . : - only"),
    data: z.unknown().optional(),
  })
  .strict();
export type Marker = z.infer<typeof Marker>;

export const RunnerFrame = z.discriminatedUnion("t", [
  z.object({ t: z.literal("hello"), pid: z.number().int() }),
  z.object({ t: z.literal("started"), pid: z.number().int() }),
  z.object({
    t: z.literal("log"),
    stream: z.enum(["stdout", "stderr"]),
    line: z.string(),
    truncated: z.boolean().optional(),
  }),
  z.object({ t: z.literal("event"), type: Marker.shape.type, data: z.unknown().optional() }),
  z.object({ t: z.literal("hb") }),
  z.object({
    t: z.literal("exit"),
    code: z.number().int().nullable(),
    signal: z.string().nullable(),
  }),
  z.object({
    t: z.literal("spawn_error"),
    code: z.string().max(64),
    message: z.string().max(4096),
  }),
]);
export type RunnerFrame = z.infer<typeof RunnerFrame>;

/** Parses one marker payload. Returns null for anything malformed, so callers log it instead. */
export function parseMarker(line: string): Marker | null {
  if (!line.startsWith(MARKER_PREFIX)) return null;
  let value: unknown;
  try {
    value = JSON.parse(line.slice(MARKER_PREFIX.length));
  } catch {
    return null;
  }
  const parsed = Marker.safeParse(value);
  return parsed.success ? parsed.data : null;
}
