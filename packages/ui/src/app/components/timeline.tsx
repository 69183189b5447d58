/**
 * The run's waterfall: one SVG strip per row, bars placed on the run's time from its queueing to
 * its end (or now, while it goes). Every bar carries its event's seq (data-seq).
 */
import type { MouseEventHandler } from "preact";
import { duration } from "../lib/format.ts";
import { isPlainClick } from "../lib/router.ts";
import { type Bar, position, type Timeline } from "../lib/timeline.ts";
import { navigate } from "../state.ts";

const W = 1000;
const H = 16;

export function Waterfall({ timeline, now }: { timeline: Timeline; now: number }) {
  const start = timeline.start;
  if (start === null) return <p class="empty">No events yet.</p>;
  // At least a tenth of a second across, so that a run's first instants are not one wide bar.
  const end = Math.max(timeline.end ?? now, start + 100);
  const rows = timeline.rows(end);
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  return (
    <div class="waterfall" data-version={timeline.version}>
      <div class="wf-axis">
        <span class="wf-label" />
        <div class="wf-ticks">
          {ticks.map((f) => (
            <span key={f} style={{ left: `${f * 100}%` }}>
              {duration(f * (end - start))}
            </span>
          ))}
        </div>
      </div>
      {rows.map((row, i) => (
        <div class="wf-row" key={`${row.group}-${i}`} data-group={row.group}>
          <span class="wf-label">{row.label}</span>
          <svg
            class="wf-strip"
            viewBox={`0 0 ${W} ${H}`}
            preserveAspectRatio="none"
            role="img"
            aria-label={`${row.group}: ${row.bars.length} item(s)`}
          >
            {row.bars.map((bar) => (
              <BarShape key={bar.key} bar={bar} start={start} end={end} />
            ))}
          </svg>
        </div>
      ))}
      <p class="wf-legend">
        {LEGEND.map(([kind, label]) => (
          <span key={kind}>
            <svg width="10" height="10" aria-hidden="true">
              <rect width="10" height="10" class={`bar bar-${kind}`} />
            </svg>{" "}
            {label}
          </span>
        ))}
      </p>
    </div>
  );
}

const LEGEND: [string, string][] = [
  ["queued", "queued"],
  ["starting", "starting"],
  ["running", "running"],
  ["retry", "retry wait"],
  ["llm", "model call"],
  ["bridge", "bridge call"],
  ["mcp", "MCP call"],
  ["child", "child run"],
  ["tool", "tool call"],
  ["event", "event"],
  ["failed", "failed"],
];

function BarShape({ bar, start, end }: { bar: Bar; start: number; end: number }) {
  const x0 = position(bar.start, start, end) * W;
  const x1 = position(bar.end ?? end, start, end) * W;
  const instant = bar.end !== null && bar.end === bar.start;
  const width = instant ? 3 : Math.max(2, x1 - x0);
  const title = `${bar.label}${bar.detail ? ` — ${bar.detail}` : ""} (${bar.end === null ? "going" : duration(bar.end - bar.start)})`;
  const shape = (
    <rect
      x={instant ? x0 - 1.5 : x0}
      y={instant ? 1 : 3}
      width={width}
      height={instant ? H - 2 : H - 6}
      class={`bar bar-${bar.kind}${bar.failed ? " bar-failed" : ""}${bar.end === null ? " bar-open" : ""}`}
      data-seq={bar.seq}
    >
      <title>{title}</title>
    </rect>
  );
  if (!bar.href) return shape;
  const href = bar.href;
  const follow: MouseEventHandler<HTMLAnchorElement> = (e) => {
    if (!isPlainClick(e)) return;
    e.preventDefault();
    navigate(href);
  };
  return (
    <a href={href} onClick={follow}>
      {shape}
    </a>
  );
}
