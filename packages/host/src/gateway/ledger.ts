/**
 * The credits ledger: an append-only list of grants, reservations, settlements and releases, in
 * whole micro-credits, with running totals per tenant, agent and run kept in the same transaction.
 *
 * Threat model: an agent that wants to spend more than it may, by sending many calls at once or
 * asking for huge outputs. Budgets are hard caps because spending is two-phase: before a call the
 * gateway reserves its worst case (an upper bound of its input plus the most output it may
 * produce, clamped to what every budget still allows), and the check and the reservation are one
 * transaction, which SQLite runs one at a time and PostgreSQL orders by locking the tenant's,
 * agent's and run's account rows (in key order, so two transactions never wait on each other in
 * a cycle) before reading them: hard caps across every host sharing the store. Settlement replaces the reservation with the
 * provider's own figures, which cannot exceed the worst case for the tokenizers providers use
 * (every token is at least one byte of the request); a provider that reports more is still billed
 * what it reports (the ledger records the truth), and the overrun is recorded on the settlement.
 */
import { ACTIVE_STATUSES, AppError, type Balance, fromMicro } from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import { sql } from "kysely";
import type { Metrics } from "../metrics/metrics.ts";
import { checkFence, type Fence } from "../store/fence.ts";
import { newId } from "../store/ids.ts";
import { type Dialect, dbNow, timeBucket } from "../store/portable.ts";
import type { CreditAccountsTable, Database } from "../store/schema.ts";

/** Which budget ran out. */
export type BudgetScope = "tenant" | "agent" | "run";

export interface ReserveRequest {
  tenantId: string;
  agentId: string;
  runId: string;
  /** Micro-credits of the input's upper bound. */
  inputMicro: number;
  /** Micro-credits per output token. */
  outputMicroPerToken: number;
  /** The most output tokens asked for. */
  maxOutputTokens: number;
  /** The agent's caps in micro-credits, when it has them. */
  agentTotal?: number;
  perRun?: number;
  /** The calling attempt: reserved only while it still holds its run (see store/fence.ts). */
  fence?: Fence;
  /**
   * Micro-credits the run's spending (spent and held) may reach without a person's approval: a
   * call whose reservation would take it past them reserves nothing and answers `approve`.
   */
  approveAbove?: number;
}

export type ReserveResult =
  | { ok: true; reservation: Reservation }
  | {
      ok: false;
      scope: BudgetScope;
      availableMicro: number;
      /** Even with every reservation in flight released, the budget could not pay for this call. */
      exhausted: boolean;
      /**
       * Set when the call needs a person's approval first (approveAbove): what it would reserve, and
       * what the run spent and holds. Nothing was reserved.
       */
      approve?: { amount: number; runSpent: number };
    };

export interface Reservation {
  callId: string;
  tenantId: string;
  agentId: string;
  runId: string;
  amount: number;
  /** Output tokens the call may produce (the request's max, clamped to the budgets). */
  maxOutputTokens: number;
  /** Set once it is settled or released. */
  closed?: boolean;
}

export interface SettleDetail {
  provider: string;
  model: string;
  input_tokens: number;
  output_tokens: number;
  /**
   * How the figures were found: the provider's usage, counted from a stream that broke off, the
   * reserved worst case (the provider's figures never came), or a call a host crash left open.
   */
  source: "usage" | "counted" | "reserved" | "abandoned";
}

const keys = (r: { tenantId: string; agentId: string; runId: string }) => ({
  tenant: `tenant:${r.tenantId}`,
  agent: `agent:${r.agentId}`,
  run: `run:${r.runId}`,
});

const EMPTY = { granted: 0, spent: 0, reserved: 0 };

/**
 * Told, inside the transaction that bills a call, how the tenant's balance (granted minus spent,
 * in micro-credits) fell, so that what announces it (a credits.low notification) commits with it.
 */
