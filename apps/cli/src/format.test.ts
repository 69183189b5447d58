import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RunEvent, type RunEventData, RunEventRead, type RunEventType } from "@paddock/protocol";
import {
  formatHelpRows,
  formatSize,
  formatTable,
  formatTimelineLine,
  printable,
  summarizeEvent,
  Timeline,
} from "./format.ts";

const T0 = Date.parse("2026-03-01T10:00:00.000Z");
let seq = 0;
/** An event as the CLI reads it: parsed with the protocol's schema, so the data must be real. */
function ev<T extends RunEventType>(type: T, data: RunEventData<T>, ms = 0, attempt = 1): RunEvent {
  return RunEvent.parse({ seq: ++seq, run_id: "run_1", attempt, type, time: new Date(T0 + ms).toISOString(), data });
}
const artifact = { artifact_id: "art_1", sha256: "ab", content_type: "text/markdown" };

describe("summarizeEvent", () => {
  it("shows log lines with their stream", () => {
    assert.equal(summarizeEvent(ev("log", { stream: "stdout", line: "loaded 96 rows" })), "[stdout] loaded 96 rows");
    assert.equal(summarizeEvent(ev("log", { stream: "stderr", line: "x", truncated: true })), "[stderr] x [truncated]");
  });

  it("shows user events as their type and compact data", () => {
    assert.equal(
      summarizeEvent(ev("user", { type: "progress", data: { step: "reading data", pct: 10 } })),
      'progress {"step":"reading data","pct":10}',
    );
    assert.equal(summarizeEvent(ev("user", { type: "ping", data: null })), "ping null");
  });

  it("shows artifacts as path and size", () => {
    assert.equal(
      summarizeEvent(ev("artifact.created", { ...artifact, path: "report.md", size: 2150 })),
      "report.md (2.1 KiB)",
    );
  });

  it("shows skipped artifacts with the reason", () => {
    assert.equal(summarizeEvent(ev("artifact.skipped", { path: "link", why: "symbolic link" })), "link: symbolic link");
    assert.equal(summarizeEvent(ev("artifact.skipped", { more: 12 })), "12 more");
  });

  it("shows run and attempt outcomes", () => {
    assert.equal(summarizeEvent(ev("run.queued", { status: "queued", trigger: "api" })), "queued");
    assert.equal(
      summarizeEvent(ev("run.running", { status: "running", attempt: 1, boot_ms: 80, warm: true })),
      "running",
    );
    assert.equal(summarizeEvent(ev("run.cancel_requested", {})), "cancel_requested");
    assert.equal(
      summarizeEvent(ev("run.succeeded", { status: "succeeded", reason: "completed", exit_code: 0 })),
      "succeeded (completed, exit 0)",
    );
    assert.equal(
      summarizeEvent(ev("run.failed", { status: "failed", reason: "exit_code", exit_code: 3 })),
      "failed (exit_code, exit 3)",
    );
    assert.equal(
      summarizeEvent(ev("run.timed_out", { status: "timed_out", reason: "timed_out", exit_code: null })),
      "timed_out",
    );
    assert.equal(summarizeEvent(ev("attempt.started", { attempt: 2, worker: "wrk_1" }, 0, 2)), "attempt 2");
    assert.equal(
      summarizeEvent(ev("attempt.finished", { attempt: 1, status: "failed", reason: "oom", exit_code: 137 })),
      "attempt 1: failed (oom, exit 137)",
    );
  });

  it("shows other events as compact JSON", () => {
    assert.equal(
      summarizeEvent(ev("runner.swapped", { from: null, to: "sha256:ab", ms: 3 })),
      '{"from":null,"to":"sha256:ab","ms":3}',
    );
  });
});

describe("timeline", () => {
  it("prints time since the first event, the padded type and the summary", () => {
    const timeline = new Timeline();
    assert.equal(
      timeline.line(ev("run.queued", { status: "queued", trigger: "api" }, 0)),
      "+0.000s    run.queued        queued",
    );
    assert.equal(
      timeline.line(ev("log", { stream: "stdout", line: "hello" }, 1234)),
      "+1.234s    log               [stdout] hello",
    );
    assert.equal(
      timeline.line(ev("artifact.created", { ...artifact, path: "chart.svg", size: 512 }, 61_005)),
      "+61.005s   artifact.created  chart.svg (512 B)",
    );
  });

  it("prints ISO times with absolute", () => {
    const e = ev("run.starting", { status: "starting", attempt: 1 }, 5);
    assert.equal(formatTimelineLine(e, { origin: T0, absolute: true }), `${e.time}  run.starting      starting`);
  });
});

describe("formatSize and formatTable", () => {
  it("formats sizes", () => {
    assert.equal(formatSize(0), "0 B");
    assert.equal(formatSize(1023), "1023 B");
    assert.equal(formatSize(1024), "1.0 KiB");
    assert.equal(formatSize(300 * 1024), "300 KiB");
    assert.equal(formatSize(5 * 1024 * 1024 + 1), "5.0 MiB");
  });

  it("aligns columns", () => {
    assert.equal(
      formatTable(
        ["ID", "NAME"],
        [
          ["ten_1", "default"],
          ["ten_22", "acme"],
        ],
      ),
      "ID      NAME\nten_1   default\nten_22  acme",
    );
  });
});

describe("formatHelpRows", () => {
  it("starts summaries two spaces after the longest name, or on the next line past maxName", () => {
    const rows = [
      ["schedules create|list|pause|resume|delete", "cron schedules"],
      ["run", "start a run"],
      ["logs", "print logs"],
    ] as const;
    assert.equal(formatHelpRows(rows.slice(1)), "  run   start a run\n  logs  print logs");
    assert.equal(
      formatHelpRows(rows, 6),
      "  schedules create|list|pause|resume|delete\n          cron schedules\n  run     start a run\n  logs    print logs",
    );
  });
});

describe("summarizeEvent for errors", () => {
  it("shows where an attempt failed", () => {
    assert.equal(summarizeEvent(ev("attempt.error", { stage: "boot", message: "no image" })), "boot: no image");
  });
});

describe("summarizeEvent for a type this build does not know", () => {
  const read = (type: string, data: unknown) =>
    RunEventRead.parse({ seq: 9, run_id: "run_1", attempt: 1, type, time: new Date(T0).toISOString(), data });

  it("shows its type and data as compact JSON, terminal-safe", () => {
    const event = read("gpu.sampled", { util: 0.5, note: "\u001b[2J" });
    assert.equal(summarizeEvent(event), '{"util":0.5,"note":"\\u001b[2J"}');
    assert.match(formatTimelineLine(event, { origin: T0 }), /^\+0\.000s\s+gpu\.sampled\s+\{"util"/);
  });

  it("still checks the data of a known type", () => {
    assert.throws(() => read("log", { line: 3 }));
  });
});

describe("printable", () => {
  it("shows terminal control characters from a sandbox as escapes", () => {
    assert.equal(printable("ok\u001b]0;pwned\u0007\u001b[2Jtail\r"), "ok\\x1b]0;pwned\\x07\\x1b[2Jtail\\x0d");
    assert.equal(printable("tab\tand ünïcode"), "tab\tand ünïcode");
    const line = summarizeEvent({
      seq: 1,
      run_id: "r",
      attempt: 1,
      type: "log",
      time: "",
      data: { stream: "stdout", line: "\u001b[31mred" },
    });
    assert.equal(line, "[stdout] \\x1b[31mred");
  });
});
