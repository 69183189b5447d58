/**
 * A run's timeline (waterfall) from its events, built as they arrive: the run's phases (queued,
 * starting, running) per attempt, retries' waits, model, bridge and MCP calls (each ends when its event
 * is written and lasted its latency), child runs, the built-in agent's tool calls, and other user
 * events as instants. Bars of one kind share rows where they do not overlap, so a run of ten
 * thousand sequential calls still draws a few rows.
 */
import type { RunEventRead } from "@paddock/protocol";
import { paths } from "./router.ts";

export type BarKind =
  | "queued"
  | "starting"
  | "running"
  | "retry"
  | "llm"
  | "bridge"
  | "mcp"
  | "child"
  | "tool"
  | "event"
  | "error";

export interface Bar {
  /** Unique within the timeline. */
  key: string;
  /** The row group it is drawn in. */
  group: string;
  kind: BarKind;
  label: string;
  /** Milliseconds since the epoch; `end` null while it is still going; `end === start` for an instant. */
  start: number;
  end: number | null;
  failed: boolean;
  /** The event that made or last changed it. */
  seq: number;
  /** A page to open from it (a child run). */
  href?: string;
  /** More about it, for its tooltip. */
  detail?: string;
}

export interface Row {
  group: string;
  /** The row's label (the group's name on its first row). */
  label: string;
  bars: Bar[];
}

const GROUP_ORDER = ["run", "retries", "model calls", "bridge calls", "mcp calls", "child runs", "tools", "events"];
/** Rows a packed group may use; more overlapping bars share its last row. */
const MAX_ROWS_PER_GROUP = 6;
const TERMINAL = new Set(["run.succeeded", "run.failed", "run.timed_out", "run.canceled"]);

const data = (e: RunEventRead) => (e.data ?? {}) as Record<string, unknown>;
const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
const str = (v: unknown) => (typeof v === "string" ? v : undefined);

export class Timeline {
  readonly #bars = new Map<string, Bar>();
  /** The bar of the phase going now (queued, starting or running), which the next phase ends. */
  #open: Bar | null = null;
  #toolCalls = new Map<string, Bar>();
  #children = new Map<string, Bar>();
  #start: number | null = null;
  #end: number | null = null;
  #lastSeq = 0;
  /** Bumped by every change, for views that redraw on change. */
  version = 0;

  /** When the run was queued, and when it ended (null while it goes). */
  get start(): number | null {
    return this.#start;
  }
  get end(): number | null {
    return this.#end;
  }

  /** Adds events (in sequence order; events already seen are ignored by their seq). */
  apply(events: readonly RunEventRead[]): void {
    for (const e of events) this.#apply(e);
    this.version++;
  }

  /** Records what is known of a child run (polled by the page): its bar ends when it does. */
  setChild(runId: string, status: string, finishedAt: string | null): void {
    const bar = this.#children.get(runId);
    if (!bar) return;
    bar.failed = status === "failed" || status === "timed_out" || status === "canceled";
    bar.detail = `${runId}: ${status}`;
    if (finishedAt) bar.end = Math.max(bar.start, Date.parse(finishedAt));
    this.version++;
  }

  /** The child runs started so far. */
  children(): string[] {
    return [...this.#children.keys()];
  }

  #add(bar: Bar): Bar {
    this.#bars.set(bar.key, bar);
    return bar;
  }

