/**
 * How much of the bridge one sandbox may hold at once: requests in flight and open TCP
 * connections, counted by source address (the kernel vouches for it, see network.ts), so that one
 * sandbox's flood of slow calls cannot take the file descriptors and memory every other run needs.
 *
 * Threat model: the caller runs hostile code and opens as many connections and requests as it can,
 * to a slow upstream, an approval hold or a long model stream. Counting happens before the token is
 * looked at, so requests without a valid token count too; past either cap the bridge refuses at
 * once (429 `bridge_busy`, or the connection closed at accept). Refusals are reported at most once
 * per source and kind per `reportEveryMs`, with the number refused since the last report: a report
 * per refusal would itself be a flood.
 */

/** The caps a host applies unless configured otherwise (see config.ts `bridgeLimits`). */
export const SOURCE_LIMIT_DEFAULTS = { requestsPerSandbox: 64, connectionsPerSandbox: 128 } as const;

export interface SourceLimitsOptions {
  /** Requests one source may have in flight at once. */
  requestsPerSandbox: number;
  /** TCP connections one source may hold open at once. */
  connectionsPerSandbox: number;
  /** Least time between two reports of refusals for one source (default a minute). */
  reportEveryMs?: number;
  /** Milliseconds from a monotonic clock (default performance.now). */
  now?: () => number;
}

export type Held = "requests" | "connections";

/** What a refusal tells its caller to report, when it is the first since the last report. */
export interface RefusalReport {
  /** What was full. */
  held: Held;
  /** The cap reached. */
  limit: number;
  /** Refusals of this source since its last report, this one included. */
  refused: number;
}

/** What a source holds of one kind, and its refusals of that kind. */
interface Count {
  held: number;
  /** Refusals not yet reported. */
  refused: number;
  /** When refusals were last reported; -Infinity: never. */
  reportedAt: number;
}

type Source = Record<Held, Count>;

const count = (): Count => ({ held: 0, refused: 0, reportedAt: Number.NEGATIVE_INFINITY });

export class SourceLimits {
  readonly #sources = new Map<string, Source>();
  readonly #caps: Record<Held, number>;
  readonly #reportEveryMs: number;
  readonly #now: () => number;

  constructor(options: SourceLimitsOptions) {
    this.#caps = {
      requests: Math.max(1, options.requestsPerSandbox),
      connections: Math.max(1, options.connectionsPerSandbox),
    };
    this.#reportEveryMs = options.reportEveryMs ?? 60_000;
    this.#now = options.now ?? (() => performance.now());
  }

  /**
   * Takes one of `source`'s `held` slots: null when taken (give it back with `release`), else
   * the refusal, with a report to make when one is due.
   *
   * @example
   * const limits = new SourceLimits({ requestsPerSandbox: 1, connectionsPerSandbox: 4 });
   * limits.take("10.209.0.2", "requests") // null
   * limits.take("10.209.0.2", "requests") // { report: { held: "requests", limit: 1, refused: 1 } }
   */
  take(source: string, held: Held): null | { report: RefusalReport | null } {
    let entry = this.#sources.get(source);
    if (!entry) {
      entry = { requests: count(), connections: count() };
      this.#sources.set(source, entry);
    }
    const c = entry[held];
    if (c.held < this.#caps[held]) {
      c.held++;
      return null;
    }
    c.refused++;
    const now = this.#now();
    if (now - c.reportedAt < this.#reportEveryMs) return { report: null };
    const report = { held, limit: this.#caps[held], refused: c.refused };
    c.refused = 0;
    c.reportedAt = now;
    return { report };
  }

  /** Gives back a slot `take` gave. */
  release(source: string, held: Held): void {
    const entry = this.#sources.get(source);
    if (!entry || entry[held].held === 0) return;
    entry[held].held--;
    // A source holding nothing, with nothing unreported and no report recent, is the same as none.
    const now = this.#now();
    const idle = (c: Count) => c.held === 0 && c.refused === 0 && now - c.reportedAt >= this.#reportEveryMs;
    if (idle(entry.requests) && idle(entry.connections)) this.#sources.delete(source);
  }

  /** What `source` holds now. */
  holding(source: string): Record<Held, number> {
    const entry = this.#sources.get(source);
    return { requests: entry?.requests.held ?? 0, connections: entry?.connections.held ?? 0 };
  }

  /** Sources kept track of now. */
  get size(): number {
    return this.#sources.size;
  }
}
