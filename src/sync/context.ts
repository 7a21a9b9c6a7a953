// Context rules. "Atomic context" is "no await": spinlock-held regions, preempt_disable,
// and non-blockable notifier callbacks (between non_block_start and non_block_end).
// might_sleep(), called by every sleeping primitive, reports a sleep from such a context
// even when the primitive would not have had to wait this time.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { OBJ_STATE } from '../sched/report.js';
import { heldLocksText } from '../sched/report.js';
import type { WaitResult } from '../sched/scheduler.js';
import { splat } from '../sched/splat.js';
import { HELD_LOCK, TaskL, type Task } from '../sched/task.js';

export function preempt_disable(): void {
  const t = current;
  t.k.arena.i32[t.base + TaskL.preempt]++;
}

export function preempt_enable(): void {
  const t = current;
  const w = t.k.arena.i32;
  if (--w[t.base + TaskL.preempt] < 0) {
    w[t.base + TaskL.preempt] = 0;
    splat(t.k, 'warn', `WARNING: preempt_count underflow in ${t.name}/${t.id}`);
  }
}

/** Enter a region that must not sleep (a non-blockable mmu notifier callback). */
export function non_block_start(): void {
  const t = current;
  t.k.arena.i32[t.base + TaskL.nonBlock]++;
}

export function non_block_end(): void {
  const t = current;
  const w = t.k.arena.i32;
  if (--w[t.base + TaskL.nonBlock] < 0) {
    w[t.base + TaskL.nonBlock] = 0;
    splat(t.k, 'warn', `WARNING: non_block_count underflow in ${t.name}/${t.id}`);
  }
}

export function in_atomic(): boolean {
  const t = current;
  return t.k.arena.i32[t.base + TaskL.preempt] > 0;
}

/** Is current between non_block_start() and non_block_end()? */
export function in_non_block(): boolean {
  const t = current;
  return t.k.arena.i32[t.base + TaskL.nonBlock] > 0;
}

export function might_sleep(site = 'might_sleep'): void {
  const t = current;
  const w = t.k.arena.i32;
  if ((w[t.base + TaskL.preempt] | w[t.base + TaskL.nonBlock]) !== 0) reportInvalidSleep(t, site);
}

function reportInvalidSleep(t: Task, site: string): void {
  const k = t.k;
  const w = k.arena.i32;
  const pc = w[t.base + TaskL.preempt];
  const nb = w[t.base + TaskL.nonBlock];
  const depth = w[t.base + TaskL.depth];
  const top = depth > 0 ? w[t.base + TaskL.held + (depth - 1) * 3 + HELD_LOCK] : 0;
  const key = `${t.id}:${site}:${top}:${pc > 0 ? 1 : 0}:${nb > 0 ? 1 : 0}`;
  if (k.lockdep.reported.has(key)) return;
  k.lockdep.reported.add(key);
  splat(
    k,
    'might_sleep',
    [
      `BUG: sleeping function called from invalid context at ${site}`,
      `in_atomic(): ${pc > 0 ? 1 : 0}, irqs_disabled(): 0, non_block: ${nb}, pid: ${t.id}, name: ${t.name}`,
      `preempt_count: ${pc}, expected: 0`,
      heldLocksText(k, t),
    ].join('\n'),
  );
}

/**
 * Sleep on arena word `idx` while it holds `expected`, recording what the task waits on
 * (object header at `obj`, wait kind) for hung-run reports.
 */
export function sleepOn(t: Task, obj: number, kind: number, idx: number, expected: number, timeoutNs?: number): WaitResult | Promise<WaitResult> {
  const w = t.k.arena.i32;
  w[t.base + TaskL.waitObj] = obj;
  w[t.base + TaskL.waitKind] = kind;
  const r = t.k.sched.wait(idx, expected, timeoutNs);
  if (typeof r === 'number') {
    w[t.base + TaskL.waitObj] = 0;
    return r;
  }
  return r.then((v) => {
    w[t.base + TaskL.waitObj] = 0;
    return v;
  });
}

/** Base of every lock handle: the kernel it belongs to and the object's word offset. */
export class LockObj {
  readonly w: Int32Array;
  constructor(
    readonly k: Kernel,
    readonly at: number,
  ) {
    this.w = k.arena.i32;
  }
  /** raw state word (for tests and reports) */
  get state(): number {
    return Atomics.load(this.w, this.at + OBJ_STATE);
  }
}
