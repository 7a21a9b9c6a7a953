// The folio lock (PG_locked, mm/filemap.c) and the reference helpers device memory needs.
// Migration holds the lock on both pages from collect to finalize; make_device_exclusive
// returns its page locked; a fault that restores a device-exclusive entry waits for it.
// A waiter sets PG_waiters and sleeps on the flags word, so folio_unlock wakes only when
// someone is parked. No lockdep, as in the kernel (a bit lock).

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { WK } from '../sched/task.js';
import { might_sleep, sleepOn } from '../sync/context.js';
import { PG_locked, PG_waiters, PageL } from './page.js';


const P_FLAGS = PageL.flags;
const P_REF = PageL.refcount;

export function folio_test_locked(k: Kernel, pfn: number): boolean {
  return (Atomics.load(k.arena.i32, k.zone.page(pfn) + P_FLAGS) & PG_locked) !== 0;
}

/** folio_trylock: true if we took the lock. Never sleeps (fine under a spinlock). */
export function folio_trylock(k: Kernel, pfn: number): boolean {
  return (Atomics.or(k.arena.i32, k.zone.page(pfn) + P_FLAGS, PG_locked) & PG_locked) === 0;
}

/** folio_lock: sleep until the lock is ours. */
export function folio_lock(k: Kernel, pfn: number): Promise<void> | undefined {
  if (folio_trylock(k, pfn)) return undefined;
  might_sleep('folio_lock');
  return lockSlow(k, pfn);
}

async function lockSlow(k: Kernel, pfn: number): Promise<void> {
  const w = k.arena.i32;
  const at = k.zone.page(pfn) + P_FLAGS;
  for (;;) {
    const seen = Atomics.or(w, at, PG_waiters) | PG_waiters;
    if ((seen & PG_locked) === 0) {
      if (folio_trylock(k, pfn)) return;
      continue;
    }
    // the word moves when the lock is dropped (and for other flag changes: look again).
    // A struct page has no lock header (its second word is the refcount, not an owner), so
    // the wait names no object: reports say "blocked in folio" without inventing a holder.
    const r = sleepOn(current, 0, WK.folio, at, seen);
    if (typeof r !== 'number') await r;
    if (folio_trylock(k, pfn)) return;
  }
}

export function folio_unlock(k: Kernel, pfn: number): void {
  const w = k.arena.i32;
  const at = k.zone.page(pfn) + P_FLAGS;
  const old = Atomics.and(w, at, ~(PG_locked | PG_waiters));
  if ((old & PG_locked) === 0) splat(k, 'bug', `BUG: folio_unlock: pfn ${pfn} is not locked`);
  if ((old & PG_waiters) !== 0) k.sched.wake(at, Infinity);
}

/** folio_try_get: a reference unless the page is already free (refcount 0). */
export function folio_try_get(k: Kernel, pfn: number): boolean {
  const w = k.arena.i32;
  const at = k.zone.page(pfn) + P_REF;
  for (;;) {
    const r = Atomics.load(w, at);
    if (r <= 0) return false;
    if (Atomics.compareExchange(w, at, r, r + 1) === r) return true;
  }
}

export function folio_ref_count(k: Kernel, pfn: number): number {
  return Atomics.load(k.arena.i32, k.zone.page(pfn) + P_REF);
}
