// Helpers shared by the benchmarks: stdout carries only the final JSON, so progress goes
// to stderr; every figure is the median of several timed repetitions after a warm-up.

export function progress(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new RangeError('median of no samples');
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length & 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** wall nanoseconds since an earlier `nowNs()` */
export function nowNs(): number {
  return Number(process.hrtime.bigint());
}

/** Run `sample` `warmup` times untimed, then `reps` times, and return every sample. */
export async function samples(warmup: number, reps: number, sample: () => number | Promise<number>): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await sample();
  const out: number[] = [];
  for (let i = 0; i < reps; i++) out.push(await sample());
  return out;
}

export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
