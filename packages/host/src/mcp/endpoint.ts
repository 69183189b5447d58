/**
 * A run's MCP endpoint, `$PADDOCK_BRIDGE_URL/mcp`: one streamable HTTP MCP server per run that
 * offers the pinned, allowed tools of every MCP server its agent's policy names, each named
 * `SERVER__TOOL` (MCP_TOOL_SEPARATOR), and forwards calls with the host's credential attached.
 * It answers POSTs of single JSON-RPC messages with plain JSON (no session), except that a call
 * waiting for a person's approval is answered on an event stream when the client accepts one (see
 * RpcReply); GET and DELETE are 405.
 *
 * Threat model: the caller is a sandbox running hostile code with one run token. It must not
 * reach a server or tool its policy does not name, a tool whose definition changed since it was
 * pinned (tool poisoning), another run's approvals or journal, or a server's credential. So: the
 * bridge's address-and-token check (scope `mcp`) comes first; the policy and pins come from the
 * run's frozen agent version, never from the request; arguments are checked against the pinned
 * input schema before anything is sent; the live definition is compared with the pin at every
 * call (from a list at most toolsTtlMs old); credentials are attached by the host's client and
 * every spelling of them is replaced in what comes back. What servers answer is capped, timed
 * and parsed; their failures are JSON-RPC errors to the sandbox and `mcp.call` events, and the
 * run goes on.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { LATEST_PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS } from "@modelcontextprotocol/sdk/types.js";
import type { JsonSchemaType, JsonSchemaValidator } from "@modelcontextprotocol/sdk/validation";
import { AjvJsonSchemaValidator } from "@modelcontextprotocol/sdk/validation/ajv";
import {
  APPROVAL_HEADER,
  AppError,
  type ErrorCode,
  MCP_TOOL_SEPARATOR,
  type McpCallData,
  type McpPins,
  type McpPolicyEntry,
} from "@paddock/protocol";
import type { Kysely } from "kysely";
import { z } from "zod";
import type { Approvals } from "../bridge/approvals.ts";
import { recordMcpSpan } from "../bridge/call-span.ts";
import {
  approvalAsked,
  type ChannelCall,
  type ChannelRoute,
  Refusal,
  readCapped,
  sendRefusal,
  takeStep,
} from "../bridge/channel.ts";
import { type LiveSandbox, LiveSandboxes } from "../bridge/live.ts";
import type { TokenBucket } from "../bridge/rate-limit.ts";
import { redactText } from "../bridge/redact.ts";
import type { Metrics } from "../metrics/metrics.ts";
import { type Journal, type JournalEntry, requestHash } from "../store/journal.ts";
import type { Database } from "../store/schema.ts";
import { parseAgentDefinition, parseStored } from "../store/stored.ts";
import { epochMs, epochOf, type Tracing } from "../tracing/tracing.ts";
import type { McpAnswer, McpCredential, McpReadMethod } from "./client.ts";
import { globMatcher, readPins, toolHash } from "./pins.ts";
import type { HostMcpServer } from "./servers.ts";
import type { McpService } from "./service.ts";

export interface McpEndpointDeps {
  db: Kysely<Database>;
  mcp: McpService;
  rateLimits: TokenBucket;
  journal?: Journal;
  approvals?: Approvals;
  tracing?: Tracing | null;
  /** Where each request's server, outcome and latency are reported. */
  metrics?: Pick<Metrics, "mcpCall">;
  /** How often a call waiting for approval on an event stream is kept alive (default 15 s). */
  keepAliveMs?: number;
  log: (line: string) => void;
}

/** The largest JSON-RPC message a sandbox may send. */
const MAX_MESSAGE_BYTES = 1024 * 1024;
/** How deeply a sandbox's message may nest arrays and objects (past it, work on it would overflow the stack). */
const MAX_MESSAGE_DEPTH = 64;
/** How much of arguments and answers an `mcp.call` event shows. */
const PREVIEW_CHARS = 512;
/** How long past its approval's own timeout a held call's stream stays open (the expiry sweep's slack). */
const EXPIRY_SLACK_MS = 10_000;

