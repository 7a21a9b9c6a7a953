// The kernel's lockdep entry points for code above the lock primitives: assertions,
// might_lock, and lock maps (pseudo-locks such as fs_reclaim and
// mmu_notifier_invalidate_range_start) that later layers prime the way the kernel does.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { heldLocksText, objLabel } from '../sched/report.js';
import { splat } from '../sched/splat.js';
import type { LockObj } from './context.js';
import { LD_READ, initObj } from './lockdep.js';

/** struct lockdep_map: a pseudo-lock with a class and no state. */
export class LockdepMap {
  constructor(
    readonly k: Kernel,
    readonly at: number,
  ) {}
}

export const LOCKDEP_MAP_WORDS = 4;

export function lockdep_init_map(k: Kernel, at: number, name: string): LockdepMap {
  initObj(k, at, name);
  return new LockdepMap(k, at);
}

/** `__fs_reclaim_map` */
export function fs_reclaim_map(k: Kernel): LockdepMap {
  return new LockdepMap(k, k.lockdep.fs_reclaim_map);
}

/** `__mmu_notifier_invalidate_range_start_map` */
export function invalidate_start_map(k: Kernel): LockdepMap {
  return new LockdepMap(k, k.lockdep.invalidate_start_map);
}

export function lock_map_acquire(m: LockdepMap): void {
  current.k.lockdep.acquire(current, m.at, 0);
}

export function lock_map_acquire_read(m: LockdepMap): void {
  current.k.lockdep.acquire(current, m.at, LD_READ);
}

export function lock_map_release(m: LockdepMap): void {
  current.k.lockdep.release(current, m.at);
}

/** might_lock: teach lockdep this path may take `l`, without taking it. */
export function might_lock(l: LockObj | LockdepMap): void {
  const t = current;
  t.k.lockdep.acquire(t, l.at, 0);
  t.k.lockdep.release(t, l.at);
}

export function might_lock_read(l: LockObj | LockdepMap): void {
  const t = current;
  t.k.lockdep.acquire(t, l.at, LD_READ);
  t.k.lockdep.release(t, l.at);
}

export function lockdep_is_held(l: LockObj | LockdepMap): boolean {
  return current.k.lockdep.held(current, l.at);
}

export function lockdep_assert_held(l: LockObj | LockdepMap): void {
  assertHeld(l, true, 'lockdep_assert_held');
}

export function lockdep_assert_held_write(l: LockObj | LockdepMap): void {
  assertHeld(l, false, 'lockdep_assert_held_write');
}

export function lockdep_assert_not_held(l: LockObj | LockdepMap): void {
  const t = current;
  const ld = t.k.lockdep;
  if (ld.enabled && ld.held(t, l.at)) {
    splat(t.k, 'lockdep_assert', `WARNING: lockdep_assert_not_held(${objLabel(t.k, l.at)}) failed in ${t.name}/${t.id}\n${heldLocksText(t.k, t)}`);
  }
}

function assertHeld(l: LockObj | LockdepMap, readOk: boolean, what: string): void {
  const t = current;
  const ld = t.k.lockdep;
  if (ld.enabled && !ld.held(t, l.at, readOk)) {
    splat(t.k, 'lockdep_assert', `WARNING: ${what}(${objLabel(t.k, l.at)}) failed in ${t.name}/${t.id}\n${heldLocksText(t.k, t)}`);
  }
}
