// Migration of system pages to new frames (mm/migrate.c migrate_pages, migrate_folio_unmap,
// move_to_new_folio, migrate_folio_move; mm/compaction.c in spirit): what compaction, NUMA
// balancing and move_pages do. Each isolated page, in turn:
//   allocate the target (alloc_migration_target; may fail: -ENOMEM ends the call)
//   lock the page (trylock only in MIGRATE_ASYNC), lock the target
//   try_to_migrate: each mapping becomes a migration entry inside its own CLEAR invalidation,
//     blockable (reference §6.1 "Related paths", §7); a possibly pinned anon page keeps its PTE
//   still mapped -> restore the entries, -EAGAIN (retried, NR_MAX_MIGRATE_PAGES_RETRY passes)
//   folio_migrate_mapping: no reference but ours, the entries' and the swap cache's
//     (else -EAGAIN: a GUP reference or a pin); a swap-cache page hands its slot to the target
//   copy contents and flags (dirty, anon, exclusive, uptodate, referenced, active; memcg)
//   folio_add_lru(target), remove_migration_ptes(page, target), free the page
// A CPU fault or hmm_range_fault meeting a migration entry waits in migration_entry_wait and
// then finds the target. Pages come isolated from the LRU (folio_isolate_lru); what did not
// move stays in the list for the caller's putback_movable_pages.
//
// Ours: migration entries keep their PTE's rmap node and reference (device_entries.ts), so the
// expected reference count adds the mapcount. Not modelled: large folios, hugetlb, movable
// non-LRU pages (balloon, zsmalloc), writeback waits, and shmem pages (their page-cache slot is
// not moved: such a page fails with -EBUSY).

import type { Kernel } from '../sched/kernel.js';
import { PF_MEMALLOC, TaskL } from '../sched/task.js';
import { current } from '../sched/current.js';
import { EAGAIN, EBUSY, ENOMEM } from '../shm/errno.js';
import { folio_lock, folio_ref_count, folio_trylock, folio_unlock } from './folio_lock.js';
import { GFP_HIGHUSER_MOVABLE } from './gfp.js';
import { folio_add_lru, folio_putback_lru, lru_isolated_done } from './lru.js';
import { folio_mapped_live, remove_migration_ptes, try_to_migrate } from './migrate.js';
import { put_page } from './mm_pt.js';
import { PG_active, PG_anon, PG_anon_exclusive, PG_device_private, PG_dirty, PG_referenced, PG_swapbacked, PG_swapcache, PG_uptodate, PageL } from './page.js';
import { alloc_page, copyPage } from './page_alloc.js';
import { folio_mapcount } from './rmap.js';
import { set_slot_cache, slot_cache } from './swapfile.js';

export const NR_MAX_MIGRATE_PAGES_RETRY = 10;
export const MIGRATEPAGE_SUCCESS = 0;

/** enum migrate_mode */
export const MIGRATE_ASYNC = 0;
export const MIGRATE_SYNC_LIGHT = 1;
export const MIGRATE_SYNC = 2;
export type MigrateMode = typeof MIGRATE_ASYNC | typeof MIGRATE_SYNC_LIGHT | typeof MIGRATE_SYNC;

/** enum migrate_reason */
export const MR_COMPACTION = 0;
export const MR_MEMORY_FAILURE = 1;
export const MR_MEMORY_HOTPLUG = 2;
export const MR_SYSCALL = 3;
export const MR_MEMPOLICY_MBIND = 4;
export const MR_NUMA_MISPLACED = 5;
export const MR_CONTIG_RANGE = 6;
export const MR_LONGTERM_PIN = 7;
export const MR_DEMOTION = 8;

/** What a caller may learn beyond the return value. */
export interface MigratePagesOut {
  /** ret_succeeded: pages migrated (or freed under us) */
  nr_succeeded: number;
  /** pages that were tried and did not move */
  nr_failed_pages: number;
  /** each tried page's last result: 0 moved, -EAGAIN (still mapped or referenced after every pass), -EBUSY, -ENOMEM */
  rc: Map<number, number>;
}

