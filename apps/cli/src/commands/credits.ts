/**
 * `paddock providers set|list|delete`, `paddock models` and `paddock credits`: the LLM gateway's
 * model providers and prices (admin), the models agents may call, balances and a run's bill.
 */
import { ProviderKind, type ProviderPutInput } from "@paddock/protocol";
import { CONNECTION_HELP, parseCommand, UsageError } from "../args.ts";
import type { Client } from "../client.ts";
import { type Command, type CommandGroup, type Context, connect } from "../context.ts";
import { formatTable } from "../format.ts";

/** `NAME=IN/OUT[/MAX]`: credits per million input and output tokens, and the most output tokens. */
export function parseModelFlag(text: string): [string, { input: number; output: number; max_output_tokens?: number }] {
  const m = /^([^=]+)=([0-9.]+)\/([0-9.]+)(?:\/([0-9]+))?$/.exec(text);
  if (!m?.[1] || m[2] === undefined || m[3] === undefined) {
    throw new UsageError(`--model takes NAME=INPUT/OUTPUT[/MAX_OUTPUT_TOKENS], not '${text}'`, "providers set");
  }
  const price = { input: Number(m[2]), output: Number(m[3]) };
  if (!Number.isFinite(price.input) || !Number.isFinite(price.output)) {
    throw new UsageError(`--model prices must be numbers: '${text}'`, "providers set");
  }
  return [m[1], m[4] ? { ...price, max_output_tokens: Number(m[4]) } : price];
}

const setProvider: Command = {
  name: "set",
  summary: "create or replace a model provider (admin)",
  usage: `Usage: paddock providers set NAME --kind openai|anthropic|openai_compatible --model NAME=IN/OUT[/MAX]... [options]

Prices are credits per million input and output tokens; MAX is the most output tokens one call may ask.
The provider's key is a secret of the admin's tenant: 'paddock secrets set NAME' first.

Options:
  --kind KIND       the wire format the provider speaks
  --base-url URL    where it is (required for openai_compatible: vLLM, llama.cpp server, Ollama)
  --secret NAME     the secret that holds its API key
  --model SPEC      a model and its prices, repeatable
  --timeout-ms MS   how long one call may take (default 120000)
  --json            print the provider as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "providers set",
      options: {
        kind: { type: "string" },
        "base-url": { type: "string" },
        secret: { type: "string" },
        model: { type: "string", multiple: true },
        "timeout-ms": { type: "string" },
        json: { type: "boolean" },
      },
      positionals: { min: 1, max: 1 },
    });
    const kind = ProviderKind.safeParse(values.kind);
    if (!kind.success) throw new UsageError("--kind is one of openai, anthropic, openai_compatible", "providers set");
    if (!values.model?.length) throw new UsageError("name at least one --model", "providers set");
    const body: ProviderPutInput = {
      kind: kind.data,
      models: Object.fromEntries(values.model.map(parseModelFlag)),
      ...(values["base-url"] ? { base_url: values["base-url"] } : {}),
      ...(values.secret ? { secret: values.secret } : {}),
      ...(values["timeout-ms"] ? { timeout_ms: Number(values["timeout-ms"]) } : {}),
    };
    const client = await connect(values, ctx);
    const { provider, created } = await client.putProvider(positionals[0] ?? "", body);
    if (values.json) ctx.out(JSON.stringify(provider, null, 2));
    else
      ctx.out(
        `${created ? "created" : "updated"} provider ${provider.name} (${Object.keys(provider.models).length} models)`,
      );
    await warnWithoutCredits(client, ctx);
    return 0;
  },
};

/**
 * A note on stderr when the caller's tenant (the admin's own, 'default') has no credits left: a
 * provider alone does not let its runs call a model. Reading the balance is advisory: its failure
 * is not the command's.
 */
async function warnWithoutCredits(client: Client, ctx: Context): Promise<void> {
  const balance = await client.credits().then(
    (view) => view.tenant,
    () => null,
  );
  if (balance === null || balance.available > 0) return;
  ctx.err(
    `note: this tenant has no credits available (granted ${balance.granted}, spent ${balance.spent}): ` +
      "its runs' model calls stop with out_of_credits until it has some: paddock credits grant default CREDITS",
  );
}

const listProviders: Command = {
  name: "list",
  summary: "list model providers (admin)",
  usage: `Usage: paddock providers list [--json]\n\n${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "providers list", options: { json: { type: "boolean" } } });
    const list = await (await connect(values, ctx)).listProviders();
    if (values.json) ctx.out(JSON.stringify(list, null, 2));
    else if (list.length === 0) ctx.err("no providers");
    else {
      ctx.out(
        formatTable(
          ["NAME", "KIND", "BASE URL", "SECRET", "MODELS"],
          list.map((p) => [p.name, p.kind, p.base_url, p.secret ?? "-", Object.keys(p.models).join(",")]),
        ),
      );
    }
    return 0;
  },
};

