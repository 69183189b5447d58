/** Request and response bodies of the HTTP API. The OpenAPI document is generated from these. */
import { z } from "zod";
import { BuiltinDefinition } from "./agent-definition.ts";
import { AgentPolicy } from "./bridge.ts";
import { AgentBudget } from "./gateway.ts";
import { Limits } from "./limits.ts";
import { McpPins } from "./mcp.ts";
import { EndUser } from "./oauth.ts";
import { RetryPolicy } from "./triggers.ts";

const Name = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[a-z0-9][a-z0-9_-]*$/, "lower-case letters, digits, '-' and '_', starting with a letter or digit");

/** A relative path inside the agent's /app folder: no absolute paths, no '..', no empty parts. */
const FilePath = z
  .string()
  .min(1)
  .max(255)
  .refine(
    (p) =>
      !p.startsWith("/") &&
      p.split("/").every((part) => part !== "" && part !== "." && part !== "..") &&
      !/[\0\\]/.test(p),
    "a relative path with no '.', '..' or empty parts",
  );

const EnvName = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, "letters, digits and '_'")
  .refine((n) => !n.toUpperCase().startsWith("PADDOCK_"), "the PADDOCK_ prefix is reserved");

export const MAX_FILES_BYTES = 8 * 1024 * 1024;

/** The built-in agent's tools. */
export const BuiltinTool = z.enum(["shell", "read_file", "write_file", "http", "call_agent", "finish"]);
export const BUILTIN_TOOLS = BuiltinTool.options;

/** The fields of an agent's definition in a request; AgentCreate and AgentUpdate check them. */
const AgentFields = z
  .object({
    name: Name,
    /** The command the agent runs in its sandbox; or give `instructions` for the built-in agent. */
    command: z.array(z.string().min(1).max(8192)).min(1).max(256).optional(),
    /** The built-in agent: an LLM tool loop with these instructions (its system prompt). */
    instructions: z.string().min(1).max(65536).optional(),
    /** The built-in agent's model (GET /v1/models). */
    model: z.string().min(1).max(128).optional(),
    /** The built-in agent's tools (default all). */
    tools: z
      .array(BuiltinTool)
      .min(1)
      .refine((t) => new Set(t).size === t.length, "each tool once")
      .optional(),
    /** The most model calls the built-in agent makes in one run (default 20). */
    max_steps: z.number().int().min(1).max(500).optional(),
    env: z
      .record(EnvName, z.string().max(8192))
      .refine((e) => Object.keys(e).length <= 128, "at most 128 variables")
      .optional(),
    files: z
      .record(FilePath, z.string())
      .refine((f) => Object.keys(f).length <= 1000, "at most 1000 files")
      .refine(
        (f) => Object.values(f).reduce((n, s) => n + Buffer.byteLength(s), 0) <= MAX_FILES_BYTES,
        `at most ${MAX_FILES_BYTES} bytes of files in all`,
      )
      .optional(),
    limits: Limits.partial().strict().optional(),
    image: z.string().min(1).max(128).optional(),
    /** The bridge connections the agent's runs may call (default none). */
    policy: AgentPolicy.optional(),
    /** Credits budgets and LLM rate limits (default: the tenant's balance bounds it). */
    budget: AgentBudget.optional(),
    /** How failed attempts are retried (default: one attempt). */
    retry: RetryPolicy.optional(),
    /** Runs of this agent at once (default: no limit beyond the host's and the tenant's). */
    max_concurrent_runs: z.number().int().min(1).max(1000).optional(),
    /** A run still queued this long after it was triggered expires (default: never). */
    queue_ttl_s: z
      .number()
      .int()
      .min(1)
      .max(30 * 86_400)
      .optional(),
  })
  .strict();

/** What makes a whole definition: a command or the built-in agent's instructions, and their fields. */
function checkKind(a: Omit<z.infer<typeof AgentFields>, "name">, ctx: z.RefinementCtx): void {
  if ((a.command === undefined) === (a.instructions === undefined)) {
    ctx.addIssue({
      code: "custom",
      path: ["command"],
      message: "give either command or instructions (the built-in agent)",
    });
  }
  if (a.instructions !== undefined && a.model === undefined) {
    ctx.addIssue({ code: "custom", path: ["model"], message: "the built-in agent needs a model" });
  }
  if (a.instructions === undefined) {
    for (const k of ["model", "tools", "max_steps"] as const) {
      if (a[k] !== undefined)
        ctx.addIssue({ code: "custom", path: [k], message: "only for the built-in agent (instructions)" });
    }
  }
}