/** folio_migrate_flags: what the target takes over (PG_active and PG_dirty leave the page) */
const MIGRATE_FLAGS = PG_anon | PG_anon_exclusive | PG_swapbacked | PG_uptodate | PG_dirty | PG_referenced | PG_active;

const flags = (k: Kernel, pfn: number): number => Atomics.load(k.arena.i32, k.zone.page(pfn) + PageL.flags);

/**
 * folio_migrate_mapping + folio_migrate_flags + the copy, both pages locked and src unmapped.
 * -EAGAIN when a reference beyond the expected ones exists (GUP, a pin).
 */
function move_to_new_folio(k: Kernel, dst: number, src: number): number {
  const w = k.arena.i32;
  const sp = k.zone.page(src);
  const dp = k.zone.page(dst);
  // the isolation reference, one per migration entry (ours), and the swap cache's
  const inCache = (flags(k, src) & PG_swapcache) !== 0;
  const expected = 1 + folio_mapcount(k, src) + (inCache ? 1 : 0);
  if (!inCache) {
    if (folio_ref_count(k, src) !== expected) return -EAGAIN;
  } else {
    // the swap cache's slot names the target from now on; lookups are frozen out meanwhile
    const si = k.swap;
    const s = w[sp + PageL.private];
    si.lock();
    if (slot_cache(k, s) !== src || Atomics.compareExchange(w, sp + PageL.refcount, expected, 0) !== expected) {
      si.unlock();
      return -EAGAIN;
    }
    w[dp + PageL.private] = s;
    Atomics.or(w, dp + PageL.flags, PG_swapcache);
    Atomics.add(w, dp + PageL.refcount, 1); // the cache's reference
    set_slot_cache(k, s, dst);
    w[sp + PageL.private] = 0;
    Atomics.and(w, sp + PageL.flags, ~PG_swapcache);
    Atomics.store(w, sp + PageL.refcount, expected - 1); // the cache's reference is gone
    si.unlock();
  }
  copyPage(k, dst, src);
  Atomics.or(w, dp + PageL.flags, flags(k, src) & MIGRATE_FLAGS);
  Atomics.and(w, sp + PageL.flags, ~(PG_active | PG_dirty));
  k.arena.f64[(dp + PageL.index) >> 1] = k.arena.f64[(sp + PageL.index) >> 1];
  // mem_cgroup_migrate: the charge goes with the contents
  w[dp + PageL.memcg] = w[sp + PageL.memcg];
  w[sp + PageL.memcg] = 0;
  return MIGRATEPAGE_SUCCESS;
}

/** Undo what migrate_folio got to: entries back to src, target freed. */
function undo(k: Kernel, src: number, dst: number, wasMapped: boolean, srcLocked: boolean, dstLocked: boolean): void {
  if (wasMapped) remove_migration_ptes(k, src, src);
  if (dstLocked) folio_unlock(k, dst);
  if (srcLocked) folio_unlock(k, src);
  put_page(k, dst); // put_new_folio is NULL: the allocation reference frees it
}