export interface SpendWatcher {
  /** Writes in `trx` what the fall from `beforeMicro` to `afterMicro` announces; true when it wrote any. */
  spent(trx: Transaction<Database>, tenantId: string, beforeMicro: number, afterMicro: number): Promise<boolean>;
  /** Told once what spent() wrote has committed. */
  committed(): void;
}

export class Ledger {
  readonly #db: Kysely<Database>;
  readonly #dialect: Dialect;
  readonly #now: () => number;
  readonly #watcher: SpendWatcher | undefined;
  readonly #metrics: Pick<Metrics, "creditsSpent"> | undefined;

  constructor(
    db: Kysely<Database>,
    options: {
      now?: () => number;
      dialect?: Dialect;
      watcher?: SpendWatcher | undefined;
      metrics?: Pick<Metrics, "creditsSpent">;
    } = {},
  ) {
    this.#db = db;
    this.#dialect = options.dialect ?? "sqlite";
    this.#now = options.now ?? Date.now;
    this.#watcher = options.watcher;
    this.#metrics = options.metrics;
  }

  /** Adds (or, negative, takes back) credits of a tenant. */
  async grant(tenantId: string, micro: number, note?: string): Promise<Balance> {
    return this.#db.transaction().execute((trx) => this.grantWithin(trx, tenantId, micro, note));
  }

  /** A grant inside the caller's transaction: it holds only if that transaction commits. */
  async grantWithin(trx: Transaction<Database>, tenantId: string, micro: number, note?: string): Promise<Balance> {
    if (!Number.isSafeInteger(micro) || micro === 0)
      throw new AppError("validation_failed", "A grant is a whole, non-zero amount.");
    const tenant = await trx.selectFrom("tenants").select("id").where("id", "=", tenantId).executeTakeFirst();
    if (!tenant) throw new AppError("not_found", `No tenant '${tenantId.slice(0, 64)}'.`);
    await this.#append(trx, { tenantId, kind: "grant", amount: micro, detail: note ? { note } : null });
    await bump(trx, `tenant:${tenantId}`, { granted: micro });
    return toBalance(await account(trx, `tenant:${tenantId}`));
  }

