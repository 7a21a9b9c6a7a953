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
import { __GFP_DIRECT_RECLAIM, __GFP_FS, __GFP_HIGH, __GFP_KSWAPD_RECLAIM, __GFP_NORETRY, __GFP_RETRY_MAYFAIL, __GFP_ZERO, gfpflags_allow_blocking } from './gfp.js';
import { PG_free, PG_reserved, PageL, ZERO_PFN } from './page.js';
import { LruVec, folio_lru_release } from './lru.js';
import { should_fail_alloc_page } from './fail_page_alloc.js';

export interface MemConfig {
  /** frames, including the zero page */
  pages: number;
  /** bytes per page: a multiple of 4 */
  pageSize: number;
  /** watermarks in frames; default min = pages/64, low = 5/4 min, high = 3/2 min */
  min?: number;
  low?: number;
  high?: number;
  /**
   * Reclaim on (vmscan.ts): allocations below the watermarks direct-reclaim (GFP_KERNEL and
   * the like) and wake kswapd (a kthread the runner starts: vmscan.ts `kswapd`). Off (the
   * default): an allocation that finds no frame fails, as before reclaim existed.
   */
  reclaim?: boolean;
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
/** words kept for mm/fail_page_alloc.c's attributes (fail_page_alloc.ts) */
export const ZONE_FAIL_ATTR_WORDS = 24;
const FAIL_ATTR = 8;
const HEADER = FAIL_ATTR + ZONE_FAIL_ATTR_WORDS;

/** Hooks the memory-pressure layer fills: direct reclaim and waking kswapd. */
export interface ReclaimHooks {
  /** try to free at least `nr` frames in the caller's context; returns frames freed */
  direct(k: Kernel, gfp: number, nr: number): Promise<number>;
  wakeKswapd(k: Kernel): void;
}

/**
 * The hooks a zone with mem.reclaim uses: vmscan.ts fills them when it loads (in every thread
 * that imports it). Until then direct reclaim frees nothing and there is no kswapd to wake.
 */
export const reclaimHooks: ReclaimHooks = {
  direct: async () => 0,
  wakeKswapd: () => {},
};

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
    if (cfg.reclaim === true) this.reclaim = reclaimHooks;
  }

  static plan(plan: ArenaPlan, cfg: MemConfig): void {
    if (!Number.isInteger(cfg.pages) || cfg.pages < 2) throw new RangeError(`mem.pages must be a whole number >= 2, got ${cfg.pages}`);
    if (!Number.isInteger(cfg.pageSize) || cfg.pageSize < 64 || cfg.pageSize % 4 !== 0) {
      throw new RangeError(`mem.pageSize must be a multiple of 4 and at least 64, got ${cfg.pageSize}`);
    }
    plan.region('zone', HEADER + cfg.pages * PageL.$size);
    plan.region('pagedata', (cfg.pages * cfg.pageSize) >> 2);
    LruVec.plan(plan, cfg.pages); // the zone's LRU lists (lru.ts)
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
  /** word offset of fail_page_alloc's attributes (fail_page_alloc.ts) */
  get failAttr(): number {
    return this.hdr + FAIL_ATTR;
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
  if (should_fail_alloc_page(k, gfp, 0)) return 0; // prepare_alloc_pages: fault injection
  const z = k.zone;
  const pfn = z.rmqueue(gfp);
  if (pfn !== 0) {
    if (z.reclaim && gfp & __GFP_KSWAPD_RECLAIM && z.nrFree < z.low) z.reclaim.wakeKswapd(k);
    if (gfp & __GFP_ZERO) clearPage(k, pfn);
    return pfn;
  }
  if (z.reclaim && gfp & __GFP_KSWAPD_RECLAIM) z.reclaim.wakeKswapd(k);
  if (!gfpflags_allow_blocking(gfp)) {
    z.countFailure();
    return 0;
  }
  return allocSlow(k, gfp);
}

/**
 * The OOM killer's entry for the allocator (oom_kill.ts fills it when it loads):
 * __alloc_pages_may_oom after reclaim made no progress. True when retrying makes sense (a
 * victim was killed or is still on its way out); false when the allocation should fail.
 */
export const allocOomHooks: { may_oom: ((k: Kernel, gfp: number, order: number) => boolean) | null } = { may_oom: null };

/** a jiffy: what the slow path sleeps before retrying after the OOM killer ran */
const JIFFY_NS = 4e6;

/**
 * __alloc_pages_slowpath, order 0: direct reclaim while it makes progress (at most
 * MAX_RECLAIM_RETRIES rounds), then __alloc_pages_may_oom: the OOM killer picks a victim and
 * the allocation retries once a jiffy until the victim's memory is back, the caller is itself
 * killed, or nothing is left to kill. With `mem.reclaim` off only the OOM step runs.
 */
async function allocSlow(k: Kernel, gfp: number): Promise<number> {
  const z = k.zone;
  let rounds = 0;
  for (;;) {
    let freed = 0;
    if (z.reclaim !== null && rounds < 16) {
      rounds++;
      fs_reclaim_acquire(k, gfp);
      try {
        freed = await z.reclaim.direct(k, gfp, 32);
      } finally {
        fs_reclaim_release(k, gfp);
      }
    }
    const pfn = z.rmqueue(gfp);
    if (pfn !== 0) {
      if (gfp & __GFP_ZERO) clearPage(k, pfn);
      return pfn;
    }
    if (freed > 0) continue; // should_reclaim_retry: progress, try again
    // __GFP_NORETRY / __GFP_RETRY_MAYFAIL callers handle failure; GFP_NOFS/NOIO cannot OOM-kill
    if (gfp & (__GFP_NORETRY | __GFP_RETRY_MAYFAIL) || (gfp & __GFP_FS) === 0) break;
    if (allocOomHooks.may_oom === null || !allocOomHooks.may_oom(k, gfp, 0)) break;
    const s = k.sched.sleep(JIFFY_NS); // schedule_timeout_uninterruptible(1): let the victim run
    if (s !== undefined) await s;
  }
  z.countFailure();
  return 0;
}

/**
 * The memory controller's entry points (memcontrol.ts fills them when it loads, in every
 * thread that boots or attaches a kernel): charge a new frame to an mm's memcg, uncharge one.
 */
export const memcgHooks: {
  charge: ((k: Kernel, pfn: number, mm: number, gfp: number) => number | Promise<number>) | null;
  uncharge: ((k: Kernel, pfn: number) => void) | null;
} = { charge: null, uncharge: null };

export function __free_page(k: Kernel, pfn: number): void {
  folio_lru_release(k, pfn); // a page freed without put_page (a shmem object's teardown) leaves its list too
  // mem_cgroup_uncharge, as __folio_put does: every last reference ends here
  if (memcgHooks.uncharge !== null && k.arena.i32[k.zone.page(pfn) + PageL.memcg] !== 0) memcgHooks.uncharge(k, pfn);
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
