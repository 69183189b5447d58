/**
 * The egress proxy of environment edit sessions: an HTTP forward proxy on a Unix socket that
 * the host bind-mounts into the sandbox, the sandbox's only way to the network.
 *
 * Threat model: the sandbox is fully controlled by a hostile user who can send any bytes on the
 * socket, open many connections, stall, and choose (or register) DNS names. The proxy must let
 * through only requests to allowlisted host names on allowed ports, and must never become a way
 * into the host, its network or the cloud metadata service: IP-literal targets in any spelling
 * are refused, every resolved address must be public unicast, and the connection goes to the
 * very address that was checked (no second lookup, so DNS rebinding cannot swap it). It strips
 * hop-by-hop and proxy credential headers, caps request heads, connection count, connect and
 * idle time, and records every request (never headers or bodies) for the audit log. The socket
 * is world-connectable (mode 0666); the folder holding it is what limits who can reach it.
 */
import { lookup } from "node:dns/promises";
import { chmod, lstat, unlink } from "node:fs/promises";
import {
  type ClientRequest,
  createServer as createHttpServer,
  type Server as HttpServer,
  request as httpRequest,
  type IncomingMessage,
  type ServerResponse,
  STATUS_CODES,
} from "node:http";
import { BlockList, isIP, connect as netConnect, type Socket } from "node:net";
import { pipeline } from "node:stream";
import {
  classifyAddress,
  compileAllowlist,
  type HostAllowlist,
  isIpLiteralHost,
  normalizeHostName,
} from "./address-policy.ts";

/** One request through the proxy, as stored in the audit log. Never carries headers or bodies. */
export interface EgressRecord {
  /** ISO 8601 time at which the request head was received. */
  time: string;
  /** HTTP method (`CONNECT` for tunnels); empty when the request could not be parsed. */
  method: string;
  /** Normalized target host; empty when the request could not be parsed. */
  host: string;
  /** Target port; 0 when the request could not be parsed. */
  port: number;
  /**
   * `refused` when the proxy turned the request away itself (malformed, policy, limits);
   * `allowed` when it passed policy, even if the origin then failed (status 502/504).
   */
  decision: "allowed" | "refused";
  reason?: string;
  /** Status sent to the sandbox: the origin's, 200 for an established tunnel, or the proxy's own. */
  status?: number;
  /** Body or tunnel bytes from the origin to the sandbox. */
  bytesIn: number;
  /** Body or tunnel bytes from the sandbox to the origin. */
  bytesOut: number;
  /** Milliseconds from the request head to the end of the exchange. */
  ms: number;
}

export interface EgressProxyOptions {
  /** Path of the Unix socket to listen on. Its folder must be reachable only by the sandbox. */
  socketPath: string;
  /** Host patterns: `deb.debian.org` (exactly that name) or `*.example.org` (subdomains only). */
  allow: readonly string[];
  /** Called once per request, allowed or refused. Exceptions it throws are ignored. */
  onRecord: (record: EgressRecord) => void;
  /**
   * Resolves a host name to IP addresses. Default: the system resolver asked for the absolute
   * name (`host.`, so search domains are never appended; /etc/hosts entries do not match it),
   * every address it returns.
   */
  resolve?: (host: string) => Promise<string[]>;
  /**
   * Addresses or CIDR ranges (`10.1.2.0/24`, `fd00::/8`) the host's operator vouches for, such as
   * an internal package mirror: a name resolving there passes although the address is not
   * public. Everything else non-public stays refused.
   */
  trustedAddresses?: readonly string[];
  /** Ports that CONNECT and plain HTTP may target. Default 80 and 443. */
  allowedPorts?: readonly number[];
  /** Budget for DNS lookup plus TCP connect to the origin. Default 10 s. */
  connectTimeoutMs?: number;
  /** A connection or tunnel with no traffic for this long is closed. Default 60 s. */
  idleTimeoutMs?: number;
  /** Time a client has to send a complete request head. Default 30 s. */
  headersTimeoutMs?: number;
  /** Concurrent client connections; further ones are dropped. Default 128. */
  maxConnections?: number;
}

