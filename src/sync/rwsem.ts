// struct rw_semaphore (used for mmap_lock). count: 0 free, n > 0 readers, -1 a writer.
// Writers waiting hold back new readers (as the kernel's handoff does), so a reader that
// re-takes the lock while a writer queues can deadlock, which lockdep reports as recursion.
// Waiters park on a generation word that only moves when someone is parked: no ABA, and no
// notify when nobody waits.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { OBJ_OWNER, OBJ_STATE, objLabel } from '../sched/report.js';
import { EV } from '../shm/events.js';
import { splat } from '../sched/splat.js';
import { TaskL, WK, type Task } from '../sched/task.js';
import { LockObj, might_sleep, sleepOn } from './context.js';
import { LD_READ, LD_SUBCLASS_SHIFT, LD_TRYLOCK, initObj } from './lockdep.js';

export const RWSEM_WORDS = 8;
const WAITERS = 4; // tasks parked
const GEN = 5; // wake generation
const WRITERS_WAITING = 6;

export class RwSem extends LockObj {}

export function init_rwsem(k: Kernel, at: number, name: string, className?: string): RwSem {
  initObj(k, at, name, className);
  return new RwSem(k, at);
}

export function down_read(s: RwSem): Promise<void> | undefined {
  return down_read_nested(s, 0);
}

export function down_read_nested(s: RwSem, subclass: number): Promise<void> | undefined {
  const t = current;
  if ((s.w[t.base + TaskL.preempt] | s.w[t.base + TaskL.nonBlock]) !== 0) might_sleep('down_read');
  t.k.lockdep.acquire(t, s.at, LD_READ | (subclass << LD_SUBCLASS_SHIFT));
  const p = t.k.sched.point();
  if (p !== undefined) return p.then(() => (tryRead(s) ? undefined : slow(s, t, false)));
  return tryRead(s) ? undefined : slow(s, t, false);
}

export function down_write(s: RwSem): Promise<void> | undefined {
  return down_write_nested(s, 0);
}

export function down_write_nested(s: RwSem, subclass: number): Promise<void> | undefined {
  const t = current;
  if ((s.w[t.base + TaskL.preempt] | s.w[t.base + TaskL.nonBlock]) !== 0) might_sleep('down_write');
  t.k.lockdep.acquire(t, s.at, subclass << LD_SUBCLASS_SHIFT);
  const p = t.k.sched.point();
  if (p !== undefined) return p.then(() => (tryWrite(s, t) ? undefined : slow(s, t, true)));
  return tryWrite(s, t) ? undefined : slow(s, t, true);
}

export function down_read_trylock(s: RwSem): boolean {
  const t = current;
  if (!tryRead(s)) return false;
  t.k.lockdep.acquire(t, s.at, LD_READ | LD_TRYLOCK);
  return true;
}

export function down_write_trylock(s: RwSem): boolean {
  const t = current;
  if (!tryWrite(s, t)) return false;
  t.k.lockdep.acquire(t, s.at, LD_TRYLOCK);
  return true;
}

export function up_read(s: RwSem): void {
  const t = current;
  const w = s.w;
  t.k.lockdep.release(t, s.at);
  const c = Atomics.sub(w, s.at + OBJ_STATE, 1);
  if (c <= 0) {
    Atomics.add(w, s.at + OBJ_STATE, 1);
    splat(t.k, 'bad_unlock', `DEBUG_RWSEMS_WARN_ON: up_read of ${objLabel(t.k, s.at)} by ${t.name}/${t.id}, but it is not read-locked (count ${c})`);
    return;
  }
  if (c === 1) wakeAll(s, t);
}

export function up_write(s: RwSem): void {
  const t = current;
  const w = s.w;
  if (w[s.at + OBJ_STATE] !== -1 || w[s.at + OBJ_OWNER] !== t.id + 1) {
    splat(t.k, 'bad_unlock', `DEBUG_RWSEMS_WARN_ON: up_write of ${objLabel(t.k, s.at)} by ${t.name}/${t.id}, but it does not hold it for write`);
    if (w[s.at + OBJ_STATE] !== -1) return;
  }
  t.k.lockdep.release(t, s.at);
  w[s.at + OBJ_OWNER] = 0;
  Atomics.store(w, s.at + OBJ_STATE, 0);
  wakeAll(s, t);
}

/** downgrade_write: keep the lock, as a reader. */
export function downgrade_write(s: RwSem): void {
  const t = current;
  const w = s.w;
  w[s.at + OBJ_OWNER] = 0;
  Atomics.store(w, s.at + OBJ_STATE, 1);
  t.k.lockdep.release(t, s.at);
  t.k.lockdep.acquire(t, s.at, LD_READ | LD_TRYLOCK);
  wakeAll(s, t);
}

export function rwsem_is_locked(s: RwSem): boolean {
  return Atomics.load(s.w, s.at + OBJ_STATE) !== 0;
}

export function rwsem_is_write_locked(s: RwSem): boolean {
  return Atomics.load(s.w, s.at + OBJ_STATE) === -1;
}

export function rwsem_readers(s: RwSem): number {
  return Math.max(0, Atomics.load(s.w, s.at + OBJ_STATE));
}

function tryRead(s: RwSem): boolean {
  const w = s.w;
  const c = Atomics.load(w, s.at + OBJ_STATE);
  return c >= 0 && w[s.at + WRITERS_WAITING] === 0 && Atomics.compareExchange(w, s.at + OBJ_STATE, c, c + 1) === c;
}

function tryWrite(s: RwSem, t: Task): boolean {
  if (Atomics.compareExchange(s.w, s.at + OBJ_STATE, 0, -1) !== 0) return false;
  s.w[s.at + OBJ_OWNER] = t.id + 1;
  return true;
}

async function slow(s: RwSem, t: Task, write: boolean): Promise<void> {
  const w = s.w;
  t.k.events.emit(EV.CONTENDED, t.id, s.at, w[s.at + OBJ_OWNER] - 1, write ? 1 : 0);
  if (write) Atomics.add(w, s.at + WRITERS_WAITING, 1);
  for (;;) {
    Atomics.add(w, s.at + WAITERS, 1);
    const g = Atomics.load(w, s.at + GEN);
    if (write ? tryWrite(s, t) : tryRead(s)) {
      Atomics.sub(w, s.at + WAITERS, 1);
      break;
    }
    const r = sleepOn(t, s.at, write ? WK['rwsem-write'] : WK['rwsem-read'], s.at + GEN, g);
    if (typeof r !== 'number') await r;
    Atomics.sub(w, s.at + WAITERS, 1);
  }
  if (write) Atomics.sub(w, s.at + WRITERS_WAITING, 1); // up_write wakes the readers we held back
  t.k.events.emit(EV.ACQUIRED, t.id, s.at, 0, write ? 1 : 0);
}

function wakeAll(s: RwSem, t: Task): void {
  const w = s.w;
  if (Atomics.load(w, s.at + WAITERS) === 0) return;
  Atomics.add(w, s.at + GEN, 1);
  t.k.sched.wake(s.at + GEN, Infinity);
}
