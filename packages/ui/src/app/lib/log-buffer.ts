/**
 * A run's log as the log pane shows it: every line kept (the host caps a run's log), a filtered
 * view that grows with new lines instead of being recomputed, and the window of rows to render for
 * a scroll position, so that 100,000 lines cost as many DOM rows as fit on screen.
 */

export type LogStream = "stdout" | "stderr" | "runner";

export interface LogLine {
  seq: number;
  time: string;
  stream: LogStream;
  text: string;
  /** The host cut the line (it was longer than a line may be). */
  truncated: boolean;
}

/** A line longer than this is shown cut, with the whole line a download away. */
export const MAX_SHOWN_CHARS = 2000;

export interface LogFilter {
  /** Lines containing this text (case-insensitive); "" for all. */
  text: string;
  /** The streams shown. */
  streams: ReadonlySet<LogStream>;
}

export const ALL_STREAMS: ReadonlySet<LogStream> = new Set(["stdout", "stderr", "runner"]);

export class LogBuffer {
  readonly lines: LogLine[] = [];
  #lastSeq = 0;
  #viewKey = "";
  #view: number[] = [];
  /** How many lines the view has looked at. */
  #viewed = 0;

  /** Adds lines in seq order; a line already held (by seq) is skipped. */
  append(lines: readonly LogLine[]): void {
    for (const line of lines) {
      if (line.seq <= this.#lastSeq) continue;
      this.#lastSeq = line.seq;
      this.lines.push(line);
    }
  }

  /** The indices of the lines the filter shows, in order; extended as lines arrive. */
  view(filter: LogFilter): readonly number[] {
    const key = `${[...filter.streams].sort().join(",")}\n${filter.text.toLowerCase()}`;
    if (key !== this.#viewKey) {
      this.#viewKey = key;
      this.#view = [];
      this.#viewed = 0;
    }
    const needle = filter.text.toLowerCase();
    const all = needle === "" && filter.streams.size === ALL_STREAMS.size;
    for (let i = this.#viewed; i < this.lines.length; i++) {
      const line = this.lines[i] as LogLine;
      if (all || (filter.streams.has(line.stream) && (needle === "" || line.text.toLowerCase().includes(needle)))) {
        this.#view.push(i);
      }
    }
    this.#viewed = this.lines.length;
    return this.#view;
  }

  /** The whole log as text, one line per line, for a download. */
  text(): string {
    return this.lines.map((l) => `${l.time} ${l.stream} ${l.text}`).join("\n");
  }
}

/** A line as shown: cut past MAX_SHOWN_CHARS. */
export function shownText(line: LogLine): { text: string; cut: boolean } {
  if (line.text.length <= MAX_SHOWN_CHARS) return { text: line.text, cut: false };
  return { text: line.text.slice(0, MAX_SHOWN_CHARS), cut: true };
}

/** The tallest a scrolling element is made; browsers stop laying out taller ones (~33 M px in Chromium). */
export const MAX_SCROLL_HEIGHT = 10_000_000;

export interface VirtualWindow {
  /** The first and one past the last row to render. */
  first: number;
  last: number;
  /** The scrolling content's height in pixels. */
  height: number;
  /** Where row `first` is drawn, from the top of the content. */
  top: number;
}

/**
 * The rows to render for a scroll position: those in view plus `overscan` on each side. Past
 * MAX_SCROLL_HEIGHT the content is compressed: the scroll position maps to rows proportionally,
 * and the rows render where the viewport is.
 */
export function virtualWindow(
  scrollTop: number,
  viewport: number,
  rowHeight: number,
  total: number,
  overscan = 10,
): VirtualWindow {
  const natural = total * rowHeight;
  const height = Math.min(natural, MAX_SCROLL_HEIGHT);
  const scrollable = Math.max(0, height - viewport);
  const top = Math.min(Math.max(0, scrollTop), scrollable);
  // Which row is at the top of the viewport: proportional once the content is compressed.
  const firstVisible = scrollable > 0 ? ((top / scrollable) * Math.max(0, natural - viewport)) / rowHeight : 0;
  const visible = Math.ceil(viewport / rowHeight) + 1;
  const first = Math.max(0, Math.floor(firstVisible) - overscan);
  const last = Math.min(total, Math.floor(firstVisible) + visible + overscan);
  const offset = (firstVisible - Math.floor(firstVisible)) * rowHeight;
  return { first, last, height, top: top - offset - (Math.floor(firstVisible) - first) * rowHeight };
}
