// The swap cache (mm/swap_state.c, with the slot-freeing halves of mm/swapfile.c and the swap
// side of mm/vmscan.c's __remove_mapping). A page in the swap cache has PG_swapcache,
// page->private = its slot, and one reference held by the cache; the slot's map has
// SWAP_HAS_CACHE and its cache word names the page. Lookups take a reference under si->lock.
//
// Reclaim (vmscan.ts) drives a page out as shrink_folio_list does, the page locked throughout
// and one reference of its own (the isolation reference):
//   folio_alloc_swap -> try_to_unmap -> swap_writepage while PG_dirty -> __remove_mapping
// then drops its reference, which frees the frame. A CPU or device fault brings it back
// (read_swap_cache_async, swap_fault.ts).
//
// Data integrity (DESIGN check 6): __remove_mapping is where a clean page is thrown away
// because its slot holds the same bytes. It compares them while a swap PTE still names the
// slot; a difference means a write reached the page without its dirty bit reaching PG_dirty:
// 'data_integrity', "BUG: lost write".

import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { EINVAL } from '../shm/errno.js';
import { folio_trylock, folio_try_get, folio_unlock } from './folio_lock.js';
import { GFP_HIGHUSER_MOVABLE } from './gfp.js';
import { folio_add_lru } from './lru.js';
import { get_page, put_page } from './mm_pt.js';
import { PG_anon, PG_dirty, PG_locked, PG_swapbacked, PG_swapcache, PG_uptodate, PageL } from './page.js';
import { alloc_page } from './page_alloc.js';
import { RmapL } from './rmap.js';
import {
  SWAP_COUNT_MASK,
  SWAP_HAS_CACHE,
  SWP_WRITTEN,
  get_swap_page,
  set_slot_cache,
  set_slot_flags,
  slot_cache,
  slot_flags,
  slot_owner,
  swap_entry_put_locked,
  swap_entry_slot,
  swap_map,
  swapcache_prepare_locked,
} from './swapfile.js';
import { mmLabel } from './types.js';
import { emitSwapout } from './events.js';

const P_FLAGS = PageL.flags;
const P_REF = PageL.refcount;
const P_PRIVATE = PageL.private;
const P_MAPCOUNT = PageL.mapcount;

/**
 * The memcg charge of a page about to be read in from swap (mem_cgroup_swapin_charge_folio:
 * 0 or -ENOMEM; may sleep in memcg reclaim), filled by swap_fault.ts; null = none.
 */
export const swapHooks: { swapin_charge: ((k: Kernel, pfn: number, mm: number, gfp: number) => number | Promise<number>) | null } = { swapin_charge: null };

const flags = (k: Kernel, pfn: number): number => Atomics.load(k.arena.i32, k.zone.page(pfn) + P_FLAGS);

// ---- lookup, insert, delete ---------------------------------------------------------------------

/** swap_cache_get_folio: slot s's page with a reference; 0 if none; -1 if one is there but being freed. */
export function swap_cache_get_folio(k: Kernel, s: number): number {
  const si = k.swap;
  si.lock();
  let pfn = slot_cache(k, s);
  if (pfn !== 0 && !folio_try_get(k, pfn)) pfn = -1;
  si.unlock();
  return pfn;
}

/** __delete_from_swap_cache, si->lock held: the page leaves the cache (its reference is the caller's to drop). */
function delete_locked(k: Kernel, pfn: number, s: number): void {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  set_slot_cache(k, s, 0);
  k.swap.cachePages(-1);
  swap_entry_put_locked(k, s, SWAP_HAS_CACHE);
  w[p + P_PRIVATE] = 0;
  Atomics.and(w, p + P_FLAGS, ~PG_swapcache);
}

/** delete_from_swap_cache: the page (locked, in the cache) leaves it; the cache's reference is dropped. */
export function delete_from_swap_cache(k: Kernel, pfn: number): void {
  const s = k.arena.i32[k.zone.page(pfn) + P_PRIVATE];
  if ((flags(k, pfn) & PG_swapcache) === 0 || !k.swap.valid(s)) {
    splat(k, 'bug', `BUG: delete_from_swap_cache: pfn ${pfn} is not in the swap cache`);
    return;
  }
  k.swap.lock();
  delete_locked(k, pfn, s);
  k.swap.unlock();
  put_page(k, pfn);
}

/** The (mm, addr) of pfn's first mapping, for reports; racy, never trusted. */
function first_mapping(k: Kernel, pfn: number): { mm: number; addr: number } {
  const w = k.arena.i32;
  const node = w[k.zone.page(pfn) + PageL.mapping];
  if (node === 0) return { mm: 0, addr: k.arena.f64[(k.zone.page(pfn) + PageL.index) >> 1] * k.mmLayer.pageSize };
  return { mm: w[node + RmapL.mm], addr: k.arena.f64[(node + RmapL.addr) >> 1] };
}

