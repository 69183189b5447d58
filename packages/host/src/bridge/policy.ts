/**
 * The bridge's request checks: is the request target a plain path, is the method one the bridge
 * forwards, does a connection's policy allow the method on the path, and may the upstream's
 * address be called.
 *
 * Threat model: the method and target come from a sandbox running model-chosen code, which will
 * try to reach upstream paths its policy does not allow. The classic way is a target that the
 * host reads one way and the upstream (or a proxy in front of it) another: `..` segments in any
 * spelling (`%2e%2e`, `.%2E`, `..;`, overlong UTF-8, full-width dots), encoded or back slashes that
 * an upstream turns into separators, double encoding that an upstream decodes twice, and control
 * characters that split requests. `checkBridgePath` refuses every such target outright instead of
 * normalizing it, so the path the policy judges is byte for byte the path the upstream receives,
 * and no spelling of it can mean a different path after any common decoding. Patterns are matched
 * segment by segment on that raw path; a literal segment must match exactly, so an unusual
 * spelling of an allowed path fails closed.
 */

import {
  AppError,
  type ConnectionPolicy,
  type ConnectionRateLimit,
  FORBIDDEN_METHODS,
  type PolicyRule,
  pathPatternProblem,
} from "@paddock/protocol";
import { type AddressClass, classifyAddress } from "../egress/address-policy.ts";

/** The longest request target (path and query) the bridge accepts, in bytes. */
export const MAX_TARGET_BYTES = 4096;

/** A checked request target: the path as received, and the query without its '?' ("" when none). */
export interface BridgeTarget {
  path: string;
  query: string;
}

const HEX = /^[0-9A-Fa-f]{2}$/;
const utf8 = new TextDecoder("utf-8", { fatal: true });

const reject = (message: string): AppError => new AppError("path_rejected", `The path is not allowed: ${message}.`);

/**
 * Checks the raw request target after `/bridge/<connection>` (a path and an optional `?query`)
 * and splits it. Throws `path_rejected` with the reason for: an empty target or one not starting
 * with '/'; more than MAX_TARGET_BYTES bytes; anything but printable ASCII (control characters,
 * NUL, spaces, raw non-ASCII); a raw backslash or '#'; an invalid percent-escape; and, in the path,
 * `%25` (double encoding), escapes of '/', '\\' or control characters, empty segments (`//`, a
 * trailing slash is allowed), escapes that are not UTF-8, and segments that are '.' or '..' in any
 * spelling. Other percent-escapes are kept as they are: the upstream receives the same bytes.
 *
 * The query is not matched by policies, so `%25` is allowed there (a literal '%' in a value).
 *
 * @example
 * checkBridgePath("/repos/a/b/issues?state=open") // { path: "/repos/a/b/issues", query: "state=open" }
 * checkBridgePath("/repos/%2e%2e/admin")         // throws AppError("path_rejected")
 */
export function checkBridgePath(raw: string): BridgeTarget {
  if (raw === "") throw reject("it is empty");
  if (Buffer.byteLength(raw) > MAX_TARGET_BYTES) throw reject(`it is longer than ${MAX_TARGET_BYTES} bytes`);
  if (!raw.startsWith("/")) throw reject("it does not start with '/'");
  checkCharacters(raw);
  const mark = raw.indexOf("?");
  const path = mark < 0 ? raw : raw.slice(0, mark);
  const query = mark < 0 ? "" : raw.slice(mark + 1);
  checkEscapes(path, true);
  checkEscapes(query, false);
  const segments = path.slice(1).split("/");
  for (const [i, segment] of segments.entries()) {
    if (segment === "") {
      if (i < segments.length - 1) throw reject("it has an empty segment ('//')");
      continue;
    }
    checkSegment(segment);
  }
  return { path, query };
}

function checkCharacters(raw: string): void {
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c === 0) throw reject("it contains NUL");
    if (c < 0x20 || c === 0x7f) throw reject("it contains a control character");
    if (c === 0x20) throw reject("it contains a space (percent-encode it)");
    if (c > 0x7e) throw reject("it contains a non-ASCII character (percent-encode it as UTF-8)");
    if (c === 0x5c) throw reject("it contains a backslash");
    if (c === 0x23) throw reject("it contains '#'");
  }
}

/** Checks that every '%' starts a valid escape; in the path, also that none is refused. */
function checkEscapes(text: string, inPath: boolean): void {
  for (let i = text.indexOf("%"); i >= 0; i = text.indexOf("%", i + 1)) {
    const hex = text.slice(i + 1, i + 3);
    if (!HEX.test(hex)) throw reject(`'${text.slice(i, i + 3)}' is not a valid percent-escape`);
    if (!inPath) continue;
    const byte = Number.parseInt(hex, 16);
    if (byte === 0x25) throw reject("it contains '%25' (double encoding)");
    if (byte === 0x2f || byte === 0x5c) throw reject("it contains an encoded slash or backslash");
    if (byte < 0x20 || byte === 0x7f) throw reject("it contains an encoded control character");
  }
}

/**
 * Refuses a segment that some upstream could read as '.' or '..' or as holding a separator:
 * after decoding its escapes (which must be UTF-8, so overlong forms fail), taking the part before
 * any ';' parameter (`..;x`) and applying Unicode compatibility normalization (full-width dots and
 * slashes), it may not consist only of dots and spaces, nor contain '/' or '\\'.
 */
