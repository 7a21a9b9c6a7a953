// Page reclaim (mm/vmscan.c, classic two-list LRU; no multi-gen LRU). The scan takes pages from
// the tail of the inactive lists (lru.ts) and runs shrink_folio_list on them:
//   trylock -> folio_check_references (folio_referenced: CPU young bits and the secondary
//   MMUs' clear_flush_young) -> an anon page gets a swap slot (folio_alloc_swap; a possibly
//   pinned page is kept instead) -> try_to_unmap (one blockable MMU_NOTIFY_CLEAR pair per
//   mapping, rmap.ts; a pinned anon-exclusive page keeps its PTE) -> swap_writepage while
//   dirty (pageout) -> __remove_mapping -> the isolation reference is the last: freed.
// What stays goes back (activated when it was referenced twice or could not be unmapped).
// Aging (shrink_active_list) moves pages from the active to the inactive list when the
// inactive list is low, clearing young bits on the way (a referenced anon page is moved all the
// same, as the kernel does: only the inactive scan protects it).
//
// Callers: kswapd (kswapd.ts: a kthread woken below the low watermark, reclaiming to the high
// one; spawned from this module, which re-exports it), direct
// reclaim in the allocating task (try_to_free_pages, PF_MEMALLOC, inside the allocator's
// fs_reclaim section), memcg reclaim (try_to_free_mem_cgroup_pages) and reclaim_pages
// (MADV_PAGEOUT's isolated pages, references ignored). Reclaim is on for a kernel booted with
// mem.reclaim (page_alloc.ts); kswapd runs only where the runner spawns it. Anon pages need swap
// (config.swap): without free slots the anon lists are not scanned and nothing is reclaimed.
// Shmem pages are on the LRU but not reclaimed here (shmem swap-out is not modelled): a scan
// that meets one activates it.

import { fileURLToPath } from 'node:url';
import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { PF_MEMALLOC, TaskL, memalloc_noreclaim_restore, memalloc_noreclaim_save } from '../sched/task.js';
import { folio_trylock, folio_unlock } from './folio_lock.js';
import { folio_referenced } from './folio_referenced.js';
import { GFP_KERNEL, __GFP_IO } from './gfp.js';
import { LRU_ACTIVE_ANON, LRU_INACTIVE_ANON, NR_LRU_LISTS, is_active_lru, is_file_lru, isolate_lru_folios, lru_count, lru_isolated_done, lru_kswapd_at, lru_putback } from './lru.js';
import { folio_maybe_dma_pinned, put_page } from './mm_pt.js';
import { PG_active, PG_anon, PG_dirty, PG_referenced, PG_swapbacked, PG_swapcache, PageL } from './page.js';
import { reclaimHooks } from './page_alloc.js';
import { folio_mapcount, try_to_unmap } from './rmap.js';
import { __remove_mapping, folio_alloc_swap, folio_free_swap, swap_writepage } from './swap_state.js';
import { vm_swap_full } from './swapfile.js';
import { ALLOCSTALL, K_FAILURES, PAGEOUT, PGACTIVATE, PGDEACTIVATE, PGREFILL, PGSCAN, PGSTEAL, PINNED_KEPT, UNMAP_FAIL, count_vm_events } from './vmstat.js';
import { wakeup_kswapd } from './kswapd.js';

export { kswapd, kswapd_stop, wakeup_kswapd } from './kswapd.js';
export { vmstat, type VmStat } from './vmstat.js';

/** PF_KSWAPD: the task is kswapd (current_is_kswapd) */
export const PF_KSWAPD = 0x00020000;
export const SWAP_CLUSTER_MAX = 32;
export const DEF_PRIORITY = 12;
export const MAX_RECLAIM_RETRIES = 16;

/** struct scan_control (what this model uses of it) */
export interface ScanControl {
  nr_to_reclaim: number;
  gfp_mask: number;
  priority: number;
  may_writepage: boolean;
  may_unmap: boolean;
  may_swap: boolean;
  /** memcg id, 0 = global */
  target_mem_cgroup: number;
  kswapd: boolean;
  nr_scanned: number;
  nr_reclaimed: number;
}

export function scanControl(gfp: number, nr: number, memcg: number, kswapd: boolean): ScanControl {
  return { nr_to_reclaim: nr, gfp_mask: gfp, priority: DEF_PRIORITY, may_writepage: true, may_unmap: true, may_swap: true, target_mem_cgroup: memcg, kswapd, nr_scanned: 0, nr_reclaimed: 0 };
}

