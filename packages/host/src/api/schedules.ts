/** Cron schedules over HTTP: create, list, show, pause, resume and delete a tenant's schedules. */
import { Page, Schedule, ScheduleCreate } from "@paddock/protocol";
import { z } from "zod";
import type { Agents } from "../agents/agents.ts";
import type { Scheduler } from "../triggers/scheduler.ts";
import { type DefineRoute, json, jsonBody, pathParam, tenantOf } from "./http.ts";

const ScheduleId = z.object({ id: pathParam(z.string().regex(/^sch_[0-9a-z]{1,60}$/), "schedule") });

export function registerScheduleRoutes(route: DefineRoute, deps: { scheduler: Scheduler; agents: Agents }): void {
  const { scheduler, agents } = deps;
  route(
    {
      method: "post",
      path: "/v1/schedules",
      summary: "Create a cron schedule that starts runs of an agent (IANA time zone, overlap policy, catch-up window)",
      auth: "tenant",
      request: { body: jsonBody(ScheduleCreate) },
      responses: { 201: json(Schedule, "Created") },
    },
    async (c) => {
      const body = c.req.valid("json");
      const agent = await agents.resolveLive(tenantOf(c), body.agent);
      return c.json(await scheduler.create(tenantOf(c), agent.row.id, body), 201);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/schedules",
      summary: "List schedules",
      auth: "tenant",
      responses: { 200: json(Page(Schedule), "Schedules") },
    },
    async (c) => c.json({ data: await scheduler.list(tenantOf(c)), next_cursor: null }, 200),
  );
  route(
    {
      method: "get",
      path: "/v1/schedules/{id}",
      summary: "Get a schedule",
      auth: "tenant",
      request: { params: ScheduleId },
      responses: { 200: json(Schedule, "The schedule") },
    },
    async (c) => c.json(await scheduler.get(tenantOf(c), c.req.valid("param").id), 200),
  );
  for (const [action, paused] of [
    ["pause", true],
    ["resume", false],
  ] as const) {
    route(
      {
        method: "post",
        path: `/v1/schedules/{id}/${action}`,
        summary: paused ? "Pause a schedule" : "Resume a schedule from its next slot after now",
        auth: "tenant",
        request: { params: ScheduleId },
        responses: { 200: json(Schedule, "The schedule") },
      },
      async (c) => c.json(await scheduler.setPaused(tenantOf(c), c.req.valid("param").id, paused), 200),
    );
  }
  route(
    {
      method: "delete",
      path: "/v1/schedules/{id}",
      summary: "Delete a schedule",
      auth: "tenant",
      request: { params: ScheduleId },
      responses: { 200: json(Schedule, "Deleted") },
    },
    async (c) => c.json(await scheduler.delete(tenantOf(c), c.req.valid("param").id), 200),
  );
}