function checkSegment(segment: string): void {
  let decoded = segment;
  if (segment.includes("%")) {
    const bytes = Buffer.from(
      segment.replace(/%([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(Number.parseInt(h, 16))),
      "latin1",
    );
    try {
      decoded = utf8.decode(bytes);
    } catch {
      throw reject("it has percent-escapes that are not UTF-8");
    }
  }
  const normalized = decoded.normalize("NFKC");
  if (/[/\\]/.test(normalized)) throw reject("it has a segment that normalizes to a slash or backslash");
  for (const form of [decoded, normalized]) {
    const name = form.split(";")[0] ?? "";
    if (/^[. ]*$/.test(name) && name.includes(".")) throw reject("it has a '.' or '..' segment");
  }
}

/**
 * True when the bridge may forward `method`: an HTTP token, and never TRACE, TRACK or CONNECT
 * (in any case).
 */
export function allowedMethod(method: string): boolean {
  if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$/.test(method)) return false;
  return !FORBIDDEN_METHODS.includes(method.toUpperCase());
}

type Segment = { kind: "literal"; text: string } | { kind: "one" };

/** A rule ready for matching: its methods as a set, its pattern as segments. */
export interface CompiledRule {
  rule: PolicyRule;
  methods: ReadonlySet<string>;
  segments: readonly Segment[];
  /** The pattern ends in `**`: any number of further segments. */
  rest: boolean;
}

/** A connection's policy ready for matching. */
export interface CompiledPolicy {
  rules: readonly CompiledRule[];
  rateLimit: ConnectionRateLimit | null;
}

const upperEscapes = (text: string) =>
  text.includes("%") ? text.replace(/%[0-9a-f]{2}/gi, (e) => e.toUpperCase()) : text;

/** Compiles a policy's patterns once. Throws TypeError on a pattern the schema would refuse. */
export function compilePolicy(policy: ConnectionPolicy): CompiledPolicy {
  const rules = policy.allow.map((rule): CompiledRule => {
    const problem = pathPatternProblem(rule.path);
    if (problem) throw new TypeError(`invalid path pattern ${JSON.stringify(rule.path)}: ${problem}`);
    const parts = rule.path.slice(1).split("/");
    const rest = parts[parts.length - 1] === "**";
    if (rest) parts.pop();
    const segments = parts.map(
      (p): Segment => (p === "*" ? { kind: "one" } : { kind: "literal", text: upperEscapes(p) }),
    );
    return { rule, methods: new Set(rule.methods), segments, rest };
  });
  return { rules, rateLimit: policy.rate_limit ?? null };
}

/**
 * The first rule that allows `method` on `path`, or null. `path` is a path `checkBridgePath`
 * accepted. Methods match exactly: GET does not imply HEAD (allow HEAD where it is wanted), and
 * methods are case-sensitive as HTTP defines them. Patterns match segment by segment: a literal
 * segment matches the same text (percent-escapes compared without regard to hex case), `*` any
 * one non-empty segment (encoded or not), and a final `**` any number of further segments,
 * including none (`/repos/**` matches `/repos`, `/repos/` and `/repos/a/b`). The returned rule's
 * `path` is the template audit events record.
 *
 * @example
 * const policy = compilePolicy({ allow: [{ methods: ["GET"], path: "/repos/**" }] });
 * matchRule(policy, "GET", "/repos/acme/app/issues")?.path // "/repos/**"
 * matchRule(policy, "POST", "/repos/acme/app/issues")       // null
 */
export function matchRule(policy: CompiledPolicy, method: string, path: string): PolicyRule | null {
  if (!path.startsWith("/") || !allowedMethod(method)) return null;
  const segments = path.slice(1).split("/").map(upperEscapes);
  for (const rule of policy.rules) {
    if (rule.methods.has(method) && matchSegments(rule, segments)) return rule.rule;
  }
  return null;
}

function matchSegments(rule: CompiledRule, segments: readonly string[]): boolean {
  const pattern = rule.segments;
  if (rule.rest ? segments.length < pattern.length : segments.length !== pattern.length) return false;
  return pattern.every((p, i) => {
    const segment = segments[i] ?? "";
    return p.kind === "one" ? segment !== "" : segment === p.text;
  });
}

/**
 * Why the bridge may not call `address` (a resolved IP address) for a connection, or null when it
 * may. Public unicast addresses are always allowed. An `internal` connection may also reach
 * private, loopback and CGNAT addresses; link-local addresses (where cloud metadata services
 * answer), the metadata services' other addresses, multicast, unspecified and reserved ones are
 * refused for every connection.
 */
export function upstreamAddressRefusal(address: string, internal: boolean): AddressClass | "metadata" | null {
  const kind = classifyAddress(address);
  if (kind === null) return null;
  if (isMetadataAddress(address)) return "metadata";
  if (internal && (kind === "private" || kind === "loopback" || kind === "cgnat")) return null;
  return kind;
}

// Cloud metadata services outside link-local space (AWS over IPv6, Alibaba Cloud), in the URL
// parser's canonical spelling, with their IPv4-mapped and NAT64 forms.
const METADATA = new Set(["[fd00:ec2::254]", "100.100.100.200", "[::ffff:6464:64c8]", "[64:ff9b::6464:64c8]"]);

function isMetadataAddress(address: string): boolean {
  try {
    return METADATA.has(new URL(`http://${address.includes(":") ? `[${address}]` : address}/`).hostname);
  } catch {
    return false;
  }
}
