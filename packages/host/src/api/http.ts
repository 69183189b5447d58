/**
 * Request plumbing shared by every route: one declaration per route gives its schemas, its auth,
 * its OpenAPI entry and the parsing of its input; JSON bodies are read with a size cap; and errors
 * become responses in one place.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { createRoute, type OpenAPIHono, type RouteConfig, type RouteHandler } from "@hono/zod-openapi";
import { AppError, bodyTooLarge, check, ERROR_CODES, ErrorResponse, validationFailed } from "@paddock/protocol";
import type { Context, MiddlewareHandler } from "hono";
import { getCookie } from "hono/cookie";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { z } from "zod";
import type { Identity, Principal } from "../identity/identity.ts";
import { CSRF_HEADER, csrfMatches, SESSION_COOKIE, type UiSessions } from "../identity/ui-sessions.ts";
import type { Metrics } from "../metrics/metrics.ts";
import { isDatabaseUnavailable } from "../store/unavailable.ts";

const DEFAULT_BODY_LIMIT = 1024 * 1024;

/** What every route's context carries: the caller, once authenticated. */
export type ApiEnv = { Variables: { principal: Principal } };

/**
 * Who may call a route: anyone, any tenant's key, the admin key, or (for scrapes) the admin key
 * or the metrics token.
 */
export type RouteAuth = "none" | "tenant" | "admin" | "metrics";

/**
 * A route as `createRoute` takes it, plus who may call it and, for a JSON body, its size cap.
 * Path parameters, the query and a JSON body are checked against the declared schemas before the
 * handler runs, which reads them with `c.req.valid(...)`. A body of another type (multipart, an
 * archive, a webhook delivery) is documented here and read by the handler itself.
 */
export interface RouteDeclaration extends RouteConfig {
  auth: RouteAuth;
  /** The largest JSON body accepted, in bytes; default 1 MiB. */
  bodyLimit?: number;
}

/** Registers one route: its OpenAPI entry, authentication, input checks and handler. */
export type DefineRoute = <R extends RouteDeclaration>(route: R, handler: RouteHandler<R, ApiEnv>) => void;

/** An OpenAPI response entry with a JSON body described by `schema`. */
export const json = (schema: z.ZodType, description: string) => ({
  description,
  content: { "application/json": { schema } },
});

/** A request body entry: JSON described by `schema`. */
export const jsonBody = <T extends z.ZodType>(schema: T) => ({
  content: { "application/json": { schema } },
});

/** An id such as run_…; anything else cannot name a resource. */
export const Id = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[a-z]{3}_[0-9a-z]+$/, "an id such as run_…");

/** The caller's tenant, from its API key. */
export const tenantOf = (c: Context<ApiEnv>): string => c.get("principal").tenantId;

const refusals = new WeakMap<z.ZodType, (value: string) => AppError>();

/**
 * A path parameter. A value the schema refuses cannot name anything, so it is answered like an
 * unknown one (not_found, "No <what> '<value>'.") rather than as invalid input; `refuse` gives
 * another answer where an unknown one is answered differently.
 * @example params: z.object({ id: pathParam(RunId, "run") })
 */
export function pathParam<T extends z.ZodType<string>>(
  schema: T,
  what: string,
  refuse: (value: string) => AppError = (value) => new AppError("not_found", `No ${what} '${value.slice(0, 80)}'.`),
): T {
  // A copy of the schema, so that the same schema may be another parameter's with another answer.
  const param = schema.meta({ description: `The ${what}` }) as T;
  refusals.set(param, refuse);
  return param;
}

/**
 * The validation hook of every route (zod-openapi's `defaultHook`): a query or body that does
 * not match its schema is validation_failed.
 */
export function validationHook(result: { success: boolean; error?: z.ZodError }): void {
  if (!result.success && result.error) throw validationFailed(result.error.issues);
}

