/**
 * Approvals over HTTP: the list of the caller's approvals, one approval, and a decision by an
 * approver's API key; and the confirmation page a one-time link opens.
 *
 * The page is the only thing on this host a request without an API key may change, so it is
 * narrow: its link (a MAC the host made for one approval) decides that approval and nothing else,
 * only while it is pending and in time; opening it (GET) never decides, a form POST does. The page
 * is plain HTML made here, with every value from the request or the sandbox escaped, under a CSP
 * that allows nothing but this origin, and never cached or framed.
 */
import { AppError, Approval, ApprovalDecide, ApprovalStatus, ErrorResponse, Page } from "@paddock/protocol";
import type { Context, Hono } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { z } from "zod";
import { type Approvals, toApproval } from "../bridge/approvals.ts";
import type { ApprovalsTable } from "../store/schema.ts";
import { type ApiEnv, type DefineRoute, json, jsonBody, pathParam } from "./http.ts";

const ApprovalId = pathParam(z.string().regex(/^apr_[0-9a-z]{26}$/), "approval");
const ById = z.object({ id: ApprovalId });
const ListQuery = z.object({
  status: ApprovalStatus.optional(),
  run_id: z.string().max(64).optional(),
  limit: z.coerce.number().int().min(1).max(200).default(50),
  cursor: z.string().max(64).optional(),
});
/** The confirmation form is a token, a decision and a note: a few kilobytes at most. */
const MAX_FORM_BYTES = 16 * 1024;

export function registerApprovalRoutes(app: Hono<ApiEnv>, route: DefineRoute, approvals: Approvals): void {
  route(
    {
      method: "get",
      path: "/v1/approvals",
      summary:
        "Approvals the caller may see, newest first: its tenant's, and with the admin key those whose approvers name the admin",
      auth: "tenant",
      request: { query: ListQuery },
      responses: { 200: json(Page(Approval), "Approvals") },
    },
    async (c) => {
      const q = c.req.valid("query");
      const data = await approvals.list(c.get("principal"), {
        limit: q.limit,
        ...(q.status ? { status: q.status } : {}),
        ...(q.run_id ? { runId: q.run_id } : {}),
        ...(q.cursor ? { cursor: q.cursor } : {}),
      });
      const last = data[data.length - 1];
      return c.json({ data, next_cursor: data.length === q.limit && last ? last.id : null }, 200);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/approvals/{id}",
      summary: "One approval: the request held (as the host would send it), its rule, and its decision",
      auth: "tenant",
      request: { params: ById },
      responses: { 200: json(Approval, "The approval") },
    },
    async (c) => c.json(await approvals.get(c.get("principal"), c.req.valid("param").id), 200),
  );
  route(
    {
      method: "post",
      path: "/v1/approvals/{id}",
      summary:
        "Decide a pending approval (an approver's key): approve sends the held request once; deny answers the sandbox 403 approval_denied with the note",
      auth: "tenant",
      request: { params: ById, body: jsonBody(ApprovalDecide) },
      responses: {
        200: json(Approval, "Decided"),
        403: json(ErrorResponse, "Not an approver (not_an_approver), or the approval expired (approval_expired)"),
        409: json(ErrorResponse, "Decided already (approval_decided)"),
      },
    },
    async (c) => c.json(await approvals.decide(c.get("principal"), c.req.valid("param").id, c.req.valid("json")), 200),
  );

  // The one-time link's page: outside the JSON API, answered in HTML.
  app.get("/approve/:id", async (c) => {
    const id = c.req.param("id");
    const token = c.req.query("token") ?? "";
    try {
      return page(c, 200, confirmation(await approvals.byLink(id, token), token));
    } catch (err) {
      return failure(c, err);
    }
  });
  app.post("/approve/:id", async (c) => {
    const id = c.req.param("id");
    try {
      const form = await readForm(c);
      const decision = ApprovalDecide.safeParse({
        decision: form.get("decision"),
        ...(form.get("note") ? { note: form.get("note") } : {}),
      });
      if (!decision.success)
        throw new AppError("validation_failed", "Choose approve or deny; a note has at most 2000 characters.");
      const decided = await approvals.decideByLink(id, form.get("token") ?? "", decision.data);
      return page(
        c,
        200,
        `<h1>${decided.status === "approved" ? "Approved" : "Denied"}</h1>
<p>Approval <code>${html(decided.id)}</code> is ${html(decided.status)}. ${
          decided.status === "approved" ? "The held call is sent once." : "Nothing is sent; the agent is told."
        } This link decides nothing more.</p>`,
      );
    } catch (err) {
      return failure(c, err);
    }
  });
}

