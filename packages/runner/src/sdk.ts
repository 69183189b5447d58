/**
 * The agent-side SDK, shipped inside the runner bundle so that it always matches the host that
 * booted the sandbox. Agents written for Node import it from the runner layer:
 *
 *   const { bridge } = await import(process.env.PADDOCK_SDK);
 *   const res = await bridge.fetch("github", "/repos/acme/app/issues", { method: "GET" });
 *
 * It holds no credential: each call reads the run token the host keeps fresh in the file named by
 * PADDOCK_TOKEN_FILE and sends it to the host's bridge, which attaches the real credential.
 */
import { readFileSync } from "node:fs";

function setting(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: this code runs outside a Paddock sandbox with a network`);
  return value;
}

/** The current run token (re-read on every call: the host renews it during long runs). */
function token(): string {
  return readFileSync(setting("PADDOCK_TOKEN_FILE"), "utf8").trim();
}

/** The bridge URL of `path` on `connection`, for clients that take a base URL. */
function url(connection: string, path = ""): string {
  if (!/^[a-z0-9][a-z0-9_-]{0,63}$/.test(connection)) throw new Error(`not a connection name: ${connection}`);
  if (path !== "" && !path.startsWith("/")) throw new Error(`a bridge path starts with '/': ${path}`);
  return `${setting("PADDOCK_BRIDGE_URL")}/bridge/${connection}${path}`;
}

/**
 * Calls `path` (with its query, if any) on `connection` through the host's bridge; `init` is
 * fetch's. Whatever Authorization header `init` carries is replaced by the run token.
 */
async function bridgeFetch(connection: string, path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  headers.set("authorization", `Bearer ${token()}`);
  return fetch(url(connection, path), { ...init, headers, redirect: "manual" });
}

export const bridge = { fetch: bridgeFetch, url, token };
