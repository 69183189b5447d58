/**
 * OAuth apps over HTTP: create or replace, list, show and delete a tenant's apps, by name.
 */
import { AppError, ErrorResponse, OAuthApp, OAuthAppName, OAuthAppPut, Page } from "@paddock/protocol";
import { z } from "zod";
import type { OAuthApps } from "../oauth/apps.ts";
import { type DefineRoute, json, jsonBody, pathParam, tenantOf } from "./http.ts";

const Name = z.object({ name: pathParam(OAuthAppName, "OAuth app") });

export function registerOAuthAppRoutes(route: DefineRoute, apps: OAuthApps): void {
  const one = "/v1/oauth-apps/{name}";
  route(
    {
      method: "put",
      path: one,
      summary:
        "Create an OAuth app, or replace it: explicit endpoints, or an OpenID Connect issuer whose endpoints are discovered now",
      auth: "tenant",
      request: { params: Name, body: jsonBody(OAuthAppPut) },
      responses: {
        200: json(OAuthApp, "Replaced"),
        201: json(OAuthApp, "Created"),
        403: json(ErrorResponse, "Only the admin API key may mark an app internal"),
        422: json(ErrorResponse, "The client secret does not exist, or discovery failed"),
      },
    },
    async (c) => {
      const body = c.req.valid("json");
      // Internal endpoints are on the host's own networks: the operator's call, not a tenant's.
      if (body.internal && c.get("principal").role !== "admin") {
        throw new AppError(
          "forbidden",
          "Only the admin API key may mark an OAuth app internal: it lets the host call private and loopback addresses.",
        );
      }
      const { app, created } = await apps.put(tenantOf(c), c.req.valid("param").name, body);
      return c.json(app, created ? 201 : 200);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/oauth-apps",
      summary: "List OAuth apps, by name",
      auth: "tenant",
      responses: { 200: json(Page(OAuthApp), "OAuth apps") },
    },
    async (c) => c.json({ data: await apps.list(tenantOf(c)), next_cursor: null }, 200),
  );
  route(
    {
      method: "get",
      path: one,
      summary: "Get an OAuth app",
      auth: "tenant",
      request: { params: Name },
      responses: { 200: json(OAuthApp, "The app") },
    },
    async (c) => c.json(await apps.get(tenantOf(c), c.req.valid("param").name), 200),
  );
  route(
    {
      method: "delete",
      path: one,
      summary: "Delete an OAuth app no account uses",
      auth: "tenant",
      request: { params: Name },
      responses: {
        200: json(OAuthApp, "Deleted; the app as it was"),
        409: json(ErrorResponse, "Accounts are connected through it"),
      },
    },
    async (c) => c.json(await apps.delete(tenantOf(c), c.req.valid("param").name), 200),
  );
}
