/**
 * Run events: a run's timeline. Every event type has its `data` schema here, and `RunEvent` is
 * their union, discriminated on `type`. The host's event log accepts only these (with no field
 * beyond the schema's); the API describes them; the CLI and the tests read them by type.
 *
 * A stdout marker `::paddock::{"type":…,"data":…}` from an agent is one `user` event whatever its
 * own type; the built-in agent's markers (`tool.call`, `tool.result`, …) are such user events, and
 * `BuiltinAgentEvent` describes what they carry.
 */
import { z } from "zod";
import { Run, RunReason, RunStatus, Snapshot } from "./api.ts";
import { ApprovalRequest, ApprovalStatus, ApprovalVia } from "./approvals.ts";
import { ErrorCode } from "./errors.ts";
import { Marker } from "./runner.ts";
import { RetryReason } from "./triggers.ts";

const Int = z.number().int();
/** A status a run or an attempt ends in. */
const EndStatus = RunStatus.extract(["succeeded", "failed", "timed_out", "canceled"]);
const RunEnded = z.object({ status: EndStatus, reason: RunReason, exit_code: Int.nullable() });
/** Whose budget ran out: the run's, its agent's, or the tenant's. */
export const BudgetScope = z.enum(["run", "agent", "tenant"]);
export type BudgetScope = z.infer<typeof BudgetScope>;

/** A call through the bridge to a connection (`bridge.call`). */
export const BridgeCallData = z
  .object({
    connection: z.string(),
    method: z.string(),
    path: z.string(),
    rule: z.string().optional(),
    status: Int,
    code: ErrorCode.optional(),
    bytes_in: Int,
    bytes_out: Int,
    ms: z.number(),
    redacted: Int.optional(),
    replayed: z.boolean().optional(),
    step: z.string().optional(),
    approval: z.string().optional().describe("The approval the call waited for."),
  })
  .describe("A call through the bridge to a connection; refusals included (`code`).");

/** A request to an MCP server through a run's MCP endpoint (`mcp.call`). */
export const McpCallData = z
  .object({
    server: z.string(),
    /** The JSON-RPC method: tools/call, resources/read, prompts/get. */
    method: z.string(),
    /** The tool, resource URI or prompt asked for. */
    tool: z.string(),
    /** ok: the server answered; tool_error: it answered with a tool error (isError); error: no answer (see code). */
    status: z.enum(["ok", "tool_error", "error"]),
    code: ErrorCode.optional(),
    latency_ms: z.number(),
    /** Size of the answer passed back, in bytes. */
    bytes: Int,
    /** The start of the arguments and of the answer, with the server's credential replaced. */
    args_preview: z.string().optional(),
    result_preview: z.string().optional(),
    replayed: z.boolean().optional(),
    step: z.string().optional(),
    approval: z.string().optional().describe("The approval the call waited for."),
  })
  .describe("A request to an MCP server through the run's MCP endpoint; refusals included (`code`).");
export type McpCallData = z.infer<typeof McpCallData>;

/** A call to the LLM gateway (`llm.call`). */
export const LlmCallData = z
  .object({
    path: z.string().optional(),
    model: z.string().optional(),
    provider: z.string().optional(),
    stream: z.boolean().optional(),
    step: z.string().optional(),
    status: Int.optional(),
    code: ErrorCode.optional(),
    call_id: z.string().optional(),
    clamped_max_tokens: Int.optional(),
    input_tokens: Int.optional(),
    output_tokens: Int.optional(),
    cost: z.number().optional().describe("Credits charged."),
    usage: z
      .enum(["counted", "reserved"])
      .optional()
      .describe("How the tokens were counted when the provider reported none."),
    ttft_ms: z.number().optional(),
    latency_ms: z.number().optional(),
    aborted: z.boolean().optional(),
    replayed: z.boolean().optional(),
    from_attempt: Int.optional(),
    approval: z.string().optional().describe("The approval the call waited for."),
  })
  .describe("A call to the LLM gateway: what it cost and how it went; refusals included (`code`).");