/**
 * Test-only overrides, passed as the constructor's second argument so that no configuration
 * object built for production can carry them.
 */
export interface EgressProxyTestOverrides {
  /**
   * Lets requests reach loopback, private and other non-public addresses so that tests can use
   * stand-in origins on 127.0.0.1. The allowlist, port and IP-literal rules still apply.
   * Never set this outside tests.
   */
  allowPrivateAddresses: true;
}

/** Largest accepted request head (request line plus headers), in bytes. */
export const MAX_HEADER_BYTES = 32 * 1024;

const DEFAULT_PORTS = [80, 443] as const;
const HOP_BY_HOP = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
];

type Failure = { ok: false; status: number; decision: EgressRecord["decision"]; reason: string };
type Opened = { ok: true; socket: Socket };

class TimeoutError extends Error {}

function printable(value: string): string {
  return value.slice(0, 255).replace(/[^\x21-\x7e]/g, "?");
}

function rawResponse(status: number, body: string): string {
  return (
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "Error"}\r\n` +
    "Content-Type: text/plain; charset=utf-8\r\n" +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    "Connection: close\r\n\r\n" +
    body
  );
}

function describe(target: string, failure: Failure): string {
  const verb = failure.status >= 500 ? "could not reach" : "refused";
  return target ? `egress proxy ${verb} ${target}: ${failure.reason}\n` : `egress proxy: ${failure.reason}\n`;
}

/** Splits `host:port` (or `[v6]:port`). `defaultPort` applies when the port is absent or empty. */
function splitAuthority(authority: string, defaultPort: number | null): { host: string; port: number } | null {
  let host: string;
  let rest: string;
  if (authority.startsWith("[")) {
    const end = authority.indexOf("]");
    if (end < 0) return null;
    host = authority.slice(0, end + 1);
    rest = authority.slice(end + 1);
  } else {
    const colon = authority.lastIndexOf(":");
    host = colon < 0 ? authority : authority.slice(0, colon);
    rest = colon < 0 ? "" : authority.slice(colon);
  }
  if (host.length === 0) return null;
  if (rest === "" || rest === ":") return defaultPort === null ? null : { host, port: defaultPort };
  const digits = /^:([0-9]{1,5})$/.exec(rest)?.[1];
  const port = digits === undefined ? 0 : Number(digits);
  if (port < 1 || port > 65535) return null;
  return { host, port };
}

/** Parses an absolute-form `http://` target into host, port and origin-form path. */
function parseAbsoluteForm(url: string): { host: string; port: number; path: string } | string {
  if (url.startsWith("/") || url === "*") return "not a proxy request (origin-form target)";
  if (/^https:\/\//i.test(url)) return "https:// targets must use CONNECT";
  const match = /^http:\/\/([^/?#]*)([/?][^#]*)?$/i.exec(url);
  if (!match) return "unsupported request target";
  const authority = match[1] ?? "";
  if (authority.includes("@")) return "credentials in the request target";
  const hostPort = splitAuthority(authority, 80);
  if (!hostPort) return "invalid authority in the request target";
  const rawPath = match[2] ?? "/";
  if (!/^[\x21-\x7e]*$/.test(rawPath)) return "invalid characters in the request target";
  return { ...hostPort, path: rawPath.startsWith("?") ? `/${rawPath}` : rawPath };
}

/** Drops hop-by-hop headers, those named in `Connection`, and any listed in `also`. */
function endToEndHeaders(raw: readonly string[], also: readonly string[] = []): string[] {
  const drop = new Set([...HOP_BY_HOP, ...also]);
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i]?.toLowerCase() !== "connection") continue;
    for (const token of (raw[i + 1] ?? "").split(",")) drop.add(token.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] ?? "";
    if (!drop.has(name.toLowerCase())) out.push(name, raw[i + 1] ?? "");
  }
  return out;
}

async function systemResolve(host: string): Promise<string[]> {
  // The trailing dot makes the name absolute, so resolver search domains are never appended.
  const results = await lookup(`${host}.`, { all: true, order: "verbatim" });
  return results.map((r) => r.address);
}

/** Parses `address` or `address/prefix` entries; throws on anything else. */
export function trustedList(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const [address = "", prefix, extra] = entry.split("/");
    const family = isIP(address);
    const bits = prefix === undefined ? (family === 6 ? 128 : 32) : Number(prefix);
    if (
      family === 0 ||
      extra !== undefined ||
      !Number.isInteger(bits) ||
      bits < 0 ||
      bits > (family === 6 ? 128 : 32)
    ) {
      throw new RangeError(`not an address or CIDR range: ${JSON.stringify(entry)}`);
    }
    list.addSubnet(address, bits, family === 6 ? "ipv6" : "ipv4");
  }
  return list;
}