/** Reads a JSON body of at most `maxBytes` and checks it against `schema`. An empty body is `{}`. */
async function readJson<T extends z.ZodType>(
  c: Context,
  schema: T,
  maxBytes = DEFAULT_BODY_LIMIT,
): Promise<z.infer<T>> {
  const declared = Number(c.req.header("content-length") ?? "0");
  if (declared > maxBytes) throw bodyTooLarge(maxBytes);
  const body = c.req.raw.body;
  let text = "";
  if (body) {
    const chunks: Uint8Array[] = [];
    let size = 0;
    for await (const chunk of body) {
      size += chunk.byteLength;
      if (size > maxBytes) throw bodyTooLarge(maxBytes);
      chunks.push(chunk);
    }
    text = Buffer.concat(chunks).toString("utf8");
  }
  let value: unknown = {};
  if (text.trim() !== "") {
    const type = c.req.header("content-type") ?? "";
    if (!/^application\/(.+\+)?json\s*(;|$)/i.test(type)) throw new AppError("unsupported_media_type");
    try {
      value = JSON.parse(text);
    } catch (err) {
      // The parser's message quotes the body, which may hold a secret: give only where it broke.
      const at = /position (\d+)/.exec((err as Error).message)?.[1];
      throw new AppError("invalid_json", `The request body is not valid JSON${at ? ` (at character ${at})` : ""}.`);
    }
  }
  return check(schema, value);
}

/**
 * The API's one error serializer: a database that cannot be reached answers
 * `database_unavailable` with nothing about where it is (the engine logs the outage); an AppError
 * answers with its code's status and wire shape; anything else is logged and answers `internal`,
 * telling the caller nothing more.
 */
