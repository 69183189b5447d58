/**
 * The one way a test skips for what this machine lacks (root, bubblewrap, the base image, a
 * tool). Everywhere but CI a missing requirement skips with its reason; with PADDOCK_REQUIRE_E2E=1
 * (set by .ci/run) it is a failing test that states the reason, so a CI machine that lost its root
 * or its image cannot pass by skipping.
 */
import { test } from "node:test";

/**
 * The `skip` option of a test or suite that needs what `reason` says is missing; `reason` is false
 * (or empty) when nothing is.
 * @example describe("sandboxes", { skip: e2eSkip(hostSkipReason()) }, () => { ... });
 */
export function e2eSkip(reason: string | false | null | undefined): string | false {
  if (!reason) return false;
  if (process.env.PADDOCK_REQUIRE_E2E === "1") {
    test(`requires what this machine lacks: ${reason}`, () => {
      throw new Error(`PADDOCK_REQUIRE_E2E=1, and this test cannot run here: ${reason}`);
    });
  }
  return reason;
}
