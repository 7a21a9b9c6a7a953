// The LRU lists (mm/swap.c, include/linux/mm_inline.h and the lruvec half of mm/vmscan.c):
// the zone's active and inactive lists, anon and file as the kernel splits them (a page is on
// the file lists only when it is not PG_swapbacked: every page here is anon or shmem, so the
// file lists stay empty but are scanned all the same). Pages join at the head (the newest
// end) and reclaim takes from the tail. The lists have no reference of their own: isolating a
// page takes one (folio_isolate_lru), and the last put of a page on a list takes it off
// (folio_lru_release, from __free_page: put_page's last reference and every other free).
//
// Links are struct page lruPrev/lruNext; a list's head lives in the 'lru' region, named by a
// negative node id (-1 - lru), so unlinking needs no list pointer. PG_lru / PG_active mirror
// the membership for the kernel code that tests them; the region's per-frame word (which list,
// 0 = none) is what the list code trusts, because other paths still rewrite struct page flags
// with plain read-modify-writes that could drop a bit set meanwhile from another thread.
// No per-CPU folio batches: a page is on its list as soon as it is added (lru_add_drain is a
// no-op). One raw lock (lruvec->lru_lock) guards the lists; it nests inside the PTE lock and
// the shmem object lock, never the other way round, and nothing sleeps under it.
//
// The 'lru' region (planned with the zone, page_alloc.ts) also holds reclaim's counters
// (vmstat.ts) and kswapd's words (kswapd.ts).

import type { Arena, ArenaPlan } from '../shm/arena.js';
import { arch_spin_lock, arch_spin_unlock } from '../shm/rawlock.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { PG_active, PG_lru, PG_referenced, PG_swapbacked, PageL } from './page.js';

// enum lru_list
export const LRU_INACTIVE_ANON = 0;
export const LRU_ACTIVE_ANON = 1;
export const LRU_INACTIVE_FILE = 2;
export const LRU_ACTIVE_FILE = 3;
export const NR_LRU_LISTS = 4;
const LRU_ACTIVE = 1;
const LRU_FILE = 2;

// region words
const L_LOCK = 0;
const L_HEADS = 2; // per list: first, last, count
const H_WORDS = 3;
const H_FIRST = 0;
const H_LAST = 1;
const H_COUNT = 2;
/** reclaim's counters (vmscan.ts names them) */
export const L_STAT = 16;
export const NR_LRU_STATS = 24;
/** kswapd's words (vmscan.ts) */
export const L_KSWAPD = L_STAT + NR_LRU_STATS;
export const L_KSWAPD_WORDS = 8;
const L_ISOLATED = L_KSWAPD + L_KSWAPD_WORDS; // pages isolated right now
const L_HEADER = 64;

const P_FLAGS = PageL.flags;
const P_PREV = PageL.lruPrev;
const P_NEXT = PageL.lruNext;
const P_REF = PageL.refcount;

/** The lists of the zone: word offsets into the arena. */
export class LruVec {
  /** word offset of the region */
  readonly base: number;
  /** word offset of frame 0's "which list" word */
  readonly which: number;

  constructor(arena: Arena) {
    this.base = arena.region('lru');
    this.which = this.base + L_HEADER;
  }

  static plan(plan: ArenaPlan, pages: number): void {
    plan.region('lru', L_HEADER + pages);
  }
}

const lruOf = new WeakMap<Kernel, LruVec>();
let lastK: Kernel | null = null;
let lastVec: LruVec | null = null;

/** This thread's view of k's lists (the region is planned by the zone, page_alloc.ts). */
export function lruvec(k: Kernel): LruVec {
  if (lastK === k) return lastVec!;
  let v = lruOf.get(k);
  if (!v) lruOf.set(k, (v = new LruVec(k.arena)));
  lastK = k;
  lastVec = v;
  return v;
}

/** folio_lru_list: where a page with these flags belongs */
export function folio_lru_list(flags: number): number {
  return ((flags & PG_swapbacked) === 0 ? LRU_FILE : 0) + ((flags & PG_active) !== 0 ? LRU_ACTIVE : 0);
}