/** Each event type's data, described for the API document. */
const EVENTS = {
  "run.queued": z
    .object({
      status: z.literal("queued"),
      trigger: Run.shape.trigger,
      replay_of: z.string().optional().describe("For a replay: the run it replays."),
    })
    .describe("The run was created; what started it."),
  "run.parent": z
    .object({ parent_run_id: z.string(), root_run_id: z.string() })
    .describe("A child run: the run that started it and the root of its tree."),
  "run.starting": z.object({ status: z.literal("starting"), attempt: Int }).describe("An attempt is booting."),
  "run.running": z
    .object({ status: z.literal("running"), attempt: Int, boot_ms: z.number(), warm: z.boolean() })
    .describe("The sandbox is up (`warm`: it was booted ahead) and the command starts."),
  "run.waiting": z
    .object({ status: z.literal("waiting"), reason: z.literal("approval"), approval_id: z.string() })
    .describe("A call of the run waits for a person's approval; the run waits with it."),
  "run.resumed": z
    .object({ status: z.literal("running"), waited_ms: z.number() })
    .describe("Nothing of the run waits for an approval any more; it runs on."),
  "run.cancel_requested": z.object({}).describe("A cancel arrived; the run ends canceled once its sandbox is gone."),
  "run.requeued": z
    .object({ status: z.literal("queued"), why: z.literal("host_shutdown") })
    .describe("The host stopped while the run was going; it runs again from the queue."),
  "run.expired": z.object({ waited_ms: z.number() }).describe("A queued run outlived its agent's queue_ttl_s."),
  "run.succeeded": RunEnded.describe("The run ended: its command exited 0."),
  "run.failed": RunEnded.describe("The run ended failed; `reason` says why."),
  "run.timed_out": RunEnded.describe("The run ended: it reached limits.timeout_s."),
  "run.canceled": RunEnded.describe("The run ended canceled."),
  "attempt.started": z.object({ attempt: Int, worker: z.string() }).describe("An attempt began on this host's worker."),
  "attempt.finished": RunEnded.extend({ attempt: Int }).describe("How an attempt ended."),
  "attempt.lost": z
    .object({ attempt: Int, worker: z.string().nullable(), why: z.string() })
    .describe("The attempt's worker stopped renewing its lease, or the host stopped under it."),
  "attempt.error": z
    .object({
      stage: z.enum(["boot", "spawn", "artifacts"]),
      message: z.string(),
      code: z.string().optional().describe("The OS error's name when the command did not start (ENOENT, EACCES)."),
    })
    .describe("The sandbox did not boot, the command did not start, or collecting artifacts failed."),
  "attempt.protocol_errors": z
    .object({ frames: Int })
    .describe("Frames from the runner that did not match the host⇄runner contract, counted and dropped."),
  "retry.scheduled": z
    .object({
      reason: RetryReason,
      exit_code: Int.nullable(),
      attempt: Int,
      max_attempts: Int,
      delay_ms: Int,
      at: z.string(),
    })
    .describe("The attempt failed for a reason the agent's retry policy names; the next one starts at `at`."),
  "runner.swapped": z
    .object({ from: z.string().nullable(), to: z.string(), ms: z.number() })
    .describe("The snapshot names another runner than the current one, which was mounted instead."),
  "snapshot.created": z
    .object({
      version: Int,
      reason: Snapshot.shape.reason,
      runner: z.string(),
      base: z.string(),
      layers: z.array(z.string()),
    })
    .describe("After a run with a swapped runner: a snapshot version naming the current runner."),
  log: z
    .object({
      stream: z.enum(["stdout", "stderr", "runner"]),
      line: z.string(),
      truncated: z.boolean().optional(),
    })
    .describe("A line the command wrote (`runner`: the runner's own stderr)."),
  "log.truncated": z
    .object({ limit_bytes: Int })
    .describe("Logs and user events reached limits.log_kb; what follows is counted, not stored."),
  "log.dropped": z.object({ lines: Int }).describe("How many lines and user events were dropped past limits.log_kb."),
  "events.truncated": z.object({ limit: Int }).describe("The attempt reached the most events one attempt stores."),
  user: z
    .object({ type: Marker.shape.type, data: z.unknown() })
    .describe("A `::paddock::` marker the agent wrote: its own type, and its data (null when it gave none)."),
  "artifact.created": z
    .object({
      artifact_id: z.string(),
      path: z.string(),
      size: Int,
      sha256: z.string(),
      content_type: z.string(),
    })
    .describe("A file the attempt left under /outputs, kept as an artifact."),
  "artifact.skipped": z
    .union([z.object({ path: z.string(), why: z.string() }), z.object({ more: Int })])
    .describe("A file under /outputs not kept, and why; `more`: how many more were skipped than listed."),
  "bridge.call": BridgeCallData,
  "mcp.call": McpCallData,
  "llm.call": LlmCallData,
  "credits.exhausted": z
    .object({ budget: BudgetScope })
    .describe("A model call was refused because a budget ran out; the run stops with reason out_of_credits."),
  "agent.call": z
    .object({
      path: z.string(),
      agent: z.string().optional(),
      status: Int.optional(),
      code: ErrorCode.optional(),
      replayed: z.boolean().optional(),
      step: z.string().optional(),
      approval: z.string().optional().describe("The approval the start waited for."),
    })
    .describe("A bridge request to start or read a child run that was refused, replayed or approved."),
  "agent.called": z
    .object({ agent: z.string(), run_id: z.string(), depth: Int })
    .describe("This run started a child run."),
  "approval.requested": z
    .object({
      approval_id: z.string(),
      request: ApprovalRequest,
      approvers: z.array(z.string()),
      expires_at: z.string(),
    })
    .describe("A call waits for a person's approval: what the host would send, who may decide, until when."),
  "approval.decided": z
    .object({
      approval_id: z.string(),
      status: ApprovalStatus.exclude(["pending"]),
      via: ApprovalVia,
      /** The API key that decided (via api). */
      key_id: z.string().nullable(),
      note: z.string().optional(),
      waited_ms: z.number(),
    })
    .describe("An approval was decided: approved or denied by a person, expired, or canceled with its run."),
  "journal.diverged": z
    .object({ step: z.string(), kind: z.enum(["llm", "bridge", "agent", "mcp"]), connection: z.string().optional() })
    .describe("A retried attempt made another request at a journaled step than the earlier attempt; it went live."),
  "schedule.fired": z
    .object({ schedule_id: z.string(), slot: z.string(), late_ms: z.number() })
    .describe("A schedule started this run for its slot."),
  "webhook.received": z
    .object({ webhook_id: z.string(), delivery_id: z.string(), bytes: Int })
    .describe("A signed webhook delivery started this run."),
  "account.refreshed": z
    .object({
      account: z.string(),
      app: z.string(),
      /** `expiry`: its token was about to expire; `unauthorized`: the upstream answered 401. */
      reason: z.enum(["expiry", "unauthorized"]),
      /** The provider refused the refresh (invalid_grant): the account needs its user again. */
      needs_reauth: z.boolean(),
      ms: z.number(),
    })
    .describe("The bridge refreshed the run's end user's OAuth token on a call's path (never a token value)."),
};

