/**
 * Everything the run page shows that its events tell, folded from them as they arrive: the run's
 * status, its log, its timeline, its model, bridge and MCP calls, its child runs and its result (the
 * data of its last `result` event).
 */
import type { RunEventData, RunEventRead, RunStatus } from "@paddock/protocol";
import { LogBuffer, type LogLine } from "./log-buffer.ts";
import { Timeline } from "./timeline.ts";

export type LlmCallEvent = RunEventData<"llm.call"> & { seq: number; time: string; attempt: number };
export type BridgeCallEvent = RunEventData<"bridge.call"> & { seq: number; time: string; attempt: number };
export type McpCallEvent = RunEventData<"mcp.call"> & { seq: number; time: string; attempt: number };

/** Calls kept per table; a run that makes more shows the latest. */
export const MAX_CALLS = 5000;

const TERMINAL: ReadonlySet<string> = new Set(["succeeded", "failed", "timed_out", "canceled"]);

export class RunView {
  readonly log = new LogBuffer();
  readonly timeline = new Timeline();
  readonly llmCalls: LlmCallEvent[] = [];
  readonly bridgeCalls: BridgeCallEvent[] = [];
  readonly mcpCalls: McpCallEvent[] = [];
  /** The status the events say, and how it ended. */
  status: RunStatus | null = null;
  reason: string | null = null;
  exitCode: number | null = null;
  attempt = 0;
  /** The data of the last `result` user event; undefined until there is one. */
  result: unknown;
  hasResult = false;
  /** How many artifact.created events have arrived (the list is re-read when it grows). */
  artifactEvents = 0;
  lastSeq = 0;
  /** Events of all kinds seen. */
  count = 0;

  get finished(): boolean {
    return this.status !== null && TERMINAL.has(this.status);
  }

  apply(events: readonly RunEventRead[]): void {
    const lines: LogLine[] = [];
    const fresh: RunEventRead[] = [];
    for (const e of events) {
      if (e.seq <= this.lastSeq) continue;
      this.lastSeq = e.seq;
      this.count++;
      fresh.push(e);
      const d = (e.data ?? {}) as Record<string, unknown>;
      if (e.type.startsWith("run.") && typeof d.status === "string") {
        this.status = d.status as RunStatus;
        if (typeof d.reason === "string") this.reason = d.reason;
        if (typeof d.exit_code === "number") this.exitCode = d.exit_code;
      }
      if (typeof d.attempt === "number" && e.type === "run.starting") this.attempt = d.attempt;
      switch (e.type) {
        case "log":
          lines.push({
            seq: e.seq,
            time: e.time,
            stream: (d.stream as LogLine["stream"]) ?? "stdout",
            text: String(d.line ?? ""),
            truncated: d.truncated === true,
          });
          break;
        case "llm.call":
          push(this.llmCalls, placed<"llm.call">(e, d));
          break;
        case "bridge.call":
          push(this.bridgeCalls, placed<"bridge.call">(e, d));
          break;
        case "mcp.call":
          push(this.mcpCalls, placed<"mcp.call">(e, d));
          break;
        case "artifact.created":
          this.artifactEvents++;
          break;
        case "user":
          if (d.type === "result") {
            this.result = d.data;
            this.hasResult = true;
          }
          break;
      }
    }
    this.log.append(lines);
    // Log lines are not drawn on the timeline: leave them out of its work.
    this.timeline.apply(fresh.filter((e) => e.type !== "log"));
  }
}

/** A call event's data with where it is in the run. */
function placed<K extends "llm.call" | "bridge.call" | "mcp.call">(
  e: RunEventRead,
  d: Record<string, unknown>,
): RunEventData<K> & { seq: number; time: string; attempt: number } {
  return { ...(d as RunEventData<K>), seq: e.seq, time: e.time, attempt: e.attempt };
}

function push<T>(list: T[], item: T): void {
  list.push(item);
  if (list.length > MAX_CALLS) list.splice(0, list.length - MAX_CALLS);
}
