/**
 * The run's log: virtualized (only the rows in view, and a few around them, are in the page, for
 * any number of lines), filtered by text and stream, following new lines while scrolled to the
 * bottom. A long line is shown cut with its whole text a download away; so is the whole log.
 */
import type { JSX } from "preact";
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import {
  ALL_STREAMS,
  type LogBuffer,
  type LogLine,
  type LogStream,
  shownText,
  virtualWindow,
} from "../lib/log-buffer.ts";
import { download } from "./ui.tsx";

const ROW = 18;
const STREAMS: LogStream[] = ["stdout", "stderr", "runner"];

export function LogPane({ log, version, runId }: { log: LogBuffer; version: number; runId: string }) {
  const [text, setText] = useState("");
  const [streams, setStreams] = useState<ReadonlySet<LogStream>>(ALL_STREAMS);
  const [follow, setFollow] = useState(true);
  const [scrollTop, setScrollTop] = useState(0);
  const [viewport, setViewport] = useState(400);
  const box = useRef<HTMLDivElement>(null);
  const frame = useRef(0);

  const view = log.view({ text, streams });
  const w = virtualWindow(scrollTop, viewport, ROW, view.length);

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const measure = () => setViewport(el.clientHeight || 400);
    measure();
    const observer = new ResizeObserver(measure);
    observer.observe(el);
    return () => observer.disconnect();
  }, []);

  // Following: new lines keep the view at the bottom.
  useLayoutEffect(() => {
    const el = box.current;
    if (el && follow) {
      el.scrollTop = el.scrollHeight;
      setScrollTop(el.scrollTop);
    }
  }, [version, follow, view.length]);

  const rows: JSX.Element[] = [];
  for (let i = w.first; i < w.last; i++) {
    const line = log.lines[view[i] as number] as LogLine;
    const shown = shownText(line);
    rows.push(
      <div class={`log-row log-${line.stream}`} key={line.seq} style={{ top: `${w.top + (i - w.first) * ROW}px` }}>
        <span class="log-time">{line.time.slice(11, 23)}</span>
        <span class="log-text">{shown.text}</span>
        {shown.cut || line.truncated ? (
          <button
            type="button"
            class="link log-more"
            title={`${line.text.length} characters${line.truncated ? " (cut by the host)" : ""}`}
            onClick={() => download(`${runId}-line-${line.seq}.txt`, line.text)}
          >
            … download line
          </button>
        ) : null}
      </div>,
    );
  }

  return (
    <div class="log-pane">
      <div class="log-tools">
        <input
          type="search"
          placeholder="Filter lines"
          aria-label="Filter log lines"
          value={text}
          onInput={(e) => setText(e.currentTarget.value)}
        />
        {STREAMS.map((s) => (
          <label key={s}>
            <input
              type="checkbox"
              checked={streams.has(s)}
              onChange={() => {
                const next = new Set(streams);
                if (next.has(s)) next.delete(s);
                else next.add(s);
                setStreams(next);
              }}
            />
            {s}
          </label>
        ))}
        <label>
          <input type="checkbox" checked={follow} onChange={() => setFollow(!follow)} />
          follow
        </label>
        <span class="muted" data-testid="log-count">
          {view.length === log.lines.length ? `${view.length} lines` : `${view.length} of ${log.lines.length} lines`}
        </span>
        <button type="button" class="link" onClick={() => download(`${runId}.log`, log.text())}>
          Download log
        </button>
      </div>
      <div
        class="log-box"
        ref={box}
        data-rendered={w.last - w.first}
        data-total={view.length}
        onScroll={(e) => {
          const el = e.currentTarget;
          cancelAnimationFrame(frame.current);
          frame.current = requestAnimationFrame(() => {
            setScrollTop(el.scrollTop);
            // Scrolled up: stop following; back at the bottom: follow again.
            setFollow(el.scrollTop + el.clientHeight >= el.scrollHeight - ROW);
          });
        }}
      >
        <div class="log-content" style={{ height: `${w.height}px` }}>
          {rows}
        </div>
      </div>
    </div>
  );
}