export const is_active_lru = (lru: number): boolean => (lru & LRU_ACTIVE) !== 0;
export const is_file_lru = (lru: number): boolean => (lru & LRU_FILE) !== 0;

const head = (v: LruVec, lru: number): number => v.base + L_HEADS + lru * H_WORDS;

// ---- list surgery, lru_lock held -------------------------------------------------------------

/** lruvec_add_folio: at the head (the newest end). */
function add_locked(k: Kernel, v: LruVec, pfn: number, lru: number): void {
  const w = k.arena.i32;
  const h = head(v, lru);
  const p = k.zone.page(pfn);
  const first = w[h + H_FIRST];
  w[p + P_PREV] = -1 - lru;
  w[p + P_NEXT] = first;
  if (first > 0) w[k.zone.page(first) + P_PREV] = pfn;
  else w[h + H_LAST] = pfn;
  w[h + H_FIRST] = pfn;
  w[h + H_COUNT]++;
  w[v.which + pfn] = lru + 1;
}

/** lruvec_add_folio_tail: at the tail, next in line for reclaim. */
function add_tail_locked(k: Kernel, v: LruVec, pfn: number, lru: number): void {
  const w = k.arena.i32;
  const h = head(v, lru);
  const p = k.zone.page(pfn);
  const last = w[h + H_LAST];
  w[p + P_NEXT] = -1 - lru;
  w[p + P_PREV] = last;
  if (last > 0) w[k.zone.page(last) + P_NEXT] = pfn;
  else w[h + H_FIRST] = pfn;
  w[h + H_LAST] = pfn;
  w[h + H_COUNT]++;
  w[v.which + pfn] = lru + 1;
}

/** lruvec_del_folio; returns the list it was on, -1 if none. */
function del_locked(k: Kernel, v: LruVec, pfn: number): number {
  const w = k.arena.i32;
  const lru = w[v.which + pfn] - 1;
  if (lru < 0) return -1;
  const h = head(v, lru);
  const p = k.zone.page(pfn);
  const prev = w[p + P_PREV];
  const next = w[p + P_NEXT];
  if (prev > 0) w[k.zone.page(prev) + P_NEXT] = next;
  else w[h + H_FIRST] = next > 0 ? next : 0;
  if (next > 0) w[k.zone.page(next) + P_PREV] = prev;
  else w[h + H_LAST] = prev > 0 ? prev : 0;
  w[p + P_PREV] = 0;
  w[p + P_NEXT] = 0;
  w[h + H_COUNT]--;
  w[v.which + pfn] = 0;
  return lru;
}

function lock(k: Kernel, v: LruVec): void {
  arch_spin_lock(k.arena.i32, v.base + L_LOCK);
}
function unlock(k: Kernel, v: LruVec): void {
  arch_spin_unlock(k.arena.i32, v.base + L_LOCK);
}

// ---- the API -----------------------------------------------------------------------------------

/** folio_test_lru, as the list code sees it */
export function folio_on_lru(k: Kernel, pfn: number): boolean {
  return k.arena.i32[lruvec(k).which + pfn] !== 0;
}

/** Which list pfn is on (LRU_*), -1 if none. */
export function folio_lru(k: Kernel, pfn: number): number {
  return k.arena.i32[lruvec(k).which + pfn] - 1;
}

/**
 * folio_add_lru (lru_cache_add): a page the caller holds a reference on joins its list
 * (active if PG_active). A page already on a list is a bug (VM_BUG_ON_FOLIO(folio_test_lru)).
 */
export function folio_add_lru(k: Kernel, pfn: number): void {
  const v = lruvec(k);
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  lock(k, v);
  if (w[v.which + pfn] !== 0) {
    unlock(k, v);
    splat(k, 'bug', `BUG: folio_add_lru: pfn ${pfn} is already on an LRU list`);
    return;
  }
  add_locked(k, v, pfn, folio_lru_list(Atomics.or(w, p + P_FLAGS, PG_lru)));
  unlock(k, v);
}

export const lru_cache_add = folio_add_lru;

/** folio_add_lru_vma: the same for a page just mapped into vma (no mlock: nothing is unevictable here). */
export function folio_add_lru_vma(k: Kernel, pfn: number, _vma: number): void {
  folio_add_lru(k, pfn);
}

