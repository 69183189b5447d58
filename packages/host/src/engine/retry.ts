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
  const delayMs = backoffMs(policy.backoff_s * 1000, policy.max_backoff_s * 1000, attempt, policy.jitter, random);
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

/**
 * The delay before the try after `attempt` (from 1): `firstMs` doubled per attempt, capped at
 * `maxMs`, then a random share `jitter` (0 to 1) of it added or taken.
 * @example backoffMs(5000, 3_600_000, 3, 0.2) // 20 s ± 4 s
 */
export function backoffMs(
  firstMs: number,
  maxMs: number,
  attempt: number,
  jitter: number,
  random: () => number = Math.random,
): number {
  const base = Math.min(maxMs, firstMs * 2 ** (attempt - 1));
  return Math.max(0, Math.round(base * (1 + jitter * (2 * random() - 1))));
}
