// Reclaim's counters (mm/vmstat.c's vm_event_item for reclaim, /proc/vmstat) and the kswapd
// words, in the 'lru' region (lru.ts) so every thread counts into the same place.

import type { Kernel } from '../sched/kernel.js';
import { STAT_PGACTIVATE, STAT_PGDEACTIVATE, lruStats, lru_kswapd_at, lru_stat_at, type LruStats } from './lru.js';

// counters after lru.ts's own (STAT_PGACTIVATE, STAT_PGDEACTIVATE)
export const PGSCAN = 2; // + 0 kswapd, + 1 direct
export const PGSTEAL = 4; // + 0 kswapd, + 1 direct
export const PGREFILL = 6;
export const ALLOCSTALL = 7;
export const PAGEOUTRUN = 8;
export const KSWAPD_WAKE = 9;
export const PINNED_KEPT = 10;
export const UNMAP_FAIL = 11;
export const PAGEOUT = 12;
export { STAT_PGACTIVATE as PGACTIVATE, STAT_PGDEACTIVATE as PGDEACTIVATE };

// kswapd words (lru_kswapd_at)
export const K_SEQ = 0; // kswapd_wait: bumped by every wakeup and by kswapd_stop
export const K_SLEEPING = 1;
export const K_STOP = 2;
export const K_FAILURES = 3; // pgdat->kswapd_failures
export const K_TASK = 4; // the kswapd task's id + 1, 0 when none runs

/** count_vm_events */
export function count_vm_events(k: Kernel, item: number, by = 1): void {
  Atomics.add(k.arena.i32, lru_stat_at(k, item), by);
}

export interface VmStat extends LruStats {
  pgscan_kswapd: number;
  pgscan_direct: number;
  pgsteal_kswapd: number;
  pgsteal_direct: number;
  pgrefill: number;
  pgactivate: number;
  pgdeactivate: number;
  /** direct reclaims entered (try_to_free_pages) */
  allocstall: number;
  /** kswapd balance passes */
  pageoutrun: number;
  /** kswapd wakeups by wakeup_kswapd (ours) */
  kswapd_wakeups: number;
  kswapd_failures: number;
  /** kswapd's task id while it runs, else 0 */
  kswapd_task: number;
  /** 1 while kswapd sleeps waiting for a wakeup */
  kswapd_sleeping: number;
  /** pages reclaim kept because they may be DMA-pinned (ours) */
  pinned_kept: number;
  /** pages still mapped after try_to_unmap (nr_unmap_fail) */
  unmap_fail: number;
  /** pages written out by reclaim (pageout) */
  pageout: number;
}

/** vmstat: reclaim's counters and the LRU sizes. */
export function vmstat(k: Kernel): VmStat {
  const w = k.arena.i32;
  const s = (i: number): number => Atomics.load(w, lru_stat_at(k, i));
  return {
    ...lruStats(k),
    pgscan_kswapd: s(PGSCAN),
    pgscan_direct: s(PGSCAN + 1),
    pgsteal_kswapd: s(PGSTEAL),
    pgsteal_direct: s(PGSTEAL + 1),
    pgrefill: s(PGREFILL),
    pgactivate: s(STAT_PGACTIVATE),
    pgdeactivate: s(STAT_PGDEACTIVATE),
    allocstall: s(ALLOCSTALL),
    pageoutrun: s(PAGEOUTRUN),
    kswapd_wakeups: s(KSWAPD_WAKE),
    kswapd_failures: Atomics.load(w, lru_kswapd_at(k, K_FAILURES)),
    kswapd_task: Math.max(0, Atomics.load(w, lru_kswapd_at(k, K_TASK)) - 1),
    kswapd_sleeping: Atomics.load(w, lru_kswapd_at(k, K_SLEEPING)),
    pinned_kept: s(PINNED_KEPT),
    unmap_fail: s(UNMAP_FAIL),
    pageout: s(PAGEOUT),
  };
}