export const AgentCreate = AgentFields.superRefine(checkKind).meta({ id: "AgentCreate" });
export type AgentCreate = z.infer<typeof AgentCreate>;

/**
 * A whole new definition of an existing agent (PUT): AgentCreate's body, whose name may be left
 * out (it must be the agent's own when given). Fields left out take their defaults, as in a create.
 */
export const AgentReplace = AgentFields.partial({ name: true }).superRefine(checkKind).meta({ id: "AgentReplace" });
export type AgentReplace = z.infer<typeof AgentReplace>;

/** The schema inside defaults and optionals: a merge patch fills in no default. */
function bare(schema: z.ZodType): z.ZodType {
  let s = schema;
  while (s instanceof z.ZodDefault || s instanceof z.ZodOptional) s = s.unwrap() as z.ZodType;
  return s;
}

/** An object's fields as a merge patch gives them: each optional, `null` removes it (back to its default). */
type PatchShape<S extends z.ZodRawShape> = {
  -readonly [K in keyof S]: z.ZodOptional<z.ZodNullable<z.ZodType<Exclude<z.output<S[K]>, undefined>>>>;
};

/** An object's merge patch: each key optional, `null` removes it (back to its default). */
function objectPatch<S extends z.ZodRawShape>(shape: S): z.ZodObject<PatchShape<S>, z.core.$strict> {
  const fields = Object.entries(shape).map(([k, s]) => [
    k,
    bare(s as z.ZodType)
      .nullable()
      .optional(),
  ]);
  return z.object(Object.fromEntries(fields) as PatchShape<S>).strict();
}

/**
 * A new version of an agent as a JSON merge patch (RFC 7396) of its definition: the fields given
 * replace the agent's, objects (`limits`, `budget`, `policy`, `retry`, `env`) merge key by key,
 * `null` removes a key or clears a field (back to its default), arrays replace, and the rest
 * stays. `command` and `instructions` each replace the other kind of agent. `files` replace all
 * the agent's files (a new environment version; `null`: none); `image: null` is the default
 * image. The result must be a valid AgentCreate. The name cannot change: a `name` must be the
 * agent's own.
 */
export const AgentUpdate = z
  .object({
    ...objectPatch(AgentFields.shape).shape,
    name: Name.optional(),
    env: z
      .record(EnvName, z.string().max(8192).nullable())
      .refine((e) => Object.keys(e).length <= 128, "at most 128 variables")
      .nullable()
      .optional(),
    limits: objectPatch(Limits.shape).nullable().optional(),
    policy: objectPatch(AgentPolicy.shape).nullable().optional(),
    budget: objectPatch(AgentBudget.shape).nullable().optional(),
    retry: objectPatch(RetryPolicy.shape).nullable().optional(),
  })
  .strict()
  .meta({ id: "AgentUpdate" });
export type AgentUpdate = z.infer<typeof AgentUpdate>;

export const Agent = z
  .object({
    id: z.string(),
    name: z.string(),
    command: z.array(z.string()),
    env: z.record(z.string(), z.string()),
    files: z.array(z.object({ path: z.string(), size: z.number().int() })),
    limits: Limits,
    snapshot: z.object({
      version: z.number().int(),
      base: z.string(),
      layers: z.array(z.string()),
      runner: z.string(),
    }),
    policy: AgentPolicy,
    budget: AgentBudget,
    retry: RetryPolicy,
    max_concurrent_runs: z.number().int().nullable(),
    queue_ttl_s: z.number().int().nullable(),
    /** The built-in agent's definition; null for an agent that runs its own command. */
    builtin: BuiltinDefinition.nullable(),
    /** The definition's version: 1 when created, one more for each update that changed it. */
    version: z.number().int(),
    /** When the agent was deleted: it starts no new runs; it and its runs stay readable. */
    archived_at: z.string().nullable(),
    created_at: z.string(),
    /** `GET /v1/agents/{id}` of an agent whose policy names MCP servers: the tools its current version is pinned to (server → tool → pin). */
    mcp_pins: McpPins.optional(),
  })
  .meta({ id: "Agent" });
export type Agent = z.infer<typeof Agent>;

/** What an agent's definition says at one version (an Agent without its identity and environment). */
export const AgentVersionDefinition = Agent.pick({
  command: true,
  env: true,
  files: true,
  limits: true,
  policy: true,
  budget: true,
  retry: true,
  max_concurrent_runs: true,
  queue_ttl_s: true,
  builtin: true,
}).meta({ id: "AgentVersionDefinition" });
export type AgentVersionDefinition = z.infer<typeof AgentVersionDefinition>;

