/** Percentiles over measured samples (nearest-rank). */
export interface Dist {
  p50: number;
  p99: number;
  min: number;
  max: number;
  n: number;
}

export function dist(samples: number[]): Dist {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? Number.NaN;
  const r = (x: number) => Math.round(x * 100) / 100;
  return { p50: r(at(0.5)), p99: r(at(0.99)), min: r(s[0] ?? Number.NaN), max: r(s.at(-1) ?? Number.NaN), n: s.length };
}
