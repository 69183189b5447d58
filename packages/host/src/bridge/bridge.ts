/**
 * The host bridge: the one HTTP listener sandboxes can reach, on the host's side of their links.
 * `/bridge/<connection>/<path>` forwards a call to the connection's upstream with the real
 * credential attached (a secret, or the run's end user's OAuth access token). The other routes on
 * it (the LLM gateway, agent calls) are handed in as ChannelRoutes and check a caller's source
 * and token through the same steps 1 to 3 below.
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
 * A rule with `approval` holds the call first (see approvals.ts): what is sent, once a person
 * approved, is the request held then, byte for byte.
 * Then every inbound credential, cookie and forwarding header is dropped, the secret attached,
 * and the call forwarded: to an address checked after resolution and pinned for the connection
 * (no DNS rebinding), without following redirects, under a timeout and size caps. The answer
 * loses `set-cookie` and hop-by-hop headers, and every spelling of the secret the host sent is
 * replaced in headers and body (compressed bodies are decoded first so nothing hides in them).
 * Every call and every denial of a live sandbox is recorded on its run as a `bridge.call` event
 * (connection, method, path and the rule that allowed it, status, bytes, latency; never a header
 * value or the secret).
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import {
  APPROVAL_HEADER,
  type ApprovalRule,
  type ConnectionAuth,
  ERROR_CODES,
  type PolicyRule,
  type RunEventData,
} from "@paddock/protocol";
import { z } from "zod";
import type { Metrics } from "../metrics/metrics.ts";
import { type Journal, type JournalEntry, MAX_JOURNAL_BYTES, requestHash } from "../store/journal.ts";
import { parseStored } from "../store/stored.ts";
import { epochMs, epochOf, type Tracing } from "../tracing/tracing.ts";
import { type Approvals, MAX_HELD_BYTES } from "./approvals.ts";
import { recordBridgeSpan } from "./call-span.ts";
import {
  approvalAsked,
  type ChannelRoute,
  Refusal,
  readCapped,
  sendJson,
  sendRefusal,
  sendReplay,
  takeStep,
} from "./channel.ts";
import { type BridgeConnection, upstreamUrl } from "./connections.ts";
import { type LiveSandbox, LiveSandboxes } from "./live.ts";
import { AddressPinner, PinRefusal, pinnedLookup } from "./pin.ts";
import { allowedMethod, checkBridgePath, matchRule } from "./policy.ts";
import type { TokenBucket } from "./rate-limit.ts";
import { redactionNeedles, redactText } from "./redact.ts";
import { relay } from "./relay.ts";
import { type Held, type RefusalReport, SOURCE_LIMIT_DEFAULTS, SourceLimits } from "./source-limits.ts";
import type { RunTokenClaims } from "./tokens.ts";

/** The token an `oauth` connection attaches, and the refresh taken on the call's path (for the run's record). */
export interface AccessGrant {
  token: string;
  refreshed: RunEventData<"account.refreshed"> | null;
}