const stat = count_vm_events;
const flagsOf = (k: Kernel, pfn: number): number => Atomics.load(k.arena.i32, k.zone.page(pfn) + PageL.flags);

export async function cond_resched(k: Kernel): Promise<void> {
  const p = k.sched.point();
  if (p !== undefined) await p;
}

// ---- shrink_folio_list --------------------------------------------------------------------------

const FOLIOREF_RECLAIM = 0;
const FOLIOREF_KEEP = 1;
const FOLIOREF_ACTIVATE = 2;

/** folio_check_references: referenced twice (a young mapping and PG_referenced, or two young mappings) -> activate. */
function folio_check_references(k: Kernel, pfn: number, sc: ScanControl): number {
  const w = k.arena.i32;
  const at = k.zone.page(pfn) + PageL.flags;
  const referenced_ptes = folio_referenced(k, pfn, sc.target_mem_cgroup);
  const referenced_folio = (Atomics.and(w, at, ~PG_referenced) & PG_referenced) !== 0;
  if (referenced_ptes > 0) {
    // every mapped page starts out young from its fault: look twice before activating
    Atomics.or(w, at, PG_referenced);
    if (referenced_folio || referenced_ptes > 1) return FOLIOREF_ACTIVATE;
    return FOLIOREF_KEEP;
  }
  return FOLIOREF_RECLAIM;
}

const FREED = 0;
const KEEP = 1;
const ACTIVATE = 2;

/** One isolated, unlocked page: FREED (the frame went back), KEEP or ACTIVATE (it goes back on a list). */
async function shrink_folio(k: Kernel, pfn: number, sc: ScanControl, ignore_references: boolean): Promise<number> {
  if (!folio_trylock(k, pfn)) return KEEP;
  sc.nr_scanned++;
  const r = await shrink_folio_locked(k, pfn, sc, ignore_references);
  if (r === ACTIVATE) {
    // not a candidate for swapping any more: give its slot back when swap runs short
    if ((flagsOf(k, pfn) & PG_swapcache) !== 0 && vm_swap_full(k)) folio_free_swap(k, pfn);
    Atomics.or(k.arena.i32, k.zone.page(pfn) + PageL.flags, PG_active);
    stat(k, PGACTIVATE);
  }
  folio_unlock(k, pfn);
  if (r !== FREED) return r;
  put_page(k, pfn); // the isolation reference, the last: the frame is free
  return FREED;
}

async function shrink_folio_locked(k: Kernel, pfn: number, sc: ScanControl, ignore_references: boolean): Promise<number> {
  if (!sc.may_unmap && folio_mapcount(k, pfn) > 0) return KEEP;
  if (!ignore_references) {
    const ref = folio_check_references(k, pfn, sc);
    if (ref === FOLIOREF_ACTIVATE) return ACTIVATE;
    if (ref === FOLIOREF_KEEP) return KEEP;
  }
  const f = flagsOf(k, pfn);
  if ((f & PG_swapcache) === 0) {
    if ((f & PG_swapbacked) === 0) return KEEP; // a file page: none exist here
    if ((f & PG_anon) === 0) return ACTIVATE; // shmem: shmem_writeout is not modelled
    if ((sc.gfp_mask & __GFP_IO) === 0) return KEEP;
    // "mm: don't put pinned pages into the swap cache" (v5.9)
    if (folio_maybe_dma_pinned(k, pfn)) {
      stat(k, PINNED_KEPT);
      return KEEP;
    }
    if (!folio_alloc_swap(k, pfn)) return ACTIVATE;
  }
  if (folio_mapcount(k, pfn) > 0) {
    const u = try_to_unmap(k, pfn);
    if (typeof u !== 'boolean') await u;
    if (folio_mapcount(k, pfn) > 0) {
      stat(k, UNMAP_FAIL);
      if (folio_maybe_dma_pinned(k, pfn)) stat(k, PINNED_KEPT);
      return ACTIVATE;
    }
  }
  // unmapped, so it cannot be newly pinned: a pinned page stays
  if (folio_maybe_dma_pinned(k, pfn)) {
    stat(k, PINNED_KEPT);
    return ACTIVATE;
  }
  if ((flagsOf(k, pfn) & PG_dirty) !== 0) {
    if (!sc.may_writepage) return KEEP;
    const wr = swap_writepage(k, pfn); // pageout
    if ((typeof wr === 'number' ? wr : await wr) < 0) return ACTIVATE;
    stat(k, PAGEOUT);
    // the write completes at once; redirtied meanwhile (a write through a secondary MMU that
    // kept a writable mapping, say) means it stays
    if ((flagsOf(k, pfn) & PG_dirty) !== 0) return KEEP;
  }
  return __remove_mapping(k, pfn) ? FREED : KEEP;
}

