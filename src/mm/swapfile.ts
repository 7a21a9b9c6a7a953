// The swap device (mm/swapfile.c): one swap area of `swap.slots` page-sized slots in the arena.
// Each slot has a swap_map word (the number of swap PTEs naming it, plus SWAP_HAS_CACHE while
// a page for it sits in the swap cache), the swap cache's pfn for it, and one page of contents.
// Offset 0 is never handed out (the kernel's header page), so 0 means "no slot" in
// page->private. One raw lock (si->lock) guards the maps, the free list and the cache words;
// it nests inside the PTE lock and never the other way round.
//
// Ours: slots also remember whether swap_writepage ever wrote them (the data-integrity check
// compares a clean page with its copy) and which (mm, addr) the page had when it got its slot,
// for reports. No clusters, no continuation pages: a count is a whole word.

import type { Arena, ArenaPlan } from '../shm/arena.js';
import { arch_spin_lock, arch_spin_unlock } from '../shm/rawlock.js';
import type { Kernel, KernelConfig } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { defaultMemConfig } from './page_alloc.js';
import { PTE_PFN_MAX, SWP_SWAP, is_swap_entry, swp_entry_to_pte, swp_offset } from './pgtable.js';

export interface SwapConfig {
  /** page-sized slots of the one swap area; 0 = no swap */
  slots: number;
}

declare module '../sched/kernel.js' {
  interface KernelConfig {
    /** the swap area; absent = no swap */
    swap?: SwapConfig;
  }
  interface Kernel {
    readonly swap: SwapInfo;
  }
}

/** swap_map: a page for this slot is in the swap cache */
export const SWAP_HAS_CACHE = 1 << 30;
/** swap_map: the swap PTEs naming this slot */
export const SWAP_COUNT_MASK = SWAP_HAS_CACHE - 1;
/** slot flags: swap_writepage wrote the slot's contents (ours) */
export const SWP_WRITTEN = 1 << 0;

// header words
const SI_LOCK = 0;
const SI_MAX = 1; // slots + 1 (offset 0 is reserved)
const SI_FREE_HEAD = 2;
const SI_NR_FREE = 3;
const SI_PSWPIN = 4;
const SI_PSWPOUT = 5;
const SI_ALLOC_FAIL = 6;
const SI_LOST = 7; // data-integrity violations found
const SI_CACHE_PAGES = 8;
const SI_MAJFAULT = 9;
const HEADER = 16;

// per-slot words; addr is a f64 at an even offset (the region and the record size are even)
const S_MAP = 0;
const S_CACHE = 1;
const S_NEXT = 2;
const S_FLAGS = 3;
const S_MM = 4;
const S_ADDR = 6;
export const SWAP_SLOT_WORDS = 8;

/** A view of the swap area: word offsets into the arena. */
export class SwapInfo {
  private readonly w: Int32Array;
  readonly hdr: number;
  /** word offset of slot 0's record */
  readonly slots: number;
  /** word offset of slot 1's contents; slot s's words start at data + (s - 1) * pageWords */
  readonly data: number;
  readonly pageWords: number;
  /** usable slots (offsets 1..nrSlots) */
  readonly nrSlots: number;

  constructor(arena: Arena, c: KernelConfig) {
    this.w = arena.i32;
    this.hdr = arena.region('swap');
    this.slots = this.hdr + HEADER;
    this.data = arena.region('swapdata');
    this.pageWords = (c.mem ?? defaultMemConfig).pageSize >> 2;
    this.nrSlots = swapSlots(c);
  }

  static plan(plan: ArenaPlan, c: KernelConfig): void {
    const n = swapSlots(c);
    plan.region('swap', HEADER + (n + 1) * SWAP_SLOT_WORDS);
    plan.region('swapdata', (n * (c.mem ?? defaultMemConfig).pageSize) >> 2);
  }

  /** Every slot free. */
  static init(arena: Arena, c: KernelConfig): void {
    const n = swapSlots(c);
    const w = arena.i32;
    const h = arena.region('swap');
    w[h + SI_MAX] = n + 1;
    for (let s = 1; s <= n; s++) w[h + HEADER + s * SWAP_SLOT_WORDS + S_NEXT] = s < n ? s + 1 : 0;
    w[h + SI_FREE_HEAD] = n > 0 ? 1 : 0;
    w[h + SI_NR_FREE] = n;
  }

  /** word offset of slot s's record */
  slot(s: number): number {
    return this.slots + s * SWAP_SLOT_WORDS;
  }

  /** word offset of slot s's contents */
  slotData(s: number): number {
    return this.data + (s - 1) * this.pageWords;
  }

