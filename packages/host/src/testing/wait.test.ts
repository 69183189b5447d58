import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { waitFor } from "./wait.ts";

describe("waitFor", () => {
  it("returns the condition's first value that is not false, null or undefined", async () => {
    let polls = 0;
    const value = await waitFor(() => (++polls >= 3 ? { polls } : undefined), { what: "three polls", intervalMs: 1 });
    assert.deepEqual(value, { polls: 3 });
    assert.equal(await waitFor(async () => 0, { what: "zero" }), 0, "0 is a value");
  });

  it("fails naming what it waited for once the deadline has passed", async () => {
    let state = "cold";
    await assert.rejects(
      waitFor(
        () => {
          state = "warm";
          return false;
        },
        { what: () => `the oven (${state})`, timeoutMs: 30, intervalMs: 5 },
      ),
      /timed out after 30 ms waiting for the oven \(warm\)/,
    );
  });
});