/** One version of an agent's definition (`GET /v1/agents/{id}/versions`). */
export const AgentVersion = z
  .object({ version: z.number().int(), created_at: z.string(), definition: AgentVersionDefinition })
  .meta({ id: "AgentVersion" });
export type AgentVersion = z.infer<typeof AgentVersion>;

/** A version of an agent's environment. */
export const Snapshot = z
  .object({
    version: z.number().int(),
    base: z.string(),
    layers: z.array(z.string()),
    runner: z.string(),
    reason: z.enum(["create", "update", "freeze", "rollback", "runner", "import"]),
    parent_version: z.number().int().nullable(),
    changes: z.unknown(),
    env_bytes: z.number().int(),
    created_at: z.string(),
    current: z.boolean(),
  })
  .meta({ id: "Snapshot" });
export type Snapshot = z.infer<typeof Snapshot>;

export const Runner = z
  .object({ digest: z.string(), created_at: z.string(), published_at: z.string().nullable(), current: z.boolean() })
  .meta({ id: "Runner" });

export const MAX_RUNNER_BUNDLE_BYTES = 16 * 1024 * 1024;
export const MAX_RUNNER_NODE_BYTES = 256 * 1024 * 1024;
/** The parts of `POST /v1/runners` (multipart/form-data): files, described here for the API document. */
export const RunnerPublish = z
  .object({
    bundle: z.string().meta({ format: "binary", description: "The runner bundle: one ES module file." }),
    node: z
      .string()
      .optional()
      .meta({ format: "binary", description: "The Node binary it runs on; default the host's own." }),
  })
  .meta({ id: "RunnerPublish" });

/**
 * A run's status. `waiting`: its attempt is up but holds a call until a person decides it (reason
 * `approval`); it goes back to `running` once nothing of it waits any more.
 */
export const RunStatus = z.enum([
  "queued",
  "starting",
  "running",
  "waiting",
  "succeeded",
  "failed",
  "timed_out",
  "canceled",
]);
export type RunStatus = z.infer<typeof RunStatus>;
export const TERMINAL_STATUSES: readonly RunStatus[] = ["succeeded", "failed", "timed_out", "canceled"];
/** The statuses of a run an attempt holds (on some node): its sandbox is booting, running or waiting. */
export const ACTIVE_STATUSES: readonly RunStatus[] = ["starting", "running", "waiting"];
/** The statuses of a run that has not ended: queued, or held by an attempt. */
export const GOING_STATUSES: readonly RunStatus[] = ["queued", ...ACTIVE_STATUSES];

/** Why a run (or attempt) ended the way it did. */
export const RunReason = z.enum([
  "completed",
  "exit_code",
  "killed",
  "oom",
  "timed_out",
  "canceled",
  "command_not_found",
  "lost",
  "sandbox_error",
  "out_of_credits",
  "expired",
  /** Not an end: a waiting run's reason while a call of it waits for a person's decision. */
  "approval",
]);
export type RunReason = z.infer<typeof RunReason>;

export const MAX_INPUT_BYTES = 256 * 1024;

export const RunCreate = z
  .object({
    input: z
      .unknown()
      .refine(
        (v) => Buffer.byteLength(JSON.stringify(v) ?? "") <= MAX_INPUT_BYTES,
        `input serializes to at most ${MAX_INPUT_BYTES} bytes`,
      )
      .optional(),
    /**
     * The product's user the run acts for: connections with OAuth auth attach this end user's
     * accounts (of this tenant). Fixed for the run, its retries and its child runs.
     */
    end_user: EndUser.optional(),
  })
  .strict()
  .meta({ id: "RunCreate" });
export type RunCreate = z.infer<typeof RunCreate>;

/**
 * What started a run: an API call (the CLI, the dashboard's "run now"), a schedule, a webhook,
 * another run (agent), or a replay of an earlier run (`POST /v1/runs/{id}/replay`).
 */
export const RunTrigger = z.enum(["api", "schedule", "webhook", "agent", "replay"]);
export type RunTrigger = z.infer<typeof RunTrigger>;

/**
 * `POST /v1/runs/{id}/replay`: a new run of the same agent version, environment and end user as
 * the run named, with its input, or with `input` instead when given (`null` included).
 */
export const RunReplay = RunCreate.omit({ end_user: true }).meta({ id: "RunReplay" });
export type RunReplay = z.infer<typeof RunReplay>;

