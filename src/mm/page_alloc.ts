// The page allocator: one zone of frames with a free list and min/low/high watermarks.
// Every allocation that may reclaim primes lockdep the way mm/page_alloc.c does
// (might_alloc -> fs_reclaim_acquire/release, which also touches the
// mmu_notifier_invalidate_range_start map, reference §6.3), so a driver lock held across a
// GFP_KERNEL allocation is reported from the first run, without reclaim ever happening.
// Reclaim itself arrives with the memory-pressure issue through `zone.reclaim`.

import type { Arena, ArenaPlan } from '../shm/arena.js';
import { arch_spin_lock, arch_spin_unlock } from '../shm/rawlock.js';
import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { PF_MEMALLOC, TaskL } from '../sched/task.js';
import { might_sleep } from '../sync/context.js';
import { splat } from '../sched/splat.js';
import { fs_reclaim_map, invalidate_start_map, lock_map_acquire, lock_map_release } from '../sync/lockdep_api.js';
import { __GFP_DIRECT_RECLAIM, __GFP_FS, __GFP_HIGH, __GFP_KSWAPD_RECLAIM, __GFP_ZERO, gfpflags_allow_blocking } from './gfp.js';
import { PG_free, PG_reserved, PageL, ZERO_PFN } from './page.js';

export interface MemConfig {
  /** frames, including the zero page */
  pages: number;
  /** bytes per page: a multiple of 4 */
  pageSize: number;
  /** watermarks in frames; default min = pages/64, low = 5/4 min, high = 3/2 min */
  min?: number;
  low?: number;
  high?: number;
}

export const defaultMemConfig: MemConfig = { pages: 4096, pageSize: 4096 };

declare module '../sched/kernel.js' {
  interface KernelConfig {
    mem: MemConfig;
  }
  interface Kernel {
    readonly zone: Zone;
  }
}

const LOCK = 0;
const HEAD = 1;
const NR_FREE = 2;
const NR_PAGES = 3;
const MIN = 4;
const LOW = 5;
const HIGH = 6;
const ALLOC_FAILS = 7;
const HEADER = 8;

/** Hooks the memory-pressure layer fills: direct reclaim and waking kswapd. */
export interface ReclaimHooks {
  /** try to free at least `nr` frames in the caller's context; returns frames freed */
  direct(k: Kernel, gfp: number, nr: number): Promise<number>;
  wakeKswapd(k: Kernel): void;
}

export class Zone {
  private readonly w: Int32Array;
  private readonly hdr: number;
  /** word offset of struct page 0 */
  readonly pages: number;
  /** word offset of frame 0's contents; frame p's words start at data + p * pageWords */
  readonly data: number;
  readonly pageSize: number;
  readonly pageWords: number;
  readonly nrPages: number;
  reclaim: ReclaimHooks | null = null;

  constructor(arena: Arena, cfg: MemConfig) {
    this.w = arena.i32;
    this.hdr = arena.region('zone');
    this.pages = this.hdr + HEADER;
    this.nrPages = cfg.pages;
    this.pageSize = cfg.pageSize;
    this.pageWords = cfg.pageSize >> 2;
    this.data = arena.region('pagedata');
  }

  static plan(plan: ArenaPlan, cfg: MemConfig): void {
    if (!Number.isInteger(cfg.pages) || cfg.pages < 2) throw new RangeError(`mem.pages must be a whole number >= 2, got ${cfg.pages}`);
    if (!Number.isInteger(cfg.pageSize) || cfg.pageSize < 64 || cfg.pageSize % 4 !== 0) {
      throw new RangeError(`mem.pageSize must be a multiple of 4 and at least 64, got ${cfg.pageSize}`);
    }
    plan.region('zone', HEADER + cfg.pages * PageL.$size);
    plan.region('pagedata', (cfg.pages * cfg.pageSize) >> 2);
  }

