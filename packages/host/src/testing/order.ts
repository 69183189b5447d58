/** Order checks for tests that fail when an item is missing instead of passing on indexOf's -1. */
import assert from "node:assert/strict";

/**
 * Asserts that every item of `expected` is in `list` and that their first occurrences come in
 * that order (other items may sit between them).
 * @example assertOrder(events.map((e) => e.type), ["attempt.lost", "retry.scheduled"]);
 */
export function assertOrder<T>(list: readonly T[], expected: readonly T[], message = ""): void {
  const shown = `${message ? `${message}: ` : ""}${JSON.stringify(list)}`;
  let previous = -1;
  for (const item of expected) {
    const at = list.indexOf(item);
    assert.ok(at >= 0, `${JSON.stringify(item)} is missing from ${shown}`);
    assert.ok(at > previous, `${JSON.stringify(item)} comes too early in ${shown}`);
    previous = at;
  }
}