export function errorResponse(c: Context, err: unknown, log: (msg: string) => void): Response {
  const known = isDatabaseUnavailable(err) ? new AppError("database_unavailable") : err;
  if (known instanceof AppError) return c.json(known.toBody(), known.status as ContentfulStatusCode);
  log(`api: ${c.req.method} ${c.req.path}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  return c.json(new AppError("internal").toBody(), ERROR_CODES.internal.status);
}

/** The key or token an `Authorization: Bearer KEY` header carries. */
const bearerOf = (header: string | undefined): string | undefined => /^Bearer\s+(\S+)$/i.exec(header ?? "")?.[1];

/** The caller an `Authorization: Bearer KEY` header names; null for none or an invalid key. */
export async function bearerPrincipal(identity: Identity, header: string | undefined): Promise<Principal | null> {
  const key = bearerOf(header);
  return key ? identity.authenticate(key) : null;
}

/** Whether two tokens are equal, in time that does not depend on where they differ. */
function sameToken(presented: string, expected: string): boolean {
  const digest = (s: string) => createHash("sha256").update(s).digest();
  return timingSafeEqual(digest(presented), digest(expected));
}

/** What routes share beside the identities: where their requests are measured, the metrics token, and the dashboard's sessions, which stand for their keys. */
export interface RouteOptions {
  metrics?: Pick<Metrics, "httpRequest">;
  /** The token `metrics` routes accept beside the admin key; null: the admin key only. */
  metricsToken?: string | null;
  uiSessions?: UiSessions;
}

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

/**
 * Whether a request comes from a page of this origin: Sec-Fetch-Site says so, and an Origin, when
 * sent, names this host. A request with neither cannot show where it came from, and is refused.
 */
function sameOrigin(c: Context): boolean {
  const site = c.req.header("sec-fetch-site");
  const origin = c.req.header("origin");
  if (site === undefined && origin === undefined) return false;
  if (site !== undefined && site !== "same-origin") return false;
  if (origin === undefined) return true;
  let host: string;
  try {
    host = new URL(origin).host;
  } catch {
    return false;
  }
  return [c.req.header("host"), c.req.header("x-forwarded-host"), new URL(c.req.url).host].includes(host);
}

/**
 * The caller of a request: the API key in `Authorization: Bearer`, or else the dashboard's session
 * cookie. A write made with the cookie must also carry the session's CSRF value and come from this
 * origin (csrf_failed otherwise). Null when the request names no valid key or live session.
 */
export async function requestPrincipal(
  identity: Identity,
  uiSessions: UiSessions | undefined,
  c: Context,
): Promise<Principal | null> {
  const header = c.req.header("authorization");
  if (header !== undefined || !uiSessions) return bearerPrincipal(identity, header);
  const token = getCookie(c, SESSION_COOKIE);
  if (!token) return null;
  const session = await uiSessions.authenticate(token);
  if (!session) return null;
  if (!SAFE_METHODS.has(c.req.method) && !(csrfMatches(session, c.req.header(CSRF_HEADER)) && sameOrigin(c))) {
    throw new AppError("csrf_failed");
  }
  return { ...session.principal, session: { csrf: session.csrf, expiresAt: session.expiresAt } };
}

const errorEntry = (description: string) => json(ErrorResponse, description);

/**
 * The `DefineRoute` of an app: authentication from the declaration's `auth` (the API key in
 * `Authorization: Bearer`, or the dashboard's session cookie), then path parameters, query and
 * JSON body checked against their schemas, then the handler. The OpenAPI entry is the declaration
 * itself, with the errors every such route may answer and the security scheme of its key added.
 * @example const route = routeDefiner(app, identity, { uiSessions }); route({ method: "get", path: "/v1/x", auth: "tenant", responses }, handler);
 */
export function routeDefiner(app: OpenAPIHono<ApiEnv>, identity: Identity, options: RouteOptions = {}): DefineRoute {
  const metricsToken = options.metricsToken ?? null;
  const authenticate =
    (need: RouteAuth): MiddlewareHandler<ApiEnv> =>
    async (c, next) => {
      if (need === "none") return next();
      if (need === "metrics" && metricsToken !== null) {
        const presented = bearerOf(c.req.header("authorization"));
        if (presented !== undefined && sameToken(presented, metricsToken)) return next();
        // Not an API key either: taken for a metrics token, and a wrong one.
        if (presented !== undefined && !presented.startsWith("pdk.")) throw new AppError("metrics_token_invalid");
      }
      const principal = await requestPrincipal(identity, options.uiSessions, c);
      if (!principal) throw new AppError("unauthorized");
      if ((need === "admin" || need === "metrics") && principal.role !== "admin") {
        throw new AppError("forbidden", "This action needs the admin API key.");
      }
      c.set("principal", principal);
      return next();
    };

  return (declaration, handler) => {
    const { auth, bodyLimit, ...route } = declaration;
    const forbidden = [
      ...(auth === "admin" || auth === "metrics" ? ["Not the admin API key"] : []),
      ...(auth !== "none" && route.method !== "get"
        ? [
            "A write with the dashboard's session cookie but without its CSRF header, or from another origin (csrf_failed)",
          ]
        : []),
    ];
    const params = route.request?.params as z.ZodObject | undefined;
    const jsonContent = route.request?.body?.content["application/json"] as { schema?: z.ZodType } | undefined;
    const bodySchema = jsonContent?.schema;

    const security = {
      none: undefined,
      tenant: [{ bearer: [] }],
      admin: [{ admin: [] }],
      metrics: [{ admin: [] }, { metrics: [] }],
    }[auth];
    app.openAPIRegistry.registerPath({
      ...route,
      ...(security ? { security } : {}),
      request: {
        ...route.request,
        // An empty body reads as {}: the body is optional when {} is valid.
        ...(route.request?.body && bodySchema
          ? { body: { ...route.request.body, required: !bodySchema.safeParse({}).success } }
          : {}),
      },
      responses: {
        ...(params || route.request?.query || bodySchema ? { 400: errorEntry("Invalid request") } : {}),
        ...(auth === "none" ? {} : { 401: errorEntry("Missing or invalid API key") }),
        ...(forbidden.length > 0 ? { 403: errorEntry(forbidden.join("; ")) } : {}),
        ...(params ? { 404: errorEntry("Not found") } : {}),
        ...(bodySchema
          ? {
              413: errorEntry("The body is larger than this endpoint accepts"),
              415: errorEntry("The body is not application/json"),
            }
          : {}),
        ...route.responses,
      },
    });

    // zod-openapi's own body check reads the body without a cap and answers in its own shapes:
    // the body is left out of what it checks, and read here once, capped, after params and query.
    const { body: _documented, ...request } = route.request ?? {};
    // Measured by the declared path (a template such as /v1/runs/{id}), never the URL.
    const metrics = options.metrics;
    const measure: MiddlewareHandler<ApiEnv> | null = metrics
      ? async (c, next) => {
          const started = performance.now();
          await next();
          metrics.httpRequest(route.method, route.path, c.res.status, performance.now() - started);
        }
      : null;
    const middleware = measure ? [measure, authenticate(auth)] : [authenticate(auth)];
    const registered = createRoute({ ...route, request, hide: true, middleware });
    const hook = params
      ? (result: { success: boolean; error?: z.ZodError; target: string }, c: Context) => {
          if (result.success || !result.error || result.target !== "param") return validationHook(result);
          const name = String(result.error.issues[0]?.path[0] ?? "");
          const refuse = refusals.get(params.shape[name] as z.ZodType);
          const value = c.req.param(name) ?? "";
          throw refuse ? refuse(value) : new AppError("not_found", `No resource '${value.slice(0, 80)}'.`);
        }
      : undefined;
    app.openapi(
      registered,
      async (c, next) => {
        if (bodySchema) c.req.addValidatedData("json", (await readJson(c, bodySchema, bodyLimit)) as object);
        return (handler as (c: Context, next: () => Promise<void>) => Response | Promise<Response>)(c, next);
      },
      hook,
    );
  };
}