  static init(arena: Arena, cfg: MemConfig): void {
    const w = arena.i32;
    const h = arena.region('zone');
    const pages = h + HEADER;
    const n = cfg.pages;
    const min = cfg.min ?? Math.max(1, n >> 6);
    w[h + NR_PAGES] = n;
    w[h + MIN] = min;
    w[h + LOW] = cfg.low ?? Math.ceil(min * 1.25);
    w[h + HIGH] = cfg.high ?? Math.ceil(min * 1.5);
    // the zero page is reserved and never freed
    w[pages + PageL.flags] = PG_reserved;
    w[pages + PageL.refcount] = 1;
    for (let p = 1; p < n; p++) {
      const b = pages + p * PageL.$size;
      w[b + PageL.flags] = PG_free;
      w[b + PageL.next] = p + 1 < n ? p + 1 : 0;
    }
    w[h + HEAD] = n > 1 ? 1 : 0;
    w[h + NR_FREE] = n - 1;
  }

  /** word offset of pfn's struct page */
  page(pfn: number): number {
    return this.pages + pfn * PageL.$size;
  }

  /** word offset of pfn's contents */
  pageData(pfn: number): number {
    return this.data + pfn * this.pageWords;
  }

  get nrFree(): number {
    return Atomics.load(this.w, this.hdr + NR_FREE);
  }
  get min(): number {
    return this.w[this.hdr + MIN];
  }
  get low(): number {
    return this.w[this.hdr + LOW];
  }
  get high(): number {
    return this.w[this.hdr + HIGH];
  }
  get allocFailures(): number {
    return this.w[this.hdr + ALLOC_FAILS];
  }

  /** Take a frame if the watermark allows; 0 if not. Never sleeps. */
  rmqueue(gfp: number): number {
    const w = this.w;
    const h = this.hdr;
    arch_spin_lock(w, h + LOCK);
    const free = w[h + NR_FREE];
    const reserve = gfp & __GFP_HIGH ? 0 : w[h + MIN];
    let pfn = 0;
    if (free > reserve) {
      pfn = w[h + HEAD];
      const b = this.page(pfn);
      w[h + HEAD] = w[b + PageL.next];
      w[h + NR_FREE] = free - 1;
      w[b + PageL.next] = 0;
      w[b + PageL.flags] = 0;
      w[b + PageL.refcount] = 1;
    }
    arch_spin_unlock(w, h + LOCK);
    return pfn;
  }

  freeOne(pfn: number): void {
    const w = this.w;
    const b = this.page(pfn);
    if (pfn <= ZERO_PFN || pfn >= this.nrPages || w[b + PageL.flags] & (PG_free | PG_reserved)) {
      throw new RangeError(`free_pages: bad or already free pfn ${pfn}`);
    }
    w[b + PageL.flags] = PG_free;
    w[b + PageL.refcount] = 0;
    w[b + PageL.mapcount] = 0;
    w[b + PageL.pincount] = 0;
    w[b + PageL.memcg] = 0;
    w[b + PageL.private] = 0;
    w[b + PageL.mapping] = 0;
    w[b + PageL.owner] = 0;
    Atomics.add(w, b + PageL.gen, 1);
    arch_spin_lock(w, this.hdr + LOCK);
    w[b + PageL.next] = w[this.hdr + HEAD];
    w[this.hdr + HEAD] = pfn;
    w[this.hdr + NR_FREE]++;
    arch_spin_unlock(w, this.hdr + LOCK);
  }

  countFailure(): void {
    Atomics.add(this.w, this.hdr + ALLOC_FAILS, 1);
  }
}

/** Would an allocation with this gfp reclaim in the caller? (__need_reclaim) */
function need_reclaim(gfp: number): boolean {
  if ((gfp & __GFP_DIRECT_RECLAIM) === 0) return false;
  const t = current;
  return (t.k.arena.i32[t.base + TaskL.flags] & PF_MEMALLOC) === 0;
}

