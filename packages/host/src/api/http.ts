/** Request plumbing shared by every route: body reading with caps, schema checks, error mapping. */
import { AppError, ERROR_CODES, type ErrorCode, validationFailed } from "@paddock/protocol";
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { z } from "zod";

export const DEFAULT_BODY_LIMIT = 1024 * 1024;

/** An OpenAPI response entry with a JSON body described by `schema`. */
export const json = (schema: z.ZodType, description: string) => ({
  description,
  content: { "application/json": { schema } },
});

/** Reads a JSON body of at most `maxBytes` and checks it against `schema`. An empty body is `{}`. */
export async function readJson<T extends z.ZodType>(
  c: Context,
  schema: T,
  maxBytes = DEFAULT_BODY_LIMIT,
): Promise<z.infer<T>> {
  const declared = Number(c.req.header("content-length") ?? "0");
  if (declared > maxBytes) throw tooLarge(maxBytes);
  const body = c.req.raw.body;
  let text = "";
  if (body) {
    const chunks: Uint8Array[] = [];
    let size = 0;
    for await (const chunk of body) {
      size += chunk.byteLength;
      if (size > maxBytes) throw tooLarge(maxBytes);
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

export function check<T extends z.ZodType>(schema: T, value: unknown): z.infer<T> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw validationFailed(parsed.error.issues);
  return parsed.data;
}

function tooLarge(max: number): AppError {
  return new AppError("body_too_large", `The request body is larger than ${max} bytes.`, { limit_bytes: max });
}

export function errorResponse(c: Context, code: ErrorCode, message?: string, details?: unknown): Response {
  const err = new AppError(code, message, details);
  return c.json(err.toBody(), ERROR_CODES[code].status as ContentfulStatusCode);
}

/** Who may call a route: anyone, any tenant's key, or the admin key. */
export type RouteAuth = "none" | "tenant" | "admin";

/**
 * What a route file borrows from createApi (see app.ts): `route` registers a handler and its
 * OpenAPI description from the same schemas, `tenantOf` is the caller's tenant.
 */
export interface RouteHelpers<C extends Context> {
  route: (
    method: "get" | "put" | "post" | "delete",
    path: string,
    spec: {
      summary: string;
      auth: RouteAuth;
      body?: z.ZodType;
      responses: Record<number, ReturnType<typeof json> | { description: string }>;
    },
    handler: (c: C) => Promise<Response> | Response,
  ) => void;
  tenantOf: (c: C) => string;
}
