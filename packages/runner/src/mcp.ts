/**
 * The built-in agent's client of its run's MCP endpoint on the bridge: JSON-RPC over streamable
 * HTTP, the run token as bearer. The host lists only the tools the agent's policy allows (pinned),
 * and forwards each call with the server's credential; this side holds none. Small on purpose: the
 * runner bundle stays lean, and the host answers either a JSON body or a short event stream.
 */
import { fetchWaiting } from "./sdk.ts";

export interface McpTool {
  name: string;
  description?: string;
  inputSchema: Record<string, unknown>;
}

export interface McpCallResult {
  ok: boolean;
  output: string;
}

const PROTOCOL_VERSION = "2025-06-18";

interface RpcReply {
  id?: unknown;
  result?: Record<string, unknown>;
  error?: { code: number; message: string };
}

/** The JSON-RPC replies in an answer, whether a JSON body (one or a batch) or an event stream. */
async function replies(res: Response): Promise<RpcReply[]> {
  const text = await res.text();
  if (!(res.headers.get("content-type") ?? "").includes("text/event-stream")) {
    const body = JSON.parse(text) as RpcReply | RpcReply[];
    return Array.isArray(body) ? body : [body];
  }
  const out: RpcReply[] = [];
  for (const event of text.split(/\r?\n\r?\n/)) {
    const data = event
      .split(/\r?\n/)
      .filter((l) => l.startsWith("data:"))
      .map((l) => l.slice(5).trimStart())
      .join("\n");
    if (data) out.push(JSON.parse(data) as RpcReply);
  }
  return out;
}

export class McpSession {
  readonly #url: string;
  #session: string | null = null;
  #nextId = 1;

  constructor(url: string) {
    this.#url = url;
  }

  async #post(message: Record<string, unknown>): Promise<Response> {
    const headers: Record<string, string> = {
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
      "mcp-protocol-version": PROTOCOL_VERSION,
    };
    if (this.#session) headers["mcp-session-id"] = this.#session;
    // A tool a person must approve waits like any bridge call.
    return fetchWaiting(this.#url, { method: "POST", headers, body: JSON.stringify({ jsonrpc: "2.0", ...message }) });
  }

  async #request(method: string, params: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = this.#nextId++;
    const res = await this.#post({ id, method, params });
    const session = res.headers.get("mcp-session-id");
    if (session) this.#session = session;
    if (!res.ok && !(res.headers.get("content-type") ?? "").includes("json")) {
      throw new Error(`MCP ${method}: HTTP ${res.status} ${(await res.text()).slice(0, 200)}`);
    }
    const reply = (await replies(res)).find((r) => r.id === id);
    if (!reply) throw new Error(`MCP ${method}: no answer (HTTP ${res.status})`);
    if (reply.error) throw new Error(`MCP ${method}: ${reply.error.message} (${reply.error.code})`);
    return reply.result ?? {};
  }

  /** Opens the session and lists every tool the run may call (following pages). */
  async open(): Promise<McpTool[]> {
    await this.#request("initialize", {
      protocolVersion: PROTOCOL_VERSION,
      capabilities: {},
      clientInfo: { name: "paddock-agent", version: "1" },
    });
    const note = await this.#post({ method: "notifications/initialized" });
    await note.body?.cancel();
    const tools: McpTool[] = [];
    let cursor: unknown;
    do {
      const page = await this.#request("tools/list", cursor === undefined ? {} : { cursor });
      tools.push(...((page.tools as McpTool[] | undefined) ?? []));
      cursor = page.nextCursor;
    } while (typeof cursor === "string" && tools.length < 1000);
    return tools;
  }

  /** Calls a tool; a tool's own failure (isError) and a refusal by the host both come back as not ok. */
  async call(name: string, args: Record<string, unknown>): Promise<McpCallResult> {
    try {
      const result = await this.#request("tools/call", { name, arguments: args });
      const parts = (result.content as { type: string; text?: string }[] | undefined) ?? [];
      const text = parts.map((p) => (p.type === "text" ? (p.text ?? "") : `[${p.type}]`)).join("\n");
      const output = text || (result.structuredContent === undefined ? "" : JSON.stringify(result.structuredContent));
      return { ok: result.isError !== true, output };
    } catch (err) {
      return { ok: false, output: err instanceof Error ? err.message : String(err) };
    }
  }
}

/** A session on the MCP endpoint at `url`, and the tools it offers. */
export async function openMcp(url: string): Promise<{ session: McpSession; tools: McpTool[] }> {
  const session = new McpSession(url);
  return { session, tools: await session.open() };
}

/** A name a model's tool list accepts (letters, digits, _ and -, at most 64), for an MCP tool's name. */
export function modelToolName(name: string): string {
  return name.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 64);
}