/** One server of the run's policy, as the endpoint uses it. */
interface RunServer {
  entry: McpPolicyEntry;
  pins: McpPins[string];
  /** Whether a call of the tool waits for a person's approval. */
  approve: (tool: string) => boolean;
}

/** A server of the run with the credential attached to it and the spellings of that to redact. */
interface Found {
  server: HostMcpServer;
  credential: McpCredential;
  needles: Buffer[];
}

/** The run's MCP policy and pins, read once per attempt. */
interface RunMcp {
  servers: Map<string, RunServer>;
  /** Which server each resource URI listed came from. */
  resources: Map<string, string>;
}

const Message = z.object({
  jsonrpc: z.literal("2.0"),
  id: z.union([z.string().max(256), z.number()]).optional(),
  method: z.string().max(256).optional(),
  params: z.record(z.string(), z.unknown()).optional(),
});
type Message = z.infer<typeof Message>;

/**
 * The parts of a request's params the endpoint reads, each checked; a part of another type reads
 * as absent. Nothing else a sandbox puts in params is used or forwarded.
 */
const Params = z.object({
  name: z.string().catch(""),
  uri: z.string().catch(""),
  protocolVersion: z.string().catch(""),
  /** A tool's arguments, checked against its pinned input schema before anything is sent. */
  arguments: z.unknown().optional(),
  _meta: z
    .object({ progressToken: z.union([z.string(), z.number()]).nullable().catch(null) })
    .partial()
    .optional()
    .catch(undefined),
});
type Params = z.infer<typeof Params>;

/** JSON-RPC error numbers of the endpoint's codes; every other code is a server error (-32000). */
const RPC_NUMBERS: Partial<Record<ErrorCode, number>> = {
  invalid_json: -32700,
  validation_failed: -32600,
  mcp_method_not_found: -32601,
  mcp_tool_not_allowed: -32602,
  mcp_tool_changed: -32602,
  mcp_invalid_arguments: -32602,
  internal: -32603,
};

/** What a held MCP call keeps besides its arguments (its body). */
const HeldMcpCall = z.object({ server: z.string(), tool: z.string(), url: z.string() });

export class McpEndpoint implements ChannelRoute {
  readonly #deps: McpEndpointDeps;
  readonly #runs = new WeakMap<LiveSandbox, Promise<RunMcp>>();
  readonly #validators = new Map<string, JsonSchemaValidator<unknown>>();
  readonly #ajv = new AjvJsonSchemaValidator();

  constructor(deps: McpEndpointDeps) {
    this.#deps = deps;
  }

  serves(target: string): boolean {
    return target === "/mcp" || target.startsWith("/mcp?") || target === "/mcp/";
  }

  async handle(call: ChannelCall): Promise<void> {
    const { req, res } = call;
    let sandbox: LiveSandbox;
    try {
      sandbox = await call.authorize("mcp", "The agent's policy names no MCP server.");
      if (req.method !== "POST") {
        throw new Refusal("method_not_allowed", "The run's MCP endpoint takes POSTs of JSON-RPC messages.", {
          allow: "POST",
        });
      }
    } catch (err) {
      req.resume();
      sendRefusal(res, Refusal.from(err));
      return;
    }
    let id: string | number | null = null;
    const reply = new RpcReply(res, String(req.headers.accept ?? "").includes("text/event-stream"));
    try {
      let parsed: unknown;
      try {
        parsed = JSON.parse((await readCapped(req, MAX_MESSAGE_BYTES)).toString("utf8"));
      } catch (err) {
        throw err instanceof Refusal ? err : new Refusal("invalid_json");
      }
      if (nestedPast(parsed, MAX_MESSAGE_DEPTH)) {
        throw new Refusal(
          "validation_failed",
          `The message nests arrays and objects more than ${MAX_MESSAGE_DEPTH} deep.`,
        );
      }
      const message = Message.safeParse(parsed);
      if (!message.success) {
        throw new Refusal("validation_failed", "Send one JSON-RPC 2.0 message (batches are not accepted).");
      }
      id = message.data.id ?? null;
      // A notification or a response (to nothing the endpoint asked): accepted, nothing to answer.
      if (message.data.id === undefined || message.data.method === undefined) {
        res.writeHead(202).end();
        return;
      }
      const result = await this.#dispatch(req, reply, sandbox, message.data);
      reply.send(`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":${result}}`);
    } catch (err) {
      const refusal = Refusal.from(err);
      if (refusal.code === "internal") this.#deps.log(`mcp: ${err instanceof Error ? err.stack : String(err)}`);
      // A call still waiting for approval is answered 503 with the approval to wait on, as bridge
      // calls are: clients that wait (the runner's SDK, the built-in agent) send it again.
      const waiting = refusal.code === "approval_pending";
      reply.send(rpcError(id, refusal), waiting ? 503 : 200, waiting ? refusal.headers : {});
    } finally {
      reply.close();
    }
  }

