/**
 * The LLM gateway's contract: model providers and their price tables (admin), credits (grants,
 * balances, per-run spend) and agents' budgets. Amounts on the wire are credits as decimal
 * numbers; the host keeps them as whole micro-credits so that sums never drift.
 */
import { z } from "zod";
import { ApprovalRule } from "./approvals.ts";

/** Which wire format a provider speaks. `openai_compatible` covers vLLM, llama.cpp server, Ollama. */
export const ProviderKind = z.enum(["openai", "anthropic", "openai_compatible"]);
export type ProviderKind = z.infer<typeof ProviderKind>;

export const ProviderName = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[a-z0-9][a-z0-9_-]*$/, "lower-case letters, digits, '-' and '_', starting with a letter or digit");

/** A model's name as callers send it in `model`. */
export const ModelName = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:/@-]*$/, "letters, digits and . _ : / @ -");

const Credits = z.number().min(0).max(1_000_000_000);

/** Prices in credits per million tokens, and the most output tokens one call may ask for. */
export const ModelPrice = z
  .object({
    input: Credits,
    output: Credits,
    max_output_tokens: z.number().int().min(1).max(1_000_000).default(4096),
  })
  .strict()
  .meta({ id: "ModelPrice" });
export type ModelPrice = z.infer<typeof ModelPrice>;

const SecretRef = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, "a secret name: letters, digits, '_', '.' and '-', at most 64");

/** Default base URLs by kind; an openai_compatible provider must give its own. */
export const PROVIDER_BASE_URLS: Readonly<Record<ProviderKind, string | null>> = {
  openai: "https://api.openai.com/v1",
  anthropic: "https://api.anthropic.com",
  openai_compatible: null,
};

/** `PUT /v1/providers/{name}` (admin): the key is a secret of the admin's tenant, named here. */
export const ProviderPut = z
  .object({
    kind: ProviderKind,
    base_url: z
      .url({ protocol: /^https?$/ })
      .max(2048)
      .optional(),
    secret: SecretRef.optional(),
    models: z
      .record(ModelName, ModelPrice)
      .refine((m) => Object.keys(m).length >= 1, "at least one model")
      .refine((m) => Object.keys(m).length <= 500, "at most 500 models"),
    timeout_ms: z.number().int().min(1000).max(600_000).default(120_000),
  })
  .strict()
  .refine((p) => p.base_url !== undefined || PROVIDER_BASE_URLS[p.kind] !== null, {
    message: "an openai_compatible provider needs its base_url",
    path: ["base_url"],
  })
  .meta({ id: "ProviderPut" });
export type ProviderPut = z.infer<typeof ProviderPut>;
export type ProviderPutInput = z.input<typeof ProviderPut>;

export const Provider = z
  .object({
    name: z.string(),
    kind: ProviderKind,
    base_url: z.string(),
    secret: z.string().nullable(),
    models: z.record(z.string(), ModelPrice),
    timeout_ms: z.number().int(),
    created_at: z.string(),
    updated_at: z.string(),
  })
  .meta({ id: "Provider" });
export type Provider = z.infer<typeof Provider>;

/** A model as tenants see it (`GET /v1/models`). */
export const Model = z
  .object({ model: z.string(), provider: z.string(), api: z.enum(["openai", "anthropic"]), price: ModelPrice })
  .meta({ id: "Model" });
export type Model = z.infer<typeof Model>;

/** `POST /v1/credits/grants` (admin). A negative amount takes credits back. */
export const CreditGrant = z
  .object({
    tenant: z.string().min(1).max(64),
    credits: z
      .number()
      .min(-1_000_000_000)
      .max(1_000_000_000)
      .refine((n) => n !== 0, "not zero"),
    note: z.string().max(500).optional(),
  })
  .strict()
  .meta({ id: "CreditGrant" });
export type CreditGrant = z.infer<typeof CreditGrant>;

/** An agent's budgets (credits) and LLM rate limits; each is optional. */
export const AgentBudget = z
  .object({
    /** Most one run (all its attempts and calls) may spend. */
    per_run: Credits.optional(),
    /** Most the agent may spend over its lifetime. */
    total: Credits.optional(),
    requests_per_minute: z.number().int().min(1).max(1_000_000).optional(),
    tokens_per_minute: z.number().int().min(1).max(1_000_000_000).optional(),
    /**
     * A model call whose worst case would take the run's spending (spent and held) past this many
     * credits waits for a person's approval first.
     */
    approve_above: Credits.optional(),
    /** Who approves those calls and how long they wait (default: the tenant's keys, an hour). */
    approval: ApprovalRule.optional(),
  })
  .strict()
  .meta({ id: "AgentBudget" });
export type AgentBudget = z.infer<typeof AgentBudget>;

export const Balance = z
  .object({
    granted: z.number(),
    spent: z.number(),
    reserved: z.number(),
    available: z.number(),
  })
  .meta({ id: "Balance" });
export type Balance = z.infer<typeof Balance>;

export const Credits_ = z
  .object({
    tenant: Balance,
    agents: z.array(
      z.object({
        agent_id: z.string(),
        name: z.string(),
        spent: z.number(),
        reserved: z.number(),
        budget: AgentBudget,
      }),
    ),
  })
  .meta({ id: "Credits" });
export type CreditsView = z.infer<typeof Credits_>;

/** One metered call on a run's bill. */
export const LlmCall = z
  .object({
    call_id: z.string(),
    provider: z.string(),
    model: z.string(),
    input_tokens: z.number().int(),
    output_tokens: z.number().int(),
    cost: z.number(),
    status: z.enum(["settled", "released", "reserved"]),
    created_at: z.string(),
  })
  .meta({ id: "LlmCall" });

export const RunCredits = z
  .object({ run_id: z.string(), spent: z.number(), reserved: z.number(), calls: z.array(LlmCall) })
  .meta({ id: "RunCredits" });
export type RunCredits = z.infer<typeof RunCredits>;

/** Whole micro-credits from credits, and back. */
export const toMicro = (credits: number): number => Math.round(credits * 1_000_000);
export const fromMicro = (micro: number): number => micro / 1_000_000;

/**
 * The fields of a model request the gateway reads, checked before it acts on them; everything
 * else goes to the provider as the caller sent it.
 */
export const LlmRequest = z.looseObject({
  model: z.string().min(1).max(128),
  stream: z.boolean().nullish(),
  n: z.number().nullish(),
  best_of: z.number().nullish(),
  max_tokens: z.number().nullish(),
  max_completion_tokens: z.number().nullish(),
  max_output_tokens: z.number().nullish(),
  n_predict: z.number().nullish(),
  max_new_tokens: z.number().nullish(),
  tools: z.array(z.looseObject({ type: z.string().optional() })).nullish(),
});
export type LlmRequest = z.infer<typeof LlmRequest>;
