// The live progress line of the long subcommands (run, explore, stress, oom-test): one line
// on stderr, rewritten in place with '\r' about four times a second — elapsed time, runs or
// operations done (of the total when known), the rate, violations so far. Silent when stderr
// is not a terminal (CI logs, pipes) or with --quiet, so it never mixes into --json output.
//
//   const p = progress({ label: 'explore smoke', unit: 'runs', quiet });
//   for (...) p.update({ done, total, violations });
//   p.end();
//
// Redraws come from two places: a timer (under `threads` the main thread only coordinates, so
// the timer fires on time), and update() itself once the interval has passed, because a `sim`
// run on the main thread keeps the event loop busy until it ends: there the line moves between
// runs (or whenever the caller calls update), not inside one.

import { performance } from 'node:perf_hooks';

export interface ProgressState {
  /** runs or operations done */
  done: number;
  /** how many there will be, if known */
  total?: number;
  violations?: number;
  /** a short extra word or two (the current seed, a phase) */
  note?: string;
}

/** Where the line goes: process.stderr by default. */
export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(s: string): unknown;
}

export interface ProgressOptions {
  label: string;
  /** what `done` counts (default 'runs') */
  unit?: string;
  /** --quiet / --json: draw nothing */
  quiet?: boolean;
  stream?: ProgressStream;
  /** ms between redraws (default 250) */
  intervalMs?: number;
  /** clock in ms (tests) */
  now?: () => number;
}

export interface Progress {
  /** false when nothing is drawn (not a TTY, or quiet) */
  readonly active: boolean;
  update(s: Partial<ProgressState>): void;
  /** Stop and clear the line; `keep` leaves the last state on its own line instead. */
  end(keep?: boolean): void;
}

const NOOP: Progress = { active: false, update() {}, end() {} };

export function progress(opts: ProgressOptions): Progress {
  const stream = opts.stream ?? process.stderr;
  if (opts.quiet || !stream.isTTY) return NOOP;
  return new LiveProgress(opts, stream);
}

class LiveProgress implements Progress {
  readonly active = true;
  private readonly state: ProgressState = { done: 0, violations: 0 };
  private readonly now: () => number;
  private readonly start: number;
  private readonly interval: number;
  private last = -Infinity;
  private timer: NodeJS.Timeout | null;
  private ended = false;

  constructor(
    private readonly opts: ProgressOptions,
    private readonly stream: ProgressStream,
  ) {
    this.now = opts.now ?? (() => performance.now());
    this.start = this.now();
    this.interval = opts.intervalMs ?? 250;
    this.timer = setInterval(() => this.draw(), this.interval);
    this.timer.unref(); // never keeps the process alive
  }

  update(s: Partial<ProgressState>): void {
    if (this.ended) return;
    Object.assign(this.state, s);
    if (this.now() - this.last >= this.interval) this.draw();
  }

  end(keep = false): void {
    if (this.ended) return;
    this.ended = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.stream.write(keep ? `\r${this.line()}\x1b[K\n` : '\r\x1b[K');
  }

  private draw(): void {
    if (this.ended) return;
    this.last = this.now();
    this.stream.write(`\r${this.line()}\x1b[K`);
  }

  private line(): string {
    const text = formatProgress(this.opts.label, this.state, this.now() - this.start, this.opts.unit);
    const cols = this.stream.columns ?? 0;
    return cols > 1 && text.length >= cols ? text.slice(0, cols - 1) : text;
  }
}

/** "explore smoke  12.3s  1,234/5,000 runs  100 runs/s  0 violations" */
export function formatProgress(label: string, s: ProgressState, elapsedMs: number, unit = 'runs'): string {
  const secs = Math.max(0, elapsedMs) / 1000;
  const done = s.total !== undefined ? `${count(s.done)}/${count(s.total)} ${unit}` : `${count(s.done)} ${unit}`;
  const rate = secs > 0 ? `${short(s.done / secs)} ${unit}/s` : `- ${unit}/s`;
  const v = s.violations ?? 0;
  const parts = [label, duration(secs), done, rate, `${count(v)} violation${v === 1 ? '' : 's'}`];
  if (s.note) parts.push(s.note);
  return parts.join('  ');
}

function duration(secs: number): string {
  if (secs < 60) return `${secs.toFixed(1)}s`;
  const m = Math.floor(secs / 60);
  const ss = Math.floor(secs % 60);
  return m < 60 ? `${m}m${String(ss).padStart(2, '0')}s` : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

function count(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** 3 significant digits at most, with k/M/G */
function short(n: number): string {
  if (!Number.isFinite(n)) return '-';
  const units = ['', 'k', 'M', 'G'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n >= 100 ? Math.round(n) : Number(n.toPrecision(3))}${units[i]}`;
}
