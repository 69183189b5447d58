/**
 * The host as an MCP client: connections to remote MCP servers with the official SDK's Client over
 * StreamableHTTPClientTransport (falling back to the older SSEClientTransport when the server
 * refuses a streamable HTTP initialize with a 4xx), pooled per (server, credential) so a call does
 * not pay a new `initialize`.
 *
 * Threat model: the servers are outside parties that may misbehave: never answer, answer slowly,
 * answer malformed JSON-RPC or huge results, or ask the client things (sampling, elicitation).
 * Every request has the server's timeout; every answer is capped; a server-initiated request is
 * refused and stops the call it came with (`mcp_unsupported_request`), never other runs' calls on
 * the same connection; a call's answer that trickles on past the timeout is hung up on; nothing
 * from a server is trusted beyond its parsed shape. Connections go only to addresses checked
 * after resolution and pinned (no DNS rebinding), private and loopback ones only for internal
 * servers, and follow no redirects. The credential is attached here and never leaves the host
 * except to its server.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { createHash } from "node:crypto";
import http from "node:http";
import https from "node:https";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport, StreamableHTTPError } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { RequestOptions } from "@modelcontextprotocol/sdk/shared/protocol.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { McpError, ErrorCode as RpcCode, ToolListChangedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { AppError, type McpToolDefinition } from "@paddock/protocol";
import { z } from "zod";
import { AddressPinner, PinRefusal, pinnedLookup } from "../bridge/pin.ts";
import type { HostMcpServer } from "./servers.ts";

/** What a connection to a server attaches: headers (the credential among them) and a query. */
export interface McpCredential {
  headers: Record<string, string>;
  /** Added to the server's URL (a credential of `query` auth); "" for none. */
  query: string;
}

/** A server's answer to one request, with its size as received. */
export interface McpAnswer {
  result: Record<string, unknown>;
  bytes: number;
}

/** The methods the host asks servers for on a run's behalf besides tools/call. */
export type McpReadMethod = "resources/list" | "resources/read" | "prompts/list" | "prompts/get";

export interface McpClientsOptions {
  /** Name resolution for servers' hosts; default the system resolver. */
  resolve?: (host: string) => Promise<string[]>;
  /** The largest answer passed on (default 4 MiB): past it, `mcp_result_too_large`. */
  maxResultBytes?: number;
  /** How long a server's tool list is reused for calls (default 10 s); listing reads it anew. */
  toolsTtlMs?: number;
  /** How long an unused connection stays open (default 5 min). */
  idleMs?: number;
  /** Most connections kept open at once (default 256): the least recently used idle one goes first. */
  maxClients?: number;
}

/** One pooled connection to a server with one credential. */
interface Entry {
  key: string;
  ready: Promise<Client>;
  client: Client | null;
  tools: { list: McpToolDefinition[]; at: number } | null;
  /** The listing in flight, which concurrent readers of the list share. */
  listing: Promise<McpToolDefinition[]> | null;
  /** Requests that timed out in a row. */
  timeouts: number;
  /** Calls in flight: the one the server misbehaves in is stopped, all of them when it misbehaves outside any. */
  inflight: Set<AbortController>;
  lastUsed: number;
}

const MiB = 1024 * 1024;

/**
 * An error from the SDK, a transport or a server, as a registered code with a message for the
 * caller (an HTTP refusal's status in `details.status`).
 */
export function mcpFailure(err: unknown, server: string): AppError {
  if (err instanceof AppError) return err;
  if (err instanceof McpError) {
    if (err.code === RpcCode.RequestTimeout) {
      return new AppError("mcp_server_timeout", `The MCP server '${server}' did not answer in time.`);
    }
    if (err.code === RpcCode.ConnectionClosed) {
      return new AppError("mcp_server_unavailable", `The MCP server '${server}' closed the connection.`);
    }
    return serverError(err, server);
  }
  if (err instanceof StreamableHTTPError) {
    return new AppError("mcp_server_error", `The MCP server '${server}' answered HTTP ${err.code ?? "error"}.`, {
      status: err.code,
    });
  }
  if (err instanceof SyntaxError || (err instanceof Error && /JSON|parse|schema|invalid/i.test(err.message))) {
    return new AppError("mcp_server_error", `The MCP server '${server}' answered malformed JSON-RPC.`);
  }
  return new AppError("mcp_server_unavailable", `The MCP server '${server}' could not be reached.`);
}