  lock(): void {
    arch_spin_lock(this.w, this.hdr + SI_LOCK);
  }

  unlock(): void {
    arch_spin_unlock(this.w, this.hdr + SI_LOCK);
  }

  valid(s: number): boolean {
    return s >= 1 && s <= this.nrSlots;
  }

  get nrFree(): number {
    return Atomics.load(this.w, this.hdr + SI_NR_FREE);
  }

  count(stat: 'pswpin' | 'pswpout' | 'allocFail' | 'lost' | 'majfault', by = 1): void {
    const at = stat === 'pswpin' ? SI_PSWPIN : stat === 'pswpout' ? SI_PSWPOUT : stat === 'allocFail' ? SI_ALLOC_FAIL : stat === 'lost' ? SI_LOST : SI_MAJFAULT;
    Atomics.add(this.w, this.hdr + at, by);
  }

  /** the swap cache's page count moves (under the lock) */
  cachePages(by: number): void {
    this.w[this.hdr + SI_CACHE_PAGES] += by;
  }

  stat(at: number): number {
    return Atomics.load(this.w, this.hdr + at);
  }
}

function swapSlots(c: KernelConfig): number {
  const n = c.swap?.slots ?? 0;
  if (!Number.isInteger(n) || n < 0 || n > PTE_PFN_MAX) throw new RangeError(`kernel config: swap.slots must be a whole number in [0, ${PTE_PFN_MAX}], got ${String(n)}`);
  return n;
}

/** The swap PTE for slot `offset` (swp_entry(type 0, offset) as a PTE). */
export function swp_entry(offset: number): number {
  return swp_entry_to_pte(SWP_SWAP, offset);
}

/** The slot a swap PTE names, or 0 if it is no valid entry of our area (with a splat). */
export function swap_entry_slot(k: Kernel, entry: number, who: string): number {
  const s = is_swap_entry(entry) ? swp_offset(entry) : 0;
  if (!k.swap.valid(s)) {
    splat(k, 'bug', `BUG: ${who}: Bad swap file entry 0x${(entry >>> 0).toString(16)}`);
    return 0;
  }
  return s;
}

// ---- allocation and counts (si->lock) ---------------------------------------------------------

/**
 * get_swap_page: take a free slot for a page about to enter the swap cache; its map starts
 * at SWAP_HAS_CACHE. 0 when the area is full or there is none. Remembers (mm, addr) for reports.
 */
export function get_swap_page(k: Kernel, mm: number, addr: number): number {
  const si = k.swap;
  const w = k.arena.i32;
  si.lock();
  const s = w[si.hdr + SI_FREE_HEAD];
  if (s !== 0) {
    const b = si.slot(s);
    w[si.hdr + SI_FREE_HEAD] = w[b + S_NEXT];
    w[si.hdr + SI_NR_FREE]--;
    w[b + S_NEXT] = 0;
    w[b + S_MAP] = SWAP_HAS_CACHE;
    w[b + S_FLAGS] = 0;
    w[b + S_MM] = mm;
    k.arena.f64[(b + S_ADDR) >> 1] = addr;
  }
  si.unlock();
  if (s === 0) si.count('allocFail');
  return s;
}

/** Put slot s back on the free list; si->lock held, its map already 0. */
function swap_slot_free_locked(k: Kernel, s: number): void {
  const si = k.swap;
  const w = k.arena.i32;
  const b = si.slot(s);
  w[b + S_CACHE] = 0;
  w[b + S_FLAGS] = 0;
  w[b + S_MM] = 0;
  w[b + S_NEXT] = w[si.hdr + SI_FREE_HEAD];
  w[si.hdr + SI_FREE_HEAD] = s;
  w[si.hdr + SI_NR_FREE]++;
}

/** Drop `what` (1 for a PTE's count, SWAP_HAS_CACHE) from slot s's map; si->lock held. New map. */
export function swap_entry_put_locked(k: Kernel, s: number, what: number): number {
  const w = k.arena.i32;
  const at = k.swap.slot(s) + S_MAP;
  const map = w[at];
  const ok = what === SWAP_HAS_CACHE ? (map & SWAP_HAS_CACHE) !== 0 : (map & SWAP_COUNT_MASK) !== 0;
  if (!ok) {
    splat(k, 'bug', `BUG: swap_free: slot ${s} has no ${what === SWAP_HAS_CACHE ? 'swap cache' : 'swap PTE'} reference to drop (map 0x${map.toString(16)})`);
    return map;
  }
  const now = map - what;
  w[at] = now;
  if (now === 0) swap_slot_free_locked(k, s);
  return now;
}