/** migrate_folio_unmap + migrate_folio_move for one isolated page. */
async function migrate_folio(k: Kernel, src: number, mode: MigrateMode, gfp: number): Promise<number> {
  const w = k.arena.i32;
  if (folio_ref_count(k, src) === 1) {
    // Folio was freed from under us: only the isolation reference is left
    Atomics.and(w, k.zone.page(src) + PageL.flags, ~PG_active);
    lru_isolated_done(k);
    put_page(k, src);
    return MIGRATEPAGE_SUCCESS;
  }
  if ((flags(k, src) & (PG_anon | PG_device_private)) !== PG_anon) return -EBUSY; // shmem pages are not moved here
  const a = alloc_page(k, gfp);
  const dst = typeof a === 'number' ? a : await a;
  if (dst === 0) return -ENOMEM;
  if (!folio_trylock(k, src)) {
    const memalloc = (w[current.base + TaskL.flags] & PF_MEMALLOC) !== 0;
    if (mode === MIGRATE_ASYNC || memalloc) {
      undo(k, src, dst, false, false, false);
      return -EAGAIN;
    }
    const l = folio_lock(k, src);
    if (l !== undefined) await l;
  }
  if (!folio_trylock(k, dst)) {
    undo(k, src, dst, false, true, false);
    return -EAGAIN;
  }
  let wasMapped = false;
  if (folio_mapped_live(k, src)) {
    // Establish migration ptes
    await try_to_migrate(k, src);
    wasMapped = true;
  }
  if (folio_mapped_live(k, src)) {
    undo(k, src, dst, wasMapped, true, true);
    return -EAGAIN;
  }
  const rc = move_to_new_folio(k, dst, src);
  if (rc !== MIGRATEPAGE_SUCCESS) {
    undo(k, src, dst, wasMapped, true, true);
    return rc;
  }
  folio_add_lru(k, dst);
  if (wasMapped) remove_migration_ptes(k, src, dst);
  folio_unlock(k, dst);
  put_page(k, dst); // the new owners (PTEs, the swap cache) hold their own references
  folio_unlock(k, src);
  lru_isolated_done(k);
  put_page(k, src); // migrate_folio_done: the isolation reference, the last one
  return MIGRATEPAGE_SUCCESS;
}

/**
 * migrate_pages: move each isolated page of `from` (pfns, each holding its isolation
 * reference) to a frame from alloc_page(gfp). Pages that moved leave `from`; those that did
 * not stay in it for putback_movable_pages. Returns the number of pages not migrated, or
 * -ENOMEM when a target could not be allocated (the rest is not tried).
 */
export async function migrate_pages(k: Kernel, from: number[], mode: MigrateMode = MIGRATE_SYNC, _reason = MR_COMPACTION, out?: MigratePagesOut, gfp = GFP_HIGHUSER_MOVABLE): Promise<number> {
  const o: MigratePagesOut = out ?? { nr_succeeded: 0, nr_failed_pages: 0, rc: new Map() };
  let nrFailed = 0;
  let retry = 1;
  const left: number[] = [];
  let todo = from.splice(0, from.length);
  for (let pass = 0; pass < NR_MAX_MIGRATE_PAGES_RETRY && retry > 0; pass++) {
    retry = 0;
    const again: number[] = [];
    for (let i = 0; i < todo.length; i++) {
      const pfn = todo[i];
      const p = k.sched.point(); // cond_resched
      if (p !== undefined) await p;
      const rc = await migrate_folio(k, pfn, mode, gfp);
      o.rc.set(pfn, rc);
      if (rc === MIGRATEPAGE_SUCCESS) o.nr_succeeded++;
      else if (rc === -EAGAIN) {
        retry++;
        again.push(pfn);
      } else if (rc === -ENOMEM) {
        // When memory is low, don't bother to try to migrate other folios, just exit.
        o.nr_failed_pages += 1 + again.length;
        from.push(...left, ...again, ...todo.slice(i));
        return -ENOMEM;
      } else {
        // Permanent failure (-EBUSY, etc.): not retried
        nrFailed++;
        o.nr_failed_pages++;
        left.push(pfn);
      }
    }
    todo = again;
  }
  nrFailed += retry;
  o.nr_failed_pages += todo.length;
  from.push(...left, ...todo);
  return nrFailed;
}

/** putback_movable_pages: every page left in `list` goes back on the LRU (and its isolation reference goes). */
export function putback_movable_pages(k: Kernel, list: number[]): void {
  for (const pfn of list) folio_putback_lru(k, pfn, put_page);
  list.length = 0;
}
