/**
 * The runs list's filters, kept in the page's URL (so a filtered view can be bookmarked, shared and
 * reloaded) and turned into the list endpoint's query.
 */
import type { RunStatus } from "@paddock/protocol";
import type { Query } from "./api.ts";

export const STATUSES: readonly RunStatus[] = [
  "queued",
  "starting",
  "running",
  "waiting",
  "succeeded",
  "failed",
  "timed_out",
  "canceled",
];
/** What may start a run (the API's RunTrigger). */
export const TRIGGERS = ["api", "schedule", "webhook", "agent", "replay"] as const;
/** Time ranges offered as presets, back from now. */
export const RANGES = { "1h": 3600_000, "24h": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000 } as const;
export type RangePreset = keyof typeof RANGES;

export interface RunFilters {
  status: RunStatus | "";
  /** An agent's id. */
  agent: string;
  trigger: (typeof TRIGGERS)[number] | "";
  /** A preset back from now; or `from`/`to`. */
  range: RangePreset | "";
  /** Absolute bounds (ISO 8601); ignored while a preset is chosen. */
  from: string;
  to: string;
  parent: string;
  root: string;
  /** The start of a run id. */
  q: string;
  /** The page: the list's cursor. */
  cursor: string;
}

export const NO_FILTERS: RunFilters = {
  status: "",
  agent: "",
  trigger: "",
  range: "",
  from: "",
  to: "",
  parent: "",
  root: "",
  q: "",
  cursor: "",
};

const ID_PART = /^[a-z0-9_]{1,64}$/;
const isDate = (s: string) => s.length <= 40 && !Number.isNaN(Date.parse(s));

/** The filters a location's search string gives; a value that cannot be one is left out. */
export function parseFilters(search: string): RunFilters {
  const p = new URLSearchParams(search);
  const get = (k: string) => (p.get(k) ?? "").trim();
  const pick = <T extends string>(value: string, options: readonly T[]): T | "" =>
    (options as readonly string[]).includes(value) ? (value as T) : "";
  const id = (value: string) => (ID_PART.test(value) ? value : "");
  return {
    status: pick(get("status"), STATUSES),
    agent: id(get("agent")),
    trigger: pick(get("trigger"), TRIGGERS),
    range: pick(get("range"), Object.keys(RANGES) as RangePreset[]),
    from: isDate(get("from")) ? get("from") : "",
    to: isDate(get("to")) ? get("to") : "",
    parent: id(get("parent")),
    root: id(get("root")),
    q: id(get("q")),
    cursor: get("cursor").length <= 64 ? get("cursor") : "",
  };
}

/** The search string of some filters ("" when there are none), in a fixed order. */
export function formatFilters(f: RunFilters): string {
  const p = new URLSearchParams();
  for (const k of Object.keys(NO_FILTERS) as (keyof RunFilters)[]) {
    if (f[k] !== "") p.set(k, f[k]);
  }
  const s = p.toString();
  return s ? `?${s}` : "";
}

/** Filters changed by `patch`; any change but a page change starts again at the first page. */
export function withFilter(f: RunFilters, patch: Partial<RunFilters>): RunFilters {
  const next = { ...f, ...patch };
  if (!("cursor" in patch)) next.cursor = "";
  if (patch.range) {
    next.from = "";
    next.to = "";
  }
  if (patch.from !== undefined || patch.to !== undefined) next.range = "";
  return next;
}

/** How many filters are set (the page is not one). */
export function activeCount(f: RunFilters): number {
  return (Object.keys(NO_FILTERS) as (keyof RunFilters)[]).filter((k) => k !== "cursor" && f[k] !== "").length;
}

/** Each filter's query parameter on GET /v1/runs. */
export const FILTER_PARAMS = {
  status: "status",
  agent: "agent_id",
  trigger: "trigger",
  from: "created_after",
  to: "created_before",
  parent: "parent_run_id",
  root: "root_run_id",
  q: "id_prefix",
} as const;

/** Parameters every host's list takes. */
const ALWAYS_TAKEN = new Set(["status", "agent_id"]);

/**
 * The list endpoint's query for some filters, given which other parameters the host takes (`takes`);
 * `unsupported` names the filters set that it does not, which the page then leaves out.
 */
export function runsQuery(
  f: RunFilters,
  now: number,
  takes: (param: string) => boolean,
  limit = 50,
): { query: Query; unsupported: (keyof typeof FILTER_PARAMS)[] } {
  const from = f.range ? new Date(now - RANGES[f.range]).toISOString() : f.from && new Date(f.from).toISOString();
  const to = f.range ? "" : f.to && new Date(f.to).toISOString();
  const values: Record<keyof typeof FILTER_PARAMS, string> = {
    status: f.status,
    agent: f.agent,
    trigger: f.trigger,
    from,
    to,
    parent: f.parent,
    root: f.root,
    q: f.q,
  };
  const query: Query = { limit, cursor: f.cursor || undefined };
  const unsupported: (keyof typeof FILTER_PARAMS)[] = [];
  for (const [key, param] of Object.entries(FILTER_PARAMS) as [keyof typeof FILTER_PARAMS, string][]) {
    if (values[key] === "") continue;
    if (ALWAYS_TAKEN.has(param) || takes(param)) query[param] = values[key];
    else unsupported.push(key);
  }
  return { query, unsupported };
}
