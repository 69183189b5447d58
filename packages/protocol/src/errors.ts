/**
 * The error catalogue: every error the API returns carries one of these codes. The code is the
 * stable contract; the HTTP status and the default message are derived from it here and nowhere
 * else, so the wire shape, the status mapping and the documentation cannot drift apart.
 */
import { z } from "zod";

export const ERROR_CODES = {
  invalid_json: { status: 400, message: "The request body is not valid JSON." },
  validation_failed: {
    status: 400,
    message: "The request does not match the schema; see details for each problem.",
  },
  body_too_large: { status: 413, message: "The request body is larger than this endpoint accepts." },
  unsupported_media_type: { status: 415, message: "Send the request body as application/json." },
  unauthorized: {
    status: 401,
    message: "Missing or invalid API key. Send it as 'Authorization: Bearer <key>'.",
  },
  forbidden: { status: 403, message: "This API key may not perform this action." },
  csrf_failed: {
    status: 403,
    message:
      "A write made with the dashboard's session cookie needs its x-paddock-csrf header and must come from the dashboard's own origin.",
  },
  not_found: { status: 404, message: "No such resource." },
  route_not_found: { status: 404, message: "No such endpoint; see /v1/openapi.json." },
  method_not_allowed: { status: 405, message: "This endpoint does not accept that method." },
  conflict: { status: 409, message: "The resource already exists." },
  agent_archived: {
    status: 409,
    message:
      "The agent is deleted (archived): it starts no new runs and cannot change; it and its runs stay readable. Create a new agent to run again.",
  },
  run_not_cancelable: { status: 409, message: "The run has already finished and cannot be canceled." },
  command_not_found: {
    status: 422,
    message: "The agent's command does not exist in its environment image.",
  },
  invalid_archive: {
    status: 422,
    message: "The snapshot archive is damaged or unsafe and nothing was imported; export it again and retry.",
  },
  session_exists: {
    status: 409,
    message: "The agent already has an open environment session; use it, freeze it, or discard it first.",
  },
  no_session: {
    status: 409,
    message: "The agent has no open environment session; start one with 'paddock env edit' or 'paddock env exec'.",
  },
  session_busy: {
    status: 409,
    message: "The environment session is running another command; wait for it to finish and retry.",
  },
  nothing_to_freeze: {
    status: 409,
    message: "The environment session changed nothing; discard it instead of freezing it.",
  },
  environment_changed: {
    status: 409,
    message: "The agent's environment changed after the session started; discard the session and start again.",
  },
  session_limit: {
    status: 503,
    message: "This host has as many open environment sessions as it allows; close one or retry later.",
  },
  runner_invalid: {
    status: 422,
    message: "The runner bundle or Node binary does not start as a runner inside a sandbox; see details.",
  },
  sandbox_unavailable: {
    status: 503,
    message: "This host cannot start sandboxes at the moment; its log says why.",
  },
  blob_unavailable: {
    status: 503,
    message:
      "A blob is missing from the blob store or does not match its digest; the bad copy was dropped and the next attempt fetches it again.",
  },
  blob_digest_mismatch: {
    status: 422,
    message: "The content's sha256 is not the digest it was stored under; nothing was stored.",
  },
  database_unavailable: {
    status: 503,
    message: "The host cannot reach its database; its log says why.",
  },
  image_not_ready: {
    status: 503,
    message: "The environment image is not built yet; run 'paddock images build-base'.",
  },
  secret_in_use: {
    status: 409,
    message: "A connection uses this secret; change or delete the connection first.",
  },
  unknown_secret: { status: 422, message: "The connection names a secret that does not exist; set it first." },
  unknown_oauth_app: { status: 422, message: "No OAuth app of that name; set it first (PUT /v1/oauth-apps/{name})." },
  oauth_discovery_failed: {
    status: 422,
    message: "The issuer's OpenID Connect discovery document could not be read; give the endpoints explicitly.",
  },
  oauth_state_invalid: {
    status: 400,
    message:
      "The authorization answer does not belong to a pending connect session (unknown, used or expired state); start again.",
  },
  oauth_provider_error: {
    status: 502,
    message: "The OAuth provider refused or could not complete the authorization; nothing was stored.",
  },
  account_missing: {
    status: 403,
    message: "The run's end user has no account for this connection's OAuth app; have them connect it first.",
  },
  account_needs_reauth: {
    status: 403,
    message: "The end user's account was refused by its provider on refresh; have them connect it again.",
  },
  unknown_connection: {
    status: 422,
    message: "The agent's policy names a connection that does not exist; create it first.",
  },
  bridge_unknown_source: {
    status: 403,
    message: "Bridge calls are accepted only from a live sandbox's own address.",
  },
  token_missing: {
    status: 401,
    message: "Send the run token as 'Authorization: Bearer <token>'; the sandbox finds it in $PADDOCK_TOKEN_FILE.",
  },
  token_invalid: { status: 401, message: "The run token does not verify." },
  token_expired: { status: 401, message: "The run token has expired; read $PADDOCK_TOKEN_FILE again for a fresh one." },
  token_mismatch: {
    status: 403,
    message: "The run token belongs to another sandbox, run or attempt than the one calling.",
  },
  run_not_running: { status: 403, message: "The run this token was issued to is not running." },
  connection_not_allowed: {
    status: 403,
    message: "The agent's policy does not allow this connection, or no such connection exists.",
  },
  policy_denied: { status: 403, message: "The connection's policy does not allow this method and path." },
  path_rejected: {
    status: 400,
    message: "The path is not allowed: no '.' or '..' segments, encoded slashes, backslashes or double encoding.",
  },
  rate_limited: { status: 429, message: "The connection's rate limit is reached; retry after the time given." },
  bridge_busy: {
    status: 429,
    message: "This sandbox has as many requests in flight at the bridge as it may; retry once some have finished.",
  },
  upstream_refused: {
    status: 502,
    message: "The connection's upstream resolves to an address the host does not call (private, loopback, link-local).",
  },
  upstream_error: { status: 502, message: "The upstream could not be reached or broke off its answer." },
  upstream_timeout: { status: 504, message: "The upstream did not answer in time." },
  unknown_mcp_server: {
    status: 422,
    message: "The agent's policy names an MCP server that does not exist; register it first.",
  },
  mcp_server_unavailable: { status: 502, message: "The MCP server could not be reached." },
  mcp_server_timeout: { status: 504, message: "The MCP server did not answer in time." },
  mcp_server_error: {
    status: 502,
    message: "The MCP server answered something that is not valid MCP (malformed JSON-RPC or a protocol error).",
  },
  mcp_result_too_large: { status: 502, message: "The MCP server's answer is larger than the host passes on." },
  mcp_unsupported_request: {
    status: 502,
    message: "The MCP server sent a request the host does not answer (sampling, elicitation); the call was stopped.",
  },
  mcp_tool_not_allowed: {
    status: 403,
    message: "The agent's policy does not offer this MCP tool (another server's, or not named in policy.mcp).",
  },
  mcp_pins_changed: {
    status: 409,
    message:
      "The MCP servers' tool definitions are no longer those that were reviewed; nothing was pinned. Review the new differences and pin again.",
  },
  mcp_tool_changed: {
    status: 409,
    message: "The MCP tool's definition changed since it was pinned; it is refused until the agent is re-pinned.",
  },
  mcp_invalid_arguments: {
    status: 422,
    message: "The tool call's arguments do not match the tool's pinned input schema; nothing was sent.",
  },
  mcp_method_not_found: { status: 404, message: "The run's MCP endpoint does not serve this method." },
  upstream_too_large: { status: 502, message: "The upstream's answer is larger than the bridge passes on." },
  idempotency_key_reused: {
    status: 422,
    message: "This Idempotency-Key was used for another request; use a new key for a new request.",
  },
  webhook_signature_invalid: {
    status: 401,
    message:
      'The delivery is not signed with this webhook\'s secret: send x-paddock-timestamp and x-paddock-signature: sha256=HMAC-SHA256(secret, "<timestamp>.<delivery>.<body>").',
  },
  webhook_timestamp_expired: {
    status: 401,
    message: "The delivery's x-paddock-timestamp is more than five minutes from the host's clock; sign it again.",
  },
  notification_url_refused: {
    status: 422,
    message:
      "The notification URL is not allowed: https:// with no user or password, on a public address unless the admin marks the subscription internal.",
  },
  notification_disabled: {
    status: 409,
    message: "The subscription is disabled (its endpoint answered 410 Gone); create a new one to send to it again.",
  },
  too_many_children: {
    status: 429,
    message: "This run already has as many child runs going as it may; wait for one to finish.",
  },
  agent_depth_exceeded: {
    status: 403,
    message: "Child runs may be nested only so deep; an agent calling agents in a loop stops here.",
  },
  unknown_model: { status: 404, message: "No provider serves this model; GET /v1/models lists those that exist." },
  model_wrong_api: {
    status: 400,
    message:
      "This model is served in the other wire format: use /v1/chat/completions for OpenAI-style models, /v1/messages for Anthropic ones.",
  },
  out_of_credits: {
    status: 402,
    message: "The budget has no credits left for this call; the run stops with reason out_of_credits.",
  },
  credits_held: {
    status: 429,
    message: "The rest of the budget is held by model calls in flight; retry after the time given.",
  },
  llm_rate_limited: { status: 429, message: "The LLM rate limit is reached; retry after the time given." },
  provider_error: { status: 502, message: "The model provider could not be reached or broke off its answer." },
  provider_rate_limited: {
    status: 429,
    message:
      "The model provider's own rate limit is reached; its answer and retry-after are passed on as it sent them.",
  },
  approval_pending: {
    status: 503,
    message:
      "The call waits for a person's approval; send the identical request again to keep waiting (the SDK does), or see GET /v1/approvals.",
  },
  approval_denied: { status: 403, message: "A person denied this call; nothing was sent. The note says why." },
  approval_expired: {
    status: 403,
    message: "The approval expired before anyone decided it; nothing was sent. Send the call again to ask again.",
  },
  approval_decided: { status: 409, message: "The approval is decided already; a decision cannot change." },
  approval_used: {
    status: 409,
    message:
      "The approved call was sent once already and its answer was not kept; a new request needs its own approval.",
  },
  approval_limit: {
    status: 429,
    message: "This run has as many approvals waiting under this rule as it may (max_pending); wait for a decision.",
  },
  approval_link_invalid: {
    status: 403,
    message: "This approval link is not valid: altered, or not for this approval. Decide through the API or the CLI.",
  },
  not_an_approver: { status: 403, message: "This API key is not one of the approval's approvers." },
  lease_lost: {
    status: 409,
    message: "This node no longer holds the run's attempt (another node recovered it); the write was refused.",
  },
  node_refused: {
    status: 409,
    message: "Another live node has this node id or an overlapping sandbox range; this node did not start.",
  },
  node_unavailable: {
    status: 503,
    message:
      "The environment session lives on a node that is down or cannot be reached; discard the session and open a new one.",
  },
  metrics_token_invalid: {
    status: 401,
    message:
      "The metrics token is wrong: send the token of 'serve --metrics-token-file' (or the admin API key) as 'Authorization: Bearer <token>'.",
  },
  internal: { status: 500, message: "Internal error; the host logged the details." },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;
/** A registered code, as a schema: event data that carries a code names one of these. */
export const ErrorCode = z.enum(Object.keys(ERROR_CODES) as [ErrorCode, ...ErrorCode[]]).meta({ id: "ErrorCode" });

export function isErrorCode(code: string): code is ErrorCode {
  return Object.hasOwn(ERROR_CODES, code);
}

/** An expected, user-facing failure. Thrown anywhere; mapped to a response in one place. */
export class AppError extends Error {
  readonly code: ErrorCode;
  readonly details: unknown;

  constructor(code: ErrorCode, message?: string, details?: unknown) {
    super(message ?? ERROR_CODES[code].message);
    this.name = "AppError";
    this.code = code;
    this.details = details;
  }

  get status(): number {
    return ERROR_CODES[this.code].status;
  }

  toBody(): ErrorBody {
    const error: ErrorBody["error"] = { code: this.code, message: this.message };
    if (this.details !== undefined) error.details = this.details;
    return { error };
  }
}

/** One problem a schema found, as zod reports it. */
export interface SchemaIssue {
  path: readonly PropertyKey[];
  code: string;
  message: string;
  keys?: readonly string[];
}

/** `validation_failed` naming the first problem in its message and listing every one in its details. */
export function validationFailed(issues: readonly SchemaIssue[]): AppError {
  const details = issues.map((i) => ({
    path: i.path.map(String).join("."),
    code: i.code,
    message: i.message,
    ...(i.keys ? { keys: i.keys } : {}),
  }));
  const first = details[0];
  const where = first?.path ? `${first.path}: ` : "";
  return new AppError("validation_failed", `Invalid request: ${where}${first?.message ?? "invalid"}.`, details);
}

/**
 * `body_too_large` with the cap in its details; `message` says what was too large when it is more
 * than a request body.
 */
export function bodyTooLarge(
  limitBytes: number,
  message = `The request body is larger than ${limitBytes} bytes.`,
): AppError {
  return new AppError("body_too_large", message, { limit_bytes: limitBytes });
}

/** `value` parsed by `schema`, or `validation_failed` for what does not match. */
export function check<T extends z.ZodType>(schema: T, value: unknown): z.infer<T> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw validationFailed(parsed.error.issues);
  return parsed.data;
}

export type ErrorBody = { error: { code: string; message: string; details?: unknown } };