export class EgressProxy {
  readonly socketPath: string;
  readonly #allowlist: HostAllowlist;
  readonly #onRecord: (record: EgressRecord) => void;
  readonly #resolve: (host: string) => Promise<string[]>;
  readonly #ports: ReadonlySet<number>;
  readonly #connectTimeoutMs: number;
  readonly #idleTimeoutMs: number;
  readonly #headersTimeoutMs: number;
  readonly #maxConnections: number;
  readonly #allowPrivate: boolean;
  readonly #trusted: BlockList;
  #server: HttpServer | undefined;
  #closing: Promise<void> | undefined;
  /** Every open socket, client side and origin side, so close() can end them all. */
  readonly #sockets = new Set<Socket>();
  /** Client sockets with an exchange in progress. */
  readonly #busy = new Set<Socket>();

  constructor(options: EgressProxyOptions, testOnly?: EgressProxyTestOverrides) {
    this.socketPath = options.socketPath;
    this.#allowlist = compileAllowlist(options.allow);
    this.#onRecord = options.onRecord;
    this.#resolve = options.resolve ?? systemResolve;
    const ports = options.allowedPorts ?? DEFAULT_PORTS;
    for (const port of ports) {
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`invalid egress port: ${port}`);
    }
    this.#ports = new Set(ports);
    this.#connectTimeoutMs = positive(options.connectTimeoutMs, 10_000, "connectTimeoutMs");
    this.#idleTimeoutMs = positive(options.idleTimeoutMs, 60_000, "idleTimeoutMs");
    this.#headersTimeoutMs = positive(options.headersTimeoutMs, 30_000, "headersTimeoutMs");
    this.#maxConnections = positive(options.maxConnections, 128, "maxConnections");
    this.#allowPrivate = testOnly?.allowPrivateAddresses === true;
    this.#trusted = trustedList(options.trustedAddresses ?? []);
  }

  /** Listens on the Unix socket (mode 0666). A stale socket file left by a dead process is replaced. */
  async start(): Promise<void> {
    if (this.#server) throw new Error("egress proxy already started");
    const server = createHttpServer({
      maxHeaderSize: MAX_HEADER_BYTES,
      requireHostHeader: false,
      requestTimeout: 0,
      headersTimeout: this.#headersTimeoutMs,
      keepAliveTimeout: this.#idleTimeoutMs,
      keepAliveTimeoutBuffer: 0,
      connectionsCheckingInterval: Math.min(1000, this.#headersTimeoutMs),
      shouldUpgradeCallback: () => false,
    });
    server.timeout = this.#idleTimeoutMs;
    server.maxConnections = this.#maxConnections;
    server.on("connection", (socket: Socket) => this.#onConnection(socket));
    server.on("drop", () => {
      this.#record({ time: new Date().toISOString(), method: "", host: "", port: 0 }, performance.now(), {
        decision: "refused",
        reason: "too many concurrent connections",
      });
    });
    server.on("request", (req: IncomingMessage, res: ServerResponse) => {
      this.#onRequest(req, res).catch(() => res.destroy());
    });
    server.on("connect", (req: IncomingMessage, socket: Socket, head: Buffer) => {
      this.#onConnect(req, socket, head).catch(() => socket.destroy());
    });
    server.on("clientError", (err: Error, socket: Socket) => this.#onClientError(err, socket));
    try {
      await listen(server, this.socketPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE" || !(await removeStaleSocket(this.socketPath)))
        throw err;
      await listen(server, this.socketPath);
    }
    server.on("error", () => {});
    try {
      await chmod(this.socketPath, 0o666);
    } catch (err) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      throw err;
    }
    this.#server = server;
  }

  /** Stops listening and ends every open connection and tunnel. */
  close(): Promise<void> {
    const server = this.#server;
    if (!server) return Promise.resolve();
    this.#closing ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const socket of this.#sockets) socket.destroy();
    });
    return this.#closing;
  }

  #track(socket: Socket): void {
    this.#sockets.add(socket);
    socket.once("close", () => {
      this.#sockets.delete(socket);
      this.#busy.delete(socket);
    });
  }

  #onConnection(socket: Socket): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    this.#track(socket);
  }

  #record(
    base: { time: string; method: string; host: string; port: number },
    started: number,
    outcome: {
      decision: EgressRecord["decision"];
      reason?: string;
      status?: number;
      bytesIn?: number;
      bytesOut?: number;
    },
  ): void {
    const record: EgressRecord = {
      time: base.time,
      method: base.method,
      host: base.host,
      port: base.port,
      decision: outcome.decision,
      bytesIn: outcome.bytesIn ?? 0,
      bytesOut: outcome.bytesOut ?? 0,
      ms: Math.round((performance.now() - started) * 1000) / 1000,
    };
    if (outcome.reason !== undefined) record.reason = outcome.reason;
    if (outcome.status !== undefined) record.status = outcome.status;
    // A failing audit sink must not take the proxy down, whether it throws or rejects.
    try {
      const result: unknown = this.#onRecord(record);
      if (result instanceof Promise) result.catch(() => {});
    } catch {}
  }

  #onClientError(err: Error, socket: Socket): void {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ECONNRESET" || code === "EPIPE" || socket.destroyed) {
      socket.destroy();
      return;
    }
    let status = 400;
    let reason = "malformed request";
    if (code === "HPE_HEADER_OVERFLOW") {
      status = 431;
      reason = `request head larger than ${MAX_HEADER_BYTES} bytes`;
    } else if (code === "ERR_HTTP_REQUEST_TIMEOUT") {
      status = 408;
      reason = "request head not received in time";
    }
    this.#record({ time: new Date().toISOString(), method: "", host: "", port: 0 }, performance.now(), {
      decision: "refused",
      reason,
      status,
    });
    if (socket.writable && !this.#busy.has(socket)) {
      socket.end(rawResponse(status, `egress proxy: ${reason}\n`), () => socket.destroy());
    } else {
      socket.destroy();
    }
  }

  /**
   * Applies the policy to `rawHost:port`, resolves it, checks every address and connects to one
   * of the checked addresses within the connect budget.
   */
  async #open(rawHost: string, port: number, host: string | null): Promise<Opened | Failure> {
    const refuse = (status: number, reason: string): Failure => ({ ok: false, status, decision: "refused", reason });
    const fail = (status: number, reason: string): Failure => ({ ok: false, status, decision: "allowed", reason });
    if (isIpLiteralHost(rawHost)) return refuse(403, "IP-literal hosts are not allowed");
    if (host === null) return refuse(400, "invalid host name");
    if (!this.#allowlist.matches(host)) return refuse(403, "host is not in the egress allowlist");
    if (!this.#ports.has(port)) return refuse(403, `port ${port} is not allowed`);

    const deadline = performance.now() + this.#connectTimeoutMs;
    let addresses: string[];
    try {
      addresses = await withDeadline(this.#resolve(host), deadline);
    } catch (err) {
      return err instanceof TimeoutError ? fail(504, "DNS lookup timed out") : fail(502, "DNS lookup failed");
    }
    if (this.#closing) return fail(502, "proxy closed");
    if (!Array.isArray(addresses) || addresses.length === 0) return fail(502, "DNS lookup returned no addresses");
    for (const address of addresses) {
      if (typeof address !== "string" || isIP(address) === 0)
        return fail(502, "DNS lookup returned an invalid address");
      if (this.#allowPrivate || this.#trusted.check(address, isIP(address) === 6 ? "ipv6" : "ipv4")) continue;
      const kind = classifyAddress(address);
      if (kind !== null) return refuse(403, `resolves to ${kind} address ${address}`);
    }

    let lastError = "connection failed";
    for (const address of addresses) {
      const remaining = deadline - performance.now();
      if (remaining <= 0) return fail(504, "connect timed out");
      try {
        return { ok: true, socket: await this.#connect(address, port, remaining) };
      } catch (err) {
        if (err instanceof TimeoutError) return fail(504, "connect timed out");
        if (this.#closing) return fail(502, "proxy closed");
        lastError = `connect failed (${(err as NodeJS.ErrnoException).code ?? "error"})`;
      }
    }
    return fail(502, lastError);
  }

  #connect(address: string, port: number, timeoutMs: number): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const socket = netConnect({ host: address, port, allowHalfOpen: true });
      this.#track(socket);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new TimeoutError("connect timed out"));
      }, timeoutMs);
      const onError = (err: Error): void => {
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      };
      const onClose = (): void => onError(new Error("closed before connecting"));
      socket.once("error", onError);
      socket.once("close", onClose);
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.off("error", onError);
        socket.off("close", onClose);
        // Whoever takes the socket adds its own handlers; this one only keeps a late error from
        // becoming an uncaught exception.
        socket.on("error", () => socket.destroy());
        resolve(socket);
      });
    });
  }

  async #onConnect(req: IncomingMessage, client: Socket, head: Buffer): Promise<void> {
    // Hold client bytes until the tunnel exists; nothing reads the socket after the HTTP parser left.
    client.pause();
    client.on("error", () => client.destroy());
    const started = performance.now();
    const time = new Date().toISOString();
    const target = splitAuthority(req.url ?? "", null);
    const base = {
      time,
      method: "CONNECT",
      host: target ? (normalizeHostName(target.host) ?? printable(target.host)) : "",
      port: target?.port ?? 0,
    };
    const reply = (failure: Failure): void => {
      this.#record(base, started, { decision: failure.decision, reason: failure.reason, status: failure.status });
      const label = target ? `${base.host}:${base.port}` : "";
      if (client.writable) client.end(rawResponse(failure.status, describe(label, failure)), () => client.destroy());
      else client.destroy();
    };
    if (!target) {
      reply({ ok: false, status: 400, decision: "refused", reason: "CONNECT target must be host:port" });
      return;
    }
    this.#busy.add(client);
    client.setTimeout(0);
    const opened = await this.#open(target.host, target.port, normalizeHostName(target.host));
    if (!opened.ok) {
      reply(opened);
      return;
    }
    const upstream = opened.socket;
    if (client.destroyed || this.#closing) {
      upstream.destroy();
      client.destroy();
      this.#record(base, started, { decision: "allowed", reason: "client closed before the tunnel opened" });
      return;
    }

    let bytesIn = 0;
    let bytesOut = head.length;
    let reason: string | undefined;
    let open = 2;
    const onClosed = (): void => {
      client.destroy();
      upstream.destroy();
      if (--open === 0) this.#record(base, started, { decision: "allowed", status: 200, bytesIn, bytesOut, reason });
    };
    const onTimeout = (): void => {
      reason ??= "idle timeout";
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.setTimeout(this.#idleTimeoutMs);
      socket.on("timeout", onTimeout);
      socket.on("error", () => socket.destroy());
      socket.once("close", onClosed);
    }
    client.on("data", (chunk: Buffer) => {
      bytesOut += chunk.length;
    });
    upstream.on("data", (chunk: Buffer) => {
      bytesIn += chunk.length;
    });
    client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    if (head.length > 0) upstream.write(head);
    client.pipe(upstream);
    upstream.pipe(client);
  }

  async #onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    const time = new Date().toISOString();
    const client = req.socket;
    const target = parseAbsoluteForm(req.url ?? "");
    const host = typeof target === "string" ? null : normalizeHostName(target.host);
    const base = {
      time,
      method: req.method ?? "",
      host: typeof target === "string" ? "" : (host ?? printable(target.host)),
      port: typeof target === "string" ? 0 : target.port,
    };
    const reply = (failure: Failure): void => {
      this.#record(base, started, { decision: failure.decision, reason: failure.reason, status: failure.status });
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const body = describe(typeof target === "string" ? "" : `${base.host}:${base.port}`, failure);
      res.writeHead(failure.status, {
        "content-type": "text/plain; charset=utf-8",
        "content-length": Buffer.byteLength(body),
        connection: "close",
      });
      res.end(body);
    };
    if (typeof target === "string") {
      reply({ ok: false, status: 400, decision: "refused", reason: target });
      return;
    }
    this.#busy.add(client);
    res.once("close", () => this.#busy.delete(client));
    client.setTimeout(0);
    const opened = await this.#open(target.host, target.port, host);
    if (!opened.ok) {
      reply(opened);
      return;
    }
    const upstream = opened.socket;
    if (res.closed || client.destroyed || this.#closing) {
      upstream.destroy();
      this.#record(base, started, { decision: "allowed", reason: "client closed before the request was sent" });
      return;
    }

    const headers = endToEndHeaders(req.rawHeaders, ["host", "expect"]);
    headers.push("Host", target.port === 80 ? (host ?? "") : `${host}:${target.port}`);
    if (req.headers["transfer-encoding"] !== undefined) headers.push("Transfer-Encoding", "chunked");

    let bytesIn = 0;
    let bytesOut = 0;
    let status: number | undefined;
    let reason: string | undefined;
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      this.#record(base, started, { decision: "allowed", status, reason, bytesIn, bytesOut });
    };

    let upReq: ClientRequest;
    try {
      upReq = httpRequest({
        method: req.method,
        path: target.path,
        headers,
        setHost: false,
        maxHeaderSize: MAX_HEADER_BYTES,
        createConnection: () => upstream,
      });
    } catch {
      upstream.destroy();
      reply({ ok: false, status: 400, decision: "refused", reason: "request cannot be forwarded" });
      return;
    }
    upstream.setTimeout(this.#idleTimeoutMs);
    upstream.on("timeout", () => upReq.destroy(new TimeoutError("origin idle")));
    upReq.on("error", (err) => {
      upstream.destroy();
      if (finished || res.closed) return;
      if (res.headersSent) {
        reason ??= err instanceof TimeoutError ? "origin idle timeout" : "origin connection failed mid-response";
        res.destroy();
        return;
      }
      finished = true;
      reply(
        err instanceof TimeoutError
          ? { ok: false, status: 504, decision: "allowed", reason: "origin did not answer in time" }
          : { ok: false, status: 502, decision: "allowed", reason: "invalid response from origin" },
      );
    });
    upReq.on("response", (upRes: IncomingMessage) => {
      try {
        res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, endToEndHeaders(upRes.rawHeaders));
      } catch {
        finished = true;
        upstream.destroy();
        reply({ ok: false, status: 502, decision: "allowed", reason: "origin response head cannot be forwarded" });
        return;
      }
      status = upRes.statusCode;
      upRes.on("data", (chunk: Buffer) => {
        bytesIn += chunk.length;
      });
      pipeline(upRes, res, (err) => {
        if (err) {
          reason ??= "transfer interrupted";
          upstream.destroy();
        }
      });
    });
    res.once("close", () => {
      if (!res.writableFinished) {
        reason ??= "client closed";
        upReq.destroy();
      }
      upstream.destroy();
      finish();
    });

    req.on("data", (chunk: Buffer) => {
      bytesOut += chunk.length;
    });
    req.pipe(upReq);
  }
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number`);
  return value;
}

function withDeadline<T>(promise: Promise<T>, deadline: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new TimeoutError("deadline")), Math.max(0, deadline - performance.now()));
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

function listen(server: HttpServer, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

/** Removes `path` if it is a Unix socket that nobody listens on. */
async function removeStaleSocket(path: string): Promise<boolean> {
  const stat = await lstat(path).catch(() => null);
  if (!stat?.isSocket()) return false;
  const live = await new Promise<boolean>((resolve) => {
    const probe = netConnect({ path });
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
  if (live) return false;
  await unlink(path);
  return true;
}