type Events = typeof EVENTS;
/** The list as z.discriminatedUnion takes it (never empty: EVENTS is not). */
const options = <T>(list: T[]) => list as [T, ...T[]];

/** Every event type, each with its data schema: `{type, data}` as the host appends it. */
const VARIANTS = Object.entries(EVENTS).map(([type, data]) =>
  z.object({ type: z.literal(type), data: data as z.ZodType }),
);

const Envelope = { seq: Int, run_id: z.string(), attempt: Int, time: z.string() };

/**
 * An event as the API serves it, of a type this build knows. Parsing drops data fields the schema
 * does not declare (a newer host may add some); the host's log refuses them on append
 * (`RunEventBody`). Readers parse with `RunEventRead`, which also keeps types they do not know.
 */
export const RunEvent = z
  .discriminatedUnion(
    "type",
    options(VARIANTS.map((v) => v.extend(Envelope).meta({ id: `RunEvent.${v.shape.type.value}` }))),
  )
  .meta({ id: "RunEvent" }) as unknown as z.ZodType<RunEvent>;

/** The data fields of each event type, exactly: nothing missing, nothing more. */
function exact(schema: z.ZodType): z.ZodType {
  if (schema instanceof z.ZodObject) return schema.strict();
  if (schema instanceof z.ZodUnion) return z.union(schema.options.map((o) => exact(o as z.ZodType)));
  return schema;
}

/** An event as the host appends it, checked exactly: its type and data, no undeclared field. */
export const RunEventBody = z.discriminatedUnion(
  "type",
  options(VARIANTS.map((v) => z.strictObject({ type: v.shape.type, data: exact(v.shape.data) }))),
) as unknown as z.ZodType<RunEventBody>;

