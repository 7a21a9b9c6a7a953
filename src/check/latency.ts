// Latency percentiles (the stress and run summaries), read from the event log (src/shm/events.ts): the
// spans of CPU page faults (mm_fault .. mm_fault_done of one task), device faults (dev_fault ..
// dev_fault_done) and invalidations (mm_inv_start .. mm_inv_end, or .. mm_inv_started when a
// non-blockable start failed and no end follows). An observer, like the watchdog: it reads
// the ring and keeps its histograms in JS, never in the kernel. Under `threads` the main thread
// scans every few ms while workers write (a record whose sequence moved under the read is
// dropped); under `sim` the stress tasks call scan() between operations. If the ring laps the
// scanner, the spans that crossed the gap are dropped: the figures are a sample, and say so.

import { EV_C, EV_SEQ, EV_TASK, EV_THI, EV_TLO, EV_TYPE, EV_WORDS, type EventLog } from '../shm/events.js';
import { DEV_EV } from '../device/types.js';
import { MM_EV } from '../mm/events.js';

export const LATENCY_KINDS = ['cpu_fault', 'device_fault', 'invalidation'] as const;
export type LatencyKind = (typeof LATENCY_KINDS)[number];

/** sub-buckets per power of two: bucket width ~4.4% */
const SUB = 16;
const BUCKETS = 64 * SUB;

export class Histogram {
  readonly counts = new Float64Array(BUCKETS);
  n = 0;
  max = 0;

  add(ns: number): void {
    const v = Math.max(1, ns);
    const b = Math.min(BUCKETS - 1, Math.floor(Math.log2(v) * SUB));
    this.counts[b]++;
    this.n++;
    if (v > this.max) this.max = v;
  }

  /** the q-quantile (0..1), ns: the geometric middle of its bucket; 0 with no samples */
  quantile(q: number): number {
    if (this.n === 0) return 0;
    const want = Math.max(1, Math.ceil(q * this.n));
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      seen += this.counts[b];
      if (seen >= want) return Math.min(this.max, 2 ** ((b + 0.5) / SUB));
    }
    return this.max;
  }

  merge(o: Histogram): void {
    for (let b = 0; b < BUCKETS; b++) this.counts[b] += o.counts[b];
    this.n += o.n;
    this.max = Math.max(this.max, o.max);
  }
}

export interface LatencySummary {
  samples: number;
  p50_us: number;
  p99_us: number;
  max_us: number;
}

const OPEN: Record<number, LatencyKind> = { [MM_EV.FAULT]: 'cpu_fault', [DEV_EV.FAULT]: 'device_fault', [MM_EV.INV_START]: 'invalidation' };

/** Pairs span events per task out of the event ring into one histogram per kind. */
export class LatencyScanner {
  readonly hist: Record<LatencyKind, Histogram> = { cpu_fault: new Histogram(), device_fault: new Histogram(), invalidation: new Histogram() };
  /** events the ring overwrote before a scan read them */
  lost = 0;
  private next: number;
  /** per task and kind: the open span's start time (ns), -1 if none */
  private readonly open = new Map<number, [number, number, number]>();
  private readonly rec = new Int32Array(EV_WORDS);

  constructor(
    private readonly events: EventLog,
    private readonly w: Int32Array,
    private readonly recs: number,
  ) {
    this.next = events.count;
  }

  /** The scanner of a kernel's event log (recs: the word offset of record 0). */
  static of(k: { events: EventLog; arena: { i32: Int32Array; region(n: string): number } }): LatencyScanner {
    return new LatencyScanner(k.events, k.arena.i32, k.arena.region('events') + 8);
  }

  /** Start from the oldest record still in the ring (a post-run read of a finished run). */
  rewind(): void {
    this.next = Math.max(0, this.events.count - this.events.capacity);
  }

  /** Read every record written since the last scan (at most one ring's worth). */
  scan(): void {
    const cap = this.events.capacity;
    const end = this.events.count;
    if (end - this.next > cap - 64) {
      // lapped (or about to be, under the writers' feet): start again at the safe tail
      const from = end - (cap >> 1);
      this.lost += from - this.next;
      this.next = from;
      this.open.clear();
    }
    const w = this.w;
    const r = this.rec;
    for (; this.next < end; this.next++) {
      const at = this.recs + (this.next % cap) * EV_WORDS;
      for (let i = 0; i < EV_WORDS; i++) r[i] = w[at + i];
      // a writer still filling it, or already past it: drop the record and any span it breaks
      if (r[EV_SEQ] !== this.next || w[at + EV_SEQ] !== this.next) {
        this.open.clear();
        continue;
      }
      this.feed(r);
    }
  }

  private feed(r: Int32Array): void {
    const type = r[EV_TYPE];
    if (type < DEV_EV.FAULT || (type > DEV_EV.FAULT_DONE && type < MM_EV.FAULT) || type > MM_EV.INV_END) return;
    const task = r[EV_TASK];
    const t = (r[EV_TLO] >>> 0) + (r[EV_THI] >>> 0) * 4294967296;
    let slot = this.open.get(task);
    if (!slot) this.open.set(task, (slot = [-1, -1, -1]));
    const kind = OPEN[type];
    if (kind !== undefined) {
      slot[LATENCY_KINDS.indexOf(kind)] = t;
      return;
    }
    let i = -1;
    if (type === MM_EV.FAULT_DONE) i = 0;
    else if (type === DEV_EV.FAULT_DONE) i = 1;
    else if (type === MM_EV.INV_END || (type === MM_EV.INV_STARTED && r[EV_C] < 0)) i = 2;
    if (i < 0 || slot[i] < 0) return;
    this.hist[LATENCY_KINDS[i]].add(t - slot[i]);
    slot[i] = -1;
  }

  /** Add another run's samples (sim: one scanner per run). */
  merge(o: LatencyScanner): void {
    for (const kind of LATENCY_KINDS) this.hist[kind].merge(o.hist[kind]);
    this.lost += o.lost;
  }

  summary(): Record<LatencyKind, LatencySummary> {
    const out = {} as Record<LatencyKind, LatencySummary>;
    for (const kind of LATENCY_KINDS) {
      const h = this.hist[kind];
      const us = (ns: number): number => Math.round(ns / 10) / 100;
      out[kind] = { samples: h.n, p50_us: us(h.quantile(0.5)), p99_us: us(h.quantile(0.99)), max_us: us(h.max) };
    }
    return out;
  }
}

/** The scanner the sim tasks feed (they share the main thread); null under threads workers. */
let active: LatencyScanner | null = null;

export function setActiveScanner(s: LatencyScanner | null): void {
  active = s;
}

/** From a sim task between operations: read what the ring holds now. A no-op in a worker. */
export function scanLatency(): void {
  active?.scan();
}
