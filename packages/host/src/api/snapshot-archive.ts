/**
 * Snapshot export and import over HTTP: `GET /v1/agents/{id}/snapshots/{version}/export` streams
 * a version's .tar.zst, `POST /v1/agents/{id}/snapshots/import` takes one as the request body.
 * Their bodies are binary, so they are plain routes with a hand-written OpenAPI entry. As
 * everywhere, the tenant comes from the API key and another tenant's agents answer as unknown
 * ones do; the archive itself is checked by agents/snapshot-archive.ts.
 */
import { Readable } from "node:stream";
import type { OpenAPIHono } from "@hono/zod-openapi";
import { AppError, ErrorResponse, Snapshot } from "@paddock/protocol";
import type { Context, MiddlewareHandler } from "hono";
import { z } from "zod";
import { archiveLimits, SnapshotArchives, tooLarge } from "../agents/snapshot-archive.ts";
import type { Principal } from "../identity/identity.ts";
import type { ApiDeps } from "./app.ts";
import { check, json } from "./http.ts";

type ApiEnv = { Variables: { principal: Principal } };

/** What the routes borrow from createApi: its tenant-key check and its id parameter check. */
export interface RouteHelpers {
  authenticate: MiddlewareHandler<ApiEnv>;
  param: (c: Context<ApiEnv>, name: string) => string;
}

export const ARCHIVE_CONTENT_TYPE = "application/zstd";
const ACCEPTED_TYPES = /^application\/(zstd|octet-stream)\s*(;|$)/i;

const ExportQuery = z.object({
  include_base: z.enum(["true", "false"]).default("true"),
});
const Binary = z.string().meta({ format: "binary" });

/**
 * Adds the export and import routes (and their OpenAPI entries) to the API.
 * @example registerSnapshotArchiveRoutes(app, deps, { authenticate: authenticate("tenant"), param });
 */
export function registerSnapshotArchiveRoutes(app: OpenAPIHono<ApiEnv>, deps: ApiDeps, helpers: RouteHelpers): void {
  const { images, layers, runners, maxLimits } = deps.agents.stores;
  const archives = new SnapshotArchives(
    { db: deps.db, agents: deps.agents, images, layers, runners },
    archiveLimits(maxLimits),
  );
  const { authenticate, param } = helpers;
  const tenantOf = (c: Context<ApiEnv>) => c.get("principal").tenantId;
  const IdParam = z.string().meta({ description: "An agent id (agt_…)" });

  app.openAPIRegistry.registerPath({
    method: "get",
    path: "/v1/agents/{id}/snapshots/{version}/export",
    summary: "Download one environment version as a .tar.zst (manifest, environment layers, base image)",
    security: [{ bearer: [] }],
    request: {
      params: z.object({ id: IdParam, version: z.string().meta({ description: "A version number" }) }),
      query: ExportQuery,
    },
    responses: {
      200: {
        description:
          "The archive (deterministic for a version), with Content-Length and Content-Digest (RFC 9530, sha-256). " +
          "include_base=false leaves the base image out.",
        content: { [ARCHIVE_CONTENT_TYPE]: { schema: Binary } },
      },
      400: json(ErrorResponse, "Invalid query"),
      401: json(ErrorResponse, "Missing or invalid API key"),
      404: json(ErrorResponse, "No such agent or version"),
      503: json(ErrorResponse, "The version's base image is not on this host"),
    },
  });
  app.get("/v1/agents/:id/snapshots/:version/export", authenticate, async (c) => {
    const id = param(c, "id");
    const version = versionOf(c.req.param("version") ?? "");
    const query = check(ExportQuery, c.req.query());
    // Packed completely before the answer starts: a failure is a JSON error, never half an archive.
    const archive = await archives.exportArchive(tenantOf(c), id, version, {
      includeBase: query.include_base === "true",
    });
    return new Response(Readable.toWeb(archive.body) as unknown as ReadableStream, {
      headers: {
        "content-type": ARCHIVE_CONTENT_TYPE,
        "content-length": String(archive.size),
        "content-digest": `sha-256=:${Buffer.from(archive.sha256, "hex").toString("base64")}:`,
        "content-disposition": `attachment; filename="${archive.fileName}"`,
        "x-paddock-snapshot-version": String(archive.manifest.version),
        "x-content-type-options": "nosniff",
      },
    });
  });

  app.openAPIRegistry.registerPath({
    method: "post",
    path: "/v1/agents/{id}/snapshots/import",
    summary: "Import a .tar.zst from an export as the agent's new current environment version",
    description:
      "The body is the archive (application/zstd or application/octet-stream), at most the host's disk cap " +
      "(limits.disk_mb). Every digest is checked before anything is stored; missing layers and the base image " +
      "are stored; the new version has reason 'import'.",
    security: [{ bearer: [] }],
    request: {
      params: z.object({ id: IdParam }),
      body: { content: { [ARCHIVE_CONTENT_TYPE]: { schema: Binary } }, required: true },
    },
    responses: {
      201: json(Snapshot, "The new current version"),
      401: json(ErrorResponse, "Missing or invalid API key"),
      404: json(ErrorResponse, "No such agent"),
      409: json(ErrorResponse, "The agent's environment changed meanwhile"),
      413: json(ErrorResponse, "The archive is larger than this host accepts"),
      415: json(ErrorResponse, "The body is not sent as application/zstd or application/octet-stream"),
      422: json(ErrorResponse, "The archive is damaged, truncated or unsafe (invalid_archive)"),
      503: json(ErrorResponse, "The archive leaves out a base image this host does not have"),
    },
  });
  app.post("/v1/agents/:id/snapshots/import", authenticate, async (c) => {
    const id = param(c, "id");
    const tenantId = tenantOf(c);
    // Unknown (and other tenants') agents are refused before any of the body is read.
    await deps.agents.get(tenantId, id);
    if (!ACCEPTED_TYPES.test(c.req.header("content-type") ?? "")) {
      throw new AppError(
        "unsupported_media_type",
        `Send the snapshot archive as ${ARCHIVE_CONTENT_TYPE} (or application/octet-stream).`,
      );
    }
    const length = c.req.header("content-length");
    if (Number(length) > archives.limits.maxArchiveBytes) throw tooLarge(archives.limits.maxArchiveBytes);
    const body = c.req.raw.body;
    if (body === null || length === "0") {
      throw new AppError(
        "invalid_archive",
        "The request has no body; send the .tar.zst that 'paddock env export' wrote.",
      );
    }
    return c.json(await archives.importStream(tenantId, id, body), 201);
  });
}

/** A version number from the path; anything else cannot exist, so it answers like an unknown version. */
function versionOf(raw: string): number {
  if (!/^[1-9][0-9]{0,8}$/.test(raw)) {
    throw new AppError("not_found", `No snapshot version '${raw.slice(0, 20)}'; versions are whole numbers from 1.`);
  }
  return Number(raw);
}
