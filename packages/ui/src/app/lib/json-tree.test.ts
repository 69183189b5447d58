import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { childrenOf, initiallyOpen, kindOf, nodeOf, PREVIEW_CHARS } from "./json-tree.ts";

describe("the JSON tree", () => {
  it("previews each kind in one line, markup as text", () => {
    assert.equal(nodeOf({ a: 1, b: 2 }).preview, "{2 keys}");
    assert.equal(nodeOf([1]).preview, "[1 item]");
    assert.equal(nodeOf("<img src=x onerror=alert(1)>").preview, '"<img src=x onerror=alert(1)>"');
    assert.equal(nodeOf(null).preview, "null");
    assert.equal(nodeOf(undefined).kind, "null");
    assert.equal(nodeOf(true).preview, "true");
    assert.equal(nodeOf("x".repeat(1000)).preview.length, PREVIEW_CHARS + 3);
    assert.equal(kindOf(3.5), "number");
  });

  it("lists children with stable paths, a page at a time", () => {
    const root = nodeOf({ name: "n", "odd key": [10, 20], list: Array.from({ length: 500 }, (_, i) => i) });
    const { nodes } = childrenOf(root);
    assert.deepEqual(
      nodes.map((n) => n.path),
      ["$.name", '$["odd key"]', "$.list"],
    );
    const list = childrenOf(nodes[2] as never, 200);
    assert.equal(list.nodes.length, 200);
    assert.equal(list.more, 300);
    assert.equal(list.nodes[5]?.path, "$.list[5]");
    assert.deepEqual(childrenOf(nodeOf(1)), { nodes: [], more: 0 });
  });

  it("opens small values at first, not large ones", () => {
    assert.deepEqual([...initiallyOpen({ a: { b: 1 }, c: [1, 2] })], ["$", "$.a", "$.c"]);
    assert.deepEqual([...initiallyOpen(Array.from({ length: 100 }, () => 0))], []);
  });
});