/**
 * shrink_folio_list: reclaim what it can of `list` (isolated pages, each with its isolation
 * reference). Freed pages leave the list; the rest stay in it, flagged active where they earned it.
 */
async function shrink_folio_list(k: Kernel, list: number[], sc: ScanControl, ignore_references: boolean): Promise<number> {
  let reclaimed = 0;
  let keep = 0;
  for (let i = 0; i < list.length; i++) {
    await cond_resched(k);
    const pfn = list[i];
    if ((await shrink_folio(k, pfn, sc, ignore_references)) === FREED) reclaimed++;
    else list[keep++] = pfn;
  }
  list.length = keep;
  if (reclaimed > 0) lru_isolated_done(k, reclaimed);
  return reclaimed;
}

/** move_folios_to_lru: what reclaim kept goes back; dropping the isolation reference may free it. */
function move_folios_to_lru(k: Kernel, list: number[]): void {
  for (const pfn of list) {
    lru_putback(k, pfn);
    put_page(k, pfn);
  }
  list.length = 0;
}

// ---- scanning the lists ---------------------------------------------------------------------------

function memcgFilter(k: Kernel, memcg: number): ((pfn: number) => boolean) | null {
  if (memcg === 0) return null;
  const w = k.arena.i32;
  return (pfn) => w[k.zone.page(pfn) + PageL.memcg] === memcg;
}

async function shrink_inactive_list(k: Kernel, nr: number, lru: number, sc: ScanControl): Promise<number> {
  const list: number[] = [];
  const scanned = { n: 0 };
  isolate_lru_folios(k, lru, nr, memcgFilter(k, sc.target_mem_cgroup), list, scanned);
  stat(k, PGSCAN + (sc.kswapd ? 0 : 1), scanned.n);
  if (list.length === 0) return 0;
  const reclaimed = await shrink_folio_list(k, list, sc, false);
  stat(k, PGSTEAL + (sc.kswapd ? 0 : 1), reclaimed);
  move_folios_to_lru(k, list);
  return reclaimed;
}

/** shrink_active_list: deactivate up to nr pages, clearing their young bits (anon pages go to the inactive list even when referenced). */
async function shrink_active_list(k: Kernel, nr: number, lru: number, sc: ScanControl): Promise<void> {
  const list: number[] = [];
  const scanned = { n: 0 };
  isolate_lru_folios(k, lru, nr, memcgFilter(k, sc.target_mem_cgroup), list, scanned);
  stat(k, PGREFILL, scanned.n);
  const w = k.arena.i32;
  for (const pfn of list) {
    await cond_resched(k);
    // referenced file pages mapped VM_EXEC would stay active; there are none
    folio_referenced(k, pfn, sc.target_mem_cgroup);
    Atomics.and(w, k.zone.page(pfn) + PageL.flags, ~PG_active);
  }
  stat(k, PGDEACTIVATE, list.length);
  move_folios_to_lru(k, list);
}

/** inactive_is_low: the inactive list is smaller than the active one over the ratio (1 below 1 GiB). */
function inactive_is_low(k: Kernel, inactive_lru: number): boolean {
  const inactive = lru_count(k, inactive_lru);
  const active = lru_count(k, inactive_lru + 1);
  const gb = Math.floor(((inactive + active) * k.zone.pageSize) / 2 ** 30);
  const ratio = gb > 0 ? Math.floor(Math.sqrt(10 * gb)) : 1;
  return inactive * ratio < active;
}

/** can_reclaim_anon_pages: anon pages need a free swap slot to go anywhere. */
function can_reclaim_anon_pages(k: Kernel, sc: ScanControl): boolean {
  return sc.may_swap && k.swap.nrFree > 0;
}

