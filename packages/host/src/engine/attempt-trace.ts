/**
 * The spans of one attempt, after the OpenTelemetry GenAI agent conventions: `invoke_agent
 * {agent}` from the claim to the recorded outcome, in its run's trace (see tracing/trace-context.ts),
 * with `paddock.sandbox.start` for the boot under it, and for the built-in agent one `execute_tool
 * {name}` per tool call. The calls the attempt makes (model calls, bridge calls, child runs) hang
 * under its span too: the gateway and the bridge find it on the live sandbox.
 *
 * The sandbox never talks to a collector: tool spans are made here from the markers the built-in
 * agent writes (`tool.call`, `tool.result`), timed by when the host read them. Like everything
 * from a sandbox they are agent-controlled, so they are bounded in number and in name length,
 * and only a run of the built-in agent gets them.
 */
import { type AgentSpec, BuiltinAgentEvent, type Marker, type RunReason, type RunStatus } from "@paddock/protocol";
import type { RunsTable } from "../store/schema.ts";
import { formatTraceparent, runTraceParent, type SpanParent } from "../tracing/trace-context.ts";
import { epochMs, type OpenSpan, type Tracing } from "../tracing/tracing.ts";

/** Tool spans one attempt may make, and tool calls it waits on the results of at once. */
const MAX_TOOL_SPANS = 1000;
const MAX_OPEN_TOOLS = 64;
const MAX_NAME = 64;

/** How an attempt ended, as its span tells it (an AttemptOutcome). */
interface Ended {
  status: RunStatus;
  reason: RunReason;
  exitCode: number | null;
  interrupted?: boolean;
}

export class AttemptTrace {
  readonly #tracing: Tracing;
  readonly #span: OpenSpan;
  readonly #builtin: boolean;
  /** Tool calls reported and not answered yet, by their id. */
  readonly #tools = new Map<string, { name: string; step: number; startMs: number; args: unknown }>();
  #toolSpans = 0;
  #ended = false;

  constructor(tracing: Tracing, run: RunsTable, spec: AgentSpec) {
    this.#tracing = tracing;
    this.#builtin = spec.builtin !== undefined;
    this.#span = tracing.start(runTraceParent(run), {
      name: "invoke_agent",
      attributes: {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.id": run.agent_id,
        "gen_ai.conversation.id": run.id,
        "gen_ai.request.model": spec.builtin?.model,
        "paddock.tenant.id": run.tenant_id,
        "paddock.run.id": run.id,
        "paddock.run.attempt": run.attempt,
        "paddock.run.max_attempts": run.max_attempts,
        "paddock.run.trigger": run.trigger,
        "paddock.run.parent_id": run.parent_run_id,
        "paddock.run.root_id": run.root_run_id,
        "paddock.run.depth": run.depth,
        "paddock.agent.version": run.agent_version,
      },
    });
  }

  /** The attempt's span: the parent of its calls' spans. */
  get ref(): SpanParent & { spanId: string } {
    return this.#span.ref;
  }

  /** The attempt's span as a traceparent, which a child run it starts keeps. */
  get traceparent(): string {
    return formatTraceparent(this.#span.ref);
  }

  /** The agent's name, once known: the span is `invoke_agent {name}`. */
  named(name: string): void {
    this.#span.rename(`invoke_agent ${name}`);
    this.#span.set({ "gen_ai.agent.name": name });
  }

  /** The sandbox came up (or did not) for this attempt, from `startMs` until now. */
  sandboxStarted(startMs: number, how: { warm: boolean; sandboxId?: string; error?: string }): void {
    this.#tracing.record(this.#span.ref, {
      name: "paddock.sandbox.start",
      startMs,
      attributes: { "paddock.sandbox.warm": how.warm, "paddock.sandbox.id": how.sandboxId },
      ...(how.error ? { error: "sandbox_error", message: how.error.slice(0, 256) } : {}),
    });
    if (how.sandboxId) this.#span.set({ "paddock.sandbox.id": how.sandboxId });
  }

  /** A marker the agent wrote: the built-in agent's tool calls and results become tool spans. */
  marker(marker: Marker): void {
    if (!this.#builtin || (marker.type !== "tool.call" && marker.type !== "tool.result")) return;
    const parsed = BuiltinAgentEvent.safeParse(marker);
    if (!parsed.success) return;
    const event = parsed.data;
    if (event.type === "tool.call") {
      if (this.#tools.size >= MAX_OPEN_TOOLS) return;
      const { id, name, step, args } = event.data;
      this.#tools.set(id.slice(0, MAX_NAME), { name: name.slice(0, MAX_NAME), step, startMs: epochMs(), args });
    } else if (event.type === "tool.result") {
      const id = event.data.id.slice(0, MAX_NAME);
      const call = this.#tools.get(id);
      this.#tools.delete(id);
      this.#tool(id, call ?? { name: event.data.name.slice(0, MAX_NAME), step: event.data.step, startMs: epochMs() }, {
        ok: event.data.ok,
        output: event.data.output,
      });
    }
  }

  #tool(
    id: string,
    call: { name: string; step: number; startMs: number; args?: unknown },
    result: { ok: boolean; output?: string } | null,
  ): void {
    if (this.#toolSpans >= MAX_TOOL_SPANS) return;
    this.#toolSpans++;
    const content = this.#tracing.content;
    const error = result === null ? "unfinished" : result.ok ? undefined : "tool_error";
    this.#tracing.record(this.#span.ref, {
      name: `execute_tool ${call.name}`,
      startMs: call.startMs,
      attributes: {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": call.name,
        "gen_ai.tool.call.id": id,
        "gen_ai.tool.type": "function",
        "paddock.agent.step": call.step,
        "gen_ai.tool.call.arguments":
          content && call.args !== undefined
            ? typeof call.args === "string"
              ? call.args
              : JSON.stringify(call.args)
            : undefined,
        "gen_ai.tool.call.result": content ? result?.output : undefined,
      },
      ...(error ? { error } : {}),
    });
  }

  /**
   * The attempt is recorded (or failed to be: `outcome` null, with what went wrong): the span ends
   * with the run's status and reason, and tool calls never answered end as unfinished.
   */
  end(outcome: Ended | null, failure?: string): void {
    if (this.#ended) return;
    this.#ended = true;
    for (const [id, call] of this.#tools) this.#tool(id, call, null);
    this.#tools.clear();
    if (outcome) {
      this.#span.set({
        "paddock.run.status": outcome.status,
        "paddock.run.reason": outcome.reason,
        "paddock.run.exit_code": outcome.exitCode,
        "paddock.run.interrupted": outcome.interrupted,
      });
      if (outcome.status !== "succeeded") this.#span.fail(outcome.reason);
    } else this.#span.fail("internal", failure?.slice(0, 256));
    this.#span.end();
  }
}
