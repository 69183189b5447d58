/**
 * Approvals: calls a person must agree to before the host makes them. A connection's policy rule,
 * an agent's `policy.agents` entry or its budget's `approve_above` may require one; the host then
 * holds the exact request, shows the approvers what it would send, and forwards those bytes (bound
 * by their sha256) once, only if a person approves.
 */
import { z } from "zod";

/** The longest an approval may wait for a decision: thirty days. */
export const MAX_APPROVAL_TIMEOUT_S = 30 * 86_400;

/**
 * Who may decide: `tenant` (any API key of the run's tenant), `admin` (the host's admin key), or
 * one API key of the tenant, by its name or id.
 */
export const Approver = z.string().min(1).max(64);

/** The fields of an approval rule (an MCP policy entry's `approval` adds the tools it covers). */
export const approvalRuleFields = {
  /** How long the approval waits for a decision; then it expires and nothing is sent. */
  timeout_s: z.number().int().min(1).max(MAX_APPROVAL_TIMEOUT_S).default(3600),
  approvers: z
    .array(Approver)
    .min(1)
    .max(32)
    .refine((a) => new Set(a).size === a.length, "each approver once")
    .default(["tenant"]),
  /** Denied on its own when nobody decided this long after it was asked (at most timeout_s). */
  auto_deny_after_s: z.number().int().min(1).max(MAX_APPROVAL_TIMEOUT_S).optional(),
  /** Approvals of this rule one run may have waiting at once; past it a call is refused (approval_limit). */
  max_pending: z.number().int().min(1).max(1000).default(10),
};

/** A rule's deadline to deny on its own lies within its timeout. */
export const autoDenyWithinTimeout: [
  (r: { auto_deny_after_s?: number | undefined; timeout_s: number }) => boolean,
  { message: string; path: string[] },
] = [
  (r) => r.auto_deny_after_s === undefined || r.auto_deny_after_s <= r.timeout_s,
  { message: "auto_deny_after_s is at most timeout_s", path: ["auto_deny_after_s"] },
];

/** How an approval is asked for: who decides, how long it waits, how many may wait at once. */
export const ApprovalRule = z
  .object(approvalRuleFields)
  .strict()
  .refine(...autoDenyWithinTimeout)
  .meta({ id: "ApprovalRule" });
export type ApprovalRule = z.infer<typeof ApprovalRule>;
export type ApprovalRuleInput = z.input<typeof ApprovalRule>;

/** Which boundary holds the call: a bridge connection, a model call, a child run's start or an MCP tool call. */
export const ApprovalKind = z.enum(["bridge", "llm", "agent", "mcp"]);
export type ApprovalKind = z.infer<typeof ApprovalKind>;

export const ApprovalStatus = z.enum(["pending", "approved", "denied", "expired", "canceled"]);
export type ApprovalStatus = z.infer<typeof ApprovalStatus>;

/** The held request's body as the approver sees it. */
export const ApprovalBody = z
  .object({
    size: z.number().int(),
    /** sha256 of the exact bytes held, hex: what is forwarded hashes to this. */
    sha256: z.string(),
    /** The start of the body: text, or base64 when it is not UTF-8. */
    preview: z.string(),
    truncated: z.boolean(),
    binary: z.boolean(),
  })
  .meta({ id: "ApprovalBody" });
export type ApprovalBody = z.infer<typeof ApprovalBody>;

/** What the approver judges: the request exactly as the host would send it. */
export const ApprovalRequest = z
  .object({
    kind: ApprovalKind,
    /** The connection (bridge), the model (llm) or the agent a child run would start (agent). */
    target: z.string(),
    method: z.string(),
    /** The path (and query) as sent: for a bridge call, the upstream URL's. */
    path: z.string(),
    query: z.string(),
    /** A bridge call's whole upstream URL. */
    url: z.string().nullable(),
    /** The headers the host would send; a credential shows as the name of its secret, never its value. */
    headers: z.record(z.string(), z.string()),
    body: ApprovalBody,
    /** A model call past the budget's approve_above: what it may cost at most and what the run spent, in credits. */
    credits: z.object({ reserve: z.number(), run_spent: z.number(), approve_above: z.number() }).optional(),
  })
  .meta({ id: "ApprovalRequest" });
export type ApprovalRequest = z.infer<typeof ApprovalRequest>;

/** How a decision came: an API key (API, CLI, dashboard), a one-time link, or the host (timeout, a run ending). */
export const ApprovalVia = z.enum(["api", "link", "auto", "host"]);
export type ApprovalVia = z.infer<typeof ApprovalVia>;

export const Approval = z
  .object({
    id: z.string(),
    tenant_id: z.string(),
    run_id: z.string(),
    agent_id: z.string(),
    /** The attempt that asked (last). */
    attempt: z.number().int(),
    status: ApprovalStatus,
    request: ApprovalRequest,
    rule: ApprovalRule,
    created_at: z.string(),
    /** Undecided by then, it expires. */
    expires_at: z.string(),
    decided_at: z.string().nullable(),
    /** Who decided: the API key's id and name (via api), or null (link, auto, host). */
    decided_by: z
      .object({ via: ApprovalVia, key_id: z.string().nullable(), key_name: z.string().nullable() })
      .nullable(),
    note: z.string().nullable(),
    /** When the approved call was sent upstream (it is sent once). */
    forwarded_at: z.string().nullable(),
  })
  .meta({ id: "Approval" });
export type Approval = z.infer<typeof Approval>;

export const MAX_APPROVAL_NOTE = 2000;

/** `POST /v1/approvals/{id}`: the decision, and a note the agent is shown when it is a denial. */
export const ApprovalDecide = z
  .object({
    decision: z.enum(["approve", "deny"]),
    note: z.string().max(MAX_APPROVAL_NOTE).optional(),
  })
  .strict()
  .meta({ id: "ApprovalDecide" });
export type ApprovalDecide = z.infer<typeof ApprovalDecide>;

/** Header naming the approval a call waits on, on the answer that tells the caller to ask again. */
export const APPROVAL_HEADER = "paddock-approval";
