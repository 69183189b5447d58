/** Cron schedules over HTTP: create, list, show, pause, resume and delete a tenant's schedules. */
import { AppError, Page, Schedule, ScheduleCreate } from "@paddock/protocol";
import type { Context } from "hono";
import type { Agents } from "../agents/agents.ts";
import type { Scheduler } from "../triggers/scheduler.ts";
import { json, type RouteHelpers, readJson } from "./http.ts";

function idParam(c: Context): string {
  const value = c.req.param("id") ?? "";
  if (!/^sch_[0-9a-z]{1,60}$/.test(value)) throw new AppError("not_found", `No schedule '${value.slice(0, 80)}'.`);
  return value;
}

export function registerScheduleRoutes<C extends Context>(
  deps: { scheduler: Scheduler; agents: Agents },
  h: RouteHelpers<C>,
): void {
  const { route, tenantOf } = h;
  const { scheduler, agents } = deps;
  route(
    "post",
    "/v1/schedules",
    {
      summary: "Create a cron schedule that starts runs of an agent (IANA time zone, overlap policy, catch-up window)",
      auth: "tenant",
      body: ScheduleCreate,
      responses: { 201: json(Schedule, "Created") },
    },
    async (c) => {
      const body = await readJson(c, ScheduleCreate);
      const agent = await agents.resolveLive(tenantOf(c), body.agent);
      return c.json(await scheduler.create(tenantOf(c), agent.row.id, body), 201);
    },
  );
  route(
    "get",
    "/v1/schedules",
    { summary: "List schedules", auth: "tenant", responses: { 200: json(Page(Schedule), "Schedules") } },
    async (c) => c.json({ data: await scheduler.list(tenantOf(c)), next_cursor: null }),
  );
  route(
    "get",
    "/v1/schedules/{id}",
    { summary: "Get a schedule", auth: "tenant", responses: { 200: json(Schedule, "The schedule") } },
    async (c) => c.json(await scheduler.get(tenantOf(c), idParam(c))),
  );
  for (const [action, paused] of [
    ["pause", true],
    ["resume", false],
  ] as const) {
    route(
      "post",
      `/v1/schedules/{id}/${action}`,
      {
        summary: paused ? "Pause a schedule" : "Resume a schedule from its next slot after now",
        auth: "tenant",
        responses: { 200: json(Schedule, "The schedule") },
      },
      async (c) => c.json(await scheduler.setPaused(tenantOf(c), idParam(c), paused)),
    );
  }
  route(
    "delete",
    "/v1/schedules/{id}",
    { summary: "Delete a schedule", auth: "tenant", responses: { 200: json(Schedule, "Deleted") } },
    async (c) => c.json(await scheduler.delete(tenantOf(c), idParam(c))),
  );
}
