/**
 * Views over all of a tenant's runs: its model calls and bridge calls (each with its run and
 * agent, filtered and paged newest first), and its runs and spending per time bucket.
 */
import {
  BridgeCallEvent,
  BridgeCallsQuery,
  LlmCallEvent,
  LlmCallsQuery,
  Page,
  Stats,
  StatsQuery,
  statsRange,
} from "@paddock/protocol";
import type { CallFilter, CallLog } from "../activity/calls.ts";
import { parseCallCursor } from "../activity/calls.ts";
import type { RunStats } from "../activity/stats.ts";
import { type DefineRoute, json, tenantOf } from "./http.ts";

/** ms since the epoch of a time a query schema checked. */
const ms = (time: string | undefined) => (time === undefined ? undefined : Date.parse(time));

/** The filters both call lists share, from their query. */
function callFilter(q: {
  limit: number;
  cursor?: string | undefined;
  agent_id?: string | undefined;
  run_id?: string | undefined;
  created_after?: string | undefined;
  created_before?: string | undefined;
  outcome?: CallFilter["outcome"] | undefined;
}): CallFilter {
  const filter: CallFilter = { limit: q.limit };
  if (q.cursor !== undefined) filter.cursor = parseCallCursor(q.cursor);
  if (q.agent_id !== undefined) filter.agentId = q.agent_id;
  if (q.run_id !== undefined) filter.runId = q.run_id;
  if (q.created_after !== undefined) filter.createdAfter = ms(q.created_after) as number;
  if (q.created_before !== undefined) filter.createdBefore = ms(q.created_before) as number;
  if (q.outcome !== undefined) filter.outcome = q.outcome;
  return filter;
}

export function registerActivityRoutes(route: DefineRoute, deps: { calls: CallLog; stats: RunStats }): void {
  route(
    {
      method: "get",
      path: "/v1/llm-calls",
      summary:
        "The tenant's model calls over all its runs, newest first (each an llm.call event with its run and agent): by agent, run, provider, model, outcome and time",
      auth: "tenant",
      request: { query: LlmCallsQuery },
      responses: { 200: json(Page(LlmCallEvent), "Model calls") },
    },
    async (c) => {
      const q = c.req.valid("query");
      const filter = callFilter(q);
      if (q.provider !== undefined) filter.target = q.provider;
      if (q.model !== undefined) filter.model = q.model;
      return c.json(await deps.calls.list(tenantOf(c), "llm", filter), 200);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/bridge-calls",
      summary:
        "The tenant's calls through the bridge over all its runs, newest first (each a bridge.call event with its run and agent), refusals included: by agent, run, connection, outcome and time",
      auth: "tenant",
      request: { query: BridgeCallsQuery },
      responses: { 200: json(Page(BridgeCallEvent), "Bridge calls") },
    },
    async (c) => {
      const q = c.req.valid("query");
      const filter = callFilter(q);
      if (q.connection !== undefined) filter.target = q.connection;
      return c.json(await deps.calls.list(tenantOf(c), "bridge", filter), 200);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/stats",
      summary:
        "The tenant's runs created per time bucket (by their status now) and the credits its model calls spent per bucket, in all and by agent; every bucket of the range, empty ones included",
      auth: "tenant",
      request: { query: StatsQuery },
      responses: { 200: json(Stats, "Counts and spending per bucket") },
    },
    async (c) => {
      const q = c.req.valid("query");
      const { from, to } = statsRange(q);
      return c.json(
        await deps.stats.stats(tenantOf(c), {
          from,
          to,
          bucketMs: q.bucket_s * 1000,
          ...(q.agent_id !== undefined ? { agentId: q.agent_id } : {}),
        }),
        200,
      );
    },
  );
}
