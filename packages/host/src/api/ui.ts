/**
 * The dashboard's static files under /ui: assets named by their content's hash are cached for a
 * year, index.html (the answer to every other /ui path, for the app's own routing) never.
 *
 * Threat model: the dashboard shows what agents wrote, and agents are untrusted. Every /ui answer
 * carries a CSP that runs only this origin's scripts (no inline script, no eval, no plugins), may
 * not be framed, and sends forms nowhere else; nosniff stops a file being read as another type.
 * The files are read once, by name from the build's own list: no request path reaches the disk.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import type { OpenAPIHono } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { ApiEnv } from "./http.ts";

/** The dashboard's Content-Security-Policy: this origin only; images may also be blob: or data: URLs. */
export const UI_CSP = [
  "default-src 'self'",
  "img-src 'self' blob: data:",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy": UI_CSP,
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  "referrer-policy": "same-origin",
  "cross-origin-opener-policy": "same-origin",
};

const TYPES: Record<string, string> = {
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  svg: "image/svg+xml",
  html: "text/html; charset=utf-8",
};

interface StaticFile {
  body: Uint8Array<ArrayBuffer>;
  gzip: Uint8Array<ArrayBuffer>;
  type: string;
}

function load(path: string): StaticFile {
  const body = readFileSync(path);
  const ext = path.slice(path.lastIndexOf(".") + 1);
  return {
    body: new Uint8Array(body),
    gzip: new Uint8Array(gzipSync(body, { level: 9 })),
    type: TYPES[ext] ?? "application/octet-stream",
  };
}

function send(c: Context, file: StaticFile, cache: string): Response {
  const gzip = /\bgzip\b/.test(c.req.header("accept-encoding") ?? "");
  const body = gzip ? file.gzip : file.body;
  return new Response(body, {
    status: 200,
    headers: {
      ...SECURITY_HEADERS,
      "content-type": file.type,
      "cache-control": cache,
      vary: "accept-encoding",
      ...(gzip ? { "content-encoding": "gzip" } : {}),
    },
  });
}

/**
 * Serves the dashboard built in `dir` (index.html and assets/) under /ui.
 * @example registerUi(app, "/repo/packages/ui/dist");
 */
export function registerUi(app: OpenAPIHono<ApiEnv>, dir: string): void {
  const index = load(join(dir, "index.html"));
  const assets = new Map<string, StaticFile>();
  for (const name of readdirSync(join(dir, "assets"))) assets.set(name, load(join(dir, "assets", name)));

  const page = (c: Context) => send(c, index, "no-cache");
  app.get("/ui", page);
  app.get("/ui/assets/:name", (c) => {
    const file = assets.get(c.req.param("name"));
    if (!file) {
      return c.text("No such file.", 404, { ...SECURITY_HEADERS, "cache-control": "no-cache" });
    }
    return send(c, file, "public, max-age=31536000, immutable");
  });
  app.get("/ui/*", page);
}
