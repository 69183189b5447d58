/**
 * What the bridge's end-to-end tests share: a stand-in upstream (a local HTTP server playing an
 * external API such as GitHub) that records every request it gets, and an agent script that
 * makes the calls a test asks for from inside a real sandbox and writes what it got back to
 * /outputs/result.json; and agent scripts bundled with the official clients they import.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import zlib from "node:zlib";
import { build } from "esbuild";
import type { TestHost } from "./harness.ts";

export interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface StandIn {
  url: string;
  seen: SeenRequest[];
  close(): Promise<void>;
}

/**
 * Routes: /echo/** and anything unknown echo the request (method, url, headers, body) as JSON;
 * /gzip/** the same, gzip-compressed; /cookie sets a cookie; /redirect points at a metadata
 * address; /slow never answers; /big sends `size` bytes; /repos/{owner}/{repo}/issues plays
 * GitHub's issue list and creation; /echo/unauthorized-once/** answers 401 to the first request
 * to each path (as to a token gone stale), and echoes the rest.
 */
export async function startStandIn(): Promise<StandIn> {
  const seen: SeenRequest[] = [];
  const refused = new Set<string>();
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString();
      const request = { method: req.method ?? "", url: req.url ?? "", headers: req.headers, body };
      seen.push(request);
      const url = new URL(req.url ?? "/", "http://stand-in");
      const issues = /^\/repos\/([^/]+)\/([^/]+)\/issues$/.exec(url.pathname);
      if (issues && req.method === "GET") {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify([{ number: 7, title: `issue of ${issues[1]}/${issues[2]}`, state: "open" }]));
      } else if (issues && req.method === "POST") {
        res.writeHead(201, { "content-type": "application/json" });
        res.end(JSON.stringify({ number: 8, ...JSON.parse(body || "{}") }));
      } else if (url.pathname === "/cookie") {
        res.writeHead(200, { "set-cookie": "session=abc; Path=/", "content-type": "text/plain" });
        res.end("cookie");
      } else if (url.pathname === "/redirect") {
        res.writeHead(302, { location: "http://169.254.169.254/latest/meta-data/" });
        res.end();
      } else if (url.pathname === "/slow") {
        // Never answers: the bridge's timeout must end the call.
      } else if (url.pathname === "/big") {
        res.writeHead(200, { "content-type": "application/octet-stream" });
        res.end(Buffer.alloc(Number(url.searchParams.get("size") ?? 1024), 97));
      } else if (url.pathname.startsWith("/echo/unauthorized-once/") && !refused.has(url.pathname)) {
        refused.add(url.pathname);
        res.writeHead(401, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: "invalid_token" }));
      } else if (url.pathname.startsWith("/gzip")) {
        res.writeHead(200, { "content-type": "application/json", "content-encoding": "gzip" });
        res.end(zlib.gzipSync(JSON.stringify(request)));
      } else {
        res.writeHead(200, { "content-type": "application/json", "x-echo-auth": String(req.headers.authorization) });
        res.end(JSON.stringify(request));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * The probe agent (Node, on the runner's Node): for each call of its input it sends a request to
 * the bridge and records the status, headers and body it got back. `token` replaces the run token
 * ("" sends none); `raw` sends the path exactly as written (no URL normalization), over a socket;
 * `wait_ms` waits first. With `emit_token`, the agent first prints its token as a `token` event.
 */
export const PROBE_AGENT = `
import { readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
const input = JSON.parse(readFileSync(process.env.PADDOCK_INPUT, "utf8"));
const base = process.env.PADDOCK_BRIDGE_URL;
const own = readFileSync(process.env.PADDOCK_TOKEN_FILE, "utf8").trim();
if (input.emit_token) console.log("::paddock::" + JSON.stringify({ type: "token", data: own }));
function raw(method, target, token) {
  const { hostname, port } = new URL(base);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), hostname, () => {
      socket.write(method + " " + target + " HTTP/1.1\\r\\nHost: bridge\\r\\nAuthorization: Bearer " + token + "\\r\\nConnection: close\\r\\n\\r\\n");
    });
    let text = "";
    socket.on("data", (d) => { text += d; });
    socket.on("error", (e) => resolve({ status: 0, error: e.message }));
    socket.on("close", () => {
      const status = Number(text.split(" ")[1]);
      resolve({ status, body: text.slice(text.indexOf("\\r\\n\\r\\n") + 4) });
    });
  });
}
const results = [];
for (const call of input.calls ?? []) {
  const token = call.token === undefined ? own : call.token;
  if (call.wait_ms) await new Promise((r) => setTimeout(r, call.wait_ms));
  try {
    if (call.raw) { results.push(await raw(call.method ?? "GET", call.path, token)); continue; }
    const headers = { ...(call.headers ?? {}) };
    if (token !== "") headers.authorization = "Bearer " + token;
    const res = await fetch(base + call.path, { method: call.method ?? "GET", headers, body: call.body, redirect: "manual" });
    results.push({ status: res.status, headers: Object.fromEntries(res.headers), body: await res.text() });
  } catch (err) {
    results.push({ status: 0, error: String(err) });
  }
}
writeFileSync("/outputs/result.json", JSON.stringify({ token: own, results }));
`;

export interface ProbeResult {
  status: number;
  headers?: Record<string, string>;
  body?: string;
  error?: string;
}

/** Reads a JSON artifact of a finished run. */
// biome-ignore lint/suspicious/noExplicitAny: artifact JSON.
export async function artifactJson(t: TestHost, runId: string, path: string, key?: string): Promise<any> {
  const list = await t.api("GET", `/v1/runs/${runId}/artifacts`, undefined, key);
  const found = (list.body.data as { id: string; path: string }[]).find((a) => a.path === path);
  if (!found) throw new Error(`run ${runId} has no artifact ${path}: ${JSON.stringify(list.body)}`);
  const res = await t.api("GET", `/v1/runs/${runId}/artifacts/${found.id}/content`, undefined, key);
  return typeof res.body === "string" ? JSON.parse(res.body) : res.body;
}

/**
 * `source` (an ES module importing official clients from this checkout's node_modules) bundled
 * into one file an agent's sandbox runs with the runner's node.
 */
export async function bundleAgent(source: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "paddock-agent-bundle-"));
  try {
    await writeFile(join(dir, "entry.mjs"), source);
    await build({
      entryPoints: [join(dir, "entry.mjs")],
      bundle: true,
      platform: "node",
      format: "esm",
      target: "node24",
      outfile: join(dir, "agent.mjs"),
      nodePaths: ["../../../../node_modules", "../../node_modules"].map((p) => new URL(p, import.meta.url).pathname),
      logLevel: "error",
    });
    return await readFile(join(dir, "agent.mjs"), "utf8");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
