/**
 * Approvals at the sandbox's boundary: a bridge call, a model call or a child run's start that a
 * policy says a person must agree to is held here until someone decides it, and only then sent.
 *
 * Threat model: the sandbox runs hostile code that wants the held call sent without a person's
 * agreement, sent twice, or swapped for another after approval; a key that is not an approver
 * wants to decide; a link finder wants to decide something else than the one approval its link
 * names. So: an approval is bound to the hash of every byte the host would send (method, target,
 * path, query, headers and body), and what is sent is the held request itself; the right to send
 * it is claimed once in the store (compare-and-set), so an identical repeat after the call went
 * gets the answer it had, never a second call; a different request is a different hash and asks
 * anew. Decisions come only from an approver's API key of the run's tenant (or the admin key where
 * the rule names it), or from a link whose MAC the host made for that approval alone, valid until
 * the approval is decided or expires. The model cannot talk its way past any of this: the host
 * decides, the sandbox only waits.
 *
 * Waiting: the sandbox's request is held open for up to `holdMs`; still undecided, it is answered
 * 503 `approval_pending` with `paddock-approval: <id>` and `retry-after`, and the identical request
 * sent again waits on the same approval (the SDK does this by itself; any client that retries does
 * too). The sandbox is not frozen: its runner and the rest of its work go on, and the time the run
 * waits does not count against its timeout (see engine/attempt.ts).
 */

import { createHash } from "node:crypto";
import type { ServerResponse } from "node:http";
import {
  APPROVAL_HEADER,
  AppError,
  type Approval,
  type ApprovalBody,
  ApprovalDecide,
  type ApprovalKind,
  ApprovalRequest,
  ApprovalRule,
  type ApprovalStatus,
  type ApprovalVia,
  TERMINAL_STATUSES,
} from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import { mayApprove, type Principal } from "../identity/identity.ts";
import type { Log } from "../logs/log.ts";
import type { ApprovalStore, KeptAnswer } from "../store/approvals.ts";
import type { EventLog } from "../store/event-log.ts";
import type { ApprovalsTable, Database } from "../store/schema.ts";
import { isoTime, parseStored } from "../store/stored.ts";
import { Refusal } from "./channel.ts";
import type { LiveSandbox } from "./live.ts";

/** How much of a held body the approvers are shown. */
const PREVIEW_BYTES = 4096;
/** The largest body a call may hold for approval: it is kept in the store until it is sent. */
export const MAX_HELD_BYTES = 4 * 1024 * 1024;
const LINK_PURPOSE = "approval-link";

/** What signs and checks links: the vault's MACs. */
export interface LinkSigner {
  mac(purpose: string, message: string): Buffer;
  verifyMac(purpose: string, message: string, mac: Buffer): boolean;
}

/**
 * The one-time links of approvals and the run pages they point to, under the host's public URL.
 * A link carries a MAC of its approval's id: it decides that approval and nothing else.
 */
export class ApprovalLinks {
  readonly #signer: LinkSigner;
  #base: string;

  constructor(signer: LinkSigner, base: string) {
    this.#signer = signer;
    this.#base = base.replace(/\/+$/, "");
  }

  /** The public URL links start with (set once the host listens, when it was not configured). */
  set base(url: string) {
    this.#base = url.replace(/\/+$/, "");
  }

  token(approvalId: string): string {
    return this.#signer.mac(LINK_PURPOSE, approvalId).toString("base64url");
  }

  /** Whether `token` is the link token of `approvalId` (in its one spelling: no other encoding of the same bytes). */
  verify(approvalId: string, token: string): boolean {
    if (!/^[A-Za-z0-9_-]{43}$/.test(token)) return false;
    const mac = Buffer.from(token, "base64url");
    if (mac.toString("base64url") !== token) return false;
    return this.#signer.verifyMac(LINK_PURPOSE, approvalId, mac);
  }

  /** The confirmation page's URL for one approval. */
  approvalUrl(approvalId: string): string {
    return `${this.#base}/approve/${approvalId}?token=${this.token(approvalId)}`;
  }

  /** The dashboard's page of a run. */
  runUrl(runId: string): string {
    return `${this.#base}/ui/runs/${runId}`;
  }
}

