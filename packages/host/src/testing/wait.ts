/**
 * Waiting on a condition in tests instead of sleeping: the condition is polled until it holds,
 * and the deadline only bounds a hang (it is generous, so a slow machine does not fail a test).
 */
import { setTimeout as sleep } from "node:timers/promises";

export interface WaitOptions {
  /** What is awaited, for the error when it never comes (a function is asked then, for the latest state). */
  what: string | (() => string);
  /** Gives up after this long; defaults to 30 s. */
  timeoutMs?: number;
  /** Pause between two polls; defaults to 20 ms. */
  intervalMs?: number;
}

/**
 * Polls `condition` until it returns a value other than false, null or undefined, and returns
 * that value; throws naming `what` after the deadline.
 * @example const run = await waitFor(async () => (await get(id)).status === "running" || undefined, { what: "the run to start" });
 */
export async function waitFor<T>(
  condition: () => T | false | null | undefined | Promise<T | false | null | undefined>,
  options: WaitOptions,
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value !== false && value !== null && value !== undefined) return value;
    if (Date.now() > deadline) {
      const what = typeof options.what === "function" ? options.what() : options.what;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await sleep(options.intervalMs ?? 20);
  }
}