// ---- the four reclaim steps -----------------------------------------------------------------------

/**
 * folio_alloc_swap + add_to_swap_cache + folio_mark_dirty (add_to_swap): give a locked anon
 * page a slot and put it in the swap cache, dirty (its contents are not in the slot yet).
 * The cache takes a reference. False when swap is full or not configured, or for a page that
 * is not anonymous (shmem pages are not swapped here).
 */
export function folio_alloc_swap(k: Kernel, pfn: number): boolean {
  const si = k.swap;
  if (si.nrSlots === 0) return false;
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  const f = flags(k, pfn);
  if ((f & PG_anon) === 0) return false; // shmem pages do not go to swap here (no shmem_writeout)
  if ((f & PG_swapcache) !== 0 || (f & PG_locked) === 0) {
    splat(k, 'bug', `BUG: folio_alloc_swap: pfn ${pfn} is ${(f & PG_swapcache) !== 0 ? 'already in the swap cache' : 'not locked'}`);
    return false;
  }
  const at = first_mapping(k, pfn);
  const s = get_swap_page(k, at.mm, at.addr);
  if (s === 0) return false;
  w[p + P_PRIVATE] = s;
  Atomics.or(w, p + P_FLAGS, PG_swapcache | PG_swapbacked | PG_dirty);
  get_page(k, pfn); // the swap cache's reference
  si.lock();
  set_slot_cache(k, s, pfn);
  si.cachePages(1);
  si.unlock();
  return true;
}

/**
 * swap_writepage (pageout of a swap-cache page, locked): clear PG_dirty, then copy the page
 * into its slot. The I/O completes at once. 0, or -EINVAL for a page not in the swap cache.
 */
export function swap_writepage(k: Kernel, pfn: number): number | Promise<number> {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  const s = w[p + P_PRIVATE];
  if ((flags(k, pfn) & PG_swapcache) === 0 || !k.swap.valid(s)) {
    splat(k, 'warn', `WARNING: swap_writepage: pfn ${pfn} is not in the swap cache`);
    return -EINVAL;
  }
  Atomics.and(w, p + P_FLAGS, ~PG_dirty); // folio_clear_dirty_for_io
  const src = k.zone.pageData(pfn);
  w.copyWithin(k.swap.slotData(s), src, src + k.zone.pageWords);
  set_slot_flags(k, s, slot_flags(k, s) | SWP_WRITTEN);
  k.swap.count('pswpout');
  emitSwapout(k, pfn, s);
  return 0;
}

/** The first word where pfn's contents differ from slot s's, or -1. */
function first_difference(k: Kernel, pfn: number, s: number): number {
  const w = k.arena.i32;
  const a = k.zone.pageData(pfn);
  const b = k.swap.slotData(s);
  for (let i = 0, n = k.zone.pageWords; i < n; i++) if (w[a + i] !== w[b + i]) return i;
  return -1;
}

/**
 * __remove_mapping for a swap-cache page (locked, unmapped, clean): freeze its references
 * (the caller's and the cache's, exactly two, as folio_ref_freeze checks), then take it out
 * of the swap cache. On success the caller's reference is the only one left: put_page frees
 * the frame. False when the page is dirty, mapped, not in the swap cache, or someone else
 * holds a reference. A clean page whose bytes differ from its slot's, when a swap PTE still
 * names the slot, is a lost write.
 */
export function __remove_mapping(k: Kernel, pfn: number): boolean {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  const s = w[p + P_PRIVATE];
  if ((flags(k, pfn) & PG_swapcache) === 0 || !k.swap.valid(s) || Atomics.load(w, p + P_MAPCOUNT) !== 0) return false;
  const si = k.swap;
  si.lock();
  if (Atomics.compareExchange(w, p + P_REF, 2, 0) !== 2) {
    si.unlock();
    return false;
  }
  if ((flags(k, pfn) & PG_dirty) !== 0) {
    Atomics.store(w, p + P_REF, 2);
    si.unlock();
    return false;
  }
  const written = (slot_flags(k, s) & SWP_WRITTEN) !== 0;
  // Only a slot some swap PTE still names will be read back. A page whose last PTE was zapped
  // (munmap, exit) while reclaim held it is dead: zap marks only file pages dirty, as the
  // kernel's zap_present_folio_ptes does, so its bytes may differ from the slot and nothing
  // can see them.
  const live = (swap_map(k, s) & SWAP_COUNT_MASK) !== 0;
  const diff = !live ? -1 : written ? first_difference(k, pfn, s) : 0;
  const owner = slot_owner(k, s);
  let report = '';
  if (diff >= 0) {
    const pageWord = w[k.zone.pageData(pfn) + diff] >>> 0;
    report = written
      ? `BUG: lost write: pfn ${pfn} (${mmLabel(owner.mm)}, addr 0x${owner.addr.toString(16)}) is clean but differs from its swap copy in slot ${s} at byte ${diff * 4} (page 0x${pageWord.toString(16)}, swap 0x${(w[si.slotData(s) + diff] >>> 0).toString(16)}): a dirty bit was dropped, and reclaim is throwing the newer contents away`
      : `BUG: lost write: pfn ${pfn} (${mmLabel(owner.mm)}, addr 0x${owner.addr.toString(16)}) is clean but its swap slot ${s} was never written: reclaim is throwing the only copy away`;
  }
  delete_locked(k, pfn, s);
  si.unlock();
  Atomics.store(w, p + P_REF, 1); // the caller's reference: it frees the frame
  if (report !== '') {
    si.count('lost');
    splat(k, 'data_integrity', report);
  }
  return true;
}

