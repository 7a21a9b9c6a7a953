// wait_queue_head_t with wait_event(): the waiter re-tests its condition after announcing
// itself and reading the generation, and the waker moves the generation only when someone
// is announced, so a wake-up between the test and the sleep is never lost.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { OBJ_STATE } from '../sched/report.js';
import { WAIT_TIMED_OUT } from '../sched/scheduler.js';
import { TaskL, WK, type Task } from '../sched/task.js';
import { LockObj, might_sleep, sleepOn } from './context.js';
import { initObj } from './lockdep.js';

export const WAITQUEUE_WORDS = 8;
const GEN = OBJ_STATE;
export const WQ_WAITERS = 4;

export class WaitQueueHead extends LockObj {}

export function init_waitqueue_head(k: Kernel, at: number, name: string): WaitQueueHead {
  initObj(k, at, name);
  return new WaitQueueHead(k, at);
}

/** wait_event: sleep (uninterruptibly) until cond() is true. */
export function wait_event(wq: WaitQueueHead, cond: () => boolean): Promise<void> | undefined {
  const t = current;
  if ((wq.w[t.base + TaskL.preempt] | wq.w[t.base + TaskL.nonBlock]) !== 0) might_sleep('wait_event');
  if (cond()) return undefined;
  return waitSlow(wq, t, cond, Infinity, WK.waitqueue).then(() => undefined);
}

/**
 * wait_event_timeout: returns 0 if the timeout elapsed with cond() false, else the ns left
 * (at least 1, as the kernel returns at least one jiffy when cond() became true).
 */
export function wait_event_timeout(wq: WaitQueueHead, cond: () => boolean, timeoutNs: number): Promise<number> | number {
  const t = current;
  if ((wq.w[t.base + TaskL.preempt] | wq.w[t.base + TaskL.nonBlock]) !== 0) might_sleep('wait_event_timeout');
  if (cond()) return Math.max(1, timeoutNs);
  return waitSlow(wq, t, cond, timeoutNs, WK.waitqueue);
}

/** used by completions and SRCU, which are wait queues with a condition of their own */
export async function waitSlow(wq: WaitQueueHead, t: Task, cond: () => boolean, timeoutNs: number, kind: number): Promise<number> {
  const w = wq.w;
  const s = t.k.sched;
  const deadline = timeoutNs === Infinity ? Infinity : s.now() + timeoutNs;
  for (;;) {
    Atomics.add(w, wq.at + WQ_WAITERS, 1);
    const g = Atomics.load(w, wq.at + GEN);
    if (cond()) {
      Atomics.sub(w, wq.at + WQ_WAITERS, 1);
      return deadline === Infinity ? 1 : Math.max(1, deadline - s.now());
    }
    const left = deadline - s.now();
    if (left <= 0) {
      Atomics.sub(w, wq.at + WQ_WAITERS, 1);
      return 0;
    }
    let r = sleepOn(t, wq.at, kind, wq.at + GEN, g, deadline === Infinity ? undefined : left);
    if (typeof r !== 'number') r = await r;
    Atomics.sub(w, wq.at + WQ_WAITERS, 1);
    if (r === WAIT_TIMED_OUT && !cond()) return 0;
  }
}

/** wake_up / wake_up_all: wait_event waiters are non-exclusive, so both wake every waiter. */
export function wake_up(wq: WaitQueueHead): void {
  const w = wq.w;
  if (Atomics.load(w, wq.at + WQ_WAITERS) === 0) return;
  Atomics.add(w, wq.at + GEN, 1);
  wq.k.sched.wake(wq.at + GEN, Infinity);
}

export const wake_up_all = wake_up;

export function waitqueue_active(wq: WaitQueueHead): boolean {
  return Atomics.load(wq.w, wq.at + WQ_WAITERS) > 0;
}
