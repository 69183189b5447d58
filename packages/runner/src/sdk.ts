/**
 * The agent-side SDK, shipped inside the runner bundle so that it always matches the host that
 * booted the sandbox. Agents written for Node import it from the runner layer:
 *
 *   const { bridge, callAgent } = await import(process.env.PADDOCK_SDK);
 *   const res = await bridge.fetch("github", "/repos/acme/app/issues", { method: "GET" });
 *   const { status, result } = await callAgent("summarizer", { text });
 *
 * It holds no credential: each call reads the run token the host keeps fresh in the file named by
 * PADDOCK_TOKEN_FILE and sends it to the host's bridge, which attaches the real credential.
 */
import { readFileSync } from "node:fs";
import type { ChildRun } from "@paddock/protocol";

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

const TERMINAL = ["succeeded", "failed", "timed_out", "canceled"];

async function agentsCall(path: string, init: RequestInit = {}): Promise<ChildRun> {
  const headers = new Headers(init.headers);
  headers.set("authorization", `Bearer ${token()}`);
  if (init.body) headers.set("content-type", "application/json");
  const res = await fetch(`${setting("PADDOCK_BRIDGE_URL")}${path}`, { ...init, headers });
  const body = (await res.json()) as ChildRun & { error?: { code: string; message: string } };
  if (!res.ok) throw new Error(`${body.error?.code ?? res.status}: ${body.error?.message ?? "agent call failed"}`);
  return body;
}

/**
 * Asks the host to start a run of another agent (one this agent's policy names) with `input`;
 * with `wait` (the default) returns once the child has finished, with its status, result (its
 * last `result` event's data) and artifacts.
 */
export async function callAgent(
  name: string,
  input?: unknown,
  options: { wait?: boolean; timeoutS?: number } = {},
): Promise<ChildRun> {
  if (!/^[a-z0-9][a-z0-9_-]{0,63}$/.test(name)) throw new Error(`not an agent name: ${name}`);
  let child = await agentsCall(`/agents/${name}/runs`, { method: "POST", body: JSON.stringify({ input }) });
  if (options.wait === false) return child;
  const deadline = Date.now() + (options.timeoutS ?? 3600) * 1000;
  while (!TERMINAL.includes(child.status) && Date.now() < deadline) {
    child = await agentsCall(`/agents/runs/${child.run_id}?wait=30`);
  }
  return child;
}