export interface ApprovalsDeps {
  db: Kysely<Database>;
  store: ApprovalStore;
  events: EventLog;
  links: ApprovalLinks;
  log: Log;
}

export interface ApprovalsConfig {
  /** How long a sandbox's request is held open before it is told to ask again (default 50 s). */
  holdMs?: number;
  /** How often pending approvals are looked at for their time running out (default 1 s). */
  sweepMs?: number;
}

/** A call to hold, from the bridge, the gateway or agent calls. */
export interface HoldRequest {
  sandbox: LiveSandbox;
  kind: ApprovalKind;
  target: string;
  ruleKey: string;
  rule: ApprovalRule;
  /** Binds the request: every byte that would be sent. */
  hash: string;
  /** What the approvers are shown besides the body (whose view is made from `body`). */
  request: Omit<ApprovalRequest, "body">;
  /** What the sender reads back to send it (besides the body). */
  held: unknown;
  body: Buffer;
  /** The call's journal step, taken only the first time this attempt makes the call. */
  takeStep(): string | null;
  /** The answer to the sandbox's request: once it is closed (the caller hung up), nothing waits for it. */
  res: ServerResponse;
  /**
   * The approval a caller asking again says it waits on (its `paddock-approval` header): answered
   * from that one, even once it ran out, when it is this run's approval of this very request.
   */
  asked?: string | undefined;
  /** Whether the caller claims the right to send itself (inside its own transaction); default: claimed here. */
  claims?: boolean;
  /** How long the request is held open before approval_pending; default the host's holdMs. */
  holdMs?: number;
}

/** How a held call goes on: sent now by the caller (approved), or answered with what it got when it was sent. */
export type HoldOutcome = { send: ApprovalsTable } | { replay: KeptAnswer; approval: ApprovalsTable };

/** A run with a call held on this node: its sandbox, and the waiters woken when anything of it changes. */
interface RunWatch {
  sandbox: LiveSandbox;
  waiters: Set<() => void>;
  /** Bumped at each change: a waiter that read before a bump reads again instead of sleeping. */
  version: number;
  waiting: boolean;
  stop(): void;
}

/** Who may see an approval: its tenant's keys, and the admin key where the rule names the admin. */
const visible = (row: ApprovalsTable, principal: Principal) =>
  row.tenant_id === principal.tenantId || (principal.role === "admin" && row.admin_approves === 1);

const notFound = (id: string) => new AppError("not_found", `No approval '${id.slice(0, 64)}'.`);

export class Approvals {
  readonly #deps: ApprovalsDeps;
  readonly #holdMs: number;
  readonly #sweepMs: number;
  readonly #watches = new Map<string, RunWatch>();
  #sweeper: NodeJS.Timeout | null = null;
  #sweeping = false;

  constructor(deps: ApprovalsDeps, config: ApprovalsConfig = {}) {
    this.#deps = deps;
    this.#holdMs = config.holdMs ?? 50_000;
    this.#sweepMs = config.sweepMs ?? 1000;
  }

  get links(): ApprovalLinks {
    return this.#deps.links;
  }

