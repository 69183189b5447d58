/** Scales and ticks for the charts the dashboard draws as SVG. */

/** About `count` round tick values covering min..max (steps of 1, 2 or 5 times a power of ten). */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [0];
  if (max <= min) return [min];
  const raw = (max - min) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 5, 10].find((m) => m * power >= raw) ?? 10) * power;
  const ticks: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** A linear map from a domain to a range. */
export function scale(d0: number, d1: number, r0: number, r1: number): (v: number) => number {
  const k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
  return (v) => r0 + (v - d0) * k;
}

export interface Series {
  name: string;
  /** One value per bucket. */
  values: number[];
}

/** The tops of stacked series per bucket: cumulative sums, series in order. */
export function stack(series: readonly Series[], buckets: number): number[][] {
  const totals = new Array<number>(buckets).fill(0);
  return series.map((s) =>
    totals.map((_, i) => {
      totals[i] = (totals[i] as number) + (s.values[i] ?? 0);
      return totals[i] as number;
    }),
  );
}

/**
 * Spending per agent over time from stats buckets (each with its credits by agent id): one series
 * per agent, the `maxSeries` that spent most, the rest summed as "other".
 */
export function spendSeries(
  buckets: readonly { spent_by_agent: Readonly<Record<string, number>> }[],
  nameOf: (agentId: string) => string,
  maxSeries = 6,
): Series[] {
  const totals = new Map<string, number>();
  for (const b of buckets) {
    for (const [agent, spent] of Object.entries(b.spent_by_agent)) totals.set(agent, (totals.get(agent) ?? 0) + spent);
  }
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1]).map(([agent]) => agent);
  const kept = ranked.slice(0, maxSeries);
  const series: Series[] = kept.map((agent) => ({
    name: nameOf(agent),
    values: buckets.map((b) => b.spent_by_agent[agent] ?? 0),
  }));
  const rest = ranked.slice(maxSeries);
  if (rest.length > 0) {
    series.push({
      name: "other",
      values: buckets.map((b) => rest.reduce((sum, agent) => sum + (b.spent_by_agent[agent] ?? 0), 0)),
    });
  }
  return series;
}