/**
 * swap_duplicate: one more swap PTE names this entry (fork copies it, try_to_unmap_one
 * installs it). False for an entry whose slot is free (-ENOENT in the kernel).
 */
export function swap_duplicate(k: Kernel, entry: number): boolean {
  const s = swap_entry_slot(k, entry, 'swap_duplicate');
  if (s === 0) return false;
  const si = k.swap;
  const w = k.arena.i32;
  si.lock();
  const at = si.slot(s) + S_MAP;
  const ok = w[at] !== 0;
  if (ok) w[at]++;
  si.unlock();
  if (!ok) splat(k, 'bug', `BUG: swap_duplicate: slot ${s} is free`);
  return ok;
}

/** swap_free: a swap PTE naming this entry went away (do_swap_page mapped the page). */
export function swap_free(k: Kernel, entry: number): void {
  const s = swap_entry_slot(k, entry, 'swap_free');
  if (s === 0) return;
  k.swap.lock();
  swap_entry_put_locked(k, s, 1);
  k.swap.unlock();
}

/** __swap_count: the swap PTEs naming slot s. */
export function swap_count(k: Kernel, s: number): number {
  return Atomics.load(k.arena.i32, k.swap.slot(s) + S_MAP) & SWAP_COUNT_MASK;
}

/** the whole swap_map word of slot s (tests, reports) */
export function swap_map(k: Kernel, s: number): number {
  return Atomics.load(k.arena.i32, k.swap.slot(s) + S_MAP);
}

/**
 * swapcache_prepare, si->lock held: mark slot s as getting a swap-cache page. The map it had
 * (the caller refuses a slot no PTE names, or one that has a cache page already).
 */
export function swapcache_prepare_locked(k: Kernel, s: number): number {
  const at = k.swap.slot(s) + S_MAP;
  const map = k.arena.i32[at];
  if ((map & SWAP_COUNT_MASK) !== 0 && (map & SWAP_HAS_CACHE) === 0) k.arena.i32[at] = map | SWAP_HAS_CACHE;
  return map;
}

/** vm_swap_full: more than half the area is in use. */
export function vm_swap_full(k: Kernel): boolean {
  const si = k.swap;
  return si.nrFree * 2 < si.nrSlots;
}

// ---- slot words for the swap cache (swap_state.ts) -----------------------------------------------

/** the swap cache's pfn for slot s, 0 if none; si->lock held or a racy look */
export function slot_cache(k: Kernel, s: number): number {
  return k.arena.i32[k.swap.slot(s) + S_CACHE];
}

export function set_slot_cache(k: Kernel, s: number, pfn: number): void {
  k.arena.i32[k.swap.slot(s) + S_CACHE] = pfn;
}

export function slot_flags(k: Kernel, s: number): number {
  return k.arena.i32[k.swap.slot(s) + S_FLAGS];
}

export function set_slot_flags(k: Kernel, s: number, f: number): void {
  k.arena.i32[k.swap.slot(s) + S_FLAGS] = f;
}

/** (mm, addr) the page had when it got slot s (reports) */
export function slot_owner(k: Kernel, s: number): { mm: number; addr: number } {
  const b = k.swap.slot(s);
  return { mm: k.arena.i32[b + S_MM], addr: k.arena.f64[(b + S_ADDR) >> 1] };
}

// ---- reports ---------------------------------------------------------------------------------------

export interface SwapStats {
  /** usable slots */
  slots: number;
  free: number;
  /** slots in use (by swap PTEs or the swap cache) */
  used: number;
  /** pages in the swap cache */
  swapCache: number;
  pswpin: number;
  pswpout: number;
  /** major faults: swap-ins that read a slot */
  majfault: number;
  /** folio_alloc_swap found the area full (or none) */
  allocFail: number;
  /** data-integrity violations (lost writes) found */
  lostWrites: number;
}

export function swapStats(k: Kernel): SwapStats {
  const si = k.swap;
  const free = si.nrFree;
  return {
    slots: si.nrSlots,
    free,
    used: si.nrSlots - free,
    swapCache: si.stat(SI_CACHE_PAGES),
    pswpin: si.stat(SI_PSWPIN),
    pswpout: si.stat(SI_PSWPOUT),
    majfault: si.stat(SI_MAJFAULT),
    allocFail: si.stat(SI_ALLOC_FAIL),
    lostWrites: si.stat(SI_LOST),
  };
}

/** What a leak check compares: slots in use and swap-cache pages. */
export function swapUsage(k: Kernel): { used: number; swapCache: number } {
  const s = swapStats(k);
  return { used: s.used, swapCache: s.swapCache };
}