  /**
   * Reserves the worst case of one call, clamping its output to what the tightest budget allows.
   * Refuses when not even one output token (or, for free output, the input) fits.
   */
  async reserve(req: ReserveRequest): Promise<ReserveResult> {
    const k = keys(req);
    return this.#db.transaction().execute(async (trx) => {
      if (req.fence) await checkFence(trx, req.fence, this.#dialect);
      const list = [k.tenant, k.agent, k.run];
      const found = this.#dialect === "postgres" ? await lockedAccounts(trx, list) : await accounts(trx, list);
      const [tenant, agent, run] = [k.tenant, k.agent, k.run].map((key) => found.get(key) ?? EMPTY) as [
        typeof EMPTY,
        typeof EMPTY,
        typeof EMPTY,
      ];
      // What each budget has left now, and what it would have once every call in flight settled for nothing.
      const limits: [BudgetScope, number, number][] = [
        ["tenant", tenant.granted - tenant.spent - tenant.reserved, tenant.granted - tenant.spent],
      ];
      if (req.agentTotal !== undefined) {
        limits.push(["agent", req.agentTotal - agent.spent - agent.reserved, req.agentTotal - agent.spent]);
      }
      if (req.perRun !== undefined) limits.push(["run", req.perRun - run.spent - run.reserved, req.perRun - run.spent]);
      const [scope, available] = limits.reduce((a, b) => (b[1] < a[1] ? b : a));
      const perToken = req.outputMicroPerToken;
      const cost = (tokens: number) => Math.ceil(req.inputMicro + tokens * perToken);
      let maxOutputTokens =
        perToken > 0
          ? Math.min(req.maxOutputTokens, Math.floor((available - req.inputMicro) / perToken))
          : req.maxOutputTokens;
      // Rounding up may not carry a reservation past the budget.
      while (maxOutputTokens >= 1 && cost(maxOutputTokens) > available) maxOutputTokens--;
      if (maxOutputTokens < 1) {
        const floor = Math.min(...limits.map((l) => l[2]));
        return {
          ok: false as const,
          scope,
          availableMicro: Math.max(0, available),
          exhausted: floor < cost(1),
        };
      }
      const amount = cost(maxOutputTokens);
      const runSpent = run.spent + run.reserved;
      if (req.approveAbove !== undefined && runSpent + amount > req.approveAbove) {
        return {
          ok: false as const,
          scope: "run" as const,
          availableMicro: Math.max(0, available),
          exhausted: false,
          approve: { amount, runSpent },
        };
      }
      const callId = newId("llm");
      await this.#append(trx, {
        ...req,
        callId,
        kind: "reserve",
        amount,
        detail: { max_output_tokens: maxOutputTokens },
      });
      await bump(trx, [k.tenant, k.agent, k.run], { reserved: amount });
      return {
        ok: true as const,
        reservation: {
          callId,
          tenantId: req.tenantId,
          agentId: req.agentId,
          runId: req.runId,
          amount,
          maxOutputTokens,
        },
      };
    });
  }

  /** Replaces the reservation with what the call cost. */
  async settle(r: Reservation, costMicro: number, detail: SettleDetail): Promise<void> {
    const cost = Math.max(0, Math.ceil(costMicro));
    await this.#close(r, "settle", cost, { ...detail, ...(cost > r.amount ? { overrun: cost - r.amount } : {}) });
  }

  /**
   * Closes the reservations a host that died mid-call left open: each is billed at its worst
   * case (whether the provider did the work cannot be known), so that budgets are not held
   * forever. Run at start, before this node makes any call. Only reservations no live attempt can
   * still settle are touched: of runs that are not starting, running or waiting, whose lease lapsed, or
   * that an earlier start of this same node (`nodeId`) held; never another live node's. Returns
   * how many it closed.
   */
  async settleAbandoned(nodeId?: string): Promise<number> {
    const open = await this.#db
      .selectFrom("credit_ledger as r")
      .selectAll("r")
      .where("r.kind", "=", "reserve")
      .where(({ not, exists, selectFrom }) =>
        not(
          exists(
            selectFrom("runs as h")
              .select("h.id")
              .whereRef("h.id", "=", "r.run_id")
              .where("h.status", "in", ACTIVE_STATUSES)
              .where("h.lease_until", ">=", dbNow(this.#dialect))
              .$if(nodeId !== undefined, (q) => q.where("h.worker_id", "!=", nodeId ?? "")),
          ),
        ),
      )
      .where(({ not, exists, selectFrom }) =>
        not(
          exists(
            selectFrom("credit_ledger as c")
              .select("c.id")
              .whereRef("c.call_id", "=", "r.call_id")
              .where("c.kind", "in", ["settle", "release"]),
          ),
        ),
      )
      .execute();
    for (const row of open) {
      const reservation: Reservation = {
        callId: row.call_id ?? "",
        tenantId: row.tenant_id,
        agentId: row.agent_id ?? "",
        runId: row.run_id ?? "",
        amount: Number(row.amount),
        maxOutputTokens: 0,
      };
      await this.settle(reservation, reservation.amount, {
        provider: "",
        model: "",
        input_tokens: 0,
        output_tokens: 0,
        source: "abandoned",
      });
    }
    return open.length;
  }

  /** Gives the reservation back: the call failed before the provider produced anything billable. */
  async release(r: Reservation, reason: string): Promise<void> {
    await this.#close(r, "release", 0, { reason });
  }

  async #close(r: Reservation, kind: "settle" | "release", cost: number, detail: unknown): Promise<void> {
    // Once per reservation: a second settle or release of the same call changes nothing.
    if (r.closed) return;
    r.closed = true;
    const watcher = this.#watcher;
    try {
      const announced = await this.#db.transaction().execute(async (trx) => {
        await this.#append(trx, { ...r, kind, amount: cost, detail });
        await bump(trx, Object.values(keys(r)), { reserved: -r.amount, spent: cost });
        if (!watcher || cost <= 0) return false;
        // Read after the bump: the row's lock orders settlements, so each sees its own fall.
        const tenant = await account(trx, `tenant:${r.tenantId}`);
        const after = Number(tenant.granted) - Number(tenant.spent);
        return watcher.spent(trx, r.tenantId, after + cost, after);
      });
      if (announced) watcher?.committed();
    } catch (err) {
      r.closed = false;
      throw err;
    }
    this.#metrics?.creditsSpent(r.tenantId, cost);
  }

  async balance(tenantId: string): Promise<Balance> {
    return toBalance(await account(this.#db, `tenant:${tenantId}`));
  }

  /** Spent and reserved micro-credits of agents or runs, by id. */
  async totals(scope: "agent" | "run", ids: string[]): Promise<Map<string, { spent: number; reserved: number }>> {
    const out = new Map<string, { spent: number; reserved: number }>();
    if (ids.length === 0) return out;
    const rows = await this.#db
      .selectFrom("credit_accounts")
      .selectAll()
      .where(
        "key",
        "in",
        ids.map((id) => `${scope}:${id}`),
      )
      .execute();
    for (const row of rows)
      out.set(row.key.slice(scope.length + 1), { spent: Number(row.spent), reserved: Number(row.reserved) });
    return out;
  }

  /**
   * Micro-credits the tenant's model calls (of one agent, when given) were settled for in each
   * bucket of `range`, by agent.
   */
  async spentByBucket(
    tenantId: string,
    range: { from: number; to: number; bucketMs: number; agentId?: string },
  ): Promise<{ bucket: number; agent_id: string | null; micro: number }[]> {
    const rows = await this.spentQuery(tenantId, range).execute();
    return rows.map((r) => ({ bucket: Number(r.bucket), agent_id: r.agent_id, micro: Number(r.micro) }));
  }

  /** The query of spentByBucket(): a range of one index that holds every column it reads. */
  spentQuery(tenantId: string, range: { from: number; to: number; bucketMs: number; agentId?: string }) {
    const bucket = timeBucket("created_at", range.from, range.bucketMs);
    return this.#db
      .selectFrom("credit_ledger")
      .select((eb) => [bucket.as("bucket"), "agent_id", eb.fn.sum<number | string>("amount").as("micro")])
      .where("tenant_id", "=", tenantId)
      .where("kind", "=", "settle")
      .where("created_at", ">=", range.from)
      .where("created_at", "<", range.to)
      .$if(range.agentId !== undefined, (q) => q.where("agent_id", "=", range.agentId ?? ""))
      .groupBy([bucket, "agent_id"]);
  }

  /** A run's calls: each reservation with its settlement or release. */
  async runCalls(tenantId: string, runId: string) {
    const rows = await this.#db
      .selectFrom("credit_ledger")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .where("run_id", "=", runId)
      .orderBy("id")
      .execute();
    const calls = new Map<
      string,
      {
        call_id: string;
        provider: string;
        model: string;
        input_tokens: number;
        output_tokens: number;
        cost: number;
        status: "settled" | "released" | "reserved";
        created_at: string;
        reserved: number;
      }
    >();
    // Reservations first: a settlement written in the same millisecond may sort before its reservation.
    rows.sort((a, b) => Number(b.kind === "reserve") - Number(a.kind === "reserve"));
    for (const row of rows) {
      if (!row.call_id) continue;
      const detail = row.detail ? (JSON.parse(row.detail) as Partial<SettleDetail>) : {};
      if (row.kind === "reserve") {
        calls.set(row.call_id, {
          call_id: row.call_id,
          provider: "",
          model: "",
          input_tokens: 0,
          output_tokens: 0,
          cost: 0,
          status: "reserved",
          created_at: new Date(Number(row.created_at)).toISOString(),
          reserved: Number(row.amount),
        });
        continue;
      }
      const call = calls.get(row.call_id);
      if (!call) continue;
      call.status = row.kind === "settle" ? "settled" : "released";
      call.provider = detail.provider ?? "";
      call.model = detail.model ?? "";
      call.input_tokens = detail.input_tokens ?? 0;
      call.output_tokens = detail.output_tokens ?? 0;
      call.cost = fromMicro(Number(row.amount));
    }
    const list = [...calls.values()];
    return {
      run_id: runId,
      spent: fromMicro(list.reduce((n, c) => n + (c.status === "settled" ? Math.round(c.cost * 1e6) : 0), 0)),
      reserved: fromMicro(list.reduce((n, c) => n + (c.status === "reserved" ? c.reserved : 0), 0)),
      calls: list.map(({ reserved: _r, ...c }) => c),
    };
  }

  async #append(
    trx: Transaction<Database>,
    row: {
      tenantId: string;
      agentId?: string;
      runId?: string;
      callId?: string;
      kind: "grant" | "reserve" | "settle" | "release";
      amount: number;
      detail: unknown;
    },
  ): Promise<void> {
    await trx
      .insertInto("credit_ledger")
      .values({
        id: newId("led"),
        tenant_id: row.tenantId,
        agent_id: row.agentId ?? null,
        run_id: row.runId ?? null,
        call_id: row.callId ?? null,
        kind: row.kind,
        amount: row.amount,
        detail: row.detail === null ? null : JSON.stringify(row.detail),
        created_at: this.#now(),
      })
      .execute();
  }
}