export const Run = z
  .object({
    id: z.string(),
    agent_id: z.string(),
    status: RunStatus,
    reason: RunReason.nullable(),
    exit_code: z.number().int().nullable(),
    attempt: z.number().int(),
    max_attempts: z.number().int(),
    trigger: RunTrigger,
    /** For a replay: the run it replays. */
    replay_of: z.string().nullable(),
    /** A queued run waits until then (a retry's backoff). */
    not_before: z.string().nullable(),
    /** A child run: the run that started it, and the root of its tree. */
    parent_run_id: z.string().nullable(),
    root_run_id: z.string().nullable(),
    /** The agent's definition version the run was triggered with (it keeps it through retries). */
    agent_version: z.number().int(),
    input: z.unknown(),
    /** The end user whose accounts its OAuth connections use, if any. */
    end_user: z.string().nullable(),
    created_at: z.string(),
    started_at: z.string().nullable(),
    finished_at: z.string().nullable(),
  })
  .meta({ id: "Run" });
export type Run = z.infer<typeof Run>;

/** The paging of a list: at most `limit` items after `cursor` (the `next_cursor` of the page before). */
export const PageQuery = z.object({
  limit: z.coerce.number().int().min(1).max(200).default(50),
  cursor: z.string().max(64).optional(),
});

/** A time in a query: ISO 8601 with its zone (`Z` or an offset), e.g. 2026-03-01T09:00:00Z. */
export const QueryTime = z.iso.datetime({ offset: true }).max(40);

/** An id's prefix as a search gives it: the `run_` of a run's id may be left out. */
export const RunIdPrefix = z
  .string()
  .max(30)
  .regex(/^(run_)?[0-9a-z]{1,26}$/, "the start of a run id, such as run_01k2 (the run_ may be left out)");

/**
 * `GET /v1/runs`: the tenant's runs, newest first, narrowed by every filter given.
 * `created_after` is inclusive and `created_before` exclusive; `root_run_id` gives the runs of a
 * tree under its root (not the root itself), `parent_run_id` the runs a run started.
 */
export const RunsQuery = PageQuery.extend({
  agent_id: z.string().max(64).optional(),
  status: RunStatus.optional(),
  trigger: RunTrigger.optional(),
  parent_run_id: z.string().max(64).optional(),
  root_run_id: z.string().max(64).optional(),
  created_after: QueryTime.optional(),
  created_before: QueryTime.optional(),
  id_prefix: RunIdPrefix.optional(),
});
export type RunsQuery = z.input<typeof RunsQuery>;

export const Artifact = z
  .object({
    id: z.string(),
    run_id: z.string(),
    attempt: z.number().int(),
    path: z.string(),
    size: z.number().int(),
    sha256: z.string(),
    content_type: z.string(),
    created_at: z.string(),
  })
  .meta({ id: "Artifact" });
export type Artifact = z.infer<typeof Artifact>;

export const TenantCreate = z.object({ name: Name }).strict().meta({ id: "TenantCreate" });
export const Tenant = z.object({ id: z.string(), name: z.string(), created_at: z.string() }).meta({ id: "Tenant" });
export type Tenant = z.infer<typeof Tenant>;

export const ApiKeyCreate = z
  .object({ name: z.string().min(1).max(64).optional() })
  .strict()
  .meta({ id: "ApiKeyCreate" });
export const ApiKey = z
  .object({
    id: z.string(),
    tenant_id: z.string(),
    name: z.string().nullable(),
    role: z.enum(["admin", "tenant"]),
    created_at: z.string(),
    /** When the key was revoked: it authenticates nothing since. */
    revoked_at: z.string().nullable(),
    /** Present only in the response that created the key. */
    key: z.string().optional(),
  })
  .meta({ id: "ApiKey" });
export type ApiKey = z.infer<typeof ApiKey>;

export const Page = <T extends z.ZodType>(item: T) =>
  z.object({ data: z.array(item), next_cursor: z.string().nullable() });

export const ErrorResponse = z
  .object({
    error: z.object({ code: z.string(), message: z.string(), details: z.unknown().optional() }),
  })
  .meta({ id: "Error" });

/** A node sharing the store: one `paddock serve` process. */
export const NodeInfo = z
  .object({
    id: z.string(),
    version: z.string(),
    /** The API URL other nodes use to reach it. */
    internal_url: z.string(),
    sandbox_cidr: z.string(),
    started_at: z.string(),
    heartbeat_at: z.string(),
    stopped_at: z.string().nullable(),
    /** Heartbeating and not stopped. */
    live: z.boolean(),
    /** Claims no new runs; its runs going finish. */
    draining: z.boolean(),
    /** Runs it holds now (starting or running). */
    active_runs: z.number().int(),
  })
  .meta({ id: "Node" });
export type NodeInfo = z.infer<typeof NodeInfo>;