/**
 * folio_isolate_lru: take a page off its list for the caller, with a reference (dropped by
 * folio_putback_lru or the caller's put). False if it is not on a list (someone else
 * isolated it) or is being freed.
 */
export function folio_isolate_lru(k: Kernel, pfn: number): boolean {
  const v = lruvec(k);
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  lock(k, v);
  if (w[v.which + pfn] === 0 || !tryGet(w, p)) {
    unlock(k, v);
    return false;
  }
  del_locked(k, v, pfn);
  Atomics.and(w, p + P_FLAGS, ~PG_lru);
  Atomics.add(w, v.base + L_ISOLATED, 1);
  unlock(k, v);
  return true;
}

function tryGet(w: Int32Array, p: number): boolean {
  for (;;) {
    const r = Atomics.load(w, p + P_REF);
    if (r <= 0) return false;
    if (Atomics.compareExchange(w, p + P_REF, r, r + 1) === r) return true;
  }
}

/**
 * folio_putback_lru without its put: an isolated page goes back on the list its PG_active
 * picks; the caller still drops the isolation reference (put_page).
 */
export function lru_putback(k: Kernel, pfn: number, tail = false): void {
  const v = lruvec(k);
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  lock(k, v);
  Atomics.sub(w, v.base + L_ISOLATED, 1);
  if (w[v.which + pfn] === 0) {
    const lru = folio_lru_list(Atomics.or(w, p + P_FLAGS, PG_lru));
    if (tail) add_tail_locked(k, v, pfn, lru);
    else add_locked(k, v, pfn, lru);
  }
  unlock(k, v);
}

/**
 * folio_putback_lru: back on its list, and the isolation reference dropped through `put`
 * (put_page; this module does not import it, to stay below page_alloc.ts), which may free it.
 */
export function folio_putback_lru(k: Kernel, pfn: number, put: (k: Kernel, pfn: number) => void): void {
  lru_putback(k, pfn);
  put(k, pfn);
}

/**
 * Isolated pages that will not go back (migrated away or reclaimed): no longer counted as
 * isolated. Every isolation ends in lru_putback / folio_putback_lru or here (NR_ISOLATED_*).
 */
export function lru_isolated_done(k: Kernel, n = 1): void {
  const v = lruvec(k);
  Atomics.sub(k.arena.i32, v.base + L_ISOLATED, n);
}

/**
 * isolate_lru_folios: up to nr pages from the tail of `lru`, each with a reference and off its
 * list; pages being freed are rotated to the head. `want` filters (memcg reclaim): pages it
 * refuses stay where they are and are not counted. `scanned` gets the pages looked at.
 */
export function isolate_lru_folios(k: Kernel, lru: number, nr: number, want: ((pfn: number) => boolean) | null, out: number[], scanned: { n: number }): number {
  const v = lruvec(k);
  const w = k.arena.i32;
  const h = head(v, lru);
  let taken = 0;
  lock(k, v);
  let budget = w[h + H_COUNT];
  let pfn = w[h + H_LAST];
  while (pfn > 0 && taken < nr && budget-- > 0) {
    const p = k.zone.page(pfn);
    const prev = w[p + P_PREV];
    if (want === null || want(pfn)) {
      scanned.n++;
      if (tryGet(w, p)) {
        del_locked(k, v, pfn);
        Atomics.and(w, p + P_FLAGS, ~PG_lru);
        out.push(pfn);
        taken++;
      } else {
        // on its way to the allocator: out of the way
        del_locked(k, v, pfn);
        add_locked(k, v, pfn, lru);
      }
    }
    pfn = prev > 0 ? prev : 0;
  }
  Atomics.add(w, v.base + L_ISOLATED, taken);
  unlock(k, v);
  return taken;
}

/**
 * folio_lru_release (__page_cache_release): the last reference is gone; take the page off its
 * list before it is freed. Called from put_page and the allocator's free.
 */
