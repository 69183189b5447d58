/**
 * Connections of the host bridge, as the API accepts and returns them. A connection is a named
 * upstream (a base URL), the secret the host attaches to every call and how it attaches it, and a
 * policy: which methods and paths a sandbox may call, and how often. A sandbox calls
 * `/bridge/<connection>/<path>` and never sees the secret. An agent's bridge policy names the
 * connections its runs may use.
 *
 * These schemas are the first line of defence of the bridge: they accept only base URLs without
 * credentials, queries or fragments, header names the host will not confuse with framing
 * headers, and path patterns with no traversal or encoded separators, so a pattern means the same
 * thing to the host and to the upstream.
 */
import { z } from "zod";
import { ApprovalRule, approvalRuleFields, autoDenyWithinTimeout } from "./approvals.ts";

/** A connection's name: lower case, URL-safe, as it appears in `/bridge/<name>/…`. */
export const ConnectionName = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[a-z0-9][a-z0-9_-]*$/, "lower-case letters, digits, '-' and '_', starting with a letter or digit");
export type ConnectionName = z.infer<typeof ConnectionName>;

export const SecretRef = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, "a secret name: letters, digits, '_', '.' and '-', at most 64");

/** Methods the bridge never forwards: they echo requests (TRACE, TRACK) or open tunnels (CONNECT). */
export const FORBIDDEN_METHODS: readonly string[] = ["TRACE", "TRACK", "CONNECT"];

const Method = z
  .string()
  .regex(/^[A-Z][A-Z0-9_-]{0,31}$/, "an upper-case HTTP method such as GET")
  .refine((m) => !FORBIDDEN_METHODS.includes(m), "TRACE, TRACK and CONNECT are never forwarded");

/** Header names the bridge sets or strips itself: framing, hop-by-hop, host and cookies. */
export const RESERVED_HEADERS: readonly string[] = [
  "connection",
  "content-length",
  "cookie",
  "host",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
];

export const HeaderName = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, "an HTTP header name")
  .refine((h) => !RESERVED_HEADERS.includes(h.toLowerCase()), "a header the bridge manages itself");

/** How the connection's secret is attached to each forwarded call. */
export const ConnectionAuth = z
  .discriminatedUnion("type", [
    /** `Authorization: Bearer <secret>`. */
    z.object({ type: z.literal("bearer") }).strict(),
    /** `<name>: <prefix><secret>`; the prefix is taken as written (include its space). */
    z
      .object({
        type: z.literal("header"),
        name: HeaderName,
        prefix: z
          .string()
          .max(64)
          .regex(/^[\x20-\x7e]*$/, "printable ASCII")
          .optional(),
      })
      .strict(),
    /** `Authorization: Basic base64(<username>:<secret>)`. */
    z
      .object({
        type: z.literal("basic"),
        username: z
          .string()
          .min(1)
          .max(256)
          // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point.
          .regex(/^[^\x00-\x1f\x7f:]+$/, "no ':' or control characters"),
      })
      .strict(),
    /** `?<param>=<secret>` on the upstream URL (replacing any the caller sent). */
    z
      .object({
        type: z.literal("query"),
        param: z.string().regex(/^[A-Za-z0-9_.~-]{1,64}$/, "letters, digits, '_', '.', '~' and '-'"),
      })
      .strict(),
    /** Nothing attached: an upstream that needs no credential. */
    z.object({ type: z.literal("none") }).strict(),
    /**
     * `Authorization: Bearer <access token>` of the run's end user's account at the OAuth app
     * `app` (the host refreshes it); no secret.
     */
    z.object({ type: z.literal("oauth"), app: ConnectionName }).strict(),
  ])
  .meta({ id: "ConnectionAuth" });
export type ConnectionAuth = z.infer<typeof ConnectionAuth>;

/** `auth` as a connection is put: an object, or the short form `"oauth:APP"`. */
export const ConnectionAuthInput = z.preprocess(
  (v) => (typeof v === "string" && v.startsWith("oauth:") ? { type: "oauth", app: v.slice(6) } : v),
  ConnectionAuth,
);

