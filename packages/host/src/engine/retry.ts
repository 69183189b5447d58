/** Whether a finished attempt is retried, when, and the event that says so. */
import type { RetryPolicy, RetryReason, RunEventData } from "@paddock/protocol";
import type { AttemptOutcome } from "./attempt.ts";

/** Which retry reason an attempt's outcome is, if any. */
function retryReason(outcome: AttemptOutcome): RetryReason | null {
  switch (outcome.reason) {
    case "killed":
      return "crashed";
    case "oom":
    case "timed_out":
    case "lost":
    case "exit_code":
    case "sandbox_error":
      return outcome.reason;
    default:
      return null;
  }
}

/**
 * Whether a finished attempt is retried and when: its reason is one the policy names (an exit code
 * retries when the policy lists it, or names `exit_code` for all), attempts remain, and the delay
 * is the backoff doubled per attempt, capped, with jitter.
 */
export function retryDecision(
  policy: RetryPolicy | undefined,
  outcome: AttemptOutcome,
  attempt: number,
  maxAttempts: number,
  now: number,
  random: () => number = Math.random,
): { at: number; event: RunEventData<"retry.scheduled"> } | null {
  if (!policy || outcome.status === "succeeded" || outcome.status === "canceled" || attempt >= maxAttempts) return null;
  const reason = retryReason(outcome);
  if (!reason) return null;
  const listed =
    reason === "exit_code"
      ? policy.on.includes("exit_code") || (outcome.exitCode !== null && policy.exit_codes.includes(outcome.exitCode))
      : policy.on.includes(reason);
  if (!listed) return null;
  const base = Math.min(policy.max_backoff_s, policy.backoff_s * 2 ** (attempt - 1));
  const delayMs = Math.max(0, Math.round(base * 1000 * (1 + policy.jitter * (2 * random() - 1))));
  return {
    at: now + delayMs,
    event: {
      reason,
      exit_code: outcome.exitCode,
      attempt: attempt + 1,
      max_attempts: maxAttempts,
      delay_ms: delayMs,
      at: new Date(now + delayMs).toISOString(),
    },
  };
}
