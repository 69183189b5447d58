/**
 * The host's own calls to OAuth providers: discovery documents, token and revocation endpoints.
 *
 * Threat model: the endpoints are written by tenants, so each call is a request the host makes on
 * their word. An address is checked after resolution and pinned (as the bridge's upstreams are),
 * so a name cannot point the host at its own loopback or private networks unless the app is
 * internal (admin only); redirects are not followed; answers are capped and time out. Tokens in
 * answers are returned to the caller only, never logged; errors name the endpoint's status and the
 * provider's OAuth error code, never its body.
 */
import http from "node:http";
import https from "node:https";
import { AddressPinner, PinRefusal, pinnedLookup } from "../bridge/pin.ts";

const MAX_ANSWER_BYTES = 256 * 1024;
/** The whole call, from connecting to the answer's last byte (not just the socket's silences). */
const TIMEOUT_MS = 15_000;

/** A provider's answer: its status and its body parsed as JSON (null when it is not JSON). */
export interface ProviderAnswer {
  status: number;
  json: Record<string, unknown> | null;
}

/** Why a provider could not be called (unreachable, refused address, timeout, too large). */
export class ProviderUnreachable extends Error {}

export class ProviderHttp {
  readonly #pinner: AddressPinner;
  readonly #timeoutMs: number;

  /** `resolve`: name resolution (tests give their own); `timeoutMs`: how long a whole call may take. */
  constructor(resolve?: (host: string) => Promise<string[]>, options: { timeoutMs?: number } = {}) {
    this.#pinner = new AddressPinner(resolve);
    this.#timeoutMs = options.timeoutMs ?? TIMEOUT_MS;
  }

  /** GET `url` for JSON. */
  getJson(url: string, internal: boolean): Promise<ProviderAnswer> {
    return this.#call("GET", url, internal, null, {});
  }

  /** POSTs `form` (application/x-www-form-urlencoded), with HTTP Basic client credentials when given. */
  postForm(
    url: string,
    internal: boolean,
    form: Record<string, string>,
    basic?: { user: string; password: string },
  ): Promise<ProviderAnswer> {
    const headers: Record<string, string> = { "content-type": "application/x-www-form-urlencoded" };
    if (basic) {
      // RFC 6749 2.3.1: both halves form-encoded before the Basic encoding.
      const pair = `${encodeURIComponent(basic.user)}:${encodeURIComponent(basic.password)}`;
      headers.authorization = `Basic ${Buffer.from(pair).toString("base64")}`;
    }
    return this.#call("POST", url, internal, Buffer.from(new URLSearchParams(form).toString()), headers);
  }

  async #call(
    method: string,
    url: string,
    internal: boolean,
    body: Buffer | null,
    headers: Record<string, string>,
  ): Promise<ProviderAnswer> {
    const target = new URL(url);
    let address: string;
    try {
      address = await this.#pinner.pin(target.hostname, internal);
    } catch (err) {
      if (err instanceof PinRefusal) throw new ProviderUnreachable(err.message);
      throw err;
    }
    const secure = target.protocol === "https:";
    return new Promise<ProviderAnswer>((resolve, reject) => {
      const req = (secure ? https : http).request({
        method,
        protocol: target.protocol,
        hostname: target.hostname,
        port: target.port || (secure ? 443 : 80),
        path: `${target.pathname}${target.search}`,
        headers: { accept: "application/json", ...headers, ...(body ? { "content-length": String(body.length) } : {}) },
        lookup: pinnedLookup(address),
        ...(secure ? { servername: target.hostname } : {}),
      });
      // A deadline for the whole answer: one that trickles in never lets a socket timeout fire.
      const deadline = setTimeout(
        () => req.destroy(new ProviderUnreachable(`${target.host} did not answer in time`)),
        this.#timeoutMs,
      );
      req.on("close", () => clearTimeout(deadline));
      req.on("error", (err) =>
        reject(
          err instanceof ProviderUnreachable ? err : new ProviderUnreachable(`${target.host} could not be reached`),
        ),
      );
      req.on("response", (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_ANSWER_BYTES) req.destroy(new ProviderUnreachable(`${target.host} answered too much`));
          else chunks.push(chunk);
        });
        res.on("end", () => {
          let json: Record<string, unknown> | null = null;
          try {
            const parsed: unknown = JSON.parse(Buffer.concat(chunks).toString("utf8"));
            if (parsed && typeof parsed === "object" && !Array.isArray(parsed))
              json = parsed as Record<string, unknown>;
          } catch {
            // Not JSON: some revocation endpoints answer an empty body.
          }
          resolve({ status: res.statusCode ?? 0, json });
        });
        res.on("error", () => reject(new ProviderUnreachable(`${target.host} broke off its answer`)));
      });
      req.end(body ?? undefined);
    });
  }
}
