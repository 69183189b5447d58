/** When a finished attempt is retried, and after how long. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RetryPolicy } from "@paddock/protocol";
import type { AttemptOutcome } from "./attempt.ts";
import { retryDecision } from "./retry.ts";

const policy = RetryPolicy.parse({
  max_attempts: 5,
  backoff_s: 2,
  max_backoff_s: 10,
  jitter: 0.5,
  on: ["oom", "lost"],
  exit_codes: [75],
});
const failed = (reason: AttemptOutcome["reason"], exitCode: number | null = null): AttemptOutcome => ({
  status: "failed",
  reason,
  exitCode,
});

describe("retryDecision", () => {
  it("retries listed reasons and listed exit codes while attempts remain", () => {
    assert.ok(retryDecision(policy, failed("oom", 137), 1, 5, 0));
    assert.ok(retryDecision(policy, failed("lost"), 4, 5, 0));
    assert.equal(retryDecision(policy, failed("lost"), 5, 5, 0), null, "no attempts left");
    assert.ok(retryDecision(policy, failed("exit_code", 75), 1, 5, 0));
    assert.equal(retryDecision(policy, failed("exit_code", 1), 1, 5, 0), null, "an exit code not listed");
    assert.equal(retryDecision(policy, failed("timed_out"), 1, 5, 0), null, "a reason not listed");
    assert.equal(retryDecision(policy, { status: "succeeded", reason: "completed", exitCode: 0 }, 1, 5, 0), null);
    assert.equal(retryDecision(policy, { status: "canceled", reason: "canceled", exitCode: null }, 1, 5, 0), null);
    assert.equal(retryDecision(undefined, failed("lost"), 1, 5, 0), null, "no policy, no retry");
    const all = RetryPolicy.parse({ max_attempts: 2, on: ["exit_code"] });
    assert.ok(retryDecision(all, failed("exit_code", 3), 1, 2, 0), "exit_code in `on` retries every exit code");
    assert.equal(retryDecision(policy, failed("out_of_credits"), 1, 5, 0), null, "out of credits never retries");
  });

  it("doubles the backoff per attempt up to the cap, with jitter inside its bounds", () => {
    const at = (attempt: number, r: number) => retryDecision(policy, failed("lost"), attempt, 5, 1000, () => r)?.at;
    assert.equal(at(1, 0.5), 1000 + 2000);
    assert.equal(at(2, 0.5), 1000 + 4000);
    assert.equal(at(3, 0.5), 1000 + 8000);
    assert.equal(at(4, 0.5), 1000 + 10_000, "capped at max_backoff_s");
    assert.equal(at(1, 0), 1000 + 1000, "jitter 0.5 takes at most half");
    assert.equal(at(1, 1), 1000 + 3000, "and adds at most half");
    const event = retryDecision(policy, failed("oom", 137), 1, 5, 0, () => 0.5)?.event;
    assert.deepEqual(event, {
      reason: "oom",
      exit_code: 137,
      attempt: 2,
      max_attempts: 5,
      delay_ms: 2000,
      at: new Date(2000).toISOString(),
    });
  });
});