export function fs_reclaim_acquire(k: Kernel, gfp: number): void {
  if (!need_reclaim(gfp)) return;
  if (gfp & __GFP_FS) lock_map_acquire(fs_reclaim_map(k));
  // the allocator may reclaim, and reclaim invalidates secondary MMUs
  const inv = invalidate_start_map(k);
  lock_map_acquire(inv);
  lock_map_release(inv);
}

export function fs_reclaim_release(k: Kernel, gfp: number): void {
  if (!need_reclaim(gfp)) return;
  if (gfp & __GFP_FS) lock_map_release(fs_reclaim_map(k));
}

/** might_alloc: what every allocation with this gfp teaches lockdep and might_sleep. */
export function might_alloc(k: Kernel, gfp: number): void {
  fs_reclaim_acquire(k, gfp);
  fs_reclaim_release(k, gfp);
  if (gfpflags_allow_blocking(gfp)) might_sleep('might_alloc');
}

/**
 * alloc_page: one frame (refcount 1), or 0 (-ENOMEM). Returns a number when it did not
 * sleep, a promise when it went through direct reclaim.
 */
export function alloc_page(k: Kernel, gfp: number): number | Promise<number> {
  might_alloc(k, gfp);
  const z = k.zone;
  const pfn = z.rmqueue(gfp);
  if (pfn !== 0) {
    if (z.reclaim && gfp & __GFP_KSWAPD_RECLAIM && z.nrFree < z.low) z.reclaim.wakeKswapd(k);
    if (gfp & __GFP_ZERO) clearPage(k, pfn);
    return pfn;
  }
  if (z.reclaim && gfp & __GFP_KSWAPD_RECLAIM) z.reclaim.wakeKswapd(k);
  if (!gfpflags_allow_blocking(gfp) || !z.reclaim) {
    z.countFailure();
    return 0;
  }
  return allocSlow(k, gfp);
}

async function allocSlow(k: Kernel, gfp: number): Promise<number> {
  const z = k.zone;
  const reclaim = z.reclaim!;
  for (let tries = 0; tries < 16; tries++) {
    fs_reclaim_acquire(k, gfp);
    let freed: number;
    try {
      freed = await reclaim.direct(k, gfp, 32);
    } finally {
      fs_reclaim_release(k, gfp);
    }
    const pfn = z.rmqueue(gfp);
    if (pfn !== 0) {
      if (gfp & __GFP_ZERO) clearPage(k, pfn);
      return pfn;
    }
    if (freed === 0) break;
  }
  z.countFailure();
  return 0;
}

export function __free_page(k: Kernel, pfn: number): void {
  k.zone.freeOne(pfn);
}

export function clearPage(k: Kernel, pfn: number): void {
  const at = k.zone.pageData(pfn);
  k.arena.i32.fill(0, at, at + k.zone.pageWords);
}

export function copyPage(k: Kernel, dst: number, src: number): void {
  const z = k.zone;
  const d = z.pageData(dst);
  const s = z.pageData(src);
  k.arena.i32.copyWithin(d, s, s + z.pageWords);
}

/**
 * alloc_pages: the zone has no buddy lists, so only order 0 exists; a higher order is refused
 * with a warning (and 0, as a failed allocation) rather than handing out pages that are not
 * physically contiguous.
 */
export function alloc_pages(k: Kernel, gfp: number, order: number): number | Promise<number> {
  if (order !== 0) {
    splat(k, 'warn', `WARNING: alloc_pages: order ${order} requested, but this zone only has order-0 pages`);
    k.zone.countFailure();
    return 0;
  }
  return alloc_page(k, gfp);
}

export function __free_pages(k: Kernel, pfn: number, order: number): void {
  if (order !== 0) throw new RangeError(`__free_pages: order ${order}, but only order-0 pages are ever handed out`);
  __free_page(k, pfn);
}

export const free_pages = __free_pages;
