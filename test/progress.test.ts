// The live progress line (src/run/progress.ts): its text, the in-place rewrite on a TTY at
// most once per interval, the final clear, and silence when stderr is not a terminal or with
// --quiet.

import { describe, expect, it } from 'vitest';
import { formatProgress, progress, type ProgressStream } from '../src/run/progress.js';

function fakeStream(isTTY: boolean, columns?: number): ProgressStream & { out: string[] } {
  const out: string[] = [];
  return { isTTY, columns, out, write: (s: string) => out.push(s) };
}

describe('formatProgress', () => {
  it('label, elapsed, done of total, rate, violations', () => {
    expect(formatProgress('explore smoke', { done: 1234, total: 5000, violations: 0 }, 12_340)).toBe('explore smoke  12.3s  1,234/5,000 runs  100 runs/s  0 violations');
    expect(formatProgress('stress', { done: 4_431_364, violations: 1 }, 1000, 'ops')).toBe('stress  1.0s  4,431,364 ops  4.43M ops/s  1 violation');
    expect(formatProgress('run', { done: 3, violations: 2, note: 'seed 7' }, 2000)).toBe('run  2.0s  3 runs  1.5 runs/s  2 violations  seed 7');
    expect(formatProgress('oom-test', { done: 0 }, 0)).toBe('oom-test  0.0s  0 runs  - runs/s  0 violations');
    expect(formatProgress('long', { done: 12_000, violations: 0 }, 754_000)).toBe('long  12m34s  12,000 runs  15.9 runs/s  0 violations');
    expect(formatProgress('longer', { done: 1, violations: 0 }, 3_725_000)).toMatch(/^longer {2}1h02m {2}/);
  });
});

describe('progress()', () => {
  it('writes nothing when the stream is not a TTY', () => {
    const s = fakeStream(false);
    const p = progress({ label: 'x', stream: s, intervalMs: 0 });
    expect(p.active).toBe(false);
    p.update({ done: 5, violations: 1 });
    p.end(true);
    expect(s.out).toEqual([]);
  });

  it('writes nothing with quiet, even on a TTY', () => {
    const s = fakeStream(true);
    const p = progress({ label: 'x', stream: s, quiet: true, intervalMs: 0 });
    p.update({ done: 5 });
    p.end(true);
    expect(p.active).toBe(false);
    expect(s.out).toEqual([]);
  });

  it('on a TTY: rewrites the line in place at most once per interval, then clears it', () => {
    let t = 0;
    const s = fakeStream(true);
    const p = progress({ label: 'explore', stream: s, intervalMs: 250, now: () => t });
    expect(p.active).toBe(true);
    t = 1000;
    p.update({ done: 10, total: 20, violations: 0 });
    t = 1100;
    p.update({ done: 11 }); // within the interval: no redraw
    t = 2000;
    p.update({ done: 20, violations: 1 });
    p.end();
    expect(s.out).toEqual([
      '\rexplore  1.0s  10/20 runs  10 runs/s  0 violations\x1b[K',
      '\rexplore  2.0s  20/20 runs  10 runs/s  1 violation\x1b[K',
      '\r\x1b[K',
    ]);
    p.update({ done: 30 }); // after end: nothing
    expect(s.out).toHaveLength(3);
  });

  it('end(true) keeps the last line; a narrow terminal gets the line cut to fit', () => {
    let t = 0;
    const s = fakeStream(true, 20);
    const p = progress({ label: 'stress', unit: 'ops', stream: s, now: () => t });
    t = 500;
    p.end(true);
    expect(s.out).toEqual(['\rstress  0.5s  0 ops\x1b[K\n']); // 19 columns: one is left for the cursor
  });

  it('the timer redraws while the caller is idle (threads: the main thread is free)', async () => {
    const s = fakeStream(true);
    const p = progress({ label: 'threads', stream: s, intervalMs: 20 });
    p.update({ done: 1 });
    await new Promise((r) => setTimeout(r, 120));
    p.end();
    expect(s.out.length).toBeGreaterThanOrEqual(3);
    expect(s.out.slice(0, -1).every((l) => l.startsWith('\rthreads  ') && l.includes('1 runs'))).toBe(true);
  });
});
