/**
 * A local stand-in for an external MCP server, built with the official SDK (McpServer behind
 * StreamableHTTPServerTransport, one session per client, on a loopback port), or with
 * `legacy: true` behind the older HTTP+SSE transport at the same URL. Its tools echo their
 * arguments and the credential header they received, count their calls, and can change their
 * description between runs; a slow tool, a tool with a required-argument schema, a tool answering
 * `bytes` bytes, tools that send the client a sampling or elicitation request, a resource and a
 * prompt. Bad behaviour on demand: `setMode("malformed")` answers tools/call with broken JSON-RPC,
 * `setMode("down")` drops every connection, `leaky` and `leaky-keys` quote the credential back; `accept` answers 401 to the credentials it refuses.
 * Used by tests and by `paddock bench mcp`.
 */
import { randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { McpServer, type RegisteredTool } from "@modelcontextprotocol/sdk/server/mcp.js";
import { SSEServerTransport } from "@modelcontextprotocol/sdk/server/sse.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { CreateMessageResultSchema, ElicitResultSchema } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";

export interface McpStandInOptions {
  /** The request header whose value the tools echo as `credential` (default authorization). */
  credentialHeader?: string;
  /** Whether a request with this credential is let in; 401 otherwise (default: every one). */
  accept?: (credential: string | null) => boolean | Promise<boolean>;
  /** Answer POSTs with plain JSON instead of an event stream (then the server cannot send requests mid-call). */
  json?: boolean;
  /** The address to listen on (default 127.0.0.1). */
  host?: string;
  /** Serve the older HTTP+SSE transport (GET url opens the stream, POST url?sessionId= sends) instead. */
  legacy?: boolean;
}

/**
 * How the stand-in misbehaves: `malformed` answers tools/call with broken JSON-RPC; `down` drops
 * every connection; `leaky` answers tools/call with a JSON-RPC error whose message quotes the
 * credential, and `leaky-keys` with a result that holds the credential as an object key; `drip`
 * answers tools/call with an event stream that sends a comment every 50 ms and never the answer;
 * `flood` answers the GET of the notification stream with one event that never ends;
 * `endless-list` answers tools/list with pages of 50 tools that always name a next page.
 */
export type McpStandInMode =
  | "normal"
  | "malformed"
  | "down"
  | "leaky"
  | "leaky-keys"
  | "drip"
  | "flood"
  | "endless-list";

/** One tool call the stand-in served. */
export interface SeenMcpCall {
  tool: string;
  args: unknown;
  /** The credential header's value, as received. */
  credential: string | null;
}

export interface McpStandIn {
  /** The MCP endpoint (streamable HTTP, or the legacy SSE endpoint with `legacy`). */
  url: string;
  /** Calls of `tool` served so far. */
  calls(tool: string): number;
  /** tools/list requests received so far. */
  lists(): number;
  /** Answers of `drip` mode still open. */
  dripping(): number;
  /** Notification streams of `flood` mode opened, and how many of them are still open. */
  floods(): { opened: number; open: number };
  /** Every tool call served, in order. */
  seen: SeenMcpCall[];
  /** Changes a tool's description (sessions open now are told the list changed). */
  setDescription(tool: string, text: string): void;
  /** Adds an echoing tool (a new tool on the server). */
  addTool(name: string, description?: string): void;
  setMode(mode: McpStandInMode): void;
  close(): Promise<void>;
}

/** The tools and what they do at first. */
export const MCP_STAND_IN_TOOLS = {
  echo: "Echoes its arguments and the credential it received.",
  search_issues: "Searches issues (echoes).",
  search_users: "Searches users (echoes).",
  create_issue: "Creates an issue; needs a title.",
  merge_pr: "Merges a pull request (echoes).",
  slow: "Answers after `ms` milliseconds (default 2000).",
  big: "Answers a text of `bytes` bytes.",
  ask_model: "Asks the client for a model completion (sampling) first.",
  ask_user: "Asks the client's user for input (elicitation) first.",
} as const;

/** One session's server and its tools. */
interface Session {
  server: McpServer;
  tools: Map<string, RegisteredTool>;
}

/** Starts the stand-in on `host` (default 127.0.0.1) at a free port. */
export async function startMcpStandIn(options: McpStandInOptions = {}): Promise<McpStandIn> {
  const credentialHeader = (options.credentialHeader ?? "authorization").toLowerCase();
  const descriptions = new Map<string, string>(Object.entries(MCP_STAND_IN_TOOLS));
  const extra = new Set<string>();
  const counts = new Map<string, number>();
  const seen: SeenMcpCall[] = [];
  const servers = new Set<Session>();
  const streamable = new Map<string, StreamableHTTPServerTransport>();
  const legacy = new Map<string, SSEServerTransport>();
  let mode: McpStandInMode = "normal";
  let lists = 0;
  let dripping = 0;
  const floods = { opened: 0, open: 0 };

  const credentialOf = (headers: Record<string, string | string[] | undefined> | undefined): string | null => {
    const value = headers?.[credentialHeader];
    return typeof value === "string" ? value : null;
  };

  const count = (tool: string, args: unknown, headers: Record<string, string | string[] | undefined> | undefined) => {
    counts.set(tool, (counts.get(tool) ?? 0) + 1);
    const credential = credentialOf(headers);
    seen.push({ tool, args, credential });
    return credential;
  };
  const echo = (tool: string) => (args: unknown, ctx: { requestInfo?: { headers?: Record<string, unknown> } }) => {
    const credential = count(tool, args, ctx.requestInfo?.headers as Record<string, string | undefined>);
    return { content: [{ type: "text" as const, text: JSON.stringify({ tool, args, credential }) }] };
  };
  const free = { query: z.string().optional(), text: z.string().optional(), n: z.number().optional() };
  /** Registers the echoing tool `name` on one session's server. */
  const addEcho = ({ server, tools }: Session, name: string) => {
    tools.set(
      name,
      server.registerTool(name, { description: descriptions.get(name) ?? name, inputSchema: free }, echo(name)),
    );
  };

  /** A server for one session, with the tools as they are described now. */
  function newServer(): McpServer {
    const server = new McpServer({ name: "mcp-stand-in", version: "1.0.0" });
    const tools = new Map<string, RegisteredTool>();
    const entry = { server, tools };
    for (const name of ["echo", "search_issues", "search_users", "merge_pr", ...extra]) addEcho(entry, name);
    tools.set(
      "create_issue",
      server.registerTool(
        "create_issue",
        {
          description: descriptions.get("create_issue") ?? "",
          inputSchema: { title: z.string().min(1), body: z.string().optional() },
        },
        echo("create_issue"),
      ),
    );
    tools.set(
      "slow",
      server.registerTool(
        "slow",
        { description: descriptions.get("slow") ?? "", inputSchema: { ms: z.number().int().min(0).optional() } },
        async (args, ctx) => {
          await new Promise((resolve) => setTimeout(resolve, args.ms ?? 2000));
          return echo("slow")(args, ctx);
        },
      ),
    );
    tools.set(
      "big",
      server.registerTool(
        "big",
        { description: descriptions.get("big") ?? "", inputSchema: { bytes: z.number().int().min(0) } },
        (args, ctx) => {
          count("big", args, ctx.requestInfo?.headers as Record<string, string | undefined>);
          return { content: [{ type: "text", text: "x".repeat(args.bytes) }] };
        },
      ),
    );
    tools.set(
      "ask_model",
      server.registerTool("ask_model", { description: descriptions.get("ask_model") ?? "" }, async (ctx) => {
        count("ask_model", {}, ctx.requestInfo?.headers as Record<string, string | undefined>);
        const answer = await ctx.sendRequest(
          {
            method: "sampling/createMessage",
            params: { messages: [{ role: "user", content: { type: "text", text: "hi" } }], maxTokens: 10 },
          },
          CreateMessageResultSchema,
        );
        return { content: [{ type: "text", text: JSON.stringify(answer) }] };
      }),
    );
    tools.set(
      "ask_user",
      server.registerTool("ask_user", { description: descriptions.get("ask_user") ?? "" }, async (ctx) => {
        count("ask_user", {}, ctx.requestInfo?.headers as Record<string, string | undefined>);
        const answer = await ctx.sendRequest(
          {
            method: "elicitation/create",
            params: { message: "Your name?", requestedSchema: { type: "object", properties: {} } },
          },
          ElicitResultSchema,
        );
        return { content: [{ type: "text", text: JSON.stringify(answer) }] };
      }),
    );
    server.registerResource(
      "readme",
      "standin://readme",
      { description: "A short text.", mimeType: "text/plain" },
      (uri) => ({ contents: [{ uri: uri.href, text: "the stand-in's readme" }] }),
    );
    server.registerPrompt(
      "greet",
      { description: "Greets someone.", argsSchema: { name: z.string() } },
      ({ name }) => ({ messages: [{ role: "user", content: { type: "text", text: `Say hello to ${name}.` } }] }),
    );
    servers.add(entry);
    server.server.onclose = () => servers.delete(entry);
    return server;
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (mode === "down") {
      req.socket.destroy();
      return;
    }
    if (options.accept && !(await options.accept(credentialOf(req.headers)))) {
      req.resume();
      res.writeHead(401, { "www-authenticate": "Bearer" }).end();
      return;
    }
    const url = new URL(req.url ?? "/", "http://stand-in");
    if (url.pathname !== "/mcp") {
      res.writeHead(404).end();
      return;
    }
    if (options.legacy) return handleLegacy(req, res, url);
    if (mode === "flood" && req.method === "GET") {
      res.writeHead(200, { "content-type": "text/event-stream" });
      floods.opened++;
      floods.open++;
      res.write("data: ");
      const line = "x".repeat(16 * 1024);
      const timer = setInterval(() => res.write(line), 5);
      res.on("close", () => {
        clearInterval(timer);
        floods.open--;
      });
      return;
    }
    let body: unknown;
    if (req.method === "POST") {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        res.writeHead(400).end();
        return;
      }
      const message = body as { method?: string; id?: unknown };
      if (message.method === "tools/list") lists++;
      if (mode === "malformed" && message.method === "tools/call") {
        res.writeHead(200, { "content-type": "application/json" });
        res.end('{"jsonrpc":"2.0","id":');
        return;
      }
      if (mode === "endless-list" && message.method === "tools/list") {
        const tools = Array.from({ length: 50 }, (_, i) => ({
          name: `tool_${randomUUID()}_${i}`,
          description: "x".repeat(200),
          inputSchema: { type: "object" },
        }));
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ jsonrpc: "2.0", id: message.id, result: { tools, nextCursor: randomUUID() } }));
        return;
      }
      if (mode === "drip" && message.method === "tools/call") {
        res.writeHead(200, { "content-type": "text/event-stream" });
        dripping++;
        const timer = setInterval(() => res.write(": still here\n\n"), 50);
        res.on("close", () => {
          clearInterval(timer);
          dripping--;
        });
        return;
      }
      if ((mode === "leaky" || mode === "leaky-keys") && message.method === "tools/call") {
        const credential = credentialOf(req.headers) ?? "";
        const answer =
          mode === "leaky"
            ? { error: { code: -32000, message: `Refused the credential ${credential}` } }
            : { result: { content: [{ type: "text", text: "ok" }], structuredContent: { [credential]: true } } };
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ jsonrpc: "2.0", id: message.id, ...answer }));
        return;
      }
    }
    const sessionId = req.headers["mcp-session-id"];
    let transport = typeof sessionId === "string" ? streamable.get(sessionId) : undefined;
    if (!transport) {
      if (typeof sessionId === "string" || (body as { method?: string })?.method !== "initialize") {
        res.writeHead(404, { "content-type": "application/json" });
        res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32001, message: "Session not found" }, id: null }));
        return;
      }
      const created = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        enableJsonResponse: options.json ?? false,
        onsessioninitialized: (id) => {
          streamable.set(id, created);
        },
      });
      created.onclose = () => {
        if (created.sessionId) streamable.delete(created.sessionId);
      };
      await newServer().connect(created);
      transport = created;
    }
    await transport.handleRequest(req, res, body);
  }

  async function handleLegacy(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> {
    if (req.method === "GET") {
      const transport = new SSEServerTransport("/mcp", res);
      legacy.set(transport.sessionId, transport);
      transport.onclose = () => legacy.delete(transport.sessionId);
      await newServer().connect(transport);
      return;
    }
    const transport = legacy.get(url.searchParams.get("sessionId") ?? "");
    if (req.method !== "POST" || !transport) {
      res.writeHead(req.method === "POST" ? 404 : 405).end();
      return;
    }
    await transport.handlePostMessage(req, res);
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500).end();
      else res.destroy();
    });
  });
  const host = options.host ?? "127.0.0.1";
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${host}:${port}/mcp`,
    calls: (tool) => counts.get(tool) ?? 0,
    lists: () => lists,
    dripping: () => dripping,
    floods: () => ({ ...floods }),
    seen,
    setDescription(tool, text) {
      descriptions.set(tool, text);
      for (const { tools } of servers) tools.get(tool)?.update({ description: text });
    },
    addTool(name, description) {
      extra.add(name);
      descriptions.set(name, description ?? name);
      for (const session of servers) addEcho(session, name);
    },
    setMode(next) {
      mode = next;
    },
    async close() {
      for (const transport of [...streamable.values(), ...legacy.values()]) await transport.close().catch(() => {});
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    },
  };
}