  /** The result of one request, as JSON text. */
  async #dispatch(req: IncomingMessage, reply: RpcReply, sandbox: LiveSandbox, message: Message): Promise<string> {
    const params = Params.parse(message.params ?? {});
    switch (message.method) {
      case "initialize":
        return JSON.stringify(await this.#initialize(sandbox, params));
      case "ping":
        return "{}";
      case "tools/list":
        return JSON.stringify({ tools: await this.#listTools(sandbox) });
      case "tools/call":
        return this.#callTool(req, reply, sandbox, params);
      case "resources/list":
        return JSON.stringify(await this.#listResources(sandbox));
      case "resources/read":
        return this.#readResource(sandbox, params);
      case "prompts/list":
        return JSON.stringify(await this.#listPrompts(sandbox));
      case "prompts/get":
        return this.#getPrompt(sandbox, params);
      default:
        throw new Refusal(
          "mcp_method_not_found",
          `The run's MCP endpoint does not serve '${String(message.method).slice(0, 64)}'.`,
        );
    }
  }

  async #initialize(sandbox: LiveSandbox, params: Params) {
    const run = await this.#run(sandbox);
    const entries = [...run.servers.values()].map((s) => s.entry);
    const asked = params.protocolVersion;
    return {
      protocolVersion: SUPPORTED_PROTOCOL_VERSIONS.includes(asked) ? asked : LATEST_PROTOCOL_VERSION,
      capabilities: {
        tools: { listChanged: false },
        ...(entries.some((e) => e.resources) ? { resources: {} } : {}),
        ...(entries.some((e) => e.prompts) ? { prompts: {} } : {}),
      },
      serverInfo: { name: "paddock", version: "1.0.0" },
      instructions: `Tools of the MCP servers this run may use, each named SERVER${MCP_TOOL_SEPARATOR}TOOL.`,
    };
  }

  /** The pinned tools of every server whose live definitions still match their pins. */
  async #listTools(sandbox: LiveSandbox) {
    const run = await this.#run(sandbox);
    const lists = await Promise.all(
      [...run.servers].map(async ([name, allowed]) => {
        const started = performance.now();
        try {
          const found = await this.#server(sandbox, name);
          // Read anew, as a request of the server's rate limit; past it, the list calls use (at most toolsTtlMs old).
          const fresh = this.#tryTake(found.server);
          const live = await this.#authed(sandbox, found, (c) => this.#deps.mcp.clients.tools(found.server, c, fresh));
          return live
            .filter((tool) => allowed.pins[tool.name]?.sha256 === toolHash(tool))
            .map((tool) =>
              // A definition may quote the credential too.
              redactDeep(
                {
                  name: `${name}${MCP_TOOL_SEPARATOR}${tool.name}`,
                  ...(tool.description === null ? {} : { description: tool.description }),
                  inputSchema: tool.input_schema,
                },
                found.needles,
              ),
            );
        } catch (err) {
          // A server that cannot be listed now offers nothing; the others do.
          const refusal = Refusal.from(err);
          this.#record(sandbox, started, null, {
            server: name,
            method: "tools/list",
            tool: "",
            status: "error",
            code: refusal.code,
            latency_ms: 0,
            bytes: 0,
          });
          return [];
        }
      }),
    );
    return lists.flat();
  }

