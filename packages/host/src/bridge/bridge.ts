/**
 * The host bridge: the one HTTP listener sandboxes can reach, on the host's side of their links.
 * `/bridge/<connection>/<path>` forwards a call to the connection's upstream with the real
 * credential attached.
 *
 * Threat model: the caller is a sandbox running hostile code that holds one run token and wants
 * a credential, another run's access, an upstream its policy does not allow, or the host's own
 * network. A call passes only when all of these hold, checked in this order:
 *   1. the source address is a live sandbox's (LiveSandboxes; the kernel vouches for the address:
 *      a sandbox cannot change or spoof it, see network.ts);
 *   2. the bearer run token verifies (RunTokens: EdDSA only, known key, issuer, audience, typ,
 *      expiry) and names that same address, sandbox, run and attempt;
 *   3. the token's scopes include the connection, and the connection exists;
 *   4. the method is not TRACE/TRACK/CONNECT, the path has no traversal or ambiguous encoding,
 *      and the connection's policy allows the method on the path;
 *   5. the connection's rate limit has room.
 * Then every inbound credential, cookie and forwarding header is dropped, the secret attached,
 * and the call forwarded: to an address checked after resolution and pinned for the connection
 * (no DNS rebinding), without following redirects, under a timeout and size caps. The answer
 * loses `set-cookie` and hop-by-hop headers, and every spelling of the secret the host sent is
 * replaced in headers and body (compressed bodies are decoded first so nothing hides in them).
 * Every call and every denial of a live sandbox is recorded on its run as a `bridge.call` event
 * (connection, method, path and the rule that allowed it, status, bytes, latency; never a header
 * value or the secret).
 */
import { lookup as dnsLookup } from "node:dns/promises";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo, LookupFunction } from "node:net";
import { pipeline, Transform } from "node:stream";
import { type ConnectionAuth, ERROR_CODES, MAX_INPUT_BYTES, RunCreate } from "@paddock/protocol";
import {
  type Journal,
  type JournalEntry,
  MAX_JOURNAL_BYTES,
  requestHash,
  STEP_HEADER,
  stepKey,
} from "../engine/journal.ts";
import { Gateway } from "../gateway/gateway.ts";
import type { AgentCalls } from "../triggers/agent-calls.ts";
import { parseJson, Refusal, readCapped, sendJson, sendReplay } from "./channel.ts";
import type { BridgeConnection } from "./connections.ts";
import { decode } from "./decode.ts";
import { type LiveSandbox, LiveSandboxes } from "./live.ts";
import { allowedMethod, checkBridgePath, matchRule, upstreamAddressRefusal } from "./policy.ts";
import type { TokenBucket } from "./rate-limit.ts";
import { Redactor, redactionNeedles, redactText } from "./redact.ts";
import type { RunTokenClaims } from "./tokens.ts";

export interface BridgeDeps {
  live: LiveSandboxes;
  tokens: { verify(token: string): Promise<RunTokenClaims>; publicJwks(): unknown };
  connections: { forBridge(tenantId: string, name: string): Promise<BridgeConnection | null> };
  secrets: { reveal(tenantId: string, name: string): Promise<string | null> };
  rateLimits: TokenBucket;
  log: (line: string) => void;
  /** The LLM gateway, served under /v1/ on the same listener. */
  gateway?: Gateway;
  /** Agent-to-agent calls, served under /agents/. */
  agentCalls?: AgentCalls;
  /** Answers of completed calls, replayed to retried attempts. */
  journal?: Journal;
  /** Name resolution for upstreams; default the system resolver. */
  resolve?: (host: string) => Promise<string[]>;
}

