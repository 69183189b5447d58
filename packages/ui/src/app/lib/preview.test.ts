import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fileName, parseCsv, previewKind } from "./preview.ts";

describe("artifact previews", () => {
  it("previews images (SVG too) as images, text-like files as text, and nothing else", () => {
    assert.equal(previewKind("image/svg+xml", "chart.svg", 100), "image");
    assert.equal(previewKind("image/png", "x.png", 100), "image");
    assert.equal(previewKind("image/png", "x.png", 1e9), "none");
    assert.equal(previewKind("text/html; charset=utf-8", "page.html", 10), "text");
    assert.equal(previewKind("text/csv", "data.csv", 10), "csv");
    assert.equal(previewKind("application/octet-stream", "report.md", 10), "text");
    assert.equal(previewKind("application/json", "x", 10), "text");
    assert.equal(previewKind("application/octet-stream", "blob.bin", 10), "none");
    assert.equal(previewKind("application/x-msdownload", "evil.exe", 10), "none");
  });

  it("reads CSV with quotes and newlines inside fields, up to a bound", () => {
    assert.deepEqual(parseCsv('a,b\n"x, y","say ""hi"""\r\n"multi\nline",2'), {
      rows: [
        ["a", "b"],
        ["x, y", 'say "hi"'],
        ["multi\nline", "2"],
      ],
      more: false,
    });
    const big = Array.from({ length: 500 }, (_, i) => `${i},v`).join("\n");
    const parsed = parseCsv(big, 100);
    assert.equal(parsed.rows.length, 100);
    assert.equal(parsed.more, true);
    assert.equal(parseCsv("1,2,3", 10, 2).rows[0]?.length, 2);
  });

  it("names a download safely", () => {
    assert.equal(fileName("out/<b>report.md"), "_b_report.md");
    assert.equal(fileName("a/"), "artifact");
  });
});
