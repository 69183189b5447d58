/**
 * The secrets vault over HTTP: set a value (from the body, never the URL), list, show and delete.
 * Responses carry names and metadata only, and no error quotes the body it refused: the schema's
 * messages are fixed texts, and a body that is not JSON is refused without the parser's excerpt.
 */
import { AppError, ErrorResponse, MAX_SECRET_BYTES, Page, Secret, SecretName, SecretSet } from "@paddock/protocol";
import type { Context } from "hono";
import type { Secrets } from "../secrets/secrets.ts";
import { json, type RouteHelpers, readJson } from "./http.ts";

/** A JSON-escaped value may take six bytes per byte (`\u0000`). */
const MAX_BODY_BYTES = MAX_SECRET_BYTES * 6 + 1024;

/** The body of a set; the JSON parser's message quotes the text around a mistake, so it is dropped. */
async function readValue(c: Context): Promise<SecretSet> {
  try {
    return await readJson(c, SecretSet, MAX_BODY_BYTES);
  } catch (err) {
    if (err instanceof AppError && err.code === "invalid_json") throw new AppError("invalid_json");
    throw err;
  }
}

/** A secret's name from the path; a malformed one cannot exist, so it answers like an unknown one. */
function nameParam(c: Context): string {
  const value = c.req.param("name") ?? "";
  if (!SecretName.safeParse(value).success) throw new AppError("not_found", `No secret '${value.slice(0, 80)}'.`);
  return value;
}

export function registerSecretRoutes<C extends Context>(secrets: Secrets, h: RouteHelpers<C>): void {
  const { route, tenantOf } = h;
  const one = "/v1/secrets/{name}";
  route(
    "put",
    one,
    {
      summary: "Set a secret's value (a new version if it exists); the value is never returned",
      auth: "tenant",
      body: SecretSet,
      responses: { 200: json(Secret, "Replaced"), 201: json(Secret, "Created") },
    },
    async (c) => {
      const name = nameParam(c);
      const body = await readValue(c);
      const { secret, created } = await secrets.set(tenantOf(c), name, body.value);
      return c.json(secret, created ? 201 : 200);
    },
  );
  route(
    "get",
    "/v1/secrets",
    { summary: "List secrets (names and metadata)", auth: "tenant", responses: { 200: json(Page(Secret), "Secrets") } },
    async (c) => c.json({ data: await secrets.list(tenantOf(c)), next_cursor: null }),
  );
  route(
    "get",
    one,
    { summary: "Get a secret's metadata", auth: "tenant", responses: { 200: json(Secret, "The secret") } },
    async (c) => c.json(await secrets.get(tenantOf(c), nameParam(c))),
  );
  route(
    "delete",
    one,
    {
      summary: "Delete a secret no connection uses",
      auth: "tenant",
      responses: { 204: { description: "Deleted" }, 409: json(ErrorResponse, "A connection uses it (secret_in_use)") },
    },
    async (c) => {
      await secrets.delete(tenantOf(c), nameParam(c));
      return c.body(null, 204);
    },
  );
}