  async #callTool(req: IncomingMessage, reply: RpcReply, sandbox: LiveSandbox, params: Params): Promise<string> {
    const started = performance.now();
    const { name } = params;
    const args = params.arguments ?? {};
    const cut = name.indexOf(MCP_TOOL_SEPARATOR);
    const serverName = cut < 0 ? "" : name.slice(0, cut);
    const tool = cut < 0 ? name : name.slice(cut + MCP_TOOL_SEPARATOR.length);
    const argsText = JSON.stringify(args);
    const record: McpCallData = {
      server: serverName.slice(0, 64),
      method: "tools/call",
      tool: tool.slice(0, 128),
      status: "error",
      latency_ms: 0,
      bytes: 0,
      args_preview: argsText.slice(0, PREVIEW_CHARS),
    };
    let url: string | null = null;
    let needles: Buffer[] = [];
    try {
      if (name === "") throw new Refusal("validation_failed", "tools/call needs params.name.");
      const run = await this.#run(sandbox);
      const allowed = run.servers.get(serverName);
      if (!allowed) {
        throw new Refusal(
          "mcp_tool_not_allowed",
          cut < 0
            ? `No tool '${name.slice(0, 128)}': tools are named SERVER${MCP_TOOL_SEPARATOR}TOOL.`
            : `The agent's policy names no MCP server '${serverName.slice(0, 64)}'.`,
        );
      }
      const pin = Object.hasOwn(allowed.pins, tool) ? allowed.pins[tool] : undefined;
      if (!pin) {
        throw new Refusal(
          "mcp_tool_not_allowed",
          `The tool '${tool.slice(0, 128)}' of the MCP server '${serverName}' is not pinned in the agent's policy.`,
        );
      }
      if (typeof args !== "object" || args === null || Array.isArray(args)) {
        throw new Refusal("mcp_invalid_arguments", "A tool's arguments are a JSON object.");
      }
      const checked = this.#validator(pin.sha256, pin.input_schema)(args);
      if (!checked.valid) {
        throw new Refusal(
          "mcp_invalid_arguments",
          `The arguments do not match the tool's input schema: ${checked.errorMessage}`,
        );
      }
      const found = await this.#server(sandbox, serverName);
      const { server } = found;
      url = server.url;
      needles = found.needles;
      await this.#stillPinned(sandbox, found, tool, pin.sha256);
      const body = Buffer.from(argsText);
      const hash = requestHash(["mcp", serverName, tool, body]);
      const kind = `mcp:${serverName}`;
      // The rate limit is taken before anything leaves (a refusal there throws at once).
      const send = (callArgs: unknown): Promise<McpAnswer> => {
        this.#take(server);
        return this.#authed(sandbox, found, (c) => this.#deps.mcp.clients.callTool(server, c, tool, callArgs));
      };
      let answer: string;
      if (allowed.approve(tool)) {
        const approvals = this.#deps.approvals;
        if (!approvals || !allowed.entry.approval) {
          throw new Refusal("mcp_tool_not_allowed", "This host cannot hold MCP calls for approval.");
        }
        const { tools: _globs, ...rule } = allowed.entry.approval;
        // A client that takes an event stream (the official SDK's) waits on one until the decision,
        // kept alive (with progress notifications when it asked for them); any other is told to ask again.
        if (reply.streams) {
          reply.wait(this.#deps.keepAliveMs ?? 15_000, params._meta?.progressToken ?? null);
        }
        const outcome = await approvals.hold({
          ...(reply.streams ? { holdMs: rule.timeout_s * 1000 + EXPIRY_SLACK_MS } : {}),
          sandbox,
          kind: "mcp",
          target: serverName,
          ruleKey: `mcp:${serverName}`,
          rule,
          hash,
          request: {
            kind: "mcp",
            target: serverName,
            method: "tools/call",
            path: tool,
            query: "",
            url: server.url,
            headers: {},
          },
          held: { server: serverName, tool, url: server.url },
          body,
          takeStep: () => takeStep(sandbox, req, kind),
          res: reply.res,
          asked: approvalAsked(req),
        });
        if ("replay" in outcome) {
          record.approval = outcome.approval.id;
          record.replayed = true;
          answer = outcome.replay.body.toString("utf8");
        } else {
          const approved = outcome.send;
          record.approval = approved.id;
          const held = parseStored(HeldMcpCall, approved.held, "held MCP call");
          let sent = false;
          try {
            if (held.url !== server.url || held.tool !== tool) {
              throw new Refusal(
                "mcp_server_error",
                `The MCP server '${serverName}' changed since the call was approved; nothing was sent.`,
              );
            }
            // The tool approved is the tool as pinned: one that changed during the wait is not called.
            await this.#stillPinned(sandbox, found, tool, pin.sha256, true);
            const heldArgs = JSON.parse(Buffer.from(approved.body).toString("utf8")) as unknown;
            const pending = send(heldArgs);
            sent = true;
            answer = this.#answer(await pending, found.needles, record);
            await approvals.sent(approved.id, kept(answer));
          } catch (err) {
            // Refused before it left: an identical request may send it later. Once it may have reached the server, never again.
            if (sent) await approvals.sent(approved.id, null);
            else await approvals.unsent(approved.id);
            throw err;
          }
        }
      } else {
        answer = await this.#journaled(req, sandbox, { kind, hash, record }, async () =>
          this.#answer(await send(args), found.needles, record),
        );
      }
      record.status = record.status === "error" ? statusOf(answer) : record.status;
      record.bytes = Buffer.byteLength(answer);
      record.result_preview = answer.slice(0, PREVIEW_CHARS);
      return answer;
    } catch (err) {
      const refusal = Refusal.from(err);
      record.code = refusal.code;
      record.approval ??= refusal.headers[APPROVAL_HEADER];
      throw refusal;
    } finally {
      if (record.args_preview) record.args_preview = redactText(record.args_preview, needles);
      // A call told to ask again for its approval is no call: its approval's events tell the story.
      if (record.code !== "approval_pending") this.#record(sandbox, started, url, record);
    }
  }

  /**
   * Throws `mcp_tool_changed` unless the server defines `tool` as pinned: now (`fresh`), or in its
   * list at most toolsTtlMs old.
   */
  async #stillPinned(sandbox: LiveSandbox, found: Found, tool: string, sha256: string, fresh = false): Promise<void> {
    const listed = await this.#authed(sandbox, found, (c) => this.#deps.mcp.clients.tools(found.server, c, fresh));
    const live = listed.find((t) => t.name === tool);
    if (!live || toolHash(live) !== sha256) {
      throw new Refusal(
        "mcp_tool_changed",
        `The tool '${tool}' of the MCP server '${found.server.name}' ${live ? "changed" : "is gone"} since it was pinned; re-pin the agent (paddock agents mcp-pin) to use it again.`,
      );
    }
  }

  /**
   * A call a retried attempt may repeat: answered from the journal when an earlier attempt
   * completed the same call at the same step, otherwise made and journaled.
   */
  async #journaled(
    req: IncomingMessage,
    sandbox: LiveSandbox,
    call: { kind: string; hash: string; record: McpCallData },
    make: () => Promise<string>,
  ): Promise<string> {
    const journal = sandbox.journaled ? this.#deps.journal : undefined;
    const step = journal ? takeStep(sandbox, req, call.kind) : null;
    if (!journal || !step) return make();
    call.record.step = step;
    const found = await journal.lookup(sandbox.runId, sandbox.attempt, step, call.hash);
    if (found && "replay" in found) {
      call.record.replayed = true;
      return found.replay.body.toString("utf8");
    }
    if (found)
      sandbox.record({ type: "journal.diverged", data: { step, kind: "mcp", connection: call.record.server } });
    let answer: string;
    try {
      answer = await make();
    } catch (err) {
      // Refused before it went out: the position is given back.
      if (err instanceof Refusal && err.code === "rate_limited") LiveSandboxes.unstep(sandbox, call.kind);
      throw err;
    }
    await journal.record(sandbox, step, call.hash, kept(answer));
    return answer;
  }

  async #listResources(sandbox: LiveSandbox) {
    const run = await this.#run(sandbox);
    const resources: unknown[] = [];
    for (const [name, allowed] of run.servers) {
      if (!allowed.entry.resources) continue;
      const answer = await this.#read(sandbox, name, "resources/list", {}, "");
      for (const resource of (answer.resources as { uri?: unknown; name?: unknown }[] | undefined) ?? []) {
        if (typeof resource.uri !== "string") continue;
        run.resources.set(resource.uri, name);
        resources.push({ ...resource, name: `${name}${MCP_TOOL_SEPARATOR}${String(resource.name ?? resource.uri)}` });
      }
    }
    return { resources };
  }

  async #readResource(sandbox: LiveSandbox, params: Params): Promise<string> {
    const run = await this.#run(sandbox);
    const { uri } = params;
    const withResources = [...run.servers].filter(([, s]) => s.entry.resources).map(([n]) => n);
    const server = run.resources.get(uri) ?? (withResources.length === 1 ? withResources[0] : undefined);
    if (!server) {
      throw new Refusal(
        "mcp_tool_not_allowed",
        "No MCP server of the agent's policy listed that resource; list resources first.",
      );
    }
    return JSON.stringify(await this.#read(sandbox, server, "resources/read", { uri }, uri));
  }

  async #listPrompts(sandbox: LiveSandbox) {
    const run = await this.#run(sandbox);
    const prompts: unknown[] = [];
    for (const [name, allowed] of run.servers) {
      if (!allowed.entry.prompts) continue;
      const answer = await this.#read(sandbox, name, "prompts/list", {}, "");
      for (const prompt of (answer.prompts as { name?: unknown }[] | undefined) ?? []) {
        prompts.push({ ...prompt, name: `${name}${MCP_TOOL_SEPARATOR}${String(prompt.name)}` });
      }
    }
    return { prompts };
  }

  async #getPrompt(sandbox: LiveSandbox, params: Params): Promise<string> {
    const run = await this.#run(sandbox);
    const { name } = params;
    const cut = name.indexOf(MCP_TOOL_SEPARATOR);
    const server = cut < 0 ? "" : name.slice(0, cut);
    if (!run.servers.get(server)?.entry.prompts) {
      throw new Refusal(
        "mcp_tool_not_allowed",
        `The agent's policy allows no prompts of an MCP server '${server.slice(0, 64)}'.`,
      );
    }
    const prompt = name.slice(cut + MCP_TOOL_SEPARATOR.length);
    const answer = await this.#read(
      sandbox,
      server,
      "prompts/get",
      { name: prompt, ...(params.arguments === undefined ? {} : { arguments: params.arguments }) },
      prompt,
    );
    return JSON.stringify(answer);
  }

  /** A resource or prompt request to `name`, recorded as an `mcp.call`; its answer with the credential replaced. */
  async #read(
    sandbox: LiveSandbox,
    name: string,
    method: McpReadMethod,
    params: Record<string, unknown>,
    target: string,
  ): Promise<Record<string, unknown>> {
    const started = performance.now();
    const record: McpCallData = {
      server: name,
      method,
      tool: target.slice(0, 256),
      status: "error",
      latency_ms: 0,
      bytes: 0,
    };
    let url: string | null = null;
    try {
      const found = await this.#server(sandbox, name);
      const { server } = found;
      url = server.url;
      this.#take(server);
      const answer = await this.#authed(sandbox, found, (c) =>
        this.#deps.mcp.clients.request(server, c, method, params),
      );
      const text = this.#answer(answer, found.needles, record);
      record.status = "ok";
      record.bytes = Buffer.byteLength(text);
      record.result_preview = text.slice(0, PREVIEW_CHARS);
      return JSON.parse(text) as Record<string, unknown>;
    } catch (err) {
      record.code = Refusal.from(err).code;
      throw err;
    } finally {
      this.#record(sandbox, started, url, record);
    }
  }

  /** The server's answer as JSON text, every spelling of the credential replaced. */
  #answer(answer: McpAnswer, needles: Buffer[], record: McpCallData): string {
    const text = JSON.stringify(redactDeep(answer.result, needles));
    record.status = answer.result.isError === true ? "tool_error" : "ok";
    return text;
  }

  /** Whether the server's rate limit had room for one more request (taken). */
  #tryTake(server: HostMcpServer): boolean {
    const limit = server.rateLimit;
    return !limit || this.#deps.rateLimits.take(`mcp:${server.id}`, limit).ok;
  }

  /** Takes a request from the server's rate limit (`rate_limited` when it has no room). */
  #take(server: HostMcpServer): void {
    const limit = server.rateLimit;
    if (!limit) return;
    const taken = this.#deps.rateLimits.take(`mcp:${server.id}`, limit);
    if (!taken.ok) {
      throw new Refusal("rate_limited", `The MCP server '${server.name}' has no room for more requests of runs now.`, {
        "retry-after": String(Math.max(1, Math.ceil(taken.retryAfterS))),
      });
    }
  }

  /**
   * Runs `work` with the server's credential. With `oauth` auth, a 401 from the server refreshes
   * the run's end user's token (the refused one is `stale`) and runs `work` once more with it;
   * `found` then holds the new credential.
   */
  async #authed<T>(sandbox: LiveSandbox, found: Found, work: (credential: McpCredential) => Promise<T>): Promise<T> {
    const needles = found.needles;
    try {
      try {
        return await work(found.credential);
      } catch (err) {
        const refused = err instanceof AppError && (err.details as { status?: unknown } | undefined)?.status === 401;
        if (!refused || found.server.auth.type !== "oauth") throw err;
        const stale = found.credential.headers.authorization?.replace(/^Bearer /, "");
        Object.assign(found, await this.#deps.mcp.credential(sandbox, found.server, stale));
        return await work(found.credential);
      }
    } catch (err) {
      // A server's error message may quote the credential (either one, after a refresh).
      if (!(err instanceof AppError)) throw err;
      const all = [...needles, ...found.needles];
      const message = redactText(err.message, all);
      throw message === err.message ? err : new AppError(err.code, message, err.details);
    }
  }

  async #server(sandbox: LiveSandbox, name: string): Promise<Found> {
    const server = await this.#deps.mcp.servers.forHost(sandbox.tenantId, name);
    if (!server) throw new Refusal("mcp_server_unavailable", `The MCP server '${name}' is no longer registered.`);
    return { server, ...(await this.#deps.mcp.credential(sandbox, server)) };
  }

  #validator(sha256: string, schema: Record<string, unknown>): JsonSchemaValidator<unknown> {
    let found = this.#validators.get(sha256);
    if (!found) {
      found = this.#ajv.getValidator(schema as JsonSchemaType);
      if (this.#validators.size >= 10_000) this.#validators.clear();
      this.#validators.set(sha256, found);
    }
    return found;
  }

  /** The run's MCP policy and pins, read once per attempt from its frozen agent version. */
  #run(sandbox: LiveSandbox): Promise<RunMcp> {
    let found = this.#runs.get(sandbox);
    if (!found) {
      found = this.#load(sandbox);
      found.catch(() => this.#runs.delete(sandbox));
      this.#runs.set(sandbox, found);
    }
    return found;
  }

  async #load(sandbox: LiveSandbox): Promise<RunMcp> {
    const { db } = this.#deps;
    const version =
      sandbox.agentVersion ??
      (await db.selectFrom("agents").select("version").where("id", "=", sandbox.agentId).executeTakeFirstOrThrow())
        .version;
    const row = await db
      .selectFrom("agent_versions")
      .select("spec")
      .where("agent_id", "=", sandbox.agentId)
      .where("version", "=", version)
      .executeTakeFirst();
    const entries = row ? (parseAgentDefinition(row.spec).policy?.mcp ?? []) : [];
    const pins = await readPins(db, sandbox.agentId, version);
    const servers = new Map<string, RunServer>();
    for (const entry of entries) {
      servers.set(entry.server, {
        entry,
        pins: pins[entry.server] ?? {},
        approve: globMatcher(entry.approval?.tools ?? []),
      });
    }
    return { servers, resources: new Map() };
  }

  #record(sandbox: LiveSandbox, started: number, url: string | null, record: McpCallData): void {
    record.latency_ms = Math.round((performance.now() - started) * 1000) / 1000;
    sandbox.record({ type: "mcp.call", data: record });
    // A server the caller made up is no metric label: only one that was found (it has a URL).
    this.#deps.metrics?.mcpCall(url === null ? null : record.server, record.code, record.latency_ms);
    const tracing = this.#deps.tracing;
    if (tracing && sandbox.trace) {
      recordMcpSpan(tracing, sandbox.trace, {
        record,
        runId: sandbox.runId,
        startMs: epochOf(started),
        endMs: epochMs(),
        url,
      });
    }
  }
}

