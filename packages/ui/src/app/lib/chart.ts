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
 * Sums amounts into equal time buckets from `start` to `end`, one series per group (the largest
 * `maxSeries` groups; the rest summed as "other").
 */
export function bucketize(
  points: readonly { time: number; group: string; amount: number }[],
  start: number,
  end: number,
  buckets: number,
  maxSeries = 6,
): Series[] {
  const width = (end - start) / buckets;
  const byGroup = new Map<string, number[]>();
  const totals = new Map<string, number>();
  for (const p of points) {
    if (p.time < start || p.time > end || width <= 0) continue;
    const i = Math.min(buckets - 1, Math.floor((p.time - start) / width));
    const values = byGroup.get(p.group) ?? new Array<number>(buckets).fill(0);
    values[i] = (values[i] as number) + p.amount;
    byGroup.set(p.group, values);
    totals.set(p.group, (totals.get(p.group) ?? 0) + p.amount);
  }
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1]).map(([g]) => g);
  const kept = ranked.slice(0, maxSeries);
  const series: Series[] = kept.map((name) => ({ name, values: byGroup.get(name) as number[] }));
  const rest = ranked.slice(maxSeries);
  if (rest.length > 0) {
    const values = new Array<number>(buckets).fill(0);
    for (const g of rest) {
      (byGroup.get(g) as number[]).forEach((v, i) => {
        values[i] = (values[i] as number) + v;
      });
    }
    series.push({ name: "other", values });
  }
  return series;
}
