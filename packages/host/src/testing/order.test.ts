import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { assertOrder } from "./order.ts";

describe("assertOrder", () => {
  it("passes for items present in order, with others between them", () => {
    assertOrder(["a", "x", "b", "c"], ["a", "b", "c"]);
    assertOrder(["a", "b"], ["b"]);
  });

  it("fails when an item is missing, wherever it would be", () => {
    assert.throws(() => assertOrder(["b"], ["a", "b"]), /"a" is missing/);
    assert.throws(() => assertOrder(["a"], ["a", "b"]), /"b" is missing/);
    assert.throws(() => assertOrder([], ["a", "b"]), /"a" is missing/);
  });

  it("fails when the order differs", () => {
    assert.throws(() => assertOrder(["b", "a"], ["a", "b"]), /"b" comes too early/);
    assert.throws(() => assertOrder(["a", "a"], ["a", "a"]), /"a" comes too early/);
  });
});