/** Request headers never forwarded: credentials, cookies, hop-by-hop and forwarding headers. */
const DROP_REQUEST = new Set([
  "authorization",
  "proxy-authorization",
  "cookie",
  "cookie2",
  "x-api-key",
  "api-key",
  "x-auth-token",
  "paddock-step",
  "x-api-token",
  "x-access-token",
  "x-goog-api-key",
  "private-token",
  "apikey",
  // A sandbox must not turn an allowed method into another one at upstreams that honour these.
  "x-http-method-override",
  "x-http-method",
  "x-method-override",
  "host",
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "expect",
  "forwarded",
  "via",
  "x-real-ip",
  "content-length",
  "accept-encoding",
]);
/** Response headers never passed back. */
const DROP_RESPONSE = new Set([
  "set-cookie",
  "set-cookie2",
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "content-length",
  "content-encoding",
  "alt-svc",
  "strict-transport-security",
]);
const CONNECTION_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const MAX_TOKEN_BYTES = 4096;
/** A child run's body: its input, at most what an API trigger may send, plus the JSON around it. */
const MAX_CHILD_BODY_BYTES = MAX_INPUT_BYTES + 1024;
const DNS_TTL_MS = 30_000;

interface CallRecord {
  connection: string;
  method: string;
  path: string;
  rule?: string;
  status: number;
  code?: string;
  bytes_in: number;
  bytes_out: number;
  ms: number;
  redacted?: number;
}