/** The event types, each with its data, as a union discriminated on `type`. */
export type RunEventBody = { [T in keyof Events]: { type: T; data: z.infer<Events[T]> } }[keyof Events];
export type RunEventType = keyof Events;
export type RunEvent = RunEventBody & { seq: number; run_id: string; attempt: number; time: string };
/** One type's event, e.g. `RunEventOf<"llm.call">`. */
export type RunEventOf<T extends RunEventType> = Extract<RunEvent, { type: T }>;
/** One type's data, e.g. `RunEventData<"log">`. */
export type RunEventData<T extends RunEventType> = z.infer<Events[T]>;

export const RUN_EVENT_TYPES = Object.keys(EVENTS) as RunEventType[];
const KNOWN_TYPES: ReadonlySet<string> = new Set(RUN_EVENT_TYPES);

/** An event of a type this build does not know (a newer host's, or one no longer written): kept as is. */
export type UnknownRunEvent = {
  seq: number;
  run_id: string;
  attempt: number;
  time: string;
  type: string;
  data: unknown;
};
export type RunEventRead = RunEvent | UnknownRunEvent;

/**
 * An event as a reader takes it: a known type checked as `RunEvent`, any other type with its data
 * unchecked, so that one event from a newer host does not fail a whole page.
 */
export const RunEventRead = z.union([
  RunEvent,
  z.object({ ...Envelope, type: z.string().refine((type) => !KNOWN_TYPES.has(type)), data: z.unknown() }),
]) as z.ZodType<RunEventRead>;

/** Whether a read event is of a type this build knows, narrowing it to `RunEvent`. */
export function isKnownEvent(event: RunEventRead): event is RunEvent {
  return KNOWN_TYPES.has(event.type);
}

/** Whether `event` is of `type`, narrowing it: `events.filter(isEvent("log"))`. */
export function isEvent<T extends RunEventType>(type: T): (event: RunEventRead) => event is RunEventOf<T> {
  return (event): event is RunEventOf<T> => event.type === type;
}

/**
 * The markers the built-in agent writes (each stored as a `user` event carrying its type and
 * data). The runner imports the type only; the host checks markers as any agent's.
 */
export const BuiltinAgentEvent = z.discriminatedUnion("type", [
  z.object({ type: z.literal("agent.message"), data: z.object({ step: Int, text: z.string() }) }),
  z.object({
    type: z.literal("tool.call"),
    /** `args` as the model gave them, or as capped JSON text when large. */
    data: z.object({
      step: Int,
      id: z.string(),
      name: z.string(),
      args: z.union([z.record(z.string(), z.unknown()), z.string()]),
    }),
  }),
  z.object({
    type: z.literal("tool.result"),
    data: z.object({ step: Int, id: z.string(), name: z.string(), ok: z.boolean(), output: z.string() }),
  }),
  z.object({ type: z.literal("agent.finished"), data: z.object({ step: Int, summary: z.string() }) }),
  z.object({ type: z.literal("agent.step_limit"), data: z.object({ max_steps: Int }) }),
]);
export type BuiltinAgentEvent = z.infer<typeof BuiltinAgentEvent>;

/** A comma-separated list of event types (`?types=log,user`), each one this build knows. */
export const EventTypeList = z
  .string()
  .max(4096)
  .superRefine((value, ctx) => {
    const unknown = value.split(",").filter((type) => !KNOWN_TYPES.has(type));
    if (unknown.length > 0) {
      ctx.addIssue({
        code: "custom",
        message: `unknown event type${unknown.length > 1 ? "s" : ""} ${unknown.map((t) => JSON.stringify(t.slice(0, 64))).join(", ")}; the types are ${RUN_EVENT_TYPES.join(", ")}`,
      });
    }
  });

/** The types of a list that EventTypeList checked. */
export const eventTypesOf = (list: string): RunEventType[] => [...new Set(list.split(","))] as RunEventType[];

/**
 * `GET /v1/runs/{id}/events`: the events after seq `after`, in order; with `types`, only those
 * types (both as a JSON page and as a live stream).
 */
export const RunEventsQuery = z.object({
  after: z.coerce.number().int().min(0).default(0),
  limit: z.coerce.number().int().min(1).max(1000).default(500),
  types: EventTypeList.optional(),
});