/**
 * folio_free_swap (locked page): when no swap PTE names its slot any more, take the page out
 * of the swap cache, free the slot and mark the page dirty (the slot's copy is gone).
 */
export function folio_free_swap(k: Kernel, pfn: number): boolean {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  const s = w[p + P_PRIVATE];
  if ((flags(k, pfn) & PG_swapcache) === 0 || !k.swap.valid(s)) return false;
  const si = k.swap;
  si.lock();
  if ((swap_map(k, s) & SWAP_COUNT_MASK) !== 0) {
    si.unlock();
    return false;
  }
  delete_locked(k, pfn, s);
  si.unlock();
  Atomics.or(w, p + P_FLAGS, PG_dirty);
  put_page(k, pfn); // the cache's reference; the caller still holds one
  return true;
}

/**
 * free_swap_and_cache (a zap meets a swap PTE; PTE lock held, no sleeping): drop the PTE's
 * count; when only the swap cache is left and its page is unmapped and not locked by anyone,
 * free that too (__try_to_reclaim_swap). A locked page stays for reclaim to drop.
 */
export function free_swap_and_cache(k: Kernel, entry: number): void {
  const s = swap_entry_slot(k, entry, 'free_swap_and_cache');
  if (s === 0) return;
  const si = k.swap;
  si.lock();
  const map = swap_entry_put_locked(k, s, 1);
  let pfn = map === SWAP_HAS_CACHE ? slot_cache(k, s) : 0;
  if (pfn !== 0 && !folio_try_get(k, pfn)) pfn = 0;
  si.unlock();
  if (pfn === 0) return;
  if (folio_trylock(k, pfn)) {
    if (k.arena.i32[k.zone.page(pfn) + P_MAPCOUNT] === 0 && k.arena.i32[k.zone.page(pfn) + P_PRIVATE] === s) folio_free_swap(k, pfn);
    folio_unlock(k, pfn);
  }
  put_page(k, pfn);
}

/**
 * free_swap_cache: a page losing a PTE reference (zap, COW break) leaves the swap cache when
 * nothing maps it and its lock is free; its slot goes if no swap PTE names it.
 */
export function free_swap_cache(k: Kernel, pfn: number): void {
  const p = k.zone.page(pfn);
  const w = k.arena.i32;
  if ((Atomics.load(w, p + P_FLAGS) & PG_swapcache) === 0 || Atomics.load(w, p + P_MAPCOUNT) !== 0) return;
  if (!folio_trylock(k, pfn)) return;
  folio_free_swap(k, pfn);
  folio_unlock(k, pfn);
}

// ---- cache-only slots -------------------------------------------------------------------------------
//
// free_swap_cache and free_swap_and_cache are best-effort ("just an optimization to avoid
// having memory pressure do it later"): a page that reclaim put in the swap cache while someone
// else held a reference (wp_page_copy's old page, say, after its PTE had already been COWed by
// another task) stays there with no PTE and no swap PTE when that reference goes. Only later
// reclaim, the swap allocator's reclaim of cache-only slots, or swapoff frees it.

/**
 * __try_to_reclaim_swap(TTRS_ANYWAY): take slot s's page out of the swap cache if no swap PTE
 * names the slot, freeing both (the page too when the cache held the last reference). 1 when
 * it did, 0 when the slot has no cache page, -1 when the page is locked or the slot still in use.
 */
export function __try_to_reclaim_swap(k: Kernel, s: number): number {
  const pfn = swap_cache_get_folio(k, s);
  if (pfn <= 0) return pfn === 0 ? 0 : -1;
  let ret = -1;
  if (folio_trylock(k, pfn)) {
    // still the slot's page (folio->swap), and only the cache uses the slot (folio_free_swap checks)
    if (k.arena.i32[k.zone.page(pfn) + P_PRIVATE] === s && folio_free_swap(k, pfn)) ret = 1;
    folio_unlock(k, pfn);
  }
  put_page(k, pfn);
  return ret;
}