  #phase(kind: "queued" | "starting" | "running", e: RunEventRead, t: number, label: string): void {
    if (this.#open) this.#open.end = Math.max(this.#open.start, t);
    this.#open = this.#add({
      key: `phase-${e.seq}`,
      group: "run",
      kind,
      label,
      start: t,
      end: null,
      failed: false,
      seq: e.seq,
    });
  }

  #apply(e: RunEventRead): void {
    if (e.seq <= this.#lastSeq) return;
    this.#lastSeq = e.seq;
    const t = Date.parse(e.time);
    if (Number.isNaN(t)) return;
    this.#start ??= t;
    const d = data(e);
    const attempt = num(d.attempt) ?? e.attempt;
    switch (e.type) {
      case "run.queued":
        this.#phase("queued", e, t, "queued");
        return;
      case "run.requeued":
        this.#phase("queued", e, t, "queued again (host stopped)");
        return;
      case "run.starting":
        this.#phase("starting", e, t, `attempt ${attempt}: starting`);
        return;
      case "run.running":
        this.#phase("running", e, t, `attempt ${attempt}: running`);
        if (this.#open) {
          const boot = num(d.boot_ms);
          this.#open.detail = `boot ${boot === undefined ? "?" : Math.round(boot)} ms${d.warm ? " (warm)" : ""}`;
        }
        return;
      case "attempt.finished":
        if (this.#open && this.#open.kind !== "queued") {
          this.#open.end = t;
          this.#open.failed = d.status !== "succeeded";
          this.#open.detail = `${str(d.status) ?? ""} (${str(d.reason) ?? ""}${d.exit_code === null || d.exit_code === undefined ? "" : `, exit ${d.exit_code}`})`;
          this.#open = null;
        }
        return;
      case "retry.scheduled": {
        const at = Date.parse(str(d.at) ?? "");
        this.#add({
          key: `retry-${e.seq}`,
          group: "retries",
          kind: "retry",
          label: `retry ${num(d.attempt) ?? ""}→${(num(d.attempt) ?? 0) + 1} of ${num(d.max_attempts) ?? "?"}`,
          start: t,
          end: Number.isNaN(at) ? t : Math.max(t, at),
          failed: false,
          seq: e.seq,
          detail: `${str(d.reason) ?? ""}, waits ${num(d.delay_ms) ?? 0} ms`,
        });
        return;
      }
      case "llm.call": {
        const latency = num(d.latency_ms) ?? 0;
        const failed = d.code !== undefined || (num(d.status) ?? 200) >= 400;
        const tokens = `${num(d.input_tokens) ?? 0} in / ${num(d.output_tokens) ?? 0} out`;
        this.#add({
          key: `llm-${e.seq}`,
          group: "model calls",
          kind: "llm",
          label: str(d.model) ?? "model call",
          start: t - latency,
          end: t,
          failed,
          seq: e.seq,
          detail: `${str(d.provider) ?? ""} ${str(d.model) ?? ""}: ${failed ? (str(d.code) ?? `status ${d.status}`) : tokens}, ${Math.round(latency)} ms`,
        });
        return;
      }
      case "bridge.call": {
        const ms = num(d.ms) ?? 0;
        const status = num(d.status) ?? 0;
        this.#add({
          key: `bridge-${e.seq}`,
          group: "bridge calls",
          kind: "bridge",
          label: `${str(d.method) ?? ""} ${str(d.connection) ?? ""}${str(d.path) ?? ""}`,
          start: t - ms,
          end: t,
          failed: d.code !== undefined || status >= 400,
          seq: e.seq,
          detail: `${status}${d.code ? ` ${d.code}` : ""}, ${Math.round(ms)} ms`,
        });
        return;
      }
      case "mcp.call": {
        const latency = num(d.latency_ms) ?? 0;
        const status = str(d.status) ?? "";
        const previews = [
          str(d.args_preview) === undefined ? "" : `\nargs: ${d.args_preview}`,
          str(d.result_preview) === undefined ? "" : `\nanswer: ${d.result_preview}`,
        ].join("");
        this.#add({
          key: `mcp-${e.seq}`,
          group: "mcp calls",
          kind: "mcp",
          label: `${str(d.server) ?? ""} ${str(d.tool) ?? ""}`,
          start: t - latency,
          end: t,
          failed: status !== "ok",
          seq: e.seq,
          detail: `${str(d.method) ?? ""} ${status}${d.code ? ` ${d.code}` : ""}, ${Math.round(latency)} ms${previews}`,
        });
        return;
      }
      case "agent.called": {
        const runId = str(d.run_id) ?? "";
        const bar = this.#add({
          key: `child-${e.seq}`,
          group: "child runs",
          kind: "child",
          label: `${str(d.agent) ?? "agent"} (${runId})`,
          start: t,
          end: null,
          failed: false,
          seq: e.seq,
          href: paths.run(runId),
          detail: runId,
        });
        this.#children.set(runId, bar);
        return;
      }
      case "attempt.error":
      case "attempt.lost":
      case "credits.exhausted":
      case "journal.diverged":
        this.#add({
          key: `error-${e.seq}`,
          group: "events",
          kind: "error",
          label: e.type,
          start: t,
          end: t,
          failed: true,
          seq: e.seq,
          detail: str(d.message) ?? str(d.why) ?? str(d.budget) ?? "",
        });
        return;
      case "user":
        this.#user(e, t, d);
        return;
      default:
        if (TERMINAL.has(e.type)) {
          if (this.#open) this.#open.end = Math.max(this.#open.start, t);
          this.#open = null;
          this.#end = t;
          for (const bar of this.#toolCalls.values()) bar.end ??= t;
        }
    }
  }

  #user(e: RunEventRead, t: number, d: Record<string, unknown>): void {
    const type = str(d.type) ?? "user";
    const inner = (d.data ?? {}) as Record<string, unknown>;
    if (type === "tool.call" && typeof inner.id === "string") {
      const bar = this.#add({
        key: `tool-${e.seq}`,
        group: "tools",
        kind: "tool",
        label: str(inner.name) ?? "tool",
        start: t,
        end: null,
        failed: false,
        seq: e.seq,
      });
      this.#toolCalls.set(inner.id, bar);
      return;
    }
    if (type === "tool.result" && typeof inner.id === "string") {
      const bar = this.#toolCalls.get(inner.id);
      if (bar) {
        bar.end = Math.max(bar.start, t);
        bar.failed = inner.ok === false;
        bar.seq = e.seq;
        this.#toolCalls.delete(inner.id);
        return;
      }
    }
    this.#add({
      key: `event-${e.seq}`,
      group: "events",
      kind: "event",
      label: type,
      start: t,
      end: t,
      failed: false,
      seq: e.seq,
    });
  }

  /** The rows to draw: groups in a fixed order, each packed into as few rows as its bars allow. */
  rows(now: number): Row[] {
    const byGroup = new Map<string, Bar[]>();
    for (const bar of this.#bars.values()) {
      const list = byGroup.get(bar.group) ?? [];
      list.push(bar);
      byGroup.set(bar.group, list);
    }
    const rows: Row[] = [];
    for (const group of GROUP_ORDER) {
      const bars = byGroup.get(group);
      if (!bars) continue;
      const packed = group === "run" ? [bars] : pack(bars, now);
      packed.forEach((row, i) => {
        rows.push({ group, label: i === 0 ? group : "", bars: row });
      });
    }
    return rows;
  }
}

/**
 * Packs bars into rows so that bars in one row do not overlap (first fit, by start); past
 * MAX_ROWS_PER_GROUP rows, the rest share the last row.
 */
export function pack(bars: readonly Bar[], now: number): Bar[][] {
  const sorted = [...bars].sort((a, b) => a.start - b.start || a.seq - b.seq);
  const rows: Bar[][] = [];
  const ends: number[] = [];
  for (const bar of sorted) {
    const end = bar.end ?? now;
    let i = ends.findIndex((e) => e <= bar.start);
    if (i < 0) {
      if (rows.length < MAX_ROWS_PER_GROUP) {
        rows.push([]);
        ends.push(-Infinity);
      }
      i = rows.length - 1;
    }
    rows[i]?.push(bar);
    ends[i] = Math.max(ends[i] ?? -Infinity, end);
  }
  return rows;
}

/** Where an instant falls on a timeline from `start` to `end`, as a fraction of its width (0..1). */
export function position(t: number, start: number, end: number): number {
  if (end <= start) return 0;
  return Math.min(1, Math.max(0, (t - start) / (end - start)));
}