/** Whether `value` nests arrays and objects more than `max` deep (walked without recursion). */
function nestedPast(value: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  for (let next = stack.pop(); next; next = stack.pop()) {
    const [item, depth] = next;
    if (item === null || typeof item !== "object") continue;
    if (depth >= max) return true;
    for (const child of Object.values(item)) stack.push([child, depth + 1]);
  }
  return false;
}

/** `value` with every string's (and every key's) spellings of the credential replaced. */
function redactDeep(value: unknown, needles: readonly Buffer[]): unknown {
  if (needles.length === 0) return value;
  if (typeof value === "string") return redactText(value, needles);
  if (Array.isArray(value)) return value.map((v) => redactDeep(v, needles));
  if (value !== null && typeof value === "object") {
    // Keys too: a server may echo the credential as one.
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [redactText(k, needles), redactDeep(v, needles)]));
  }
  return value;
}

/** A tool answer's status from its JSON text. */
function statusOf(answer: string): McpCallData["status"] {
  return answer.includes('"isError":true') ? "tool_error" : "ok";
}

/** An answer as the journal and approvals keep it. */
const kept = (answer: string): Omit<JournalEntry, "attempt"> => ({
  status: 200,
  headers: { "content-type": "application/json" },
  body: Buffer.from(answer),
});