/** shrink_lruvec: scan each evictable list by its size >> priority, a cluster at a time. */
async function shrink_lruvec(k: Kernel, sc: ScanControl): Promise<void> {
  const anon = can_reclaim_anon_pages(k, sc);
  const nr: number[] = [];
  for (let lru = 0; lru < NR_LRU_LISTS; lru++) {
    const size = lru_count(k, lru);
    nr.push(!anon && !is_file_lru(lru) ? 0 : size >> sc.priority);
  }
  const may_deactivate = anon && inactive_is_low(k, LRU_INACTIVE_ANON);
  while (nr[0] > 0 || nr[2] > 0 || nr[3] > 0) {
    for (let lru = 0; lru < NR_LRU_LISTS; lru++) {
      if (nr[lru] === 0) continue;
      const n = Math.min(nr[lru], SWAP_CLUSTER_MAX);
      nr[lru] -= n;
      if (is_active_lru(lru)) {
        if (!is_file_lru(lru) && may_deactivate) await shrink_active_list(k, n, lru, sc);
      } else sc.nr_reclaimed += await shrink_inactive_list(k, n, lru, sc);
    }
    if (sc.nr_reclaimed >= sc.nr_to_reclaim) break;
  }
  // even when anon was not scanned, keep its inactive list in proportion
  if (anon && inactive_is_low(k, LRU_INACTIVE_ANON)) await shrink_active_list(k, SWAP_CLUSTER_MAX, LRU_ACTIVE_ANON, sc);
}

export async function shrink_node(k: Kernel, sc: ScanControl): Promise<void> {
  const before = sc.nr_reclaimed;
  await shrink_lruvec(k, sc);
  // progress, by anyone: kswapd is not hopeless any more
  if (sc.nr_reclaimed > before) Atomics.store(k.arena.i32, lru_kswapd_at(k, K_FAILURES), 0);
}

/** do_try_to_free_pages: priority DEF_PRIORITY down to 0 until nr_to_reclaim pages are freed. */
async function do_try_to_free_pages(k: Kernel, sc: ScanControl): Promise<number> {
  for (sc.priority = DEF_PRIORITY; sc.priority >= 0; sc.priority--) {
    sc.nr_scanned = 0;
    await shrink_node(k, sc);
    if (sc.nr_reclaimed >= sc.nr_to_reclaim) break;
  }
  return sc.nr_reclaimed;
}

async function withMemalloc(k: Kernel, sc: ScanControl): Promise<number> {
  const t = current;
  const old = memalloc_noreclaim_save(t);
  try {
    return await do_try_to_free_pages(k, sc);
  } finally {
    memalloc_noreclaim_restore(t, old);
  }
}

// ---- the entry points -------------------------------------------------------------------------------

/**
 * try_to_free_pages: direct reclaim in the allocating task (which holds fs_reclaim, as the
 * allocator's slow path arranges): PF_MEMALLOC while it runs, so allocations inside do not
 * reclaim again. Returns the pages freed. A task already reclaiming gets 0 (no recursion).
 */
export function try_to_free_pages(k: Kernel, gfp: number, nr: number): Promise<number> {
  const t = current;
  if ((k.arena.i32[t.base + TaskL.flags] & PF_MEMALLOC) !== 0) return Promise.resolve(0);
  stat(k, ALLOCSTALL);
  return withMemalloc(k, scanControl(gfp, Math.max(nr, 1), 0, false));
}

/**
 * try_to_free_mem_cgroup_pages: reclaim only pages charged to `memcg` (struct page memcg),
 * for memcg limits (memcontrol.ts). Returns the pages freed.
 */
export function try_to_free_mem_cgroup_pages(k: Kernel, memcg: number, nr: number, gfp: number): number | Promise<number> {
  return withMemalloc(k, scanControl(gfp, Math.max(nr, SWAP_CLUSTER_MAX), memcg, false));
}

/**
 * reclaim_pages (MADV_PAGEOUT, the "reclaim of a chosen range" fault injection): pages the
 * caller isolated with folio_isolate_lru, each with its isolation reference, which this
 * consumes. References are ignored; what cannot be reclaimed goes back on its list.
 */
export function reclaim_pages(k: Kernel, pfns: number[]): number | Promise<number> {
  if (pfns.length === 0) return 0;
  const list = pfns.slice();
  const sc = scanControl(GFP_KERNEL, list.length, 0, false);
  const t = current;
  const old = memalloc_noreclaim_save(t);
  const done = (n: number): number => {
    memalloc_noreclaim_restore(t, old);
    move_folios_to_lru(k, list);
    return n;
  };
  return shrink_folio_list(k, list, sc, true).then(done, (e: unknown) => {
    done(0);
    throw e;
  });
}

/** This module's path, for spawning `kswapd` (re-exported here) under threads. */
export function vmscanModule(): string {
  return fileURLToPath(import.meta.url);
}

/** current_is_kswapd */
export function current_is_kswapd(): boolean {
  const t = current;
  return (t.k.arena.i32[t.base + TaskL.flags] & PF_KSWAPD) !== 0;
}

// the allocator's hooks for a zone booted with mem.reclaim (in every thread that loads this module)
reclaimHooks.direct = try_to_free_pages;
reclaimHooks.wakeKswapd = wakeup_kswapd;