  /** Starts expiring pending approvals whose time ran out (on every node: each decision is compare-and-set). */
  start(): void {
    this.#sweeper = setInterval(() => {
      if (this.#sweeping) return;
      this.#sweeping = true;
      this.#deps.store
        .expireDue()
        .catch((err: unknown) => this.#deps.log(`approvals: expiring: ${String(err)}`))
        .finally(() => {
          this.#sweeping = false;
        });
    }, this.#sweepMs);
    this.#sweeper.unref();
  }

  close(): void {
    if (this.#sweeper) clearInterval(this.#sweeper);
    for (const watch of [...this.#watches.values()]) this.#close(watch);
  }

  /**
   * Holds a call until it is decided, asking for approval the first time the run makes it. Returns
   * how to go on once approved; throws the refusal to answer with otherwise: approval_denied (with
   * the note), approval_expired, approval_used, approval_limit, or approval_pending once `holdMs`
   * passed undecided (with the headers that say which approval to wait on).
   */
  async hold(h: HoldRequest): Promise<HoldOutcome> {
    const { sandbox } = h;
    const { store } = this.#deps;
    const asker = {
      runId: sandbox.runId,
      attempt: sandbox.attempt,
      workerId: sandbox.workerId,
      tenantId: sandbox.tenantId,
      agentId: sandbox.agentId,
    };
    const watch = this.#watch(sandbox);
    const deadline = Date.now() + (h.holdMs ?? this.#holdMs);
    const gone = new AbortController();
    h.res.once("close", () => gone.abort());
    const signal = gone.signal;
    const call = {
      ...h,
      request: { ...h.request, body: bodyView(h.body, createHash("sha256").update(h.body).digest("hex")) },
    };
    try {
      const asked = h.asked ? await store.get(h.asked) : undefined;
      let row =
        asked?.run_id === sandbox.runId && asked.request_hash === h.hash
          ? asked
          : await store.standing(sandbox.runId, h.hash);
      if (!row) {
        // A new call: it takes its journal step now, and is asked about.
        row = await store.ask(asker, { ...call, step: h.takeStep() });
      } else if (row.attempt !== sandbox.attempt) {
        // An earlier attempt asked (the host or the sandbox crashed since): the same approval, this attempt's step.
        await store.adopt(asker, row, h.takeStep());
      }
      const id = row.id;
      for (;;) {
        const seen = watch.version;
        const current = await store.get(id);
        if (!current) throw notFound(id);
        const outcome = await this.#outcome(current, h.claims !== false);
        if (outcome) return outcome;
        const left = deadline - Date.now();
        if (left <= 0 || signal.aborted) {
          throw new Refusal("approval_pending", undefined, { [APPROVAL_HEADER]: id, "retry-after": "1" });
        }
        if (watch.version === seen) await this.#changed(watch, left, signal);
        // Woken, most likely by an approval: taking the right to send first saves a read on the way
        // to the upstream (it succeeds only once the approval is approved and unclaimed).
        if (h.claims !== false && !signal.aborted && (await store.claimForward(id))) {
          return { send: { ...current, status: "approved", forward_state: "sending" } };
        }
      }
    } finally {
      this.#settle(watch);
    }
  }

  /** How a decided approval goes on; null while it is pending (or was claimed and should be read again). */
  async #outcome(row: ApprovalsTable, claim: boolean): Promise<HoldOutcome | null> {
    const status = row.status as ApprovalStatus;
    // Every refusal names the approval it comes from.
    const named = { [APPROVAL_HEADER]: row.id };
    switch (status) {
      case "pending":
        return null;
      case "denied":
        throw new Refusal(
          "approval_denied",
          row.note ? `A person denied this call: ${row.note}` : "A person denied this call; nothing was sent.",
          named,
        );
      case "expired":
        throw new Refusal("approval_expired", undefined, named);
      case "canceled":
        throw new Refusal("run_not_running", "The approval was canceled with the run; nothing was sent.", named);
      case "approved":
        break;
    }
    const used = new Refusal("approval_used", undefined, named);
    if (row.forward_state === null) {
      if (!claim || (await this.#deps.store.claimForward(row.id))) return { send: row };
      // Another request of the same call claimed it first.
      const after = await this.#deps.store.get(row.id);
      if (after && after.forward_state !== "sending") return this.#outcome(after, claim);
      throw used;
    }
    if (row.forward_state === "sent" && row.answer_status !== null) {
      return {
        approval: row,
        replay: {
          status: row.answer_status,
          headers: JSON.parse(row.answer_headers ?? "{}") as KeptAnswer["headers"],
          body: Buffer.from(row.answer_body ?? new Uint8Array()),
        },
      };
    }
    throw used;
  }

  /** Records what the approved call got (null: nothing to give a repeat of it), once it was sent. */
  async sent(approvalId: string, answer: KeptAnswer | null): Promise<void> {
    await this.#deps.store.recordAnswer(approvalId, answer);
  }

  /**
   * Inside the transaction that does what an approved call asks (a child run's start): takes the
   * one right to do it and records its answer, both committing with it. approval_used when the
   * right was taken already.
   */
  async sendWithin(trx: Transaction<Database>, approvalId: string, answer: KeptAnswer): Promise<void> {
    if (!(await this.#deps.store.claimForward(approvalId, Date.now(), trx))) throw new AppError("approval_used");
    await this.#deps.store.recordAnswer(approvalId, answer, trx);
  }

  /** Gives back the right to send: the call never left the host. */
  async unsent(approvalId: string): Promise<void> {
    await this.#deps.store.unclaimForward(approvalId);
  }

  /** A decision through the API, by `principal`: refused unless it is one of the approvers. */
  async decide(principal: Principal, id: string, body: ApprovalDecide): Promise<Approval> {
    const found = await this.#deps.store.get(id);
    if (!found || !visible(found, principal)) throw notFound(id);
    const rule = parseRule(found);
    if (!(await mayApprove(this.#deps.db, principal, found.tenant_id, rule.approvers))) {
      throw new AppError(
        "not_an_approver",
        `This API key may not decide approval ${id}; its approvers are: ${rule.approvers.join(", ")}.`,
      );
    }
    return this.#record(id, body, "api", principal.keyId);
  }

  /** A decision through a one-time link: the token must be the one the host made for this approval. */
  async decideByLink(id: string, token: string, body: ApprovalDecide): Promise<Approval> {
    const row = await this.byLink(id, token);
    return this.#record(row.id, body, "link", null);
  }

  /** The approval a link names, while it can still be decided; approval_link_invalid for any other link. */
  async byLink(id: string, token: string): Promise<ApprovalsTable> {
    const row =
      /^apr_[0-9a-z]{26}$/.test(id) && this.#deps.links.verify(id, token) ? await this.#deps.store.get(id) : null;
    if (!row) throw new AppError("approval_link_invalid");
    if (row.status === "expired" || (row.status === "pending" && Date.now() >= Number(row.expires_at))) {
      throw new AppError("approval_expired", "This approval expired before anyone decided it; nothing was sent.");
    }
    if (row.status !== "pending") {
      throw new AppError(
        "approval_link_invalid",
        `This link was used, or the approval was decided already (${row.status}).`,
      );
    }
    return row;
  }

  async #record(id: string, body: ApprovalDecide, via: "api" | "link", keyId: string | null): Promise<Approval> {
    const decision = ApprovalDecide.parse(body);
    const { row, changed } = await this.#deps.store.decide(id, {
      status: decision.decision === "approve" ? "approved" : "denied",
      via,
      keyId,
      note: decision.note ?? null,
    });
    if (row.status === "expired") {
      throw new AppError("approval_expired", "This approval expired before anyone decided it; nothing was sent.");
    }
    if (!changed) {
      throw new AppError("approval_decided", `Approval ${id} was decided already (${row.status}).`);
    }
    return (await this.#views([row]))[0] as Approval;
  }

  /** One approval the caller may see. */
  async get(principal: Principal, id: string): Promise<Approval> {
    const row = await this.#deps.store.get(id);
    if (!row || !visible(row, principal)) throw notFound(id);
    return (await this.#views([row]))[0] as Approval;
  }

  /** Approvals as the API shows them, with the names of the keys that decided them. */
  async #views(rows: ApprovalsTable[]): Promise<Approval[]> {
    const ids = [...new Set(rows.flatMap((r) => (r.decided_key ? [r.decided_key] : [])))];
    const keys =
      ids.length === 0
        ? []
        : await this.#deps.db.selectFrom("api_keys").select(["id", "name"]).where("id", "in", ids).execute();
    const names = new Map(keys.map((k) => [k.id, k.name]));
    return rows.map((r) => toApproval(r, r.decided_key ? (names.get(r.decided_key) ?? null) : null));
  }

  /** The approvals the caller may see, newest first. */
  async list(
    principal: Principal,
    filter: { status?: ApprovalStatus; runId?: string; cursor?: string; limit: number },
  ): Promise<Approval[]> {
    let q = this.#deps.db
      .selectFrom("approvals")
      .selectAll()
      .where((eb) =>
        principal.role === "admin"
          ? eb.or([eb("tenant_id", "=", principal.tenantId), eb("admin_approves", "=", 1)])
          : eb("tenant_id", "=", principal.tenantId),
      );
    if (filter.status) q = q.where("status", "=", filter.status);
    if (filter.runId) q = q.where("run_id", "=", filter.runId);
    if (filter.cursor) q = q.where("id", "<", filter.cursor);
    return this.#views(await q.orderBy("id", "desc").limit(filter.limit).execute());
  }

  /** The watch of the sandbox's run, made (subscribed to its events) when it has none. */
  #watch(sandbox: LiveSandbox): RunWatch {
    const existing = this.#watches.get(sandbox.runId);
    if (existing?.sandbox.sandboxId === sandbox.sandboxId) return existing;
    if (existing) this.#close(existing);
    const watch: RunWatch = { sandbox, waiters: new Set(), version: 0, waiting: false, stop: () => {} };
    this.#watches.set(sandbox.runId, watch);
    const setWaiting = (on: boolean) => {
      watch.waiting = on;
      sandbox.waiting?.(on);
    };
    watch.stop = this.#deps.events.subscribe(
      sandbox.runId,
      (event) => {
        switch (event.type) {
          case "run.waiting":
            setWaiting(true);
            break;
          case "run.resumed":
            setWaiting(false);
            break;
          case "approval.decided":
            break;
          case "attempt.finished":
          case "attempt.lost":
            // The attempt is over: its sandbox waits for nothing any more.
            setWaiting(false);
            this.#wake(watch);
            this.#close(watch);
            return;
          default:
            if (!TERMINAL_STATUSES.some((s) => event.type === `run.${s}`)) return;
        }
        this.#wake(watch);
        this.#settle(watch);
      },
      // Another node may have decided: read the run again.
      () => {
        this.#deps.db
          .selectFrom("runs")
          .select("status")
          .where("id", "=", sandbox.runId)
          .executeTakeFirst()
          .then((run) => {
            setWaiting(run?.status === "waiting");
            this.#wake(watch);
            this.#settle(watch);
          })
          .catch(() => {});
      },
    );
    return watch;
  }

  #wake(watch: RunWatch): void {
    watch.version++;
    for (const wake of [...watch.waiters]) wake();
  }

  /** Stops watching a run nothing on this node waits for any more. */
  #settle(watch: RunWatch): void {
    if (watch.waiters.size === 0 && !watch.waiting) this.#close(watch);
  }

  #close(watch: RunWatch): void {
    watch.stop();
    if (this.#watches.get(watch.sandbox.runId) === watch) this.#watches.delete(watch.sandbox.runId);
  }

  /** Resolves at the watch's next change, after `ms`, or when `signal` aborts. */
  #changed(watch: RunWatch, ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        watch.waiters.delete(done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      watch.waiters.add(done);
      signal.addEventListener("abort", done, { once: true });
    });
  }
}

function parseRule(row: ApprovalsTable): ApprovalRule {
  return parseStored(ApprovalRule, row.rule, "approval rule");
}

/** An approval as the API shows it. */
export function toApproval(row: ApprovalsTable, keyName: string | null = null): Approval {
  return {
    id: row.id,
    tenant_id: row.tenant_id,
    run_id: row.run_id,
    agent_id: row.agent_id,
    attempt: row.attempt,
    status: row.status as ApprovalStatus,
    request: parseStored(ApprovalRequest, row.request, "approval request"),
    rule: parseRule(row),
    created_at: new Date(Number(row.created_at)).toISOString(),
    expires_at: new Date(Number(row.expires_at)).toISOString(),
    decided_at: isoTime(row.decided_at),
    decided_by:
      row.decided_via === null
        ? null
        : { via: row.decided_via as ApprovalVia, key_id: row.decided_key, key_name: keyName },
    note: row.note,
    forwarded_at: isoTime(row.forwarded_at),
  };
}

/** The held body as approvers see it: its size, its sha256 and its start (text, else base64). */
function bodyView(body: Buffer, sha256: string): ApprovalBody {
  const head = body.subarray(0, PREVIEW_BYTES);
  let text = utf8(head);
  // A character cut at the preview's end is still text: try without its first bytes.
  for (let cut = 1; text === null && cut <= 3 && body.length > head.length; cut++) {
    text = utf8(head.subarray(0, head.length - cut));
  }
  return {
    size: body.length,
    sha256,
    preview: text ?? head.toString("base64"),
    truncated: body.length > PREVIEW_BYTES,
    binary: text === null,
  };
}

function utf8(bytes: Uint8Array): string | null {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}
