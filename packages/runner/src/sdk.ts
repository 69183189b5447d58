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
 *
 * A call a policy says a person must approve waits as long as the approval takes: the host holds
 * the request, and answers 503 with a `paddock-approval` header when the caller should ask again
 * (the same request waits on the same approval, named in that header when asking again); these
 * calls do that by themselves.
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

/** How long to pause before asking again after the host said an approval is still pending. */
const ASK_AGAIN_MS = 50;

/**
 * fetch to the bridge with the run token, waiting out approvals: while the host answers that the
 * call's approval is pending, the identical request is sent again (with a fresh token). A body
 * that is a stream is read first, so that it can be sent again.
 */
export async function fetchWaiting(target: string, init: RequestInit = {}): Promise<Response> {
  const body = init.body instanceof ReadableStream ? await new Response(init.body).arrayBuffer() : init.body;
  let waitingOn: string | null = null;
  for (;;) {
    const headers = new Headers(init.headers);
    headers.set("authorization", `Bearer ${token()}`);
    // Asking again names the approval waited on: one that ran out meanwhile answers so, not a new one.
    if (waitingOn) headers.set("paddock-approval", waitingOn);
    const res = await fetch(target, { ...init, headers, ...(body === undefined ? {} : { body }) });
    waitingOn = res.headers.get("paddock-approval");
    if (res.status !== 503 || waitingOn === null) return res;
    await res.body?.cancel();
    await new Promise((r) => setTimeout(r, ASK_AGAIN_MS));
  }
}

/**
 * Calls `path` (with its query, if any) on `connection` through the host's bridge; `init` is
 * fetch's. Whatever Authorization header `init` carries is replaced by the run token. A call that
 * needs a person's approval returns once it is decided: the upstream's answer, or 403
 * `approval_denied` (its message carries the approver's note) or `approval_expired`.
 */
async function bridgeFetch(connection: string, path: string, init: RequestInit = {}): Promise<Response> {
  return fetchWaiting(url(connection, path), { ...init, redirect: "manual" });
}

export const bridge = { fetch: bridgeFetch, url, token };

const TERMINAL = ["succeeded", "failed", "timed_out", "canceled"];

async function agentsCall(path: string, init: RequestInit = {}): Promise<ChildRun> {
  const headers = new Headers(init.headers);
  if (init.body) headers.set("content-type", "application/json");
  const res = await fetchWaiting(`${setting("PADDOCK_BRIDGE_URL")}${path}`, { ...init, headers });
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