export interface BridgeDeps {
  live: LiveSandboxes;
  tokens: { verify(token: string): Promise<RunTokenClaims>; publicJwks(): unknown };
  connections: { forBridge(tenantId: string, name: string): Promise<BridgeConnection | null> };
  secrets: { reveal(tenantId: string, name: string): Promise<string | null> };
  /** End users' OAuth accounts: the access token a connection with `oauth` auth attaches. */
  accounts?: {
    /** `stale`: the token the upstream just refused (401), to be refreshed. */
    accessToken(tenantId: string, endUser: string, app: string, stale?: string): Promise<AccessGrant>;
  };
  rateLimits: TokenBucket;
  log: (line: string) => void;
  /** Routes served on the same listener besides /bridge/ (the LLM gateway under /v1/, agent calls under /agents/). */
  routes?: ChannelRoute[];
  /** Answers of completed calls, replayed to retried attempts. */
  journal?: Journal;
  /** Name resolution for upstreams; default the system resolver. */
  resolve?: (host: string) => Promise<string[]>;
  /** Where each call's connection, outcome and latency are reported. */
  metrics?: Pick<Metrics, "bridgeCall">;
  /** Where a span of each call of a traced attempt goes; null or absent: no spans. */
  tracing?: Tracing | null;
  /** Holds calls that a rule says a person must approve (without it, such calls are refused). */
  approvals?: Approvals;
  /** Requests in flight and TCP connections one sandbox may hold at once; default SOURCE_LIMIT_DEFAULTS. */
  limits?: { requestsPerSandbox: number; connectionsPerSandbox: number };
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
  "paddock-approval",
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
/** How long a request's body may take to arrive: the longest timeout a connection may have. */
const REQUEST_TIMEOUT_MS = 300_000;

/** One call through a connection, once it passed every check. */
interface BridgeCall {
  req: IncomingMessage;
  res: ServerResponse;
  sandbox: LiveSandbox;
  connection: BridgeConnection;
  /** What goes upstream: the caller's request, or the one held for approval. */
  out: Outbound;
  /** The `bridge.call` event's data, filled in as the call goes. */
  record: CallRecord;
  /** Keep the answer (for the journal or an approval's repeats). */
  keep: boolean;
  /** Told when the request leaves for the upstream (from then on it may have reached it). */
  onSent?: () => void;
}

/** A request as the bridge sends it upstream, before the credential is attached. */
const Outbound = z.object({
  method: z.string(),
  /** The checked path and query, as received. */
  path: z.string(),
  query: z.string(),
  /** The headers passed on (see passedHeaders). */
  headers: z.record(z.string(), z.union([z.string(), z.array(z.string())])),
});
type Outbound = z.infer<typeof Outbound> & {
  /** The body, when it was read whole (a journaled or held call); null when it streams from the caller. */
  body: Buffer | null;
};

/** What a call held for approval keeps besides its body: the request and the connection it was judged with. */
const HeldBridgeCall = Outbound.extend({ base_url: z.string(), secret: z.string().nullable() });
type HeldBridgeCall = z.infer<typeof HeldBridgeCall>;

/** What a bridge call records on its run. */
type CallRecord = RunEventData<"bridge.call">;

export class Bridge {
  readonly #deps: BridgeDeps;
  readonly #server: http.Server;
  readonly #agents = {
    http: new http.Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 64 }),
    https: new https.Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 64 }),
  };
  readonly #pinner: AddressPinner;
  readonly #limits: SourceLimits;

  constructor(deps: BridgeDeps) {
    this.#deps = deps;
    this.#pinner = new AddressPinner(deps.resolve);
    this.#limits = new SourceLimits(deps.limits ?? SOURCE_LIMIT_DEFAULTS);
    // A request's headers must arrive within 30 s and its whole body within 5 minutes (the longest
    // a connection's upstream may take); answers are not timed here, so approval holds and model
    // streams last as long as they need.
    this.#server = http.createServer(
      { keepAlive: true, requestTimeout: REQUEST_TIMEOUT_MS, headersTimeout: 30_000 },
      (req, res) => {
        const source = req.socket.remoteAddress ?? "";
        const refused = this.#limits.take(source, "requests");
        if (refused) {
          this.#refuseBusy(source, refused.report);
          sendRefusal(res, new Refusal("bridge_busy", undefined, { "retry-after": "1" }));
          return;
        }
        res.once("close", () => this.#limits.release(source, "requests"));
        this.#handle(req, res).catch((err: unknown) => {
          this.#deps.log(`bridge: ${err instanceof Error ? err.message : String(err)}`);
          if (!res.headersSent) sendRefusal(res, new Refusal("internal"));
          else res.destroy();
        });
      },
    );
    this.#server.keepAliveTimeout = 65_000;
    // Connections past a source's cap are closed as they are accepted, before a byte is read.
    this.#server.on("connection", (socket: Socket) => {
      const source = socket.remoteAddress ?? "";
      const refused = this.#limits.take(source, "connections");
      if (refused) {
        this.#refuseBusy(source, refused.report);
        socket.destroy();
        return;
      }
      socket.once("close", () => this.#limits.release(source, "connections"));
    });
  }

  /** Logs a source's refusals when a report is due (at most one line a minute per source). */
  #refuseBusy(source: string, report: RefusalReport | null): void {
    if (!report) return;
    const run = this.#deps.live.byAddress(source)?.runId;
    const what: Record<Held, string> = { requests: "requests in flight", connections: "connections open" };
    this.#deps.log(
      `bridge: ${source}${run ? ` (run ${run})` : ""} has ${report.limit} ${what[report.held]}, the most one sandbox may; refused ${report.refused} since the last report`,
    );
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
      sendJson(res, 200, this.#deps.tokens.publicJwks());
      return;
    }
    for (const route of this.#deps.routes ?? []) {
      if (!route.serves(target)) continue;
      const authorize = (scope: string, refusal: string) => this.#authorize(req, sandbox, source, scope, refusal);
      await route.handle({ req, res, target, sandbox, authorize });
      return;
    }
    if (!target.startsWith("/bridge/")) {
      sendRefusal(res, new Refusal("route_not_found", "The bridge serves /bridge/<connection>/<path>."));
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
    /** The connection, once it is known to exist (a name the caller made up is no metric label). */
    let known: string | null = null;
    let upstream: string | null = null;
    try {
      if (!sandbox) throw new Refusal("bridge_unknown_source");
      if (!CONNECTION_NAME.test(name))
        throw new Refusal("connection_not_allowed", `No connection '${name.slice(0, 64)}'.`);
      await this.#authorize(
        req,
        sandbox,
        source,
        `bridge:${name}`,
        `The agent's policy does not allow the connection '${name}'.`,
      );
      if (!allowedMethod(method))
        throw new Refusal("policy_denied", `The bridge never forwards ${method.slice(0, 32)}.`);
      const { path, query } = checkBridgePath(rest);
      record.path = path.slice(0, 512);
      if (overridesMethod(query))
        throw new Refusal("policy_denied", "The bridge never forwards a method override (_method) in the query.");
      const connection = await this.#deps.connections.forBridge(sandbox.tenantId, name);
      if (!connection) throw new Refusal("connection_not_allowed", `No connection '${name}'.`);
      known = connection.name;
      upstream = connection.baseUrl;
      const rule = matchRule(connection.policy, method, path);
      if (!rule)
        throw new Refusal("policy_denied", `The connection '${name}' does not allow ${method} ${record.path}.`);
      record.rule = rule.path;
      const declared = Number(req.headers["content-length"] ?? 0);
      if (declared > connection.maxRequestBytes) throw new Refusal("body_too_large");
      if (rule.approval) {
        await this.#held({ req, res, sandbox, connection, path, query, record }, rule);
        return;
      }
      // A retried attempt repeating a call an earlier attempt completed is answered from the
      // journal. Small bodies are read whole (their hash keys the entry); others stream, unjournaled.
      const journal =
        this.#deps.journal && sandbox.journaled && !req.headers["transfer-encoding"] && declared <= MAX_JOURNAL_BYTES
          ? this.#deps.journal
          : undefined;
      // An OAuth call's body is read whole too: a 401 sends it again with a refreshed token.
      const body =
        journal || connection.auth.type === "oauth" ? await readCapped(req, connection.maxRequestBytes) : null;
      if (body) record.bytes_in = body.length;
      const kind = `bridge:${name}`;
      const step = journal ? takeStep(sandbox, req, kind) : null;
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
      const out: Outbound = {
        method,
        path,
        query,
        headers: passedHeaders(req, connection.auth, new URL(connection.baseUrl).host),
        body,
      };
      const answer = await this.#forward({ req, res, sandbox, connection, out, record, keep: journal !== undefined });
      if (journal && step && answer) await journal.record(sandbox, step, hash, answer);
    } catch (err) {
      const denial = Refusal.from(err);
      if (denial.code === "internal") this.#deps.log(`bridge: ${err instanceof Error ? err.stack : String(err)}`);
      if (!res.headersSent) sendRefusal(res, denial);
      else res.destroy();
      record.status = ERROR_CODES[denial.code].status;
      record.code = denial.code;
      record.approval ??= denial.headers[APPROVAL_HEADER];
      req.resume();
    } finally {
      record.ms = Math.round((performance.now() - started) * 1000) / 1000;
      // A call told to ask again for its approval is no call: its approval's events tell the story.
      if (sandbox && record.status !== 0 && record.code !== "approval_pending") {
        sandbox.record({ type: "bridge.call", data: record });
        const tracing = this.#deps.tracing;
        if (tracing && sandbox.trace) {
          const call = { record, runId: sandbox.runId, startMs: epochOf(started), endMs: epochMs(), upstream };
          recordBridgeSpan(tracing, sandbox.trace, call);
        }
      }
      this.#deps.metrics?.bridgeCall(known, record.code, record.ms);
    }
  }

  /**
   * Steps 1 to 3: the source is a live sandbox, and its token verifies, names this very sandbox
   * and attempt, and grants `scope`.
   */
  async #authorize(
    req: IncomingMessage,
    sandbox: LiveSandbox | undefined,
    source: string,
    scope: string,
    refusal: string,
  ): Promise<LiveSandbox> {
    if (!sandbox) throw new Refusal("bridge_unknown_source");
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
    return sandbox;
  }

  /**
   * A call whose rule asks for approval: its body is read whole and held with the exact request
   * the host would send; once a person approves, that held request (not whatever asks again) is
   * sent, once, and its answer kept for identical repeats.
   */
  async #held(
    call: Omit<BridgeCall, "out" | "keep"> & { path: string; query: string },
    rule: PolicyRule & { approval?: ApprovalRule },
  ): Promise<void> {
    const { req, res, sandbox, connection, path, query, record } = call;
    const approvals = this.#deps.approvals;
    if (!approvals || !rule.approval) throw new Refusal("policy_denied", "This host cannot hold calls for approval.");
    const body = await readCapped(req, Math.min(connection.maxRequestBytes, MAX_HELD_BYTES));
    record.bytes_in = body.length;
    const base = new URL(connection.baseUrl);
    const headers = passedHeaders(req, connection.auth, base.host);
    delete headers["transfer-encoding"];
    if (body.length > 0 || req.headers["content-length"] !== undefined) headers["content-length"] = String(body.length);
    const held: HeldBridgeCall = {
      method: req.method ?? "GET",
      path,
      query,
      headers,
      base_url: connection.baseUrl,
      secret: connection.secret,
    };
    const shown = { ...headers };
    const shownQuery = credentialPlaceholder(shown, connection.auth, connection.secret, query);
    const upstreamPath = `${base.pathname === "/" ? "" : base.pathname}${path}`;
    const index = connection.policy.rules.findIndex((r) => r.rule === rule);
    const outcome = await approvals.hold({
      sandbox,
      kind: "bridge",
      target: connection.name,
      ruleKey: `bridge:${connection.name}:${index}`,
      rule: rule.approval,
      hash: requestHash(["bridge", connection.name, JSON.stringify(held), body]),
      request: {
        kind: "bridge",
        target: connection.name,
        method: held.method,
        path: upstreamPath,
        query: shownQuery,
        url: upstreamUrl(connection, { path, query: shownQuery }),
        headers: Object.fromEntries(Object.entries(shown).map(([k, v]) => [k, Array.isArray(v) ? v.join(", ") : v])),
      },
      held,
      body,
      takeStep: () => takeStep(sandbox, req, `bridge:${connection.name}`),
      res,
      asked: approvalAsked(req),
    });
    if ("replay" in outcome) {
      sendReplay(res, { ...outcome.replay, attempt: outcome.approval.attempt });
      Object.assign(record, {
        status: outcome.replay.status,
        bytes_out: outcome.replay.body.length,
        replayed: true,
        approval: outcome.approval.id,
      });
      return;
    }
    const approved = outcome.send;
    record.approval = approved.id;
    const send = parseStored(HeldBridgeCall, approved.held, "held bridge call");
    let sent = false;
    try {
      if (send.base_url !== connection.baseUrl || send.secret !== connection.secret) {
        throw new Refusal(
          "upstream_error",
          `The connection '${connection.name}' changed since the call was approved; nothing was sent.`,
        );
      }
      const limit = connection.rateLimit;
      if (limit) {
        const taken = this.#deps.rateLimits.take(connection.id, limit);
        if (!taken.ok) {
          throw new Refusal("rate_limited", undefined, {
            "retry-after": String(Math.max(1, Math.ceil(taken.retryAfterS))),
          });
        }
      }
      const out: Outbound = { ...send, body: Buffer.from(approved.body) };
      const answer = await this.#forward({
        req,
        res,
        sandbox,
        connection,
        out,
        record,
        keep: true,
        onSent: () => {
          sent = true;
        },
      });
      await approvals.sent(approved.id, answer);
    } catch (err) {
      // Refused before it left: an identical request may send it later. Once it may have reached the upstream, never again.
      if (sent) await approvals.sent(approved.id, null);
      else await approvals.unsent(approved.id);
      throw err;
    }
  }

  /**
   * Forwards the call. With `oauth` auth and a body read whole, a 401 answer is not passed back:
   * the token is refreshed and the call sent once more (`stale` is the token refused). A call
   * approved to be sent once is not sent again: its 401 is its answer.
   */
  async #forward(call: BridgeCall, stale?: string): Promise<Omit<JournalEntry, "attempt"> | null> {
    const { req, res, sandbox, connection, out, record, keep } = call;
    const body = out.body;
    const secret = await credentialFor(this.#deps, sandbox, connection, stale);
    const base = new URL(connection.baseUrl);
    const headers = { ...out.headers };
    const { needles, query: upstreamQuery } = withCredential(headers, connection.auth, secret, out.query);
    if (body) {
      // The body was read whole (its hash keys the journal): sent with its length.
      delete headers["transfer-encoding"];
      if (body.length > 0 || req.headers["content-length"] !== undefined)
        headers["content-length"] = String(body.length);
    }
    const address = await this.#pin(base.hostname, connection.internal);
    const secure = base.protocol === "https:";
    const upstream = (secure ? https : http).request({
      protocol: base.protocol,
      hostname: base.hostname,
      port: base.port || (secure ? 443 : 80),
      method: out.method,
      // The checked path as received, not re-parsed: the upstream gets the bytes the policy matched.
      path: `${base.pathname === "/" ? "" : base.pathname}${out.path}${upstreamQuery ? `?${upstreamQuery}` : ""}`,
      headers,
      agent: secure ? this.#agents.https : this.#agents.http,
      lookup: pinnedLookup(address),
      ...(secure ? { servername: base.hostname } : {}),
    });
    call.onSent?.();

    return new Promise<Omit<JournalEntry, "attempt"> | null>((resolve, reject) => {
      let settled = false;
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
        // An approved call (told when it is sent) goes once: its 401 is its answer.
        const again = connection.auth.type === "oauth" && body && secret && !stale && !call.onSent;
        if (answer.statusCode === 401 && again) {
          clearTimeout(timer);
          settled = true;
          answer.resume();
          resolve(this.#forward(call, secret));
          return;
        }
        const passes = (name: string) => !DROP_RESPONSE.has(name);
        relay(answer, res, { needles, passes, maxBytes: connection.maxResponseBytes, keep }).then((relayed) => {
          clearTimeout(timer);
          if ("refused" in relayed) {
            fail(
              relayed.refused === "too_large"
                ? new Refusal("upstream_too_large")
                : new Refusal("upstream_error", "The upstream answered in a content encoding the bridge cannot check."),
            );
            return;
          }
          record.bytes_out = relayed.bytes;
          if (relayed.redacted > 0) record.redacted = relayed.redacted;
          if (relayed.end === "too_large") fail(new Refusal("upstream_too_large"));
          if (settled) return;
          record.status = relayed.status;
          if (relayed.end === "broken") record.code = "upstream_error";
          settled = true;
          resolve(relayed.kept);
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

  /** The address to call for `host`, checked and pinned (see pin.ts); a refusal naming why not. */
  async #pin(host: string, internal: boolean): Promise<string> {
    try {
      return await this.#pinner.pin(host, internal);
    } catch (err) {
      if (!(err instanceof PinRefusal)) throw err;
      if (err.refusal === null)
        throw new Refusal("upstream_error", `The upstream host '${err.host}' does not resolve.`);
      throw new Refusal(
        "upstream_refused",
        `The upstream '${err.host}' resolves to a ${err.refusal} address, which ${internal ? "no connection" : "only an internal connection"} may call.`,
      );
    }
  }
}

/** What holds a credential: a bridge connection or an MCP server. */
export interface CredentialHolder {
  name: string;
  auth: ConnectionAuth;
  secret: string | null;
}

/**
 * What a call attaches: the holder's secret, or for `oauth` auth the access token of the run's
 * own end user (fixed when the run was triggered; nothing the sandbox sends chooses it). `stale`:
 * the token the upstream just refused, to be refreshed. `what` names the holder in refusals.
 */
export async function credentialFor(
  deps: Pick<BridgeDeps, "secrets" | "accounts">,
  sandbox: Pick<LiveSandbox, "tenantId" | "endUser" | "record">,
  holder: CredentialHolder,
  stale?: string,
  what = "connection",
): Promise<string | null> {
  const auth = holder.auth;
  if (auth.type === "oauth") {
    if (!sandbox.endUser || !deps.accounts) {
      throw new Refusal(
        "account_missing",
        `The run has no end user, so the ${what} '${holder.name}' has no account at the OAuth app '${auth.app}' to attach; trigger the run with an end_user.`,
      );
    }
    try {
      const grant = await deps.accounts.accessToken(sandbox.tenantId, sandbox.endUser, auth.app, stale);
      if (grant.refreshed) sandbox.record({ type: "account.refreshed", data: grant.refreshed });
      return grant.token;
    } catch (err) {
      const refreshed = (err as { refreshed?: AccessGrant["refreshed"] }).refreshed;
      if (refreshed) sandbox.record({ type: "account.refreshed", data: refreshed });
      throw err;
    }
  }
  if (holder.secret === null) return null;
  const secret = await deps.secrets.reveal(sandbox.tenantId, holder.secret);
  if (secret === null) {
    throw new Refusal("upstream_error", `The secret of ${what} '${holder.name}' is missing; set it again.`);
  }
  return secret;
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

/**
 * The caller's request headers as forwarded, before the credential: without credentials, cookies,
 * hop-by-hop and forwarding headers, with the upstream's host.
 */
function passedHeaders(req: IncomingMessage, auth: ConnectionAuth, host: string): Record<string, string | string[]> {
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
  return headers;
}

/**
 * Puts `value` where the connection's auth puts its credential: a header (in `headers`, changed
 * in place) or the query, whose new form it returns; `basic` makes a Basic header's value from the
 * user name. The one place that says where a credential goes, for the call sent and for the
 * approvers' view of it.
 */
function placeCredential(
  headers: Record<string, string | string[]>,
  auth: ConnectionAuth,
  value: string,
  query: string,
  basic: (username: string) => string,
): string {
  switch (auth.type) {
    case "bearer":
    case "oauth":
      headers.authorization = `Bearer ${value}`;
      return query;
    case "header":
      headers[auth.name.toLowerCase()] = `${auth.prefix ?? ""}${value}`;
      return query;
    case "basic":
      headers.authorization = `Basic ${basic(auth.username)}`;
      return query;
    case "query": {
      const params = new URLSearchParams(query);
      params.delete(auth.param);
      params.append(auth.param, value);
      return params.toString();
    }
    case "none":
      return query;
  }
}

/**
 * Shows where the credential goes, by its secret's name (`<secret NAME>`) or for `oauth` auth by
 * its app's (`<account APP>`: the run's end user's token), in `headers` (changed in place);
 * returns the query as it would be sent.
 */
function credentialPlaceholder(
  headers: Record<string, string | string[]>,
  auth: ConnectionAuth,
  secret: string | null,
  query: string,
): string {
  const shown = auth.type === "oauth" ? `<account ${auth.app}>` : secret === null ? null : `<secret ${secret}>`;
  if (shown === null) return query;
  return placeCredential(headers, auth, shown, query, (username) => `base64(${username}:${shown})`);
}

/** Attaches the credential to `headers` (in place) or the query; returns the query and the forms of it to redact. */
export function withCredential(
  headers: Record<string, string | string[]>,
  auth: ConnectionAuth,
  secret: string | null,
  query: string,
): { needles: Buffer[]; query: string } {
  if (secret === null) return { needles: redactionNeedles([]), query };
  const forms: string[] = [secret];
  const upstreamQuery = placeCredential(headers, auth, secret, query, (username) => {
    const encoded = Buffer.from(`${username}:${secret}`).toString("base64");
    forms.push(encoded);
    return encoded;
  });
  if (auth.type === "query") forms.push(new URLSearchParams({ v: secret }).toString().slice(2));
  return { needles: redactionNeedles(forms), query: upstreamQuery };
}
