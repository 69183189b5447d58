/**
 * OAuth apps, connect sessions and end users' accounts over HTTP, and the two browser pages of the
 * authorization flow: /oauth/connect/{token} (the URL a product sends its user to) and
 * /oauth/callback (where the provider sends the user back). No token is in any answer.
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import {
  Account,
  AccountDeleted,
  AccountsQuery,
  AppError,
  ConnectSession,
  ConnectSessionCreate,
  ErrorResponse,
  OAuthApp,
  OAuthAppName,
  OAuthAppPut,
  Page,
} from "@paddock/protocol";
import type { Context } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import { z } from "zod";
import { type Accounts, bindingCookie, type CallbackOutcome, CONNECT_SESSION_TTL_MS } from "../oauth/accounts.ts";
import type { OAuthApps } from "../oauth/apps.ts";
import { type ApiEnv, type DefineRoute, Id, json, jsonBody, pathParam, tenantOf } from "./http.ts";

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

const AccountId = z.object({ id: pathParam(Id, "account") });

export function registerAccountRoutes(route: DefineRoute, accounts: Accounts): void {
  route(
    {
      method: "post",
      path: "/v1/connect-sessions",
      summary:
        "Start connecting an end user's account at an OAuth app: a short-lived URL on this host to send the user to",
      auth: "tenant",
      request: { body: jsonBody(ConnectSessionCreate) },
      responses: {
        201: json(ConnectSession, "The session and its URL (good once, for minutes)"),
        422: json(ErrorResponse, "No such OAuth app (unknown_oauth_app)"),
      },
    },
    async (c) => c.json(await accounts.createSession(tenantOf(c), c.req.valid("json"), new URL(c.req.url).origin), 201),
  );
  route(
    {
      method: "get",
      path: "/v1/accounts",
      summary: "List end users' connected accounts (never their tokens)",
      auth: "tenant",
      request: { query: AccountsQuery },
      responses: { 200: json(Page(Account), "Accounts, by end user and app") },
    },
    async (c) => c.json({ data: await accounts.list(tenantOf(c), c.req.valid("query")), next_cursor: null }, 200),
  );
  route(
    {
      method: "delete",
      path: "/v1/accounts/{id}",
      summary: "Delete an end user's account, revoking its tokens at the provider when it has a revocation endpoint",
      auth: "tenant",
      request: { params: AccountId },
      responses: {
        200: json(AccountDeleted, "Deleted; the account as it was, and whether the provider revoked its tokens"),
      },
    },
    async (c) => c.json(await accounts.revoke(tenantOf(c), c.req.valid("param").id), 200),
  );
}

/** The browser's side of the flow: plain pages and redirects, outside the JSON API. */
export function registerOAuthPages(app: OpenAPIHono<ApiEnv>, accounts: Accounts): void {
  app.get("/oauth/connect/:token", async (c) => {
    try {
      const { url, binding } = await accounts.authorizeUrl(c.req.param("token").slice(0, 256));
      // Lax: sent on the provider's top-level redirect back, not on other sites' subrequests.
      setCookie(c, binding.name, binding.value, {
        path: CALLBACK,
        httpOnly: true,
        sameSite: "Lax",
        secure: binding.secure,
        maxAge: CONNECT_SESSION_TTL_MS / 1000,
      });
      c.header("cache-control", "no-store");
      return c.redirect(url, 302);
    } catch (err) {
      if (!(err instanceof AppError)) throw err;
      return page(c, { page: { status: 400, title: "Not connected", message: err.message } });
    }
  });
  app.get(CALLBACK, async (c) => {
    const outcome = await accounts.callback(c.req.query(), (name) => getCookie(c, name));
    const state = c.req.query("state");
    if (state) deleteCookie(c, bindingCookie(state), { path: CALLBACK });
    return page(c, outcome);
  });
}

const CALLBACK = "/oauth/callback";

function page(c: Context<ApiEnv>, outcome: CallbackOutcome): Response {
  c.header("cache-control", "no-store");
  c.header("referrer-policy", "no-referrer");
  if ("redirect" in outcome) return c.redirect(outcome.redirect, 302);
  const { status, title, message } = outcome.page;
  const html = (text: string) => text.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
  return c.html(
    `<!doctype html><meta charset="utf-8"><title>${html(title)}</title><h1>${html(title)}</h1><p>${html(message)}</p>`,
    status as 200 | 400 | 502,
  );
}