function rpcError(id: string | number | null, refusal: Refusal): string {
  const data: Record<string, string> = { code: refusal.code };
  const approval = refusal.headers[APPROVAL_HEADER];
  if (approval) data.approval = approval;
  if (refusal.headers["retry-after"]) data.retry_after_s = refusal.headers["retry-after"];
  const error = { code: RPC_NUMBERS[refusal.code] ?? -32000, message: refusal.message, data };
  return JSON.stringify({ jsonrpc: "2.0", id, error });
}

/**
 * The answer to one request: a JSON body, or once `wait` was called an event stream that carries
 * keep-alive comments (and progress notifications for a caller's progress token) until the answer.
 */
class RpcReply {
  readonly res: ServerResponse;
  /** Whether the caller accepts an event stream. */
  readonly streams: boolean;
  #timer: NodeJS.Timeout | null = null;

  constructor(res: ServerResponse, streams: boolean) {
    this.res = res;
    this.streams = streams;
  }

  /** Opens the event stream and writes to it every `everyMs` until the answer. */
  wait(everyMs: number, progressToken: string | number | null): void {
    if (this.res.headersSent) return;
    this.res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    this.res.flushHeaders();
    let progress = 0;
    this.#timer = setInterval(() => {
      if (this.res.writableEnded || this.res.destroyed) return;
      progress++;
      const note =
        progressToken === null
          ? null
          : JSON.stringify({
              jsonrpc: "2.0",
              method: "notifications/progress",
              params: { progressToken, progress, message: "Waiting for a person's approval." },
            });
      this.res.write(note === null ? ": waiting for approval\n\n" : `event: message\ndata: ${note}\n\n`);
    }, everyMs);
  }

  send(body: string, status = 200, headers: Record<string, string> = {}): void {
    const { res } = this;
    if (res.writableEnded || res.destroyed) return;
    if (res.headersSent) {
      this.close();
      res.end(`event: message\ndata: ${body}\n\n`);
      return;
    }
    res.writeHead(status, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
      ...headers,
    });
    res.end(body);
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }
}