export function folio_lru_release(k: Kernel, pfn: number): void {
  const v = lruvec(k);
  const w = k.arena.i32;
  if (w[v.which + pfn] === 0) return;
  lock(k, v);
  del_locked(k, v, pfn);
  unlock(k, v);
  Atomics.and(w, k.zone.page(pfn) + P_FLAGS, ~(PG_lru | PG_active | PG_referenced));
}

/** folio_activate: an inactive page on a list moves to its active list. */
export function folio_activate(k: Kernel, pfn: number): void {
  const v = lruvec(k);
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  lock(k, v);
  const lru = w[v.which + pfn] - 1;
  if (lru >= 0 && !is_active_lru(lru)) {
    del_locked(k, v, pfn);
    Atomics.and(w, p + P_FLAGS, ~PG_referenced);
    add_locked(k, v, pfn, lru | LRU_ACTIVE);
    Atomics.or(w, p + P_FLAGS, PG_active);
    Atomics.add(w, v.base + L_STAT + STAT_PGACTIVATE, 1);
  }
  unlock(k, v);
}

/** folio_deactivate (MADV_COLD): an active page moves to the head of its inactive list. */
export function folio_deactivate(k: Kernel, pfn: number): void {
  const v = lruvec(k);
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  lock(k, v);
  const lru = w[v.which + pfn] - 1;
  if (lru >= 0 && is_active_lru(lru)) {
    del_locked(k, v, pfn);
    Atomics.and(w, p + P_FLAGS, ~(PG_active | PG_referenced));
    add_locked(k, v, pfn, lru & ~LRU_ACTIVE);
    Atomics.add(w, v.base + L_STAT + STAT_PGDEACTIVATE, 1);
  }
  unlock(k, v);
}

/**
 * folio_mark_accessed: inactive,unreferenced -> inactive,referenced; inactive,referenced ->
 * active,unreferenced; active,unreferenced -> active,referenced.
 */
export function folio_mark_accessed(k: Kernel, pfn: number): void {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  const f = Atomics.load(w, p + P_FLAGS);
  if ((f & PG_referenced) === 0) Atomics.or(w, p + P_FLAGS, PG_referenced);
  else if ((f & PG_active) === 0 && folio_on_lru(k, pfn)) folio_activate(k, pfn);
}

// ---- counters ------------------------------------------------------------------------------------

/** counter slots of the region (vmstat names them) */
export const STAT_PGACTIVATE = 0;
export const STAT_PGDEACTIVATE = 1;

/** word offset of counter `i` */
export function lru_stat_at(k: Kernel, i: number): number {
  return lruvec(k).base + L_STAT + i;
}

/** word offset of kswapd word `i` */
export function lru_kswapd_at(k: Kernel, i: number): number {
  return lruvec(k).base + L_KSWAPD + i;
}

/** Pages on list `lru`. */
export function lru_count(k: Kernel, lru: number): number {
  return Atomics.load(k.arena.i32, head(lruvec(k), lru) + H_COUNT);
}

export interface LruStats {
  nr_inactive_anon: number;
  nr_active_anon: number;
  nr_inactive_file: number;
  nr_active_file: number;
  /** isolated from the lists right now (reclaim, migration, a pageout): NR_ISOLATED_* */
  nr_isolated: number;
}

export function lruStats(k: Kernel): LruStats {
  return {
    nr_inactive_anon: lru_count(k, LRU_INACTIVE_ANON),
    nr_active_anon: lru_count(k, LRU_ACTIVE_ANON),
    nr_inactive_file: lru_count(k, LRU_INACTIVE_FILE),
    nr_active_file: lru_count(k, LRU_ACTIVE_FILE),
    nr_isolated: Atomics.load(k.arena.i32, lruvec(k).base + L_ISOLATED),
  };
}

/** The pfns on list `lru`, tail (oldest) last; for tests and reports. */
export function lru_pfns(k: Kernel, lru: number): number[] {
  const v = lruvec(k);
  const w = k.arena.i32;
  const out: number[] = [];
  lock(k, v);
  for (let pfn = w[head(v, lru) + H_FIRST]; pfn > 0; pfn = w[k.zone.page(pfn) + P_NEXT]) out.push(pfn);
  unlock(k, v);
  return out;
}
