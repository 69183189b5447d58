/**
 * The sandboxes whose runs may use the bridge right now, by their network address. An attempt
 * registers its sandbox once the run token is in place and unregisters it before the sandbox is
 * torn down: from then on every token of that attempt is dead, whatever its expiry says, because
 * the bridge answers only addresses listed here and only for the run listed with them.
 */
import type { NewEvent } from "../store/event-log.ts";
import type { SpanParent } from "../tracing/trace-context.ts";

export interface LiveSandbox {
  address: string;
  sandboxId: string;
  runId: string;
  attempt: number;
  /** The node running the attempt: with it, the attempt's writes are fenced (see store/fence.ts). */
  workerId?: string;
  tenantId: string;
  agentId: string;
  /** The agent version the run froze (its MCP policy and pins). */
  agentVersion?: number;
  /** The end user (of the tenant) the run acts for, fixed when it was triggered; null: none. */
  endUser?: string | null;
  /** Records an event on the attempt (bridge.call), through the attempt's own caps and batching. */
  record(event: NewEvent): void;
  /** The run whose bill and per-run budget its model calls count against (the root of a run tree). */
  billRunId?: string;
  /** Positions of this attempt's boundary calls, by kind (their default step keys). */
  steps?: Map<string, number>;
  /** Whether its boundary calls are journaled (the run may be retried). */
  journaled?: boolean;
  /** Ends the run with reason out_of_credits: a budget cannot pay for another LLM call. */
  outOfCredits?(scope: "tenant" | "agent" | "run"): void;
  /** The attempt's span, which the spans of its calls go under (when the host traces). */
  trace?: SpanParent & { spanId: string };
  /** Told when the run starts and stops waiting for approvals: that time does not count against its timeout. */
  waiting?(on: boolean): void;
}

export class LiveSandboxes {
  readonly #byAddress = new Map<string, LiveSandbox>();

  /** Lists a sandbox; an address is never listed twice (the network hands each out once at a time). */
  add(entry: LiveSandbox): void {
    const existing = this.#byAddress.get(entry.address);
    if (existing && existing.sandboxId !== entry.sandboxId) {
      throw new Error(`address ${entry.address} already belongs to sandbox ${existing.sandboxId}`);
    }
    this.#byAddress.set(entry.address, entry);
  }

  /** Unlists the sandbox at `address` if it is still `sandboxId`'s. */
  remove(address: string, sandboxId: string): void {
    if (this.#byAddress.get(address)?.sandboxId === sandboxId) this.#byAddress.delete(address);
  }

  /** The next position among the sandbox's calls of `kind` (1, 2, …). */
  static nextStep(sandbox: LiveSandbox, kind: string): number {
    sandbox.steps ??= new Map();
    const n = (sandbox.steps.get(kind) ?? 0) + 1;
    sandbox.steps.set(kind, n);
    return n;
  }

  /** Gives back a position taken by a call that never went upstream (a refusal). */
  static unstep(sandbox: LiveSandbox, kind: string): void {
    const n = sandbox.steps?.get(kind) ?? 0;
    if (n > 0) sandbox.steps?.set(kind, n - 1);
  }

  byAddress(address: string): LiveSandbox | undefined {
    return this.#byAddress.get(address);
  }

  get size(): number {
    return this.#byAddress.size;
  }
}