/** The form's fields; refused past MAX_FORM_BYTES or when it is not a form. */
async function readForm(c: Context): Promise<URLSearchParams> {
  const type = c.req.header("content-type") ?? "";
  if (!/^application\/x-www-form-urlencoded\s*(;|$)/i.test(type)) throw new AppError("unsupported_media_type");
  if (Number(c.req.header("content-length") ?? 0) > MAX_FORM_BYTES) throw new AppError("body_too_large");
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of c.req.raw.body ?? []) {
    size += chunk.byteLength;
    if (size > MAX_FORM_BYTES) throw new AppError("body_too_large");
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
}

/** The page that shows the held request and asks for the decision. */
function confirmation(row: ApprovalsTable, token: string): string {
  const a = toApproval(row);
  const r = a.request;
  const headers = Object.entries(r.headers)
    .map(([k, v]) => `<tr><th>${html(k)}</th><td><code>${html(v)}</code></td></tr>`)
    .join("");
  const what =
    r.kind === "bridge"
      ? `a call through the connection <code>${html(r.target)}</code>`
      : r.kind === "llm"
        ? `a model call to <code>${html(r.target)}</code> past the run's approve_above`
        : `starting a run of the agent <code>${html(r.target)}</code>`;
  const credits = r.credits
    ? `<p>It may cost up to <b>${html(String(r.credits.reserve))}</b> credits; the run has spent ${html(
        String(r.credits.run_spent),
      )} (approve above ${html(String(r.credits.approve_above))}).</p>`
    : "";
  return `<h1>Approve this call?</h1>
<p>Run <code>${html(a.run_id)}</code> (agent <code>${html(a.agent_id)}</code>) asks for ${what}. Undecided, it expires at ${html(a.expires_at)}.</p>
<h2>${html(r.method)} <code>${html(r.url ?? r.path)}${r.url === null && r.query ? `?${html(r.query)}` : ""}</code></h2>
${credits}
<table>${headers}</table>
<h2>Body</h2>
<p>${html(String(r.body.size))} bytes, sha256 <code>${html(r.body.sha256)}</code>${r.body.binary ? " (binary: base64)" : ""}${r.body.truncated ? " (the start of it)" : ""}</p>
<pre>${html(r.body.preview)}</pre>
<form method="post" action="/approve/${html(a.id)}">
<input type="hidden" name="token" value="${html(token)}">
<p><label>Note (the agent is shown it when denied)<br><textarea name="note" maxlength="2000" rows="3" cols="60"></textarea></label></p>
<p><button type="submit" name="decision" value="approve">Approve: send it once</button>
<button type="submit" name="decision" value="deny">Deny</button></p>
</form>`;
}

/** A refusal as a page: its code, message and status (anything unexpected goes to the API's error handler). */
function failure(c: Context, err: unknown): Response {
  if (!(err instanceof AppError)) throw err;
  const e = err;
  return page(c, e.status, `<h1>Not decided</h1><p><code>${html(e.code)}</code>: ${html(e.message)}</p>`);
}

function page(c: Context, status: number, body: string): Response {
  return c.html(
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Paddock approval</title></head><body>${body}</body></html>`,
    status as ContentfulStatusCode,
    {
      "content-security-policy": "default-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
      "x-content-type-options": "nosniff",
      "x-frame-options": "DENY",
      "referrer-policy": "no-referrer",
      "cache-control": "no-store",
    },
  );
}

/** Text made safe inside HTML elements and double-quoted attributes. */
export function html(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch] as string,
  );
}