export class Bridge {
  readonly #deps: BridgeDeps;
  readonly #server: http.Server;
  readonly #agents = {
    http: new http.Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 64 }),
    https: new https.Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 64 }),
  };
  readonly #dns = new Map<string, { at: number; addresses: Promise<string[]> }>();

  constructor(deps: BridgeDeps) {
    this.#deps = deps;
    this.#server = http.createServer({ keepAlive: true, requestTimeout: 0, headersTimeout: 30_000 }, (req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        this.#deps.log(`bridge: ${err instanceof Error ? err.message : String(err)}`);
        if (!res.headersSent) this.#deny(res, new Refusal("internal"));
        else res.destroy();
      });
    });
    this.#server.keepAliveTimeout = 65_000;
  }

  /** Listens on `address` (the host side of the sandbox links); resolves with the port. */
  listen(address: string, port = 0): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(port, address, () => {
        this.#server.off("error", reject);
        resolve((this.#server.address() as AddressInfo).port);
      });
    });
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
    this.#agents.http.destroy();
    this.#agents.https.destroy();
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    const source = req.socket.remoteAddress ?? "";
    const sandbox = this.#deps.live.byAddress(source);
    const target = req.url ?? "/";
    if (target === "/.well-known/jwks.json" && req.method === "GET") {
      // Public halves of the keys run tokens are checked with: nothing secret, and useful to verify one's own token.
      const body = JSON.stringify(this.#deps.tokens.publicJwks());
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    if (this.#deps.agentCalls && target.startsWith("/agents/")) {
      await this.#toAgents(req, res, sandbox, source, target, this.#deps.agentCalls);
      return;
    }
    if (this.#deps.gateway && Gateway.serves(target)) {
      await this.#toGateway(req, res, sandbox, source, this.#deps.gateway);
      return;
    }
    if (!target.startsWith("/bridge/")) {
      this.#deny(res, new Refusal("route_not_found", "The bridge serves /bridge/<connection>/<path>."));
      return;
    }
    // The connection's name ends at the next '/' or '?'; what follows is the upstream path and query.
    const end = target.slice(8).search(/[/?]/);
    const name = end < 0 ? target.slice(8) : target.slice(8, 8 + end);
    const tail = end < 0 ? "" : target.slice(8 + end);
    const rest = tail.startsWith("/") ? tail : `/${tail}`;
    const method = req.method ?? "GET";
    const record: CallRecord = {
      connection: name.slice(0, 64),
      method,
      path: "",
      status: 0,
      bytes_in: 0,
      bytes_out: 0,
      ms: 0,
    };
    try {
      if (!sandbox) throw new Refusal("bridge_unknown_source");
      if (!CONNECTION_NAME.test(name))
        throw new Refusal("connection_not_allowed", `No connection '${name.slice(0, 64)}'.`);
      await this.#authorize(req, sandbox, source, name);
      if (!allowedMethod(method))
        throw new Refusal("policy_denied", `The bridge never forwards ${method.slice(0, 32)}.`);
      const { path, query } = checkBridgePath(rest);
      record.path = path.slice(0, 512);
      if (overridesMethod(query))
        throw new Refusal("policy_denied", "The bridge never forwards a method override (_method) in the query.");
      const connection = await this.#deps.connections.forBridge(sandbox.tenantId, name);
      if (!connection) throw new Refusal("connection_not_allowed", `No connection '${name}'.`);
      const rule = matchRule(connection.policy, method, path);
      if (!rule)
        throw new Refusal("policy_denied", `The connection '${name}' does not allow ${method} ${record.path}.`);
      record.rule = rule.path;
      const declared = Number(req.headers["content-length"] ?? 0);
      if (declared > connection.maxRequestBytes) throw new Refusal("body_too_large");
      // A retried attempt repeating a call an earlier attempt completed is answered from the
      // journal. Small bodies are read whole (their hash keys the entry); others stream, unjournaled.
      const journal =
        this.#deps.journal && sandbox.journaled && !req.headers["transfer-encoding"] && declared <= MAX_JOURNAL_BYTES
          ? this.#deps.journal
          : undefined;
      const body = journal ? await readCapped(req, connection.maxRequestBytes) : null;
      if (body) record.bytes_in = body.length;
      const kind = `bridge:${name}`;
      const step = journal ? stepKey(req.headers[STEP_HEADER], kind, LiveSandboxes.nextStep(sandbox, kind)) : null;
      const hash = body ? requestHash([method, name, path, query, body]) : "";
      if (journal && step) {
        const found = await journal.lookup(sandbox.runId, sandbox.attempt, step, hash);
        if (found && "replay" in found) {
          sendReplay(res, found.replay);
          Object.assign(record, {
            status: found.replay.status,
            bytes_out: found.replay.body.length,
            replayed: true,
            step,
          });
          return;
        }
        if (found) sandbox.record({ type: "journal.diverged", data: { step, kind: "bridge", connection: name } });
      }
      const limit = connection.rateLimit;
      if (limit) {
        const taken = this.#deps.rateLimits.take(connection.id, limit);
        if (!taken.ok) {
          if (journal && step) LiveSandboxes.unstep(sandbox, kind);
          throw new Refusal("rate_limited", undefined, {
            "retry-after": String(Math.max(1, Math.ceil(taken.retryAfterS))),
          });
        }
      }
      const answer = await this.#forward(req, res, sandbox, connection, path, query, record, body);
      if (journal && step && answer) await journal.record(sandbox.runId, sandbox.attempt, step, hash, answer);
    } catch (err) {
      const denial = Refusal.from(err);
      if (denial.code === "internal") this.#deps.log(`bridge: ${err instanceof Error ? err.stack : String(err)}`);
      if (!res.headersSent) this.#deny(res, denial);
      else res.destroy();
      record.status = ERROR_CODES[denial.code].status;
      record.code = denial.code;
      req.resume();
    } finally {
      record.ms = Math.round((performance.now() - started) * 1000) / 1000;
      if (sandbox && record.status !== 0) sandbox.record({ type: "bridge.call", data: record });
    }
  }

  /**
   * The LLM gateway's routes, behind the same checks: a live sandbox's address and its own run
   * token (sent where the SDKs put an API key), scoped `llm`.
   */
  async #toGateway(
    req: IncomingMessage,
    res: ServerResponse,
    sandbox: LiveSandbox | undefined,
    source: string,
    gateway: Gateway,
  ): Promise<void> {
    try {
      if (!sandbox) throw new Refusal("bridge_unknown_source");
      await this.#verify(req, sandbox, source, "llm", "The agent's policy does not allow LLM calls.");
    } catch (err) {
      const denial = Refusal.from(err);
      this.#deny(res, denial);
      req.resume();
      sandbox?.record({
        type: "llm.call",
        data: {
          path: (req.url ?? "").split("?")[0]?.slice(0, 128),
          status: ERROR_CODES[denial.code].status,
          code: denial.code,
        },
      });
      return;
    }
    const header = req.headers[STEP_HEADER];
    await gateway.handle(req, res, {
      ...(sandbox.journaled
        ? {
            journal: {
              runId: sandbox.runId,
              attempt: sandbox.attempt,
              // Taken only by a call the gateway accepted, and given back if it is refused before upstream.
              step: () => stepKey(header, "llm", LiveSandboxes.nextStep(sandbox, "llm")),
              unstep: () => LiveSandboxes.unstep(sandbox, "llm"),
            },
          }
        : {}),
      tenantId: sandbox.tenantId,
      agentId: sandbox.agentId,
      runId: sandbox.billRunId ?? sandbox.runId,
      budgetAgentId: sandbox.billAgentId ?? sandbox.agentId,
      record: (event) => sandbox.record(event),
      outOfCredits: (scope) => sandbox.outOfCredits?.(scope),
    });
  }

  /**
   * Agent-to-agent calls, behind the same checks: `POST /agents/<name>/runs` `{input}` starts a
   * child run of an agent the caller's policy names (scope `agent:<name>`); `GET
   * /agents/runs/<id>?wait=S` reads one of the caller's children, waiting up to S seconds for it
   * to finish.
   */
  async #toAgents(
    req: IncomingMessage,
    res: ServerResponse,
    sandbox: LiveSandbox | undefined,
    source: string,
    target: string,
    calls: AgentCalls,
  ): Promise<void> {
    const [path, query = ""] = target.split("?", 2) as [string, string?];
    const start = /^\/agents\/([a-z0-9][a-z0-9_-]{0,63})\/runs$/.exec(path);
    const read = /^\/agents\/runs\/(run_[0-9a-z]{1,60})$/.exec(path);
    const record: Record<string, unknown> = { path: path.slice(0, 128) };
    try {
      if (!sandbox) throw new Refusal("bridge_unknown_source");
      if (start?.[1] && req.method === "POST") {
        const name = start[1];
        record.agent = name;
        await this.#verify(
          req,
          sandbox,
          source,
          `agent:${name}`,
          `The agent's policy does not allow starting '${name}'.`,
        );
        // The child's input, checked like an API trigger's.
        const parsed = RunCreate.safeParse(parseJson(await readCapped(req, MAX_CHILD_BODY_BYTES), {}));
        if (!parsed.success) throw new Refusal("validation_failed", "The body is {input?}: the child run's input.");
        const body = parsed.data;
        // A retried attempt asking again for a child an earlier attempt started gets that child.
        const journal = sandbox.journaled ? this.#deps.journal : undefined;
        const kind = `agent:${name}`;
        const step = stepKey(req.headers[STEP_HEADER], kind, LiveSandboxes.nextStep(sandbox, kind));
        const hash = requestHash([name, JSON.stringify(body.input ?? null)]);
        if (journal && step) {
          const found = await journal.lookup(sandbox.runId, sandbox.attempt, step, hash);
          if (found && "replay" in found) {
            sendReplay(res, found.replay);
            sandbox.record({
              type: "agent.call",
              data: { ...record, status: found.replay.status, replayed: true, step },
            });
            return;
          }
          if (found) sandbox.record({ type: "journal.diverged", data: { step, kind: "agent" } });
        }
        const child = await calls.start(
          { tenantId: sandbox.tenantId, runId: sandbox.runId, record: (e) => sandbox.record(e) },
          name,
          body.input,
          journal && step
            ? (trx, answer) =>
                journal.record(
                  sandbox.runId,
                  sandbox.attempt,
                  step,
                  hash,
                  {
                    status: 201,
                    headers: { "content-type": "application/json" },
                    body: Buffer.from(JSON.stringify(answer)),
                  },
                  trx,
                )
            : undefined,
        );
        sendJson(res, 201, child);
        return;
      }
      if (read?.[1] && req.method === "GET") {
        await this.#verify(req, sandbox, source, "llm", "");
        const wait = Number(new URLSearchParams(query).get("wait") ?? 0);
        const child = await calls.get(
          { tenantId: sandbox.tenantId, runId: sandbox.runId, record: (e) => sandbox.record(e) },
          read[1],
          Number.isFinite(wait) ? wait : 0,
        );
        sendJson(res, 200, child);
        return;
      }
      throw new Refusal("route_not_found", "The bridge serves POST /agents/<name>/runs and GET /agents/runs/<id>.");
    } catch (err) {
      const denial = Refusal.from(err);
      if (!res.headersSent) this.#deny(res, denial);
      req.resume();
      record.status = ERROR_CODES[denial.code].status;
      record.code = denial.code;
      sandbox?.record({ type: "agent.call", data: record });
    }
  }

  /** Steps 2 and 3: the token verifies, names this very sandbox and attempt, and scopes the connection. */
  async #authorize(req: IncomingMessage, sandbox: LiveSandbox, source: string, name: string): Promise<void> {
    await this.#verify(
      req,
      sandbox,
      source,
      `bridge:${name}`,
      `The agent's policy does not allow the connection '${name}'.`,
    );
  }

  async #verify(
    req: IncomingMessage,
    sandbox: LiveSandbox,
    source: string,
    scope: string,
    refusal: string,
  ): Promise<void> {
    const header =
      req.headers.authorization ??
      (typeof req.headers["x-api-key"] === "string" ? `Bearer ${req.headers["x-api-key"]}` : "");
    const match = /^bearer +([A-Za-z0-9._~+/-]+=*)$/i.exec(header);
    if (!match?.[1] || match[1].length > MAX_TOKEN_BYTES) throw new Refusal("token_missing");
    const claims = await this.#deps.tokens.verify(match[1]);
    if (
      claims.addr !== source ||
      claims.sandbox !== sandbox.sandboxId ||
      claims.run !== sandbox.runId ||
      claims.attempt !== sandbox.attempt ||
      claims.tenant !== sandbox.tenantId
    ) {
      throw new Refusal("token_mismatch");
    }
    if (!claims.scopes.includes(scope)) throw new Refusal("connection_not_allowed", refusal);
  }

  async #forward(
    req: IncomingMessage,
    res: ServerResponse,
    sandbox: LiveSandbox,
    connection: BridgeConnection,
    path: string,
    query: string,
    record: CallRecord,
    body: Buffer | null,
  ): Promise<Omit<JournalEntry, "attempt"> | null> {
    const secret =
      connection.secret === null ? null : await this.#deps.secrets.reveal(sandbox.tenantId, connection.secret);
    if (connection.secret !== null && secret === null) {
      throw new Refusal("upstream_error", `The secret of connection '${connection.name}' is missing; set it again.`);
    }
    const base = new URL(connection.baseUrl);
    const { headers, needles, query: upstreamQuery } = attach(req, connection.auth, secret, query, base.host);
    if (body) {
      // The body was read whole (its hash keys the journal): sent with its length.
      delete headers["transfer-encoding"];
      if (body.length > 0 || req.headers["content-length"] !== undefined)
        headers["content-length"] = String(body.length);
    }
    const address = await this.#pin(base.hostname, connection.internal);
    const lookup: LookupFunction = (_host, options, callback) => {
      const family = address.includes(":") ? 6 : 4;
      if (options.all)
        (callback as (e: null, a: { address: string; family: number }[]) => void)(null, [{ address, family }]);
      else callback(null, address, family);
    };
    const secure = base.protocol === "https:";
    const upstream = (secure ? https : http).request({
      protocol: base.protocol,
      hostname: base.hostname,
      port: base.port || (secure ? 443 : 80),
      method: req.method,
      // The checked path as received, not re-parsed: the upstream gets the bytes the policy matched.
      path: `${base.pathname === "/" ? "" : base.pathname}${path}${upstreamQuery ? `?${upstreamQuery}` : ""}`,
      headers,
      agent: secure ? this.#agents.https : this.#agents.http,
      lookup,
      ...(secure ? { servername: base.hostname } : {}),
    });

    return new Promise<Omit<JournalEntry, "attempt"> | null>((resolve, reject) => {
      let settled = false;
      let journaled: Omit<JournalEntry, "attempt"> | null = null;
      const fail = (err: Refusal) => {
        if (settled) return;
        settled = true;
        upstream.destroy();
        reject(err);
      };
      const timer = setTimeout(() => fail(new Refusal("upstream_timeout")), connection.timeoutMs);
      upstream.on("error", (err) =>
        fail(err instanceof Refusal ? err : new Refusal("upstream_error", upstreamMessage(err, needles))),
      );
      upstream.once("response", (answer) => {
        const length = Number(answer.headers["content-length"] ?? 0);
        if (length > connection.maxResponseBytes) {
          answer.resume();
          fail(new Refusal("upstream_too_large"));
          return;
        }
        const decoded = decode(answer);
        if (!decoded) {
          answer.resume();
          fail(new Refusal("upstream_error", "The upstream answered in a content encoding the bridge cannot check."));
          return;
        }
        const passed = answerHeaders(answer, needles);
        res.writeHead(answer.statusCode ?? 502, passed);
        record.status = answer.statusCode ?? 502;
        const redactor = new Redactor(needles);
        // What the sandbox got, for the journal (a large answer is not kept).
        const kept: Buffer[] = [];
        let keptBytes = 0;
        redactor.on("data", (chunk: Buffer) => {
          keptBytes += chunk.length;
          if (keptBytes <= MAX_JOURNAL_BYTES) kept.push(chunk);
        });
        let size = 0;
        // Counted before anything is passed on: an answer over the cap never reaches the sandbox whole.
        const cap = new Transform({
          transform(chunk: Buffer, _enc, done) {
            size += chunk.length;
            if (size > connection.maxResponseBytes) {
              fail(new Refusal("upstream_too_large"));
              done();
            } else done(null, chunk);
          },
        });
        pipeline(decoded, cap, redactor, res, (err) => {
          clearTimeout(timer);
          record.bytes_out = size;
          if (redactor.hits > 0) record.redacted = redactor.hits;
          if (err && !record.code) record.code = "upstream_error";
          if (!err && body && keptBytes <= MAX_JOURNAL_BYTES) {
            journaled = { status: record.status, headers: passed, body: Buffer.concat(kept) };
          }
          settled = true;
          resolve(journaled);
        });
      });
      if (body) upstream.end(body);
      else {
        // The request body, counted against the connection's cap as it streams.
        let sent = 0;
        req.on("data", (chunk: Buffer) => {
          sent += chunk.length;
          record.bytes_in = sent;
          if (sent > connection.maxRequestBytes) fail(new Refusal("body_too_large"));
        });
        req.pipe(upstream);
      }
    });
  }

  /**
   * The address to call for `host`: resolved (or taken as a literal), every address checked, the
   * first one pinned so the connection cannot be re-pointed between check and use.
   */
  async #pin(host: string, internal: boolean): Promise<string> {
    const literal = host.startsWith("[") ? host.slice(1, -1) : host;
    let addresses: string[];
    if (/^[\d.]+$/.test(literal) || literal.includes(":")) addresses = [literal];
    else {
      let cached = this.#dns.get(literal);
      if (!cached || Date.now() - cached.at > DNS_TTL_MS) {
        const resolve =
          this.#deps.resolve ?? (async (h: string) => (await dnsLookup(h, { all: true })).map((a) => a.address));
        cached = { at: Date.now(), addresses: resolve(literal) };
        cached.addresses.catch(() => this.#dns.delete(literal));
        this.#dns.set(literal, cached);
      }
      addresses = await cached.addresses.catch(() => {
        throw new Refusal("upstream_error", `The upstream host '${literal}' does not resolve.`);
      });
    }
    if (addresses.length === 0) throw new Refusal("upstream_error", `The upstream host '${literal}' does not resolve.`);
    for (const address of addresses) {
      const refusal = upstreamAddressRefusal(address, internal);
      if (refusal) {
        throw new Refusal(
          "upstream_refused",
          `The upstream '${literal}' resolves to a ${refusal} address, which ${internal ? "no connection" : "only an internal connection"} may call.`,
        );
      }
    }
    return addresses[0] as string;
  }

  #deny(res: ServerResponse, denial: Refusal): void {
    sendJson(res, denial.status, { error: { code: denial.code, message: denial.message } }, denial.headers);
  }
}

