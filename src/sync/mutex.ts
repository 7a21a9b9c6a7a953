// struct mutex: a 3-state futex word (0 unlocked, 1 locked, 2 locked with waiters) with the
// owner recorded. The uncontended path is one compare-and-swap, allocates nothing and
// returns undefined (nothing to await); only a contended lock returns a promise.
// Unlock notifies only when the word says a waiter is parked.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { OBJ_OWNER, objLabel, taskLabel } from '../sched/report.js';
import { EV } from '../shm/events.js';
import { splat } from '../sched/splat.js';
import { TaskL, WK, type Task } from '../sched/task.js';
import { LockObj, might_sleep, sleepOn } from './context.js';
import { LD_SUBCLASS_SHIFT, LD_TRYLOCK, initObj } from './lockdep.js';

export const MUTEX_WORDS = 4;

// TaskL has more fields than V8 keeps in fast mode, so `TaskL.x` is a dictionary lookup:
// hot paths read the offsets once, here.
const T_PREEMPT = TaskL.preempt;
const T_NON_BLOCK = TaskL.nonBlock;

export class Mutex extends LockObj {}

export function mutex_init(k: Kernel, at: number, name: string, className?: string): Mutex {
  initObj(k, at, name, className);
  return new Mutex(k, at);
}

export function mutex_lock(m: Mutex): Promise<void> | undefined {
  return mutex_lock_nested(m, 0);
}

/** mutex_lock_nested: a subclass tells lockdep two locks of one class nest on purpose. */
export function mutex_lock_nested(m: Mutex, subclass: number): Promise<void> | undefined {
  const t = current;
  const w = m.w;
  const k = t.k;
  if ((w[t.base + T_PREEMPT] | w[t.base + T_NON_BLOCK]) !== 0) might_sleep('mutex_lock');
  k.lockdep.acquire(t, m.at, subclass << LD_SUBCLASS_SHIFT);
  const p = k.sched.point();
  if (p !== undefined) return p.then(() => acquire(m, t));
  if (Atomics.compareExchange(w, m.at, 0, 1) === 0) {
    w[m.at + OBJ_OWNER] = t.id + 1;
    return undefined;
  }
  return lockSlow(m, t);
}

function acquire(m: Mutex, t: Task): Promise<void> | undefined {
  const w = m.w;
  if (Atomics.compareExchange(w, m.at, 0, 1) === 0) {
    w[m.at + OBJ_OWNER] = t.id + 1;
    return undefined;
  }
  return lockSlow(m, t);
}

async function lockSlow(m: Mutex, t: Task): Promise<void> {
  const w = m.w;
  t.k.events.emit(EV.CONTENDED, t.id, m.at, w[m.at + OBJ_OWNER] - 1, 0);
  let c = Atomics.exchange(w, m.at, 2);
  while (c !== 0) {
    const r = sleepOn(t, m.at, WK.mutex, m.at, 2);
    if (typeof r !== 'number') await r;
    c = Atomics.exchange(w, m.at, 2);
  }
  w[m.at + OBJ_OWNER] = t.id + 1;
  t.k.events.emit(EV.ACQUIRED, t.id, m.at, 0, 0);
}

export function mutex_trylock(m: Mutex): boolean {
  const t = current;
  const w = m.w;
  if (Atomics.compareExchange(w, m.at, 0, 1) !== 0) return false;
  w[m.at + OBJ_OWNER] = t.id + 1;
  t.k.lockdep.acquire(t, m.at, LD_TRYLOCK);
  return true;
}

export function mutex_unlock(m: Mutex): void {
  const t = current;
  const w = m.w;
  const owner = w[m.at + OBJ_OWNER];
  if (owner !== t.id + 1) {
    splat(t.k, 'bad_unlock', `DEBUG_LOCKS_WARN_ON(__owner_task(owner) != current): ${objLabel(t.k, m.at)} unlocked by ${t.name}/${t.id}, owner ${owner ? taskLabel(t.k, owner - 1) : 'none'}`);
    if (owner === 0 && Atomics.load(w, m.at) === 0) {
      // not locked at all: leave it alone, but drop current's lockdep entry if it has one
      // (someone else unlocked the mutex it took), as the kernel's lock_release comes first
      if (t.k.lockdep.held(t, m.at)) t.k.lockdep.release(t, m.at);
      return;
    }
  }
  w[m.at + OBJ_OWNER] = 0;
  t.k.lockdep.release(t, m.at);
  if (Atomics.sub(w, m.at, 1) !== 1) {
    Atomics.store(w, m.at, 0);
    t.k.sched.wake(m.at, 1);
  }
}

export function mutex_is_locked(m: Mutex): boolean {
  return Atomics.load(m.w, m.at) !== 0;
}

/** the task id holding the mutex, or -1 */
export function mutex_owner(m: Mutex): number {
  return m.w[m.at + OBJ_OWNER] - 1;
}
