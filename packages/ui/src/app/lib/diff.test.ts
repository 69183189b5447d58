import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { diffLines } from "./diff.ts";

const render = (lines: ReturnType<typeof diffLines>) => lines.map((l) => `${l.op}${l.text}`).join("|");

describe("line diff", () => {
  it("gives the shortest edit between two versions", () => {
    assert.equal(render(diffLines("a\nb\nc\nd", "a\nc\nd\ne")), " a|-b| c| d|+e");
    assert.equal(render(diffLines("x", "x")), " x");
    assert.equal(render(diffLines("a\nb", "c\nd")), "-a|-b|+c|+d");
    const before = JSON.stringify({ name: "a", limits: { memory_mb: 256, timeout_s: 60 }, env: {} }, null, 2);
    const after = JSON.stringify({ name: "a", limits: { memory_mb: 512, timeout_s: 60 }, env: {} }, null, 2);
    const changed = diffLines(before, after).filter((l) => l.op !== " ");
    assert.deepEqual(changed, [
      { op: "-", text: '    "memory_mb": 256,' },
      { op: "+", text: '    "memory_mb": 512,' },
    ]);
  });

  it("stays bounded on large unrelated texts", () => {
    const a = Array.from({ length: 5000 }, (_, i) => `a${i}`).join("\n");
    const b = Array.from({ length: 5000 }, (_, i) => `b${i}`).join("\n");
    const out = diffLines(a, b);
    assert.equal(out.length, 10_000);
  });
});
