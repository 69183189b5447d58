/**
 * The LLM gateway's management routes: model providers and their prices (admin), the models a
 * tenant may call, credit grants (admin), balances with a per-agent breakdown, and a run's bill.
 */
import {
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
import { z } from "zod";
import type { Agents } from "../agents/agents.ts";
import type { Ledger } from "../gateway/ledger.ts";
import type { Providers } from "../gateway/providers.ts";
import type { Identity } from "../identity/identity.ts";
import { type ApiEnv, type DefineRoute, Id, json, jsonBody, pathParam, tenantOf } from "./http.ts";

const Name = z.object({ name: pathParam(ProviderName, "provider") });

export interface GatewayRouteDeps {
  providers: Providers;
  ledger: Ledger;
  identity: Identity;
  agents: Agents;
  /** The run of the caller's tenant with this id (not_found otherwise). */
  findRun: (c: Context<ApiEnv>, id: string) => Promise<{ id: string }>;
}

export function registerGatewayRoutes(route: DefineRoute, deps: GatewayRouteDeps): void {
  const { providers, ledger } = deps;
  const one = "/v1/providers/{name}";
  route(
    {
      method: "put",
      path: one,
      summary: "Create or replace a model provider (admin); its key is a secret of the admin's tenant",
      auth: "admin",
      request: { params: Name, body: jsonBody(ProviderPut) },
      responses: { 200: json(Provider, "Replaced"), 201: json(Provider, "Created") },
    },
    async (c) => {
      const { provider, created } = await providers.put(tenantOf(c), c.req.valid("param").name, c.req.valid("json"));
      return c.json(provider, created ? 201 : 200);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/providers",
      summary: "List model providers (admin)",
      auth: "admin",
      responses: { 200: json(Page(Provider), "Providers") },
    },
    async (c) => c.json({ data: await providers.list(), next_cursor: null }, 200),
  );
  route(
    {
      method: "get",
      path: one,
      summary: "Get a model provider (admin)",
      auth: "admin",
      request: { params: Name },
      responses: { 200: json(Provider, "The provider") },
    },
    async (c) => c.json(await providers.get(c.req.valid("param").name), 200),
  );
  route(
    {
      method: "delete",
      path: one,
      summary: "Delete a model provider (admin)",
      auth: "admin",
      request: { params: Name },
      responses: { 200: json(Provider, "Deleted") },
    },
    async (c) => c.json(await providers.delete(c.req.valid("param").name), 200),
  );
  route(
    {
      method: "get",
      path: "/v1/models",
      summary: "Models agents may call, with prices",
      auth: "tenant",
      responses: { 200: json(Page(Model), "Models") },
    },
    async (c) => {
      const data = (await providers.models())
        .map(([model, r]) => ({ model, provider: r.provider, api: r.api, price: r.price }))
        .sort((a, b) => (a.model < b.model ? -1 : 1));
      return c.json({ data, next_cursor: null }, 200);
    },
  );
  route(
    {
      method: "post",
      path: "/v1/credits/grants",
      summary: "Grant credits to a tenant, or take them back with a negative amount (admin)",
      auth: "admin",
      request: { body: jsonBody(CreditGrant) },
      responses: { 201: json(Balance, "The tenant's balance after the grant") },
    },
    async (c) => {
      const body = c.req.valid("json");
      const tenant = await deps.identity.findTenant(body.tenant);
      return c.json(await ledger.grant(tenant.id, toMicro(body.credits), body.note), 201);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/credits",
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
    {
      method: "get",
      path: "/v1/runs/{id}/credits",
      summary: "A run's LLM calls and what each cost",
      auth: "tenant",
      request: { params: z.object({ id: pathParam(Id, "run") }) },
      responses: { 200: json(RunCredits, "The run's bill") },
    },
    async (c) => {
      const run = await deps.findRun(c, c.req.valid("param").id);
      return c.json(await ledger.runCalls(tenantOf(c), run.id), 200);
    },
  );
}
