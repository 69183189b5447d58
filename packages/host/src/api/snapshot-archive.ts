/**
 * Snapshot export and import over HTTP: `GET /v1/agents/{id}/snapshots/{version}/export` streams
 * a version's .tar.zst, `POST /v1/agents/{id}/snapshots/import` takes one as the request body.
 * Their bodies are binary: they are declared for the OpenAPI document and read here. As
 * everywhere, the tenant comes from the API key and another tenant's agents answer as unknown
 * ones do; the archive itself is checked by agents/snapshot-archive.ts.
 */
import { Readable } from "node:stream";
import { AppError, ErrorResponse, Snapshot } from "@paddock/protocol";
import { z } from "zod";
import type { Agents } from "../agents/agents.ts";
import { type SnapshotArchives, tooLarge } from "../agents/snapshot-archive.ts";
import { type DefineRoute, Id, json, pathParam, tenantOf } from "./http.ts";

export const ARCHIVE_CONTENT_TYPE = "application/zstd";
const ACCEPTED_TYPES = /^application\/(zstd|octet-stream)\s*(;|$)/i;

const Binary = z.string().meta({ format: "binary" });
const AgentId = pathParam(Id, "agent");
/** A version number; anything else cannot exist, so it answers like an unknown version. */
const Version = pathParam(
  z.string().regex(/^[1-9][0-9]{0,8}$/, "a version number"),
  "snapshot version",
  (raw) => new AppError("not_found", `No snapshot version '${raw.slice(0, 20)}'; versions are whole numbers from 1.`),
);

/**
 * Adds the export and import routes (and their OpenAPI entries) to the API.
 * @example registerSnapshotArchiveRoutes(route, { archives, agents });
 */
export function registerSnapshotArchiveRoutes(
  route: DefineRoute,
  deps: { archives: SnapshotArchives; agents: Agents },
): void {
  const { archives, agents } = deps;
  route(
    {
      method: "get",
      path: "/v1/agents/{id}/snapshots/{version}/export",
      summary: "Download one environment version as a .tar.zst (manifest, environment layers, base image)",
      auth: "tenant",
      request: {
        params: z.object({ id: AgentId, version: Version }),
        query: z.object({ include_base: z.enum(["true", "false"]).default("true") }),
      },
      responses: {
        200: {
          description:
            "The archive (deterministic for a version), with Content-Length and Content-Digest (RFC 9530, sha-256). " +
            "include_base=false leaves the base image out.",
          content: { [ARCHIVE_CONTENT_TYPE]: { schema: Binary } },
        },
        404: json(ErrorResponse, "No such agent or version"),
        503: json(ErrorResponse, "The version's base image is not on this host"),
      },
    },
    async (c) => {
      const { id, version } = c.req.valid("param");
      // Packed completely before the answer starts: a failure is a JSON error, never half an archive.
      const archive = await archives.exportArchive(tenantOf(c), id, Number(version), {
        includeBase: c.req.valid("query").include_base === "true",
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
    },
  );

  route(
    {
      method: "post",
      path: "/v1/agents/{id}/snapshots/import",
      summary: "Import a .tar.zst from an export as the agent's new current environment version",
      description:
        "The body is the archive (application/zstd or application/octet-stream), at most the host's disk cap " +
        "(limits.disk_mb). Every digest is checked before anything is stored; missing layers and the base image " +
        "are stored; the new version has reason 'import'.",
      auth: "tenant",
      // Read by the handler as a stream: an archive may be gigabytes.
      request: {
        params: z.object({ id: AgentId }),
        body: {
          content: { [ARCHIVE_CONTENT_TYPE]: { schema: Binary }, "application/octet-stream": { schema: Binary } },
          required: true,
        },
      },
      responses: {
        201: json(Snapshot, "The new current version"),
        404: json(ErrorResponse, "No such agent"),
        409: json(ErrorResponse, "The agent's environment changed meanwhile"),
        413: json(ErrorResponse, "The archive is larger than this host accepts"),
        415: json(ErrorResponse, "The body is not sent as application/zstd or application/octet-stream"),
        422: json(ErrorResponse, "The archive is damaged, truncated or unsafe (invalid_archive)"),
        503: json(ErrorResponse, "The archive leaves out a base image this host does not have"),
      },
    },
    async (c) => {
      const { id } = c.req.valid("param");
      const tenantId = tenantOf(c);
      // Unknown (and other tenants') agents, and archived ones, are refused before any of the body is read.
      await agents.getLive(tenantId, id);
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
    },
  );
}
