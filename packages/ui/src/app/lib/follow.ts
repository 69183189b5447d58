/**
 * Following a run's events live: the events endpoint as text/event-stream, resumed from the last
 * event seen (Last-Event-ID) whenever the stream breaks, until the run's terminal event.
 */
import type { RunEventRead } from "@paddock/protocol";
import { SseParser } from "./sse.ts";

const TERMINAL_EVENTS = new Set(["run.succeeded", "run.failed", "run.timed_out", "run.canceled"]);

export interface FollowOptions {
  fetch: typeof fetch;
  runId: string;
  /** Each chunk's events, in order. */
  onEvents: (events: RunEventRead[]) => void;
  /** Called with an error that stops following (the run is gone, the session ended). */
  onError?: (status: number) => void;
  signal: AbortSignal;
  /** The wait before reconnecting after a broken stream. */
  retryMs?: number;
}

/** Follows until the run ends or `signal` aborts; resolves then. */
export async function followRunEvents(o: FollowOptions): Promise<void> {
  let after = 0;
  let done = false;
  while (!done && !o.signal.aborted) {
    try {
      const res = await o.fetch(`/v1/runs/${encodeURIComponent(o.runId)}/events?after=${after}`, {
        headers: { accept: "text/event-stream", ...(after > 0 ? { "last-event-id": String(after) } : {}) },
        credentials: "same-origin",
        signal: o.signal,
      });
      if (!res.ok || !res.body) {
        // A run that is gone, or a session that ended, will not come back by retrying.
        if (res.status === 401 || res.status === 404) {
          o.onError?.(res.status);
          return;
        }
        throw new Error(`status ${res.status}`);
      }
      const parser = new SseParser();
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended) break;
        const events: RunEventRead[] = [];
        for (const m of parser.push(value)) {
          const e = JSON.parse(m.data) as RunEventRead;
          events.push(e);
          after = Math.max(after, e.seq);
          if (TERMINAL_EVENTS.has(e.type)) done = true;
        }
        if (events.length > 0) o.onEvents(events);
      }
      // The host ends the stream after a terminal event; a stream that ended otherwise resumes.
    } catch (err) {
      if (o.signal.aborted) return;
      void err;
    }
    if (!done && !o.signal.aborted) await new Promise((r) => setTimeout(r, o.retryMs ?? 1000));
  }
}
