/**
 * Notifications over HTTP: a tenant's subscriptions (create, list, show, delete, rotate the
 * secret) and their deliveries (each with every attempt; sent again by hand).
 */
import {
  AppError,
  ErrorResponse,
  NotificationCreate,
  NotificationDelivery,
  NotificationRotate,
  NotificationSubscription,
  Page,
} from "@paddock/protocol";
import { z } from "zod";
import type { Identity } from "../identity/identity.ts";
import type { Notifications } from "../notifications/subscriptions.ts";
import { type DefineRoute, json, jsonBody, pathParam, tenantOf } from "./http.ts";

const SubscriptionId = pathParam(z.string().regex(/^ntf_[0-9a-z]{26}$/), "notification subscription");
const ById = z.object({ id: SubscriptionId });
const DeliveriesQuery = z.object({
  limit: z.coerce.number().int().min(1).max(200).default(50),
  cursor: z.string().max(64).optional(),
});

export function registerNotificationRoutes(
  route: DefineRoute,
  deps: { notifications: Notifications; identity: Identity },
): void {
  const { notifications, identity } = deps;
  route(
    {
      method: "post",
      path: "/v1/notifications",
      summary:
        "Subscribe an HTTPS endpoint to event types; its signing secret is shown only in this answer (internal and tenant: admin key only)",
      auth: "tenant",
      request: { body: jsonBody(NotificationCreate) },
      responses: {
        201: json(NotificationSubscription, "Created"),
        403: json(ErrorResponse, "internal or tenant given without the admin key"),
        422: json(ErrorResponse, "The URL is refused (notification_url_refused)"),
      },
    },
    async (c) => {
      const { tenant, internal, ...body } = c.req.valid("json");
      const principal = c.get("principal");
      if ((tenant !== undefined || internal !== undefined) && principal.role !== "admin") {
        throw new AppError(
          "forbidden",
          "Only the admin key may mark a subscription internal or make one for a tenant.",
        );
      }
      const tenantId = tenant === undefined ? principal.tenantId : (await identity.findTenant(tenant)).id;
      return c.json(await notifications.create(tenantId, body, internal === true), 201);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/notifications",
      summary: "List notification subscriptions (never their secrets)",
      auth: "tenant",
      responses: { 200: json(Page(NotificationSubscription), "Subscriptions") },
    },
    async (c) => c.json({ data: await notifications.list(tenantOf(c)), next_cursor: null }, 200),
  );
  route(
    {
      method: "get",
      path: "/v1/notifications/{id}",
      summary: "Get a notification subscription",
      auth: "tenant",
      request: { params: ById },
      responses: { 200: json(NotificationSubscription, "The subscription") },
    },
    async (c) => c.json(await notifications.get(tenantOf(c), c.req.valid("param").id), 200),
  );
  route(
    {
      method: "delete",
      path: "/v1/notifications/{id}",
      summary: "Delete a notification subscription with its deliveries",
      auth: "tenant",
      request: { params: ById },
      responses: { 200: json(NotificationSubscription, "Deleted") },
    },
    async (c) => c.json(await notifications.delete(tenantOf(c), c.req.valid("param").id), 200),
  );
  route(
    {
      method: "post",
      path: "/v1/notifications/{id}/rotate",
      summary:
        "A new signing secret, shown only in this answer; for overlap_s deliveries carry the old secret's signature too",
      auth: "tenant",
      request: { params: ById, body: jsonBody(NotificationRotate) },
      responses: { 200: json(NotificationSubscription, "The subscription with its new secret") },
    },
    async (c) =>
      c.json(await notifications.rotate(tenantOf(c), c.req.valid("param").id, c.req.valid("json").overlap_s), 200),
  );
  route(
    {
      method: "get",
      path: "/v1/notifications/{id}/deliveries",
      summary: "A subscription's deliveries, newest first, each with every attempt",
      auth: "tenant",
      request: { params: ById, query: DeliveriesQuery },
      responses: { 200: json(Page(NotificationDelivery), "Deliveries") },
    },
    async (c) => {
      const { limit, cursor } = c.req.valid("query");
      const data = await notifications.deliveries(tenantOf(c), c.req.valid("param").id, { limit, cursor });
      const last = data[data.length - 1];
      return c.json({ data, next_cursor: data.length === limit && last ? last.id : null }, 200);
    },
  );
  route(
    {
      method: "post",
      path: "/v1/notifications/{id}/deliveries/{delivery_id}/resend",
      summary: "Send a delivery again now, with the same id and payload",
      auth: "tenant",
      request: {
        params: z.object({
          id: SubscriptionId,
          delivery_id: pathParam(z.string().regex(/^ntd_[0-9a-z]{26}$/), "delivery"),
        }),
      },
      responses: {
        200: json(NotificationDelivery, "The delivery, due now"),
        409: json(ErrorResponse, "The subscription is disabled (notification_disabled)"),
      },
    },
    async (c) => {
      const { id, delivery_id } = c.req.valid("param");
      return c.json(await notifications.resend(tenantOf(c), id, delivery_id), 200);
    },
  );
}
