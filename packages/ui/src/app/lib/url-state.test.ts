import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { activeCount, formatFilters, NO_FILTERS, parseFilters, runsQuery, withFilter } from "./url-state.ts";

describe("runs filters in the URL", () => {
  it("round-trips every filter through the search string, in a fixed order", () => {
    const f = {
      ...NO_FILTERS,
      status: "failed" as const,
      agent: "agt_123",
      trigger: "schedule" as const,
      from: "2025-01-02T03:04:05.000Z",
      root: "run_abc",
      q: "run_01h",
    };
    const search = formatFilters(f);
    assert.equal(
      search,
      "?status=failed&agent=agt_123&trigger=schedule&from=2025-01-02T03%3A04%3A05.000Z&root=run_abc&q=run_01h",
    );
    assert.deepEqual(parseFilters(search), f);
    assert.equal(formatFilters(NO_FILTERS), "");
    assert.equal(activeCount(f), 6);
  });

  it("drops values that cannot be filters", () => {
    const f = parseFilters(
      `?status=exploded&agent=<script>&trigger=cron&range=2y&from=yesterday&q=a%20b&cursor=${"x".repeat(65)}`,
    );
    assert.deepEqual(f, NO_FILTERS);
  });

  it("starts at the first page when a filter changes, and a preset replaces absolute bounds", () => {
    const f = { ...NO_FILTERS, cursor: "run_x", from: "2025-01-01T00:00:00Z" };
    assert.equal(withFilter(f, { status: "running" }).cursor, "");
    assert.equal(withFilter(f, { cursor: "run_y" }).cursor, "run_y");
    const preset = withFilter(f, { range: "24h" });
    assert.equal(preset.from, "");
    assert.equal(withFilter(preset, { to: "2025-02-01T00:00:00Z" }).range, "");
  });

  it("turns filters into the list's query, leaving out what the host does not take", () => {
    const now = Date.parse("2025-06-01T12:00:00Z");
    const f = {
      ...NO_FILTERS,
      status: "running" as const,
      range: "1h" as const,
      trigger: "webhook" as const,
      q: "run_0",
    };
    const all = runsQuery(f, now, () => true);
    assert.deepEqual(all.query, {
      limit: 50,
      cursor: undefined,
      status: "running",
      created_after: "2025-06-01T11:00:00.000Z",
      trigger: "webhook",
      id_prefix: "run_0",
    });
    assert.deepEqual(all.unsupported, []);
    const old = runsQuery(f, now, () => false);
    assert.deepEqual(old.query, { limit: 50, cursor: undefined, status: "running" });
    assert.deepEqual(old.unsupported, ["trigger", "from", "q"]);
  });
});
