// struct completion: a wait queue with a `done` count. complete() releases one waiter,
// complete_all() every present and future one.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { TaskL, WK } from '../sched/task.js';
import { might_sleep } from './context.js';
import { initObj } from './lockdep.js';
import { WaitQueueHead, waitSlow, wake_up } from './waitqueue.js';

export const COMPLETION_WORDS = 8;
const DONE = 5;
const ALL = 0x3fffffff;

export class Completion extends WaitQueueHead {}

export function init_completion(k: Kernel, at: number, name: string): Completion {
  initObj(k, at, name);
  k.arena.i32[at + DONE] = 0;
  return new Completion(k, at);
}

export function reinit_completion(c: Completion): void {
  Atomics.store(c.w, c.at + DONE, 0);
}

export function complete(c: Completion): void {
  const w = c.w;
  for (;;) {
    const d = Atomics.load(w, c.at + DONE);
    if (d === ALL || Atomics.compareExchange(w, c.at + DONE, d, d + 1) === d) break;
  }
  wake_up(c);
}

export function complete_all(c: Completion): void {
  Atomics.store(c.w, c.at + DONE, ALL);
  wake_up(c);
}

/** try_wait_for_completion: consume one `done` without sleeping. */
export function try_wait_for_completion(c: Completion): boolean {
  const w = c.w;
  for (;;) {
    const d = Atomics.load(w, c.at + DONE);
    if (d === 0) return false;
    if (d === ALL || Atomics.compareExchange(w, c.at + DONE, d, d - 1) === d) return true;
  }
}

export function completion_done(c: Completion): boolean {
  return Atomics.load(c.w, c.at + DONE) > 0;
}

export function wait_for_completion(c: Completion): Promise<void> | undefined {
  const t = current;
  if ((c.w[t.base + TaskL.preempt] | c.w[t.base + TaskL.nonBlock]) !== 0) might_sleep('wait_for_completion');
  if (try_wait_for_completion(c)) return undefined;
  return waitSlow(c, t, () => try_wait_for_completion(c), Infinity, WK.completion).then(() => undefined);
}

/** returns 0 on timeout, else the ns left */
export function wait_for_completion_timeout(c: Completion, timeoutNs: number): Promise<number> | number {
  const t = current;
  if ((c.w[t.base + TaskL.preempt] | c.w[t.base + TaskL.nonBlock]) !== 0) might_sleep('wait_for_completion_timeout');
  if (try_wait_for_completion(c)) return Math.max(1, timeoutNs);
  return waitSlow(c, t, () => try_wait_for_completion(c), timeoutNs, WK.completion);
}