/**
 * swap_reclaim_full_clusters(force) (swap_reclaim_work, and swapoff's sweep of pages only the
 * cache holds): every slot whose map is SWAP_HAS_CACHE alone gives its page back. Ours has no
 * clusters: the whole area is scanned. The pages it freed from the cache.
 */
export function swap_reclaim_full_clusters(k: Kernel): number {
  let freed = 0;
  for (let s = 1; s <= k.swap.nrSlots; s++) if (swap_map(k, s) === SWAP_HAS_CACHE && __try_to_reclaim_swap(k, s) > 0) freed++;
  return freed;
}

// ---- swap-in ----------------------------------------------------------------------------------------

/** read_swap_cache_async's result when the entry was freed meanwhile (the PTE changed) */
export const SWAPIN_GONE = -1;

/**
 * read_swap_cache_async / swapin_readahead (no readahead): slot s's page, referenced, up to
 * date and unlocked: from the swap cache, or a new page read from the slot and added to it.
 * 0 when no page could be allocated; SWAPIN_GONE when no swap PTE names the slot any more.
 * `major` is set when the slot was read.
 */
export function read_swap_cache_async(k: Kernel, s: number, mm: number, out: { major: boolean }): number | Promise<number> {
  const got = swap_cache_get_folio(k, s);
  if (got > 0) return got;
  return swapinSlow(k, s, mm, out);
}

async function swapinSlow(k: Kernel, s: number, mm: number, out: { major: boolean }): Promise<number> {
  const w = k.arena.i32;
  const si = k.swap;
  for (;;) {
    const got = swap_cache_get_folio(k, s);
    if (got > 0) return got;
    if (got === 0 && (swap_map(k, s) & SWAP_COUNT_MASK) === 0) return SWAPIN_GONE;
    if (got < 0) {
      // swapcache_prepare -EEXIST: the page is on its way out (or in); look again shortly
      const pt = k.sched.sleep(10_000);
      if (pt !== undefined) await pt;
      continue;
    }
    const a = alloc_page(k, GFP_HIGHUSER_MOVABLE);
    const pfn = typeof a === 'number' ? a : await a;
    if (pfn === 0) return 0;
    // charged before anyone can see it (a frame freed unused is uncharged by the allocator)
    if (swapHooks.swapin_charge !== null) {
      const c = swapHooks.swapin_charge(k, pfn, mm, GFP_HIGHUSER_MOVABLE);
      if ((typeof c === 'number' ? c : await c) !== 0) {
        put_page(k, pfn);
        return 0;
      }
    }
    const p = k.zone.page(pfn);
    // swapcache_prepare + add_to_swap_cache, as one step under si->lock
    si.lock();
    const map = swapcache_prepare_locked(k, s);
    const ok = (map & SWAP_COUNT_MASK) !== 0 && (map & SWAP_HAS_CACHE) === 0;
    if (ok) {
      w[p + P_PRIVATE] = s;
      Atomics.or(w, p + P_FLAGS, PG_locked | PG_swapbacked | PG_swapcache);
      Atomics.add(w, p + P_REF, 1); // the swap cache's
      set_slot_cache(k, s, pfn);
      si.cachePages(1);
    }
    si.unlock();
    if (!ok) {
      put_page(k, pfn);
      if ((map & SWAP_COUNT_MASK) === 0) return SWAPIN_GONE;
      continue; // raced with another swap-in of this slot: use its page
    }
    folio_add_lru(k, pfn);
    // the read is in flight with the page locked: finders of it wait in folio_lock
    const io = k.sched.point();
    if (io !== undefined) await io;
    swap_read_folio(k, pfn, s);
    out.major = true;
    folio_unlock(k, pfn);
    return pfn;
  }
}

/** swap_read_folio: the slot's contents into the page; uptodate. */
function swap_read_folio(k: Kernel, pfn: number, s: number): void {
  const w = k.arena.i32;
  const dst = k.zone.pageData(pfn);
  if ((slot_flags(k, s) & SWP_WRITTEN) === 0) {
    const o = slot_owner(k, s);
    splat(k, 'data_integrity', `BUG: swap-in of slot ${s} (${mmLabel(o.mm)}, addr 0x${o.addr.toString(16)}) that was never written: its page was dropped without writeback`);
    w.fill(0, dst, dst + k.zone.pageWords);
  } else {
    const src = k.swap.slotData(s);
    w.copyWithin(dst, src, src + k.zone.pageWords);
  }
  Atomics.or(w, k.zone.page(pfn) + P_FLAGS, PG_uptodate);
  k.swap.count('pswpin');
}
