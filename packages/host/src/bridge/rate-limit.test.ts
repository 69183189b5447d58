import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { TokenBucket } from "./rate-limit.ts";

/** A clock the test moves by hand. */
function clock(start = 1_000_000) {
  let t = start;
  return {
    now: () => t,
    advance(ms: number) {
      t += ms;
    },
  };
}

describe("TokenBucket", () => {
  test("allows a burst of `requests`, then refuses with the wait until the next token", () => {
    const c = clock();
    const buckets = new TokenBucket({ now: c.now });
    const limit = { requests: 3, per_s: 60 };
    for (let i = 0; i < 3; i++) assert.deepEqual(buckets.take("a", limit), { ok: true });
    // One token every 20 s.
    assert.deepEqual(buckets.take("a", limit), { ok: false, retryAfterS: 20 });
    c.advance(15_000);
    assert.deepEqual(buckets.take("a", limit), { ok: false, retryAfterS: 5 });
    c.advance(5_000);
    assert.deepEqual(buckets.take("a", limit), { ok: true });
    assert.equal(buckets.take("a", limit).ok, false);
  });

  test("refills at the configured rate and never beyond the burst", () => {
    const c = clock();
    const buckets = new TokenBucket({ now: c.now });
    const limit = { requests: 10, per_s: 1 };
    for (let i = 0; i < 10; i++) assert.ok(buckets.take("k", limit).ok);
    assert.equal(buckets.take("k", limit).ok, false);
    c.advance(500);
    let taken = 0;
    while (buckets.take("k", limit).ok) taken++;
    assert.equal(taken, 5);
    c.advance(3_600_000);
    taken = 0;
    while (buckets.take("k", limit).ok) taken++;
    assert.equal(taken, 10);
  });

  test("rounds the wait up to whole seconds, at least one", () => {
    const c = clock();
    const buckets = new TokenBucket({ now: c.now });
    const limit = { requests: 100, per_s: 1 };
    for (let i = 0; i < 100; i++) buckets.take("k", limit);
    assert.deepEqual(buckets.take("k", limit), { ok: false, retryAfterS: 1 });
  });

  test("keeps keys apart", () => {
    const c = clock();
    const buckets = new TokenBucket({ now: c.now });
    const limit = { requests: 1, per_s: 10 };
    assert.ok(buckets.take("tenant-a:gh", limit).ok);
    assert.equal(buckets.take("tenant-a:gh", limit).ok, false);
    assert.ok(buckets.take("tenant-b:gh", limit).ok);
  });

  test("applies a changed limit at once, keeping no more tokens than it holds", () => {
    const c = clock();
    const buckets = new TokenBucket({ now: c.now });
    assert.ok(buckets.take("k", { requests: 100, per_s: 1 }).ok);
    assert.ok(buckets.take("k", { requests: 2, per_s: 10 }).ok);
    assert.ok(buckets.take("k", { requests: 2, per_s: 10 }).ok);
    assert.deepEqual(buckets.take("k", { requests: 2, per_s: 10 }), { ok: false, retryAfterS: 5 });
  });

  test("takes `now` per call as well as from the injected clock", () => {
    const buckets = new TokenBucket({ now: () => 0 });
    const limit = { requests: 1, per_s: 1 };
    assert.ok(buckets.take("k", limit, 10_000).ok);
    assert.equal(buckets.take("k", limit, 10_500).ok, false);
    assert.ok(buckets.take("k", limit, 11_000).ok);
  });

  test("a clock that steps back gives no tokens", () => {
    const c = clock();
    const buckets = new TokenBucket({ now: c.now });
    const limit = { requests: 1, per_s: 1 };
    assert.ok(buckets.take("k", limit).ok);
    c.advance(-60_000);
    assert.equal(buckets.take("k", limit).ok, false);
    c.advance(60_500);
    assert.equal(buckets.take("k", limit).ok, false);
    c.advance(500);
    assert.ok(buckets.take("k", limit).ok);
  });

  test("stays within maxKeys, dropping refilled buckets first", () => {
    const c = clock();
    const buckets = new TokenBucket({ now: c.now, maxKeys: 100 });
    const slow = { requests: 1, per_s: 3600 };
    const fast = { requests: 1, per_s: 1 };
    // A drained bucket that must survive: its debt is real.
    assert.ok(buckets.take("drained", slow).ok);
    for (let i = 0; i < 99; i++) buckets.take(`idle-${i}`, fast);
    assert.equal(buckets.size, 100);
    c.advance(2000);
    buckets.take("new", fast);
    assert.ok(buckets.size <= 100);
    assert.equal(buckets.take("drained", slow).ok, false);
    for (let i = 0; i < 10_000; i++) buckets.take(`flood-${i}`, slow);
    assert.ok(buckets.size <= 100, String(buckets.size));
  });

  test("sweep drops only buckets that have refilled", () => {
    const c = clock();
    const buckets = new TokenBucket({ now: c.now });
    buckets.take("a", { requests: 1, per_s: 1 });
    buckets.take("b", { requests: 1, per_s: 100 });
    c.advance(1000);
    buckets.sweep();
    assert.equal(buckets.size, 1);
    assert.equal(buckets.take("b", { requests: 1, per_s: 100 }).ok, false);
  });
});
