/**
 * Model providers, set by the host's admin: which wire format each speaks, where it is, which
 * secret of the admin's tenant holds its key, and a price table per model. A model name belongs
 * to one provider, so a call's `model` alone picks where it goes and what it costs. Provider
 * base URLs are the admin's choice and may be local (a llama.cpp server on the host): tenants and
 * sandboxes never set them.
 */
import {
  AppError,
  ModelPrice,
  PROVIDER_BASE_URLS,
  type Provider,
  ProviderKind,
  ProviderPut,
  type ProviderPutInput,
} from "@paddock/protocol";
import type { Kysely } from "kysely";
import { z } from "zod";
import type { Database, ProvidersTable } from "../store/schema.ts";
import { parseStored } from "../store/stored.ts";

/** A provider as stored (`providers.spec`): what was put, with its base URL resolved. */
const StoredProvider = z.object({
  kind: ProviderKind,
  base_url: z.string(),
  secret: z.string().optional(),
  models: z.record(z.string(), ModelPrice),
  timeout_ms: z.number().int(),
  /** The tenant whose secret holds the key (the admin's). */
  owner_tenant: z.string(),
});
type StoredProvider = z.infer<typeof StoredProvider>;
const parseProvider = (text: string) => parseStored(StoredProvider, text, "provider");

/** What the gateway needs of one model. */
export interface ModelRoute {
  provider: string;
  kind: ProviderKind;
  /** The wire format callers must use for it. */
  api: "openai" | "anthropic";
  baseUrl: string;
  ownerTenant: string;
  secret: string | null;
  timeoutMs: number;
  price: ModelPrice;
}

export const apiOf = (kind: ProviderKind): "openai" | "anthropic" => (kind === "anthropic" ? "anthropic" : "openai");

function toProvider(row: ProvidersTable): Provider {
  const spec = parseProvider(row.spec);
  return {
    name: row.name,
    kind: spec.kind,
    base_url: spec.base_url,
    secret: spec.secret ?? null,
    models: spec.models,
    timeout_ms: spec.timeout_ms,
    created_at: new Date(Number(row.created_at)).toISOString(),
    updated_at: new Date(Number(row.updated_at)).toISOString(),
  };
}

export class Providers {
  readonly #db: Kysely<Database>;
  #routes: Promise<Map<string, ModelRoute>> | null = null;

  constructor(db: Kysely<Database>) {
    this.#db = db;
  }

  /** Creates or replaces a provider; refuses a model another provider already serves. */
  async put(
    ownerTenant: string,
    name: string,
    input: ProviderPutInput,
  ): Promise<{ provider: Provider; created: boolean }> {
    const body = ProviderPut.parse(input);
    const base = (body.base_url ?? PROVIDER_BASE_URLS[body.kind] ?? "").replace(/\/+$/, "");
    const stored: StoredProvider = { ...body, base_url: base, owner_tenant: ownerTenant };
    const now = Date.now();
    const result = await this.#db.transaction().execute(async (trx) => {
      if (body.secret !== undefined) {
        const secret = await trx
          .selectFrom("secrets")
          .select("id")
          .where("tenant_id", "=", ownerTenant)
          .where("name", "=", body.secret)
          .executeTakeFirst();
        if (!secret)
          throw new AppError("unknown_secret", `No secret '${body.secret}' to hold the provider's key; set it first.`);
      }
      const others = await trx.selectFrom("providers").selectAll().where("name", "!=", name).execute();
      for (const other of others) {
        const models = Object.keys(parseProvider(other.spec).models);
        const clash = models.find((m) => m in body.models);
        if (clash) {
          throw new AppError("conflict", `The model '${clash}' is already served by the provider '${other.name}'.`, {
            model: clash,
            provider: other.name,
          });
        }
      }
      const existing = await trx.selectFrom("providers").selectAll().where("name", "=", name).executeTakeFirst();
      const row: ProvidersTable = {
        name,
        spec: JSON.stringify(stored),
        created_at: existing ? Number(existing.created_at) : now,
        updated_at: now,
      };
      if (existing) await trx.updateTable("providers").set(row).where("name", "=", name).execute();
      else await trx.insertInto("providers").values(row).execute();
      return { provider: toProvider(row), created: !existing };
    });
    this.#routes = null;
    return result;
  }

  async list(): Promise<Provider[]> {
    return (await this.#db.selectFrom("providers").selectAll().orderBy("name").execute()).map(toProvider);
  }

  async get(name: string): Promise<Provider> {
    const row = await this.#db.selectFrom("providers").selectAll().where("name", "=", name).executeTakeFirst();
    if (!row) throw new AppError("not_found", `No provider '${name.slice(0, 64)}'.`);
    return toProvider(row);
  }

  async delete(name: string): Promise<Provider> {
    const provider = await this.get(name);
    await this.#db.deleteFrom("providers").where("name", "=", name).execute();
    this.#routes = null;
    return provider;
  }

  /** The route of `model`, or null when no provider serves it. */
  async route(model: string): Promise<ModelRoute | null> {
    this.#routes ??= this.#load().catch((err: unknown) => {
      this.#routes = null;
      throw err;
    });
    return (await this.#routes).get(model) ?? null;
  }

  /** Every model with its route. */
  async models(): Promise<[string, ModelRoute][]> {
    this.#routes ??= this.#load();
    return [...(await this.#routes).entries()];
  }

  async #load(): Promise<Map<string, ModelRoute>> {
    const out = new Map<string, ModelRoute>();
    for (const row of await this.#db.selectFrom("providers").selectAll().execute()) {
      const spec = parseProvider(row.spec);
      for (const [model, price] of Object.entries(spec.models)) {
        out.set(model, {
          provider: row.name,
          kind: spec.kind,
          api: apiOf(spec.kind),
          baseUrl: spec.base_url,
          ownerTenant: spec.owner_tenant,
          secret: spec.secret ?? null,
          timeoutMs: spec.timeout_ms,
          price,
        });
      }
    }
    return out;
  }
}
