// SRCU: sleepable RCU. Readers bump the counter of the current index; synchronize_srcu()
// drains the inactive side (a reader that read the index before a flip and counted itself
// after it), flips, and drains the side that was current, so readers that come later are
// not waited for. mmu notifier callbacks run
// inside an SRCU read section; unregister waits here for callbacks in flight.
// Lockdep sees the read side as a recursive read and synchronize as a write, so
// synchronize_srcu() inside its own read section, or under a lock a reader takes, is reported.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { TaskL, WK } from '../sched/task.js';
import { LockObj, might_sleep } from './context.js';
import { LD_READ, LD_RECURSIVE, initObj } from './lockdep.js';
import { MUTEX_WORDS, Mutex, mutex_init, mutex_lock, mutex_unlock } from './mutex.js';
import { WAITQUEUE_WORDS, WaitQueueHead, init_waitqueue_head, waitSlow, wake_up } from './waitqueue.js';

const IDX = 4;
const CTR = 5; // two counters
const GP_MUTEX = 8;
const WQ = GP_MUTEX + MUTEX_WORDS;
export const SRCU_WORDS = WQ + WAITQUEUE_WORDS;

export class SrcuStruct extends LockObj {
  readonly gp: Mutex;
  readonly wq: WaitQueueHead;
  constructor(k: Kernel, at: number) {
    super(k, at);
    this.gp = new Mutex(k, at + GP_MUTEX);
    this.wq = new WaitQueueHead(k, at + WQ);
  }
}

export function init_srcu_struct(k: Kernel, at: number, name: string): SrcuStruct {
  initObj(k, at, name);
  mutex_init(k, at + GP_MUTEX, `${name}.srcu_gp_mutex`);
  init_waitqueue_head(k, at + WQ, `${name}.srcu_wq`);
  return new SrcuStruct(k, at);
}

export function srcu_read_lock(s: SrcuStruct): number {
  const t = current;
  const idx = Atomics.load(s.w, s.at + IDX) & 1;
  Atomics.add(s.w, s.at + CTR + idx, 1);
  t.k.lockdep.acquire(t, s.at, LD_READ | LD_RECURSIVE);
  return idx;
}

export function srcu_read_unlock(s: SrcuStruct, idx: number): void {
  const t = current;
  t.k.lockdep.release(t, s.at);
  if (Atomics.sub(s.w, s.at + CTR + idx, 1) === 1) wake_up(s.wq);
}

/** readers inside a read section, both indexes */
export function srcu_readers(s: SrcuStruct): number {
  return Atomics.load(s.w, s.at + CTR) + Atomics.load(s.w, s.at + CTR + 1);
}

export async function synchronize_srcu(s: SrcuStruct): Promise<void> {
  const t = current;
  if ((s.w[t.base + TaskL.preempt] | s.w[t.base + TaskL.nonBlock]) !== 0) might_sleep('synchronize_srcu');
  // lock_map_acquire/release on the srcu map: a write against every reader
  t.k.lockdep.acquire(t, s.at, 0);
  t.k.lockdep.release(t, s.at);
  await mutex_lock(s.gp);
  // As the kernel's __synchronize_srcu: wait out stragglers on the inactive index (readers
  // that read the index before an earlier flip), flip, then wait for the index that was
  // current when this grace period began. Readers that start after the flip count on the
  // new index and are not waited for.
  const cur = Atomics.load(s.w, s.at + IDX) & 1;
  for (const side of [cur ^ 1, cur]) {
    if (side === cur) Atomics.store(s.w, s.at + IDX, cur ^ 1);
    const drained = () => Atomics.load(s.w, s.at + CTR + side) === 0;
    if (!drained()) await waitSlow(s.wq, t, drained, Infinity, WK.srcu);
  }
  mutex_unlock(s.gp);
}
