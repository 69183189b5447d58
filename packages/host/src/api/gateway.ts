/**
 * The LLM gateway's management routes: model providers and their prices (admin), the models a
 * tenant may call, credit grants (admin), balances with a per-agent breakdown, and a run's bill.
 */
import {
  AppError,
  Balance,
  CreditGrant,
  Credits_,
  fromMicro,
  Model,
  Page,
  Provider,
  ProviderName,
  ProviderPut,
  RunCredits,
  toMicro,
} from "@paddock/protocol";
import type { Context } from "hono";
import type { Kysely } from "kysely";
import type { Agents } from "../agents/agents.ts";
import type { Ledger } from "../gateway/ledger.ts";
import type { Providers } from "../gateway/providers.ts";
import type { Database } from "../store/schema.ts";
import { json, type RouteHelpers, readJson } from "./http.ts";

export interface GatewayRouteHelpers<C extends Context> extends RouteHelpers<C> {
  /** The run named by the path's {id}, of the caller's tenant (not_found otherwise). */
  findRun: (c: C) => Promise<{ id: string }>;
}

function nameParam(c: Context): string {
  const value = c.req.param("name") ?? "";
  if (!ProviderName.safeParse(value).success) throw new AppError("not_found", `No provider '${value.slice(0, 80)}'.`);
  return value;
}

export function registerGatewayRoutes<C extends Context>(
  deps: { providers: Providers; ledger: Ledger; db: Kysely<Database>; agents: Agents },
  h: GatewayRouteHelpers<C>,
): void {
  const { route, tenantOf } = h;
  const { providers, ledger, db } = deps;
  const one = "/v1/providers/{name}";
  route(
    "put",
    one,
    {
      summary: "Create or replace a model provider (admin); its key is a secret of the admin's tenant",
      auth: "admin",
      body: ProviderPut,
      responses: { 200: json(Provider, "Replaced"), 201: json(Provider, "Created") },
    },
    async (c) => {
      const name = nameParam(c);
      const body = await readJson(c, ProviderPut);
      const { provider, created } = await providers.put(tenantOf(c), name, body);
      return c.json(provider, created ? 201 : 200);
    },
  );
  route(
    "get",
    "/v1/providers",
    { summary: "List model providers (admin)", auth: "admin", responses: { 200: json(Page(Provider), "Providers") } },
    async (c) => c.json({ data: await providers.list(), next_cursor: null }),
  );
  route(
    "get",
    one,
    { summary: "Get a model provider (admin)", auth: "admin", responses: { 200: json(Provider, "The provider") } },
    async (c) => c.json(await providers.get(nameParam(c))),
  );
  route(
    "delete",
    one,
    { summary: "Delete a model provider (admin)", auth: "admin", responses: { 200: json(Provider, "Deleted") } },
    async (c) => c.json(await providers.delete(nameParam(c))),
  );
  route(
    "get",
    "/v1/models",
    { summary: "Models agents may call, with prices", auth: "tenant", responses: { 200: json(Page(Model), "Models") } },
    async (c) => {
      const data = (await providers.models())
        .map(([model, r]) => ({ model, provider: r.provider, api: r.api, price: r.price }))
        .sort((a, b) => (a.model < b.model ? -1 : 1));
      return c.json({ data, next_cursor: null });
    },
  );
  route(
    "post",
    "/v1/credits/grants",
    {
      summary: "Grant credits to a tenant, or take them back with a negative amount (admin)",
      auth: "admin",
      body: CreditGrant,
      responses: { 201: json(Balance, "The tenant's balance after the grant") },
    },
    async (c) => {
      const body = await readJson(c, CreditGrant);
      let tenantId = body.tenant;
      const byName = await db.selectFrom("tenants").select("id").where("name", "=", body.tenant).executeTakeFirst();
      if (byName) tenantId = byName.id;
      return c.json(await ledger.grant(tenantId, toMicro(body.credits), body.note), 201);
    },
  );
  route(
    "get",
    "/v1/credits",
    {
      summary: "The tenant's balance and each agent's spending and budget",
      auth: "tenant",
      responses: { 200: json(Credits_, "Balances") },
    },
    async (c) => {
      const tenantId = tenantOf(c);
      const agents = await deps.agents.budgets(tenantId);
      const totals = await ledger.totals(
        "agent",
        agents.map((a) => a.id),
      );
      return c.json({
        tenant: await ledger.balance(tenantId),
        agents: agents.map((a) => ({
          agent_id: a.id,
          name: a.name,
          spent: fromMicro(totals.get(a.id)?.spent ?? 0),
          reserved: fromMicro(totals.get(a.id)?.reserved ?? 0),
          budget: a.budget,
        })),
      });
    },
  );
  route(
    "get",
    "/v1/runs/{id}/credits",
    {
      summary: "A run's LLM calls and what each cost",
      auth: "tenant",
      responses: { 200: json(RunCredits, "The run's bill") },
    },
    async (c) => {
      const run = await h.findRun(c);
      return c.json(await ledger.runCalls(tenantOf(c), run.id));
    },
  );
}
