// struct mm_struct's life (kernel/fork.c): allocation, the two reference counts, teardown.
// mm_users counts users of the address space; together they hold one mm_count reference.
// The last mmput tears the address space down (exit_mmap) and drops that reference; the last
// mmdrop frees the struct and its notifier container.
// The mmap_lock wrappers and mmgrab/mmdrop live in mm_inline.ts (the notifier core needs them
// and must not import this file); they are re-exported here.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { might_sleep } from '../sync/context.js';
import { init_rwsem } from '../sync/rwsem.js';
import { spin_lock_init } from '../sync/spinlock.js';
import { mmu_notifier_release } from '../notifier/invalidate.js';
import { mmu_notifier_subscriptions_destroy } from '../notifier/subscriptions.js';
import { mm_flags_set, mmdrop, set_mmdrop_hook } from './mm_inline.js';
import { exit_mmap_free, exit_mmap_unmap } from './mmap.js';
import { MMF_OOM_SKIP, MmL, TASK_SIZE, mmLabel } from './types.js';

export * from './mm_inline.js';

/** mm_alloc: a new mm with one user (mm_users 1, mm_count 1), or 0 (-ENOMEM). */
export function mm_alloc(): number {
  const k = current.k;
  const mm = k.kmalloc.kzalloc(MmL.$size);
  if (mm === 0) return 0;
  init_rwsem(k, mm + MmL.mmap_lock, 'mm->mmap_lock', '&mm->mmap_lock');
  spin_lock_init(k, mm + MmL.page_table_lock, 'mm->page_table_lock', '&mm->page_table_lock');
  k.arena.f64[(mm + MmL.task_size) >> 1] = TASK_SIZE;
  const w = k.arena.i32;
  Atomics.store(w, mm + MmL.mm_count, 1);
  Atomics.store(w, mm + MmL.mm_users, 1);
  return mm;
}

/** mmget: one more user of the address space; the caller already has one (or the mm is current's). */
export function mmget(mm: number): void {
  const k = current.k;
  const old = Atomics.add(k.arena.i32, mm + MmL.mm_users, 1);
  if (old <= 0) splat(k, 'bug', `BUG: mmget on ${mmLabel(mm)} with mm_users ${old}: use mmget_not_zero on an mm that may be exiting`);
}

/** mmget_not_zero: a user reference unless the address space is already going away. */
export function mmget_not_zero(mm: number): boolean {
  const w = current.k.arena.i32;
  for (;;) {
    const u = Atomics.load(w, mm + MmL.mm_users);
    if (u <= 0) return false;
    if (Atomics.compareExchange(w, mm + MmL.mm_users, u, u + 1) === u) return true;
  }
}

/** mmput: drop a user. The last one tears the address space down, which may sleep. */
export function mmput(mm: number): Promise<void> | undefined {
  const k = current.k;
  const w = k.arena.i32;
  might_sleep('mmput');
  const old = Atomics.sub(w, mm + MmL.mm_users, 1);
  if (old > 1) return undefined;
  if (old <= 0) {
    Atomics.add(w, mm + MmL.mm_users, 1);
    splat(k, 'bug', `BUG: mmput of ${mmLabel(mm)} with mm_users ${old}: one mmput too many`);
    return undefined;
  }
  return __mmput(mm);
}

async function __mmput(mm: number): Promise<void> {
  await exit_mmap(mm);
  mmdrop(mm);
}

/**
 * exit_mmap (NEW order, reference §5): notifiers first, so devices drop their mappings before
 * any page is freed. The rest belongs to the mm layer and goes where the comments are.
 */
export async function exit_mmap(mm: number): Promise<void> {
  await mmu_notifier_release(mm);
  // mm layer: mmap_read_lock; unmap_vmas over [0, ULONG_MAX) inside an UNMAP start/end
  // (reaching only interval subscriptions now); mmap_read_unlock
  await exit_mmap_unmap(mm);
  mm_flags_set(MMF_OOM_SKIP, mm);
  // mm layer: mmap_write_lock; free_pgtables; remove the VMAs; mmap_write_unlock
  await exit_mmap_free(mm);
}

/** __mmdrop: the last struct reference is gone. */
function __mmdrop(k: Kernel, mm: number): void {
  // mm layer: mm_free_pgd, check_mm (rss counters must be zero)
  mmu_notifier_subscriptions_destroy(mm);
  k.kmalloc.kfree(mm);
}

set_mmdrop_hook(__mmdrop);
