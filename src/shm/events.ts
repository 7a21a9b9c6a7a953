// The event log: a ring of fixed 8-word records in the arena. Under `sim` it is written by one
// thread in schedule order, so the same seed gives the same bytes; a running hash covers every
// event ever written, not just those still in the ring. Under `threads` writers claim slots
// with one atomic add and the hash is not meaningful.

import type { Arena, ArenaPlan } from './arena.js';

export const EV_WORDS = 8;
// record fields
export const EV_SEQ = 0;
export const EV_TLO = 1;
export const EV_THI = 2;
export const EV_TASK = 3;
export const EV_TYPE = 4;
export const EV_A = 5;
export const EV_B = 6;
export const EV_C = 7;

const SEQ = 0; // events ever written
const HASH = 1;
const ENABLED = 2;
const CAP = 3;
const HEADER = 8;

/** Event types. Later layers append their own after USER. */
export const EV = {
  SPAWN: 1, // a = parent, b = name (string id), c = kind (TASK_KINDS index)
  EXIT: 2,
  SWITCH: 3, // a = from task, b = to task
  BLOCK: 4, // a = word, b = expected
  WAKE: 5, // task = the woken task, b = word (a = the waker under sim)
  TIMER: 6, // a = task whose timer fired
  LOCK: 7, // a = lock, b = class
  UNLOCK: 8,
  CONTENDED: 9,
  VIOLATION: 10, // a = klog record
  PCT_CHANGE: 11, // a = step, b = task demoted
  TIMEOUT: 12,
  ABORT: 13,
  ACQUIRED: 14, // a = lock: the lock a CONTENDED wait was for is taken
  USER: 64,
} as const;

export const EV_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(EV).map(([k, v]) => [v, k.toLowerCase()]),
);

export class EventLog {
  private readonly w: Int32Array;
  private readonly hdr: number;
  private readonly recs: number;
  readonly capacity: number;
  /** set by the scheduler: current time in ns */
  clock: () => number = () => 0;

  constructor(arena: Arena) {
    this.w = arena.i32;
    this.hdr = arena.region('events');
    this.recs = this.hdr + HEADER;
    this.capacity = this.w[this.hdr + CAP];
  }

  static plan(plan: ArenaPlan, records: number): void {
    plan.region('events', HEADER + records * EV_WORDS);
  }

  static init(arena: Arena, records: number, enabled: boolean): void {
    const h = arena.region('events');
    arena.i32[h + CAP] = records;
    arena.i32[h + ENABLED] = enabled ? 1 : 0;
    arena.i32[h + HASH] = 0x811c9dc5 | 0;
  }

  get enabled(): boolean {
    return this.w[this.hdr + ENABLED] !== 0;
  }

  set enabled(on: boolean) {
    this.w[this.hdr + ENABLED] = on ? 1 : 0;
  }

  get count(): number {
    return Atomics.load(this.w, this.hdr + SEQ);
  }

  get hash(): number {
    return this.w[this.hdr + HASH] >>> 0;
  }

  emit(type: number, task: number, a: number, b: number, c: number): void {
    const w = this.w;
    if (w[this.hdr + ENABLED] === 0) return;
    const seq = Atomics.add(w, this.hdr + SEQ, 1);
    const t = this.clock();
    const r = this.recs + (seq % this.capacity) * EV_WORDS;
    const tlo = t % 4294967296 | 0;
    const thi = Math.floor(t / 4294967296) | 0;
    w[r + EV_SEQ] = seq;
    w[r + EV_TLO] = tlo;
    w[r + EV_THI] = thi;
    w[r + EV_TASK] = task;
    w[r + EV_TYPE] = type;
    w[r + EV_A] = a;
    w[r + EV_B] = b;
    w[r + EV_C] = c;
    let h = w[this.hdr + HASH];
    h = Math.imul(h ^ seq, 0x01000193);
    h = Math.imul(h ^ tlo, 0x01000193);
    h = Math.imul(h ^ thi, 0x01000193);
    h = Math.imul(h ^ task, 0x01000193);
    h = Math.imul(h ^ type, 0x01000193);
    h = Math.imul(h ^ a, 0x01000193);
    h = Math.imul(h ^ b, 0x01000193);
    w[this.hdr + HASH] = Math.imul(h ^ c, 0x01000193);
  }

  /** The records still in the ring, oldest first, as a copy. */
  records(): Int32Array {
    const n = this.count;
    const first = Math.max(0, n - this.capacity);
    const out = new Int32Array((n - first) * EV_WORDS);
    for (let s = first, o = 0; s < n; s++, o += EV_WORDS) {
      const r = this.recs + (s % this.capacity) * EV_WORDS;
      out.set(this.w.subarray(r, r + EV_WORDS), o);
    }
    return out;
  }

  /** The last `max` events of one task (for violation records: "recent events of each side"). */
  recentOf(task: number, max: number): Int32Array[] {
    const n = this.count;
    const first = Math.max(0, n - this.capacity);
    const out: Int32Array[] = [];
    for (let s = n - 1; s >= first && out.length < max; s--) {
      const r = this.recs + (s % this.capacity) * EV_WORDS;
      if (this.w[r + EV_TASK] === task) out.unshift(this.w.slice(r, r + EV_WORDS));
    }
    return out;
  }
}