/** A query naming another method, which some frameworks honour over the request's own. */
function overridesMethod(query: string): boolean {
  if (query === "") return false;
  for (const key of new URLSearchParams(query).keys()) {
    if (/^_?method$/i.test(key.trim()) || /^x-http-method(-override)?$/i.test(key.trim())) return true;
  }
  return false;
}

/** The upstream's error, without anything that could carry the secret. */
function upstreamMessage(err: Error, needles: readonly Buffer[]): string {
  const code = (err as NodeJS.ErrnoException).code;
  return redactText(`The upstream could not be reached${code ? ` (${code})` : ""}.`, needles);
}

/** Forwarded request headers, with the credential attached, and the forms of it to redact. */
function attach(
  req: IncomingMessage,
  auth: ConnectionAuth,
  secret: string | null,
  query: string,
  host: string,
): { headers: Record<string, string | string[]>; needles: Buffer[]; query: string } {
  const headers: Record<string, string | string[]> = {};
  const drop = new Set(DROP_REQUEST);
  if (auth.type === "header") drop.add(auth.name.toLowerCase());
  // Headers the caller names in Connection are hop-by-hop (RFC 9110 7.6.1): never forwarded.
  for (const name of String(req.headers.connection ?? "").split(",")) drop.add(name.trim().toLowerCase());
  for (const [key, value] of Object.entries(req.headers)) {
    if (value === undefined || drop.has(key) || key.startsWith("x-forwarded-") || key.startsWith("proxy-")) continue;
    headers[key] = value;
  }
  headers.host = host;
  // Answers must be readable to be redacted; a compressed one is decoded anyway (see decode()).
  headers["accept-encoding"] = "identity";
  const length = req.headers["content-length"];
  if (length !== undefined) headers["content-length"] = length;
  else if (req.headers["transfer-encoding"]) headers["transfer-encoding"] = "chunked";
  const forms: string[] = [];
  let upstreamQuery = query;
  if (secret !== null) {
    forms.push(secret);
    switch (auth.type) {
      case "bearer":
        headers.authorization = `Bearer ${secret}`;
        break;
      case "header":
        headers[auth.name.toLowerCase()] = `${auth.prefix ?? ""}${secret}`;
        break;
      case "basic": {
        const encoded = Buffer.from(`${auth.username}:${secret}`).toString("base64");
        headers.authorization = `Basic ${encoded}`;
        forms.push(encoded);
        break;
      }
      case "query": {
        const params = new URLSearchParams(query);
        params.delete(auth.param);
        params.append(auth.param, secret);
        upstreamQuery = params.toString();
        forms.push(new URLSearchParams({ v: secret }).toString().slice(2));
        break;
      }
      case "none":
        break;
    }
  }
  return { headers, needles: redactionNeedles(forms), query: upstreamQuery };
}

function answerHeaders(answer: IncomingMessage, needles: readonly Buffer[]): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [key, value] of Object.entries(answer.headers)) {
    if (value === undefined || DROP_RESPONSE.has(key)) continue;
    out[key] = Array.isArray(value) ? value.map((v) => redactText(v, needles)) : redactText(value, needles);
  }
  return out;
}
