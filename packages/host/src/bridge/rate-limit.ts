/**
 * Token buckets keyed by string, for connections' rate limits. A bucket holds up to `requests`
 * tokens and refills at `requests` per `per_s` seconds; each call takes one. Buckets live in this
 * host's memory, so with several hosts each enforces the limit on the calls it forwards.
 *
 * Threat model: keys come from the host (connection ids), but the calls that spend tokens come
 * from sandboxes that may call as fast as they can. Memory stays bounded: a bucket that has
 * refilled completely is the same as no bucket and is dropped when space is needed; only when
 * every bucket is still refilling are the least recently used ones forgotten.
 */

/** A limit: at most `requests` calls per `per_s` seconds, in bursts of up to `requests`. */
export interface RateLimitSpec {
  requests: number;
  per_s: number;
}

export type TakeResult = { ok: true } | { ok: false; retryAfterS: number };

export interface TokenBucketOptions {
  /** Most buckets kept at once (default 100 000). */
  maxKeys?: number;
  /** Milliseconds from a monotonic clock (default performance.now). */
  now?: () => number;
}

interface Bucket {
  tokens: number;
  /** When `tokens` was last brought up to date. */
  at: number;
  requests: number;
  perMs: number;
}

export class TokenBucket {
  readonly #buckets = new Map<string, Bucket>();
  readonly #maxKeys: number;
  readonly #now: () => number;

  constructor(options: TokenBucketOptions = {}) {
    this.#maxKeys = Math.max(1, options.maxKeys ?? 100_000);
    this.#now = options.now ?? (() => performance.now());
  }

  /** Buckets held now. */
  get size(): number {
    return this.#buckets.size;
  }

  /**
   * Takes `cost` tokens (default one) from `key`'s bucket under `limit`. When too few are left,
   * says after how many whole seconds (at least 1) there will be enough. A changed limit for a key applies at once, keeping
   * no more tokens than the new limit holds.
   *
   * @example
   * const buckets = new TokenBucket();
   * buckets.take("con_1", { requests: 10, per_s: 60 }) // { ok: true }
   */
  take(key: string, limit: RateLimitSpec, now = this.#now(), cost = 1): TakeResult {
    const bucket = this.#refilled(key, limit, now);
    if (bucket.tokens >= cost) {
      bucket.tokens -= cost;
      return { ok: true };
    }
    const waitMs = ((cost - bucket.tokens) * bucket.perMs) / bucket.requests;
    return { ok: false, retryAfterS: Math.max(1, Math.ceil(waitMs / 1000)) };
  }

  /** Drops every bucket that has refilled completely by `now`. */
  sweep(now = this.#now()): void {
    for (const [key, bucket] of this.#buckets) {
      if (full(bucket, now)) this.#buckets.delete(key);
    }
  }

  #refilled(key: string, limit: RateLimitSpec, now: number): Bucket {
    const requests = Math.max(1, Math.floor(limit.requests));
    const perMs = Math.max(1, limit.per_s) * 1000;
    let bucket = this.#buckets.get(key);
    if (bucket) {
      // Most recently used last, so eviction finds the idlest first.
      this.#buckets.delete(key);
      const elapsed = Math.max(0, now - bucket.at);
      bucket.tokens = Math.min(requests, bucket.tokens + (elapsed * requests) / perMs);
      bucket.at = Math.max(bucket.at, now);
      bucket.requests = requests;
      bucket.perMs = perMs;
    } else {
      this.#makeRoom(now);
      bucket = { tokens: requests, at: now, requests, perMs };
    }
    this.#buckets.set(key, bucket);
    return bucket;
  }

  #makeRoom(now: number): void {
    if (this.#buckets.size < this.#maxKeys) return;
    this.sweep(now);
    // Leave a tenth free so that the next calls do not sweep again; if refilled buckets did not
    // make that room, the least recently used ones are forgotten.
    const target = this.#maxKeys - Math.ceil(this.#maxKeys / 10);
    for (const key of this.#buckets.keys()) {
      if (this.#buckets.size <= target) break;
      this.#buckets.delete(key);
    }
  }
}

function full(bucket: Bucket, now: number): boolean {
  return bucket.tokens + (Math.max(0, now - bucket.at) * bucket.requests) / bucket.perMs >= bucket.requests;
}