const deleteProvider: Command = {
  name: "delete",
  summary: "delete a model provider (admin)",
  usage: `Usage: paddock providers delete NAME\n\n${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "providers delete",
      options: {},
      positionals: { min: 1, max: 1 },
    });
    const gone = await (await connect(values, ctx)).deleteProvider(positionals[0] ?? "");
    ctx.out(`deleted provider ${gone.name}`);
    return 0;
  },
};

export const providers: CommandGroup = {
  name: "providers",
  summary: "model providers and prices (admin)",
  commands: [setProvider, listProviders, deleteProvider],
};

export const models: Command = {
  name: "models",
  summary: "models agents may call, with prices",
  usage: `Usage: paddock models [--json]\n\n${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "models", options: { json: { type: "boolean" } } });
    const list = await (await connect(values, ctx)).listModels();
    if (values.json) ctx.out(JSON.stringify(list, null, 2));
    else if (list.length === 0) ctx.err("no models");
    else {
      ctx.out(
        formatTable(
          ["MODEL", "PROVIDER", "API", "IN/M", "OUT/M", "MAX OUT"],
          list.map((m) => [
            m.model,
            m.provider,
            m.api,
            String(m.price.input),
            String(m.price.output),
            String(m.price.max_output_tokens),
          ]),
        ),
      );
    }
    return 0;
  },
};

export const credits: Command = {
  name: "credits",
  summary: "balances, a run's bill (RUN_ID), or grant TENANT CREDITS (admin)",
  usage: `Usage: paddock credits [RUN_ID] [--json]
       paddock credits grant TENANT CREDITS [--note TEXT]

Without arguments: the tenant's balance and each agent's spending and budget.
With a run id: the run's LLM calls and what each cost.
grant (admin key): adds credits to a tenant (name or id); a negative amount takes them back.

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "credits",
      options: { json: { type: "boolean" }, note: { type: "string" } },
      positionals: { min: 0, max: 3 },
    });
    const client = await connect(values, ctx);
    const show = (value: unknown) => {
      ctx.out(JSON.stringify(value, null, 2));
      return 0;
    };
    if (positionals[0] === "grant") {
      const amount = Number(positionals[2]);
      if (!positionals[1] || !Number.isFinite(amount) || amount === 0) {
        throw new UsageError("grant takes a tenant and a non-zero number of credits", "credits");
      }
      const balance = await client.grantCredits(positionals[1], amount, values.note);
      if (values.json) show(balance);
      else
        ctx.out(
          `${positionals[1]}: ${balance.available} credits available (${balance.granted} granted, ${balance.spent} spent)`,
        );
      return 0;
    }
    if (positionals.length > 1) throw new UsageError("credits takes at most one run id", "credits");
    if (positionals[0]) {
      const bill = await client.runCredits(positionals[0]);
      if (values.json) return show(bill);
      ctx.out(`run ${bill.run_id}: ${bill.spent} credits spent, ${bill.reserved} reserved`);
      if (bill.calls.length > 0) {
        ctx.out(
          formatTable(
            ["CALL", "MODEL", "IN", "OUT", "COST", "STATUS"],
            bill.calls.map((c) => [
              c.call_id,
              c.model || "-",
              String(c.input_tokens),
              String(c.output_tokens),
              String(c.cost),
              c.status,
            ]),
          ),
        );
      }
      return 0;
    }
    const view = await client.credits();
    if (values.json) return show(view);
    const t = view.tenant;
    ctx.out(`available ${t.available} credits (granted ${t.granted}, spent ${t.spent}, reserved ${t.reserved})`);
    if (view.agents.length > 0) {
      ctx.out(
        formatTable(
          ["AGENT", "SPENT", "RESERVED", "PER RUN", "TOTAL"],
          view.agents.map((a) => [
            a.name,
            String(a.spent),
            String(a.reserved),
            a.budget.per_run === undefined ? "-" : String(a.budget.per_run),
            a.budget.total === undefined ? "-" : String(a.budget.total),
          ]),
        ),
      );
    }
    return 0;
  },
};
