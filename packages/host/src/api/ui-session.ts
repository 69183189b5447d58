/**
 * The dashboard's sign-in: an API key (as `Authorization: Bearer`) buys a session cookie bound to
 * it; the session says who it is and gives its CSRF value; sign-out ends it. See
 * identity/ui-sessions.ts for the threat model.
 */
import { AppError, UiSession } from "@paddock/protocol";
import type { Context } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import type { Identity, Principal } from "../identity/identity.ts";
import { SESSION_COOKIE, type UiSessions } from "../identity/ui-sessions.ts";
import { type ApiEnv, type DefineRoute, json } from "./http.ts";

/** Whether the request reached us over https (directly, or as a proxy in front says). */
const overHttps = (c: Context) =>
  new URL(c.req.url).protocol === "https:" || c.req.header("x-forwarded-proto")?.split(",")[0]?.trim() === "https";

export function registerUiSessionRoutes(
  route: DefineRoute,
  deps: { uiSessions: UiSessions; identity: Identity },
): void {
  const path = "/v1/ui/session";
  const describe = async (p: Principal, csrf: string | null, expiresAt: number | null): Promise<UiSession> => ({
    tenant_id: p.tenantId,
    tenant_name: (await deps.identity.findTenant(p.tenantId)).name,
    key_id: p.keyId,
    role: p.role,
    csrf_token: csrf,
    expires_at: expiresAt === null ? null : new Date(expiresAt).toISOString(),
  });

  route(
    {
      method: "post",
      path,
      summary:
        "Sign in to the dashboard with an API key (Authorization: Bearer): sets an HttpOnly, SameSite=Strict session cookie bound to the key (revoking the key ends it); writes made with the cookie send csrf_token in x-paddock-csrf",
      auth: "tenant",
      responses: { 201: json(UiSession, "Signed in; the session cookie is set") },
    },
    async (c) => {
      const principal = c.get("principal");
      if (principal.session) {
        throw new AppError("forbidden", "Sign in with an API key (Authorization: Bearer), not a session.");
      }
      const session = await deps.uiSessions.create(principal);
      setCookie(c, SESSION_COOKIE, session.token, {
        httpOnly: true,
        sameSite: "Strict",
        path: "/",
        secure: overHttps(c),
        expires: new Date(session.expiresAt),
      });
      c.header("cache-control", "no-store");
      return c.json(await describe(principal, session.csrf, session.expiresAt), 201);
    },
  );
  route(
    {
      method: "get",
      path,
      summary: "Who the session cookie (or the API key) is, and the session's CSRF value",
      auth: "tenant",
      responses: { 200: json(UiSession, "The caller") },
    },
    async (c) => {
      const principal: Principal = c.get("principal");
      c.header("cache-control", "no-store");
      const { session } = principal;
      return c.json(await describe(principal, session?.csrf ?? null, session?.expiresAt ?? null), 200);
    },
  );
  route(
    {
      method: "delete",
      path,
      summary: "Sign out: ends the cookie's session and clears the cookie",
      auth: "tenant",
      responses: { 204: { description: "Signed out" } },
    },
    async (c: Context<ApiEnv>) => {
      const token = getCookie(c, SESSION_COOKIE);
      if (token && c.get("principal").session) await deps.uiSessions.end(token);
      deleteCookie(c, SESSION_COOKIE, { path: "/", secure: overHttps(c), httpOnly: true, sameSite: "Strict" });
      return c.body(null, 204);
    },
  );
}