async function accounts(db: Kysely<Database> | Transaction<Database>, list: string[]) {
  const rows = await db.selectFrom("credit_accounts").selectAll().where("key", "in", list).execute();
  return new Map(
    rows.map((row) => [
      row.key,
      { granted: Number(row.granted), spent: Number(row.spent), reserved: Number(row.reserved) },
    ]),
  );
}

/**
 * The accounts of `list`, made (empty) where new and locked FOR UPDATE in key order until the
 * transaction ends: PostgreSQL's READ COMMITTED would otherwise let two reservations read the same
 * totals and both fit.
 */
async function lockedAccounts(trx: Transaction<Database>, list: string[]) {
  const sorted = [...list].sort();
  await trx
    .insertInto("credit_accounts")
    .values(sorted.map((key) => ({ key, ...EMPTY })))
    .onConflict((oc) => oc.column("key").doNothing())
    .execute();
  const rows = await trx
    .selectFrom("credit_accounts")
    .selectAll()
    .where("key", "in", sorted)
    .orderBy("key")
    .forUpdate()
    .execute();
  return new Map(rows.map((row) => [row.key, row]));
}

async function account(db: Kysely<Database> | Transaction<Database>, key: string) {
  return (await accounts(db, [key])).get(key) ?? EMPTY;
}

/** Adds the same amounts to each of `list`'s running totals, in one statement. */
async function bump(
  trx: Transaction<Database>,
  list: string | string[],
  by: Partial<Omit<CreditAccountsTable, "key">>,
): Promise<void> {
  const granted = by.granted ?? 0;
  const spent = by.spent ?? 0;
  const reserved = by.reserved ?? 0;
  await trx
    .insertInto("credit_accounts")
    // In key order, as lockedAccounts takes the same rows' locks.
    .values((Array.isArray(list) ? [...list].sort() : [list]).map((key) => ({ key, granted, spent, reserved })))
    .onConflict((oc) =>
      oc.column("key").doUpdateSet({
        granted: sql`credit_accounts.granted + ${granted}`,
        spent: sql`credit_accounts.spent + ${spent}`,
        reserved: sql`credit_accounts.reserved + ${reserved}`,
      }),
    )
    .execute();
}

function toBalance(a: { granted: number; spent: number; reserved: number }): Balance {
  return {
    granted: fromMicro(a.granted),
    spent: fromMicro(a.spent),
    reserved: fromMicro(a.reserved),
    available: fromMicro(a.granted - a.spent - a.reserved),
  };
}
