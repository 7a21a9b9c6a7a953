// spinlock_t: a word lock whose holder is in atomic context (no await until spin_unlock).
// Under `sim` a holder never yields, so contention means the holder slept with it held:
// that is reported as a lockup instead of spinning forever. Under `threads` it spins, then
// parks on the word (state 2 = waiters) so a preempted holder's CPU is not burnt.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { OBJ_OWNER, objLabel, taskLabel } from '../sched/report.js';
import { splat } from '../sched/splat.js';
import { TaskL, WK, type Task } from '../sched/task.js';
import { LockObj, sleepOn } from './context.js';
import { LD_TRYLOCK, initObj } from './lockdep.js';

export const SPINLOCK_WORDS = 4;

export class Spinlock extends LockObj {}

export class SpinLockupError extends Error {}

export function spin_lock_init(k: Kernel, at: number, name: string, className?: string): Spinlock {
  initObj(k, at, name, className);
  return new Spinlock(k, at);
}

export function spin_lock(l: Spinlock): void {
  const t = current;
  const w = l.w;
  t.k.lockdep.acquire(t, l.at, 0);
  if (Atomics.compareExchange(w, l.at, 0, 1) !== 0) spinSlow(l, t);
  w[l.at + OBJ_OWNER] = t.id + 1;
  w[t.base + TaskL.preempt]++;
}

export function spin_trylock(l: Spinlock): boolean {
  const t = current;
  const w = l.w;
  if (Atomics.compareExchange(w, l.at, 0, 1) !== 0) return false;
  w[l.at + OBJ_OWNER] = t.id + 1;
  w[t.base + TaskL.preempt]++;
  t.k.lockdep.acquire(t, l.at, LD_TRYLOCK);
  return true;
}

export function spin_unlock(l: Spinlock): void {
  const t = current;
  const w = l.w;
  if (w[l.at + OBJ_OWNER] !== t.id + 1) {
    const held = Atomics.load(w, l.at) !== 0;
    splat(t.k, 'bad_unlock', `BUG: spinlock ${held ? 'wrong owner' : 'already unlocked'} on CPU: ${objLabel(t.k, l.at)} unlocked by ${t.name}/${t.id}, owner ${w[l.at + OBJ_OWNER] ? taskLabel(t.k, w[l.at + OBJ_OWNER] - 1) : 'none'}`);
    if (!held) return; // nothing to release: leave the lock and the preempt count alone
  }
  w[l.at + OBJ_OWNER] = 0;
  t.k.lockdep.release(t, l.at);
  w[t.base + TaskL.preempt]--;
  if (Atomics.exchange(w, l.at, 0) === 2) t.k.sched.wake(l.at, 1);
}

export function spin_is_locked(l: Spinlock): boolean {
  return Atomics.load(l.w, l.at) !== 0;
}

/** assert_spin_locked */
export function assert_spin_locked(l: Spinlock): void {
  if (Atomics.load(l.w, l.at) === 0) splat(l.k, 'warn', `WARNING: assert_spin_locked failed: ${objLabel(l.k, l.at)} is not locked`);
}

function spinSlow(l: Spinlock, t: Task): void {
  const w = l.w;
  if (t.k.sched.kind === 'sim') {
    const owner = w[l.at + OBJ_OWNER] - 1;
    const msg = `BUG: spinlock lockup suspected: ${objLabel(t.k, l.at)} wanted by ${t.name}/${t.id}, owner ${owner >= 0 ? taskLabel(t.k, owner) : 'none'} is not running (it slept or exited with the lock held, or this is recursion)`;
    splat(t.k, 'spin_lockup', msg);
    t.k.lockdep.release(t, l.at);
    throw new SpinLockupError(msg);
  }
  for (let i = 0; i < 200; i++) {
    if (w[l.at] === 0 && Atomics.compareExchange(w, l.at, 0, 1) === 0) return;
  }
  let c = Atomics.exchange(w, l.at, 2);
  while (c !== 0) {
    const r = sleepOn(t, l.at, WK.spinlock, l.at, 2);
    if (typeof r !== 'number') throw new Error('spin_lock: a spinlock wait must not return a promise');
    c = Atomics.exchange(w, l.at, 2);
  }
}
