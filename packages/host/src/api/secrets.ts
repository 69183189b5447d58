/**
 * The secrets vault over HTTP: set a value (from the body, never the URL), list, show and delete.
 * Responses carry names and metadata only, and no error quotes the body it refused: the schema's
 * messages are fixed texts, and a body that is not JSON is refused without the parser's excerpt.
 */
import { ErrorResponse, MAX_SECRET_BYTES, Page, Secret, SecretName, SecretSet } from "@paddock/protocol";
import { z } from "zod";
import type { Secrets } from "../secrets/secrets.ts";
import { type DefineRoute, json, jsonBody, pathParam, tenantOf } from "./http.ts";

/** A JSON-escaped value may take six bytes per byte (`\u0000`). */
const MAX_BODY_BYTES = MAX_SECRET_BYTES * 6 + 1024;
const Name = z.object({ name: pathParam(SecretName, "secret") });

export function registerSecretRoutes(route: DefineRoute, secrets: Secrets): void {
  const one = "/v1/secrets/{name}";
  route(
    {
      method: "put",
      path: one,
      summary: "Set a secret's value (a new version if it exists); the value is never returned",
      auth: "tenant",
      request: { params: Name, body: jsonBody(SecretSet) },
      bodyLimit: MAX_BODY_BYTES,
      responses: { 200: json(Secret, "Replaced"), 201: json(Secret, "Created") },
    },
    async (c) => {
      const { secret, created } = await secrets.set(tenantOf(c), c.req.valid("param").name, c.req.valid("json").value);
      return c.json(secret, created ? 201 : 200);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/secrets",
      summary: "List secrets (names and metadata)",
      auth: "tenant",
      responses: { 200: json(Page(Secret), "Secrets") },
    },
    async (c) => c.json({ data: await secrets.list(tenantOf(c)), next_cursor: null }, 200),
  );
  route(
    {
      method: "get",
      path: one,
      summary: "Get a secret's metadata",
      auth: "tenant",
      request: { params: Name },
      responses: { 200: json(Secret, "The secret") },
    },
    async (c) => c.json(await secrets.get(tenantOf(c), c.req.valid("param").name), 200),
  );
  route(
    {
      method: "delete",
      path: one,
      summary: "Delete a secret no connection uses",
      auth: "tenant",
      request: { params: Name },
      responses: { 204: { description: "Deleted" }, 409: json(ErrorResponse, "A connection uses it (secret_in_use)") },
    },
    async (c) => {
      await secrets.delete(tenantOf(c), c.req.valid("param").name);
      return c.body(null, 204);
    },
  );
}