/** An error the server answered: passed on with its code in the message. */
function serverError(err: McpError, server: string): AppError {
  return new AppError("mcp_server_error", `The MCP server '${server}' answered error ${err.code}: ${err.message}`, {
    server_code: err.code,
  });
}

/** How much longer than the host's own timeout the SDK's request timeout is (the host's fires first). */
const SDK_TIMEOUT_SLACK_MS = 1000;
/** Timeouts in a row after which a connection is taken for broken and opened anew. */
const MAX_TIMEOUTS = 3;

export class McpClients {
  readonly #pool = new Map<string, Entry>();
  readonly #pinner: AddressPinner;
  readonly #agents = {
    http: new http.Agent({ keepAlive: true, maxSockets: 64 }),
    https: new https.Agent({ keepAlive: true, maxSockets: 64 }),
  };
  readonly #maxResultBytes: number;
  readonly #toolsTtlMs: number;
  readonly #idleMs: number;
  readonly #maxClients: number;
  readonly #sweeper: NodeJS.Timeout;

  constructor(options: McpClientsOptions = {}) {
    this.#pinner = new AddressPinner(options.resolve);
    this.#maxResultBytes = options.maxResultBytes ?? 4 * MiB;
    this.#toolsTtlMs = options.toolsTtlMs ?? 10_000;
    this.#idleMs = options.idleMs ?? 300_000;
    this.#maxClients = Math.max(1, options.maxClients ?? 256);
    this.#sweeper = setInterval(() => this.#sweep(), Math.min(this.#idleMs, 60_000));
    this.#sweeper.unref();
  }

  /** The largest answer passed on, in bytes. */
  get maxResultBytes(): number {
    return this.#maxResultBytes;
  }

  /**
   * The server's tools as it defines them now. `fresh: false` may answer the list read within
   * the last toolsTtlMs (what calls check their pins against).
   */
  async tools(server: HostMcpServer, credential: McpCredential, fresh = true): Promise<McpToolDefinition[]> {
    const entry = this.#entry(server, credential);
    if (!fresh && entry.tools && Date.now() - entry.tools.at < this.#toolsTtlMs) return entry.tools.list;
    // A listing under way is fresh enough: concurrent readers share it.
    if (entry.listing) return entry.listing;
    const listing = this.#list(server, entry);
    entry.listing = listing;
    try {
      return await listing;
    } finally {
      if (entry.listing === listing) entry.listing = null;
    }
  }

  async #list(server: HostMcpServer, entry: Entry): Promise<McpToolDefinition[]> {
    const list: McpToolDefinition[] = [];
    await this.#use(server, entry, async (client, options) => {
      let cursor: string | undefined;
      // The whole list, however many pages, is capped as one answer is.
      let bytes = 0;
      for (let page = 0; page < 100; page++) {
        const answer = await client.listTools(cursor ? { cursor } : {}, options);
        bytes += Buffer.byteLength(JSON.stringify(answer.tools));
        if (bytes > this.#maxResultBytes) {
          throw new AppError(
            "mcp_result_too_large",
            `The MCP server '${server.name}' lists more than ${this.#maxResultBytes} bytes of tools.`,
          );
        }
        for (const tool of answer.tools) {
          list.push({
            name: tool.name,
            description: tool.description ?? null,
            input_schema: tool.inputSchema as Record<string, unknown>,
          });
        }
        cursor = answer.nextCursor;
        if (!cursor) break;
      }
    });
    entry.tools = { list, at: Date.now() };
    return list;
  }

  /** Calls a tool; the server's answer as it sent it (a tool error is an answer with `isError`). */
  callTool(server: HostMcpServer, credential: McpCredential, name: string, args: unknown): Promise<McpAnswer> {
    return this.request(server, credential, "tools/call", { name, arguments: args ?? {} });
  }

  /** Sends one request (tools/call or a read of resources and prompts) and returns its answer. */
  async request(
    server: HostMcpServer,
    credential: McpCredential,
    method: McpReadMethod | "tools/call",
    params: Record<string, unknown>,
  ): Promise<McpAnswer> {
    const entry = this.#entry(server, credential);
    return this.#use(server, entry, async (client, options) => {
      const result = await client.request({ method, params }, AnyResult, options);
      const bytes = Buffer.byteLength(JSON.stringify(result));
      if (bytes > this.#maxResultBytes) {
        throw new AppError("mcp_result_too_large", `The MCP server '${server.name}' answered ${bytes} bytes.`);
      }
      return { result, bytes };
    });
  }

  /** Closes every pooled connection. */
  async close(): Promise<void> {
    clearInterval(this.#sweeper);
    const entries = [...this.#pool.values()];
    this.#pool.clear();
    await Promise.all(entries.map((e) => this.#closeEntry(e)));
    this.#agents.http.destroy();
    this.#agents.https.destroy();
  }

  /**
   * Runs `work` on the entry's client under a signal that a misbehaving server or the server's
   * timeout aborts. The timeout is the host's own, so that an error a server answers is never
   * taken for a local one whatever its number (the SDK numbers its timeouts and closed
   * connections -32001 and -32000, which servers use too).
   */
  async #use<T>(
    server: HostMcpServer,
    entry: Entry,
    work: (client: Client, options: RequestOptions) => Promise<T>,
  ): Promise<T> {
    entry.lastUsed = Date.now();
    const stop = new AbortController();
    entry.inflight.add(stop);
    const timer = setTimeout(
      () => stop.abort(new AppError("mcp_server_timeout", `The MCP server '${server.name}' did not answer in time.`)),
      server.timeoutMs,
    );
    let client: Client | null = null;
    try {
      const ready = await entry.ready;
      client = ready;
      const options = { signal: stop.signal, timeout: server.timeoutMs + SDK_TIMEOUT_SLACK_MS };
      const answer = await currentCall.run(stop, () => work(ready, options));
      entry.timeouts = 0;
      return answer;
    } catch (err) {
      // An error answered on an open connection is the server's; on a closed one (transport gone), a lost connection.
      const answered = err instanceof McpError && client?.transport !== undefined;
      const failure = stop.signal.aborted
        ? mcpFailure(stop.signal.reason, server.name)
        : answered
          ? serverError(err, server.name)
          : mcpFailure(err, server.name);
      // A connection that broke is not reused: the next request connects anew. Anything else
      // failed one call only, and the other calls on the connection (other runs') go on: a slow
      // tool is no broken connection, unless calls time out again and again.
      const timedOut = failure.code === "mcp_server_timeout" && ++entry.timeouts >= MAX_TIMEOUTS;
      if (timedOut || failure.code === "mcp_server_unavailable" || failure.code === "upstream_refused") {
        this.#drop(entry);
      }
      throw failure;
    } finally {
      clearTimeout(timer);
      entry.inflight.delete(stop);
    }
  }

  #entry(server: HostMcpServer, credential: McpCredential): Entry {
    const digest = createHash("sha256")
      .update(JSON.stringify([credential.headers, credential.query]))
      .digest("base64url");
    const key = `${server.id}\u0000${server.updatedAt}\u0000${digest}`;
    const found = this.#pool.get(key);
    if (found) {
      // Most recently used last: the first in the map is the one to let go of first.
      this.#pool.delete(key);
      this.#pool.set(key, found);
      return found;
    }
    // The least recently used idle connections go first; one with calls in flight (another run's)
    // stays, and the pool exceeds its size by at most the connections busy at once.
    for (const idle of this.#pool.values()) {
      if (this.#pool.size < this.#maxClients) break;
      if (idle.inflight.size === 0) this.#drop(idle);
    }
    const state: Omit<Entry, "ready"> = {
      key,
      client: null,
      tools: null,
      listing: null,
      timeouts: 0,
      inflight: new Set(),
      lastUsed: Date.now(),
    };
    const entry: Entry = Object.assign(state, { ready: this.#connect(server, credential, state) });
    entry.ready.catch(() => this.#drop(entry));
    this.#pool.set(key, entry);
    return entry;
  }

  async #connect(server: HostMcpServer, credential: McpCredential, entry: Omit<Entry, "ready">): Promise<Client> {
    const url = new URL(server.url);
    if (credential.query) url.search = credential.query;
    const fetch = this.#fetch(server, credential, entry);
    const options = { signal: AbortSignal.timeout(server.timeoutMs), timeout: server.timeoutMs };
    const open = async (transport: Transport) => {
      const client = newClient(entry);
      await client.connect(transport, options);
      return client;
    };
    let client: Client;
    try {
      client = await open(new StreamableHTTPClientTransport(url, { fetch }));
    } catch (err) {
      // A server of the older HTTP+SSE transport refuses the POST of initialize with a 4xx (not a credential's 401 or 403).
      const status = err instanceof StreamableHTTPError ? (err.code ?? 0) : 0;
      if (status < 400 || status >= 500 || status === 401 || status === 403) throw err;
      client = await open(new SSEClientTransport(url, { fetch }));
    }
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
      entry.tools = null;
    });
    entry.client = client;
    return client;
  }

  /**
   * The fetch the transports use: over node's http with the address pinned, the server's extra
   * headers and the credential attached, no redirects, and every answer to a POST capped.
   */
  #fetch(server: HostMcpServer, credential: McpCredential, entry: Omit<Entry, "ready">) {
    const max = this.#maxResultBytes;
    return async (input: string | URL | Request, init: RequestInit = {}): Promise<Response> => {
      // The call this request is made for (none for the connection's own requests).
      const fail = stopper(entry);
      const url = new URL(input instanceof Request ? input.url : String(input));
      const address = await this.#pin(url.hostname, server);
      const method = init.method ?? "GET";
      const headers: Record<string, string> = {};
      new Headers(init.headers).forEach((value, name) => {
        headers[name] = value;
      });
      Object.assign(headers, lower(server.headers), lower(credential.headers));
      const secure = url.protocol === "https:";
      return new Promise<Response>((resolve, reject) => {
        const req = (secure ? https : http).request({
          protocol: url.protocol,
          hostname: url.hostname,
          port: url.port || (secure ? 443 : 80),
          method,
          path: `${url.pathname}${url.search}`,
          headers,
          agent: secure ? this.#agents.https : this.#agents.http,
          lookup: pinnedLookup(address),
          ...(init.signal ? { signal: init.signal } : {}),
          ...(secure ? { servername: url.hostname } : {}),
        });
        req.on("error", (err) => reject(init.signal?.aborted ? init.signal.reason : err));
        // A request's answer (JSON or a stream) ends within the server's timeout, or is hung up on:
        // one that trickles on forever would hold a socket long after its call timed out.
        if (method !== "GET") {
          const deadline = setTimeout(() => {
            req.destroy(
              new AppError("mcp_server_timeout", `The MCP server '${server.name}' did not finish its answer in time.`),
            );
          }, server.timeoutMs + SDK_TIMEOUT_SLACK_MS);
          deadline.unref();
          req.once("close", () => clearTimeout(deadline));
        }
        req.on("response", (res) => {
          const answer = new Headers();
          for (const [name, value] of Object.entries(res.headers)) {
            if (value !== undefined) answer.set(name, Array.isArray(value) ? value.join(", ") : value);
          }
          const status = res.statusCode ?? 502;
          const tooLarge = () =>
            new AppError("mcp_result_too_large", `The MCP server '${server.name}' answered more than ${max} bytes.`);
          const streamed = (res.headers["content-type"] ?? "").includes("text/event-stream");
          if (!streamed) {
            // A JSON answer is read whole, under the cap.
            const chunks: Buffer[] = [];
            let size = 0;
            res.on("data", (chunk: Buffer) => {
              size += chunk.length;
              if (size > max) {
                res.destroy();
                reject(tooLarge());
                return;
              }
              chunks.push(chunk);
            });
            res.on("error", reject);
            res.on("end", () => {
              const body = status === 204 || status === 304 || method === "HEAD" ? null : Buffer.concat(chunks);
              resolve(new Response(body, { status, headers: answer }));
            });
            return;
          }
          // A stream: a POST's answer counted against the cap; a GET's (the long-lived stream of
          // notifications, and of every answer with the older transport) each event on it.
          let size = 0;
          const event: EventState = { bytes: 0, lineEmpty: true, afterCr: false };
          let open = true;
          const body = new ReadableStream<Uint8Array>({
            start(controller) {
              const end = (err?: unknown) => {
                if (!open) return;
                open = false;
                if (err === undefined) controller.close();
                else controller.error(err);
              };
              res.on("data", (chunk: Buffer) => {
                if (!open) return;
                size += chunk.length;
                if (method === "POST" ? size > max : openEventBytes(event, chunk) > max) {
                  const err = tooLarge();
                  fail(err);
                  res.destroy();
                  end(err);
                  return;
                }
                controller.enqueue(new Uint8Array(chunk));
              });
              res.on("end", () => end());
              res.on("error", (err) => end(err));
              res.on("close", () => end(res.complete ? undefined : new Error("the stream broke off")));
            },
            cancel() {
              open = false;
              res.destroy();
            },
          });
          resolve(new Response(body, { status, headers: answer }));
        });
        const body = init.body;
        req.end(typeof body === "string" || body instanceof Uint8Array ? body : undefined);
      });
    };
  }

  async #pin(host: string, server: HostMcpServer): Promise<string> {
    try {
      return await this.#pinner.pin(host, server.internal);
    } catch (err) {
      if (!(err instanceof PinRefusal)) throw err;
      if (err.refusal === null) {
        throw new AppError(
          "mcp_server_unavailable",
          `The MCP server '${server.name}''s host '${err.host}' does not resolve.`,
        );
      }
      throw new AppError(
        "upstream_refused",
        `The MCP server '${server.name}' resolves to a ${err.refusal} address, which ${server.internal ? "no server" : "only an internal server"} may use.`,
      );
    }
  }

  #drop(entry: Entry): void {
    if (this.#pool.get(entry.key) === entry) this.#pool.delete(entry.key);
    void this.#closeEntry(entry);
  }

  async #closeEntry(entry: Entry): Promise<void> {
    const client = entry.client ?? (await entry.ready.catch(() => null));
    await client?.close().catch(() => {});
  }

  #sweep(): void {
    const now = Date.now();
    for (const entry of [...this.#pool.values()]) {
      if (entry.inflight.size === 0 && now - entry.lastUsed > this.#idleMs) this.#drop(entry);
    }
  }
}

