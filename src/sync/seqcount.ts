// seqcount_t: writers (serialised by their own lock) make the count odd while they write;
// readers retry when the count moved. A reader loop must contain a scheduling point under
// `sim`, or a preempted writer would never finish.

import type { Kernel } from '../sched/kernel.js';
import { OBJ_STATE } from '../sched/report.js';
import { LockObj } from './context.js';
import { initObj } from './lockdep.js';

export const SEQCOUNT_WORDS = 4;

export class SeqCount extends LockObj {}

export function seqcount_init(k: Kernel, at: number, name: string): SeqCount {
  initObj(k, at, name);
  return new SeqCount(k, at);
}

export function write_seqcount_begin(s: SeqCount): void {
  Atomics.add(s.w, s.at + OBJ_STATE, 1);
}

export function write_seqcount_end(s: SeqCount): void {
  Atomics.add(s.w, s.at + OBJ_STATE, 1);
}

/** The count to check later; odd (a write in progress) is returned as-is and always retries. */
export function read_seqcount_begin(s: SeqCount): number {
  const w = s.w;
  for (let i = 0; i < 64; i++) {
    const v = Atomics.load(w, s.at + OBJ_STATE);
    if ((v & 1) === 0) return v;
  }
  return Atomics.load(w, s.at + OBJ_STATE);
}

export function read_seqcount_retry(s: SeqCount, start: number): boolean {
  return (start & 1) !== 0 || Atomics.load(s.w, s.at + OBJ_STATE) !== start;
}

export function raw_read_seqcount(s: SeqCount): number {
  return Atomics.load(s.w, s.at + OBJ_STATE);
}