/** Auth types that attach no secret of the tenant's. */
const SECRETLESS: ReadonlySet<string> = new Set(["none", "oauth"]);

const MAX_PATTERN_LENGTH = 1024;
const LITERAL_SEGMENT = /^(?:[A-Za-z0-9\-._~!$&'()+,;=:@]|%[0-9A-Fa-f]{2})+$/;
// Escapes that decode to separators, '%' itself or control characters.
const FORBIDDEN_ESCAPE = /%(?:2[fF]|5[cC]|25|[01][0-9A-Fa-f]|7[fF])/;

/**
 * Why `pattern` is not a valid path pattern, or null when it is. A pattern starts with '/'; its
 * segments are literal text (matched against the path as received), `*` (exactly one non-empty
 * segment) or, as the last segment only, `**` (any number of further segments, including none).
 * Literal segments are unreserved characters, sub-delimiters (except `*`), ':' and '@', or
 * percent-escapes; no '.' or '..' segments, no escapes of '/', '\\', '%' or control characters,
 * and no empty segment except a trailing one (`/items/` ends in an empty segment).
 */
export function pathPatternProblem(pattern: string): string | null {
  if (!pattern.startsWith("/")) return "a path pattern starts with '/'";
  if (pattern.length > MAX_PATTERN_LENGTH) return `at most ${MAX_PATTERN_LENGTH} characters`;
  const segments = pattern.slice(1).split("/");
  for (const [i, segment] of segments.entries()) {
    const last = i === segments.length - 1;
    if (segment === "**") {
      if (!last) return "'**' may only be the last segment";
      continue;
    }
    if (segment === "*" || (segment === "" && last)) continue;
    if (segment === "") return "no empty segments ('//')";
    if (!LITERAL_SEGMENT.test(segment)) {
      return `segment '${segment}' has characters a path segment may not hold ('*' only as a whole segment)`;
    }
    if (FORBIDDEN_ESCAPE.test(segment)) return `segment '${segment}' escapes '/', '\\', '%' or a control character`;
    const decoded = decodeSegment(segment);
    if (decoded === null) return `segment '${segment}' has percent-escapes that are not UTF-8`;
    if (decoded === "." || decoded === "..") return "no '.' or '..' segments";
  }
  return null;
}

function decodeSegment(segment: string): string | null {
  try {
    return decodeURIComponent(segment);
  } catch {
    return null;
  }
}

const PathPattern = z
  .string()
  .superRefine((p, ctx) => {
    const problem = pathPatternProblem(p);
    if (problem) ctx.addIssue({ code: "custom", message: problem });
  })
  .meta({ description: "A path pattern: '/' + segments of literal text, '*' (one segment) or a final '**'." });

/**
 * One allow rule: any of `methods` on a path matching `path`. With `approval`, each such call waits
 * for a person to approve it (see approvals.ts) before the host sends it.
 */
export const PolicyRule = z
  .object({
    methods: z
      .array(Method)
      .min(1)
      .max(16)
      .refine((m) => new Set(m).size === m.length, "each method once"),
    path: PathPattern,
    approval: ApprovalRule.optional(),
  })
  .strict()
  .meta({ id: "PolicyRule" });
export type PolicyRule = z.infer<typeof PolicyRule>;

/** At most `requests` calls per `per_s` seconds (a token bucket: bursts up to `requests`). */
export const ConnectionRateLimit = z
  .object({
    requests: z.number().int().min(1).max(1_000_000),
    per_s: z.number().int().min(1).max(86_400),
  })
  .strict()
  .meta({ id: "ConnectionRateLimit" });
export type ConnectionRateLimit = z.infer<typeof ConnectionRateLimit>;

/** What a connection allows: the first rule that matches a call's method and path lets it through. */
export const ConnectionPolicy = z
  .object({
    allow: z.array(PolicyRule).min(1).max(100),
    rate_limit: ConnectionRateLimit.optional(),
  })
  .strict()
  .meta({ id: "ConnectionPolicy" });
export type ConnectionPolicy = z.infer<typeof ConnectionPolicy>;

const MAX_BASE_URL_LENGTH = 2048;

/**
 * Why `raw` is not a valid connection base URL, or null when it is: an absolute http(s) URL with
 * a host, no user name or password, no query and no fragment. A path prefix is allowed.
 */
export function baseUrlProblem(raw: string): string | null {
  if (raw.length > MAX_BASE_URL_LENGTH) return `at most ${MAX_BASE_URL_LENGTH} characters`;
  if (!/^[\x21-\x7e]+$/.test(raw)) return "printable ASCII with no spaces (write non-ASCII host names in punycode)";
  if (!/^https?:\/\//i.test(raw)) return "an http:// or https:// URL";
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return "an absolute URL such as https://api.example.com";
  }
  if (url.hostname === "") return "a URL with a host";
  const authority = raw.slice(raw.indexOf("//") + 2).split(/[/?#\\]/)[0] ?? "";
  if (authority.includes("@") || url.username !== "" || url.password !== "") {
    return "no user name or password in the URL; give the credential as the connection's secret";
  }
  if (raw.includes("?")) return "no query in the base URL";
  if (raw.includes("#")) return "no fragment in the base URL";
  if (raw.includes("\\")) return "no backslashes in the base URL";
  return null;
}

/**
 * The canonical form of a valid base URL: scheme and host lower-cased, default port dropped,
 * path normalized and without a trailing slash (`https://API.example.com/v1/` →
 * `https://api.example.com/v1`). Throws on an invalid one.
 */
export function normalizeBaseUrl(raw: string): string {
  const problem = baseUrlProblem(raw);
  if (problem) throw new TypeError(`invalid base URL: ${problem}`);
  const url = new URL(raw);
  return `${url.protocol}//${url.host}${url.pathname.replace(/\/+$/, "")}`;
}

export const BaseUrl = z
  .string()
  .superRefine((u, ctx) => {
    const problem = baseUrlProblem(u);
    if (problem) ctx.addIssue({ code: "custom", message: problem });
  })
  .meta({ description: "The upstream's base URL (http or https); the call's path is appended to it.", format: "uri" });

const MiB = 1024 * 1024;

/** Defaults of a connection's optional fields. */
export const CONNECTION_DEFAULTS = {
  internal: false,
  timeout_ms: 30_000,
  max_response_bytes: 32 * MiB,
  max_request_bytes: 10 * MiB,
} as const;

const connectionFields = {
  base_url: BaseUrl,
  auth: ConnectionAuth,
  policy: ConnectionPolicy,
  /**
   * True lets the upstream resolve to private or loopback addresses (an internal service).
   * Link-local and cloud metadata addresses are refused either way.
   */
  internal: z.boolean().default(CONNECTION_DEFAULTS.internal),
  /** The whole call: connect, send, and the complete answer. */
  timeout_ms: z.number().int().min(100).max(300_000).default(CONNECTION_DEFAULTS.timeout_ms),
  max_response_bytes: z
    .number()
    .int()
    .min(1)
    .max(256 * MiB)
    .default(CONNECTION_DEFAULTS.max_response_bytes),
  max_request_bytes: z
    .number()
    .int()
    .min(0)
    .max(256 * MiB)
    .default(CONNECTION_DEFAULTS.max_request_bytes),
};

/** A secret is named exactly when the auth attaches one (connections and MCP servers alike). */
export function secretFitsAuth(c: { auth: ConnectionAuth; secret?: string | undefined }, ctx: z.RefinementCtx): void {
  if (!SECRETLESS.has(c.auth.type) && c.secret === undefined) {
    ctx.addIssue({ code: "custom", path: ["secret"], message: `auth '${c.auth.type}' needs a secret` });
  }
  if (SECRETLESS.has(c.auth.type) && c.secret !== undefined) {
    ctx.addIssue({ code: "custom", path: ["auth"], message: `auth '${c.auth.type}' attaches no secret` });
  }
}

/** The body of `PUT /v1/connections/{name}`: creates the connection or replaces it whole. */
export const ConnectionPut = z
  .object({
    ...connectionFields,
    auth: ConnectionAuthInput,
    /** The name of the secret to attach; required unless auth is "none" or "oauth". */
    secret: SecretRef.optional(),
  })
  .strict()
  .superRefine(secretFitsAuth)
  .meta({ id: "ConnectionPut" });
export type ConnectionPut = z.infer<typeof ConnectionPut>;
export type ConnectionPutInput = z.input<typeof ConnectionPut>;

/** A connection as the API returns it: the secret's name only, never its value. */
export const Connection = z
  .object({
    name: z.string(),
    ...connectionFields,
    base_url: z.string(),
    secret: z.string().nullable(),
    created_at: z.string(),
    updated_at: z.string(),
  })
  .meta({ id: "Connection" });
export type Connection = z.infer<typeof Connection>;

/** An agent a run may start as a child run: its name, or its name and the approval each start needs. */
export const AgentCallEntry = z.union([
  ConnectionName,
  z.object({ name: ConnectionName, approval: ApprovalRule }).strict().meta({ id: "AgentCallApproval" }),
]);
export type AgentCallEntry = z.infer<typeof AgentCallEntry>;

/** The name an agents entry allows. */
export const agentCallName = (entry: AgentCallEntry): string => (typeof entry === "string" ? entry : entry.name);

/**
 * An MCP server's name: a connection name without "__", which separates the server from the tool
 * in the names a run's MCP endpoint offers (`SERVER__TOOL`), and not ending in "_" (`gh_` would
 * offer `gh___x`, which reads as the tool `_x` of `gh`).
 */
export const McpServerName = ConnectionName.refine(
  (n) => !n.includes("__") && !n.endsWith("_"),
  "no '__' and no '_' at the end (they would blur where the server's name ends in SERVER__TOOL)",
);
export type McpServerName = z.infer<typeof McpServerName>;

/** A tool's name, or a glob of names where `*` stands for any run of characters (`search_*`). */
export const McpToolGlob = z
  .string()
  .regex(/^[A-Za-z0-9_.*/-]{1,128}$/, "a tool name or a glob: letters, digits, '_', '-', '.', '/' and '*'");

/** Which tools of an MCP server a person must approve each call of, and how. */
export const McpApproval = z
  .object({ tools: z.array(McpToolGlob).min(1).max(64), ...approvalRuleFields })
  .strict()
  .refine(...autoDenyWithinTimeout)
  .meta({ id: "McpApproval" });
export type McpApproval = z.infer<typeof McpApproval>;

/** One MCP server an agent's runs may use: which of its tools, and whether its resources and prompts. */
export const McpPolicyEntry = z
  .object({
    server: McpServerName,
    tools: z.array(McpToolGlob).max(256).default([]),
    approval: McpApproval.optional(),
    resources: z.boolean().default(false),
    prompts: z.boolean().default(false),
  })
  .strict()
  .meta({ id: "McpPolicyEntry" });
export type McpPolicyEntry = z.infer<typeof McpPolicyEntry>;

/** An agent's bridge policy: the connections its runs may call. */
export const AgentPolicy = z
  .object({
    connections: z
      .array(ConnectionName)
      .max(64)
      .refine((c) => new Set(c).size === c.length, "each connection once")
      .default([]),
    /**
     * Agents (of the same tenant, by name) its runs may start as child runs; an entry
     * `{name, approval}` makes each start wait for a person's approval.
     */
    agents: z
      .array(AgentCallEntry)
      .max(64)
      .refine((a) => new Set(a.map(agentCallName)).size === a.length, "each agent once")
      .optional(),
    /** MCP servers (by name) and the tools of each its runs see at `$PADDOCK_BRIDGE_URL/mcp`. */
    mcp: z
      .array(McpPolicyEntry)
      .max(32)
      .refine((m) => new Set(m.map((e) => e.server)).size === m.length, "each server once")
      .optional(),
  })
  .strict()
  .meta({ id: "AgentPolicy" });
export type AgentPolicy = z.infer<typeof AgentPolicy>;