/** A client that declares no capabilities and refuses every request a server sends it. */
function newClient(entry: Pick<Entry, "inflight">): Client {
  const client = new Client({ name: "paddock-host", version: "1.0.0" }, { capabilities: {} });
  client.fallbackRequestHandler = async (request) => {
    stopper(entry)(
      new AppError(
        "mcp_unsupported_request",
        `The MCP server sent a '${request.method.slice(0, 64)}' request, which the host does not answer; the call was stopped.`,
      ),
    );
    throw new McpError(RpcCode.MethodNotFound, "The client does not support this request.");
  };
  return client;
}

/**
 * The call being made in the current async context (the SDK sends a call's request, and reads
 * the stream answering it, within the call's own context).
 */
const currentCall = new AsyncLocalStorage<AbortController>();

/**
 * What stops the call of the current context when the server misbehaves in it; outside any call
 * (a request the server sent on the connection's own stream), every call on the connection.
 */
function stopper(entry: Pick<Entry, "inflight">): (err: AppError) => void {
  const call = currentCall.getStore();
  return (err) => {
    if (call && entry.inflight.has(call)) call.abort(err);
    else for (const each of entry.inflight) each.abort(err);
  };
}

/** Where an event stream stands: bytes of the event not ended yet, and at what in its line. */
interface EventState {
  bytes: number;
  lineEmpty: boolean;
  afterCr: boolean;
}

/** The bytes of the event still open after `chunk` (an event ends at an empty line: CRLF, LF or CR). */
function openEventBytes(state: EventState, chunk: Buffer): number {
  for (const byte of chunk) {
    if (byte === 0x0a && state.afterCr) {
      state.afterCr = false;
      continue;
    }
    if (byte === 0x0a || byte === 0x0d) {
      if (state.lineEmpty) state.bytes = 0;
      state.lineEmpty = true;
      state.afterCr = byte === 0x0d;
      continue;
    }
    state.bytes++;
    state.lineEmpty = false;
    state.afterCr = false;
  }
  return state.bytes;
}

const lower = (headers: Record<string, string>) =>
  Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));

/** Any result object: the host passes it on as the server sent it. */
const AnyResult = z.looseObject({});
