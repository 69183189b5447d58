import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ALL_STREAMS, LogBuffer, type LogLine, MAX_SCROLL_HEIGHT, shownText, virtualWindow } from "./log-buffer.ts";

const line = (seq: number, text: string, stream: LogLine["stream"] = "stdout"): LogLine => ({
  seq,
  time: "2025-01-01T00:00:00.000Z",
  stream,
  text,
  truncated: false,
});

describe("the log pane's lines", () => {
  it("keeps lines once, and extends a filtered view as lines arrive", () => {
    const log = new LogBuffer();
    log.append([line(1, "Starting"), line(2, "error: disk", "stderr"), line(3, "done")]);
    log.append([line(2, "error: disk", "stderr")]);
    assert.equal(log.lines.length, 3);
    const errors = { text: "ERROR", streams: ALL_STREAMS };
    assert.deepEqual([...log.view(errors)], [1]);
    log.append([line(4, "another error")]);
    assert.deepEqual([...log.view(errors)], [1, 3]);
    assert.deepEqual([...log.view({ text: "", streams: new Set(["stderr"] as const) })], [1]);
    assert.deepEqual([...log.view({ text: "", streams: ALL_STREAMS })], [0, 1, 2, 3]);
    assert.match(log.text(), /stderr error: disk\n/);
  });

  it("filters 100,000 lines and shows a long line cut", () => {
    const log = new LogBuffer();
    log.append(Array.from({ length: 100_000 }, (_, i) => line(i + 1, `line ${i}${i % 1000 === 0 ? " marker" : ""}`)));
    assert.equal(log.view({ text: "marker", streams: ALL_STREAMS }).length, 100);
    const long = shownText(line(1, "x".repeat(5000)));
    assert.equal(long.cut, true);
    assert.equal(long.text.length, 2000);
    assert.deepEqual(shownText(line(1, "short")), { text: "short", cut: false });
  });
});

describe("the rows rendered for a scroll position", () => {
  it("renders the rows in view and a few around them, wherever the scroll is", () => {
    const w = virtualWindow(0, 400, 20, 100_000, 10);
    assert.deepEqual(w, { first: 0, last: 31, height: 2_000_000, top: 0 });
    const mid = virtualWindow(1_000_010, 400, 20, 100_000, 10);
    assert.equal(mid.first, 50_000 - 10);
    assert.equal(mid.last - mid.first, 10 + 21 + 10);
    // Row `first` is drawn where it belongs: the row at the top of the view sits at scrollTop.
    assert.equal(mid.top + (50_000 - mid.first) * 20, 1_000_000);
    const end = virtualWindow(99_999_999, 400, 20, 100_000, 10);
    assert.equal(end.last, 100_000);
    assert.equal(virtualWindow(0, 400, 20, 0).last, 0);
  });

  it("compresses content past the tallest a browser lays out, still reaching every row", () => {
    const total = 2_000_000;
    const top = virtualWindow(0, 500, 20, total, 5);
    assert.equal(top.height, MAX_SCROLL_HEIGHT);
    assert.equal(top.first, 0);
    const bottom = virtualWindow(MAX_SCROLL_HEIGHT - 500, 500, 20, total, 5);
    assert.equal(bottom.last, total);
    assert.ok(bottom.last - bottom.first <= 5 + 26 + 5);
    const half = virtualWindow((MAX_SCROLL_HEIGHT - 500) / 2, 500, 20, total, 0);
    assert.ok(Math.abs(half.first - (total - 25) / 2) <= 1, String(half.first));
  });
});
