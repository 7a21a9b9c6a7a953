// kswapd (mm/vmscan.c kswapd, kswapd_try_to_sleep, balance_pgdat, wakeup_kswapd): the zone's
// reclaim kthread. An allocation that leaves fewer free frames than the low watermark wakes
// it; it reclaims until the high watermark and sleeps again. A pass that frees nothing counts
// a failure; after MAX_RECLAIM_RETRIES of them kswapd is "hopeless" and sleeps without being
// woken until some reclaim (direct or memcg) makes progress again. It runs with PF_MEMALLOC |
// PF_KSWAPD and holds fs_reclaim (lockdep) across each pass, as the kernel's does.
// Spawn it as kind 'kthread', module vmscanModule() (vmscan.ts re-exports it), fn 'kswapd'.

import type { Kernel } from '../sched/kernel.js';
import type { TaskContext } from '../sched/scheduler.js';
import { PF_MEMALLOC, TaskL } from '../sched/task.js';
import { fs_reclaim_map, lock_map_acquire, lock_map_release } from '../sync/lockdep_api.js';
import { GFP_KERNEL } from './gfp.js';
import { lru_kswapd_at } from './lru.js';
import { DEF_PRIORITY, MAX_RECLAIM_RETRIES, PF_KSWAPD, SWAP_CLUSTER_MAX, cond_resched, scanControl, shrink_node } from './vmscan.js';
import { KSWAPD_WAKE, K_FAILURES, K_SEQ, K_SLEEPING, K_STOP, K_TASK, PAGEOUTRUN, count_vm_events } from './vmstat.js';

const kw = (k: Kernel, i: number): number => lru_kswapd_at(k, i);
const balanced = (k: Kernel): boolean => k.zone.nrFree >= k.zone.high;

/**
 * wakeup_kswapd: an allocation went below the low watermark. Wakes a sleeping kswapd, unless
 * it gave up (direct reclaim's turn until some reclaim makes progress again).
 */
export function wakeup_kswapd(k: Kernel): void {
  const w = k.arena.i32;
  if (Atomics.load(w, kw(k, K_SLEEPING)) === 0) return; // not started, or already running
  if (Atomics.load(w, kw(k, K_FAILURES)) >= MAX_RECLAIM_RETRIES) return;
  if (balanced(k)) return;
  if (Atomics.compareExchange(w, kw(k, K_SLEEPING), 1, 0) !== 1) return;
  count_vm_events(k, KSWAPD_WAKE);
  Atomics.add(w, kw(k, K_SEQ), 1);
  k.sched.wake(kw(k, K_SEQ), Infinity);
}

/**
 * balance_pgdat: reclaim until the high watermark, lowering the priority only while nothing is
 * freed. Each pass aims at the whole high watermark (kswapd_shrink_node), so kswapd may end a
 * little above it.
 */
async function balance_pgdat(k: Kernel): Promise<number> {
  count_vm_events(k, PAGEOUTRUN);
  const map = fs_reclaim_map(k);
  lock_map_acquire(map); // __fs_reclaim_acquire: kswapd is always in reclaim
  let total = 0;
  try {
    const sc = scanControl(GFP_KERNEL, SWAP_CLUSTER_MAX, 0, true);
    for (sc.priority = DEF_PRIORITY; sc.priority >= 1 && !balanced(k); ) {
      sc.nr_to_reclaim = Math.max(SWAP_CLUSTER_MAX, k.zone.high);
      sc.nr_reclaimed = 0;
      sc.nr_scanned = 0;
      await shrink_node(k, sc);
      total += sc.nr_reclaimed;
      if (sc.nr_reclaimed === 0) sc.priority--;
    }
  } finally {
    lock_map_release(map);
  }
  if (total === 0) Atomics.add(k.arena.i32, kw(k, K_FAILURES), 1);
  return total;
}

/** The kswapd kthread: sleeps until woken below the low watermark, then reclaims to the high one. Runs until kswapd_stop. */
export async function kswapd(ctx: TaskContext<unknown>): Promise<void> {
  const k = ctx.k;
  const w = k.arena.i32;
  const t = ctx.task;
  Atomics.or(w, t.base + TaskL.flags, PF_MEMALLOC | PF_KSWAPD);
  Atomics.store(w, kw(k, K_TASK), t.id + 1);
  const busy = (): boolean => !balanced(k) && Atomics.load(w, kw(k, K_FAILURES)) < MAX_RECLAIM_RETRIES;
  try {
    while (Atomics.load(w, kw(k, K_STOP)) === 0) {
      if (busy()) {
        await balance_pgdat(k);
        await cond_resched(k);
        continue;
      }
      // kswapd_try_to_sleep: publish the sleep, look again, then wait for a wakeup
      const seq = Atomics.load(w, kw(k, K_SEQ));
      Atomics.store(w, kw(k, K_SLEEPING), 1);
      if (Atomics.load(w, kw(k, K_STOP)) === 0 && !busy()) {
        const r = k.sched.wait(kw(k, K_SEQ), seq);
        if (typeof r !== 'number') await r;
      }
      Atomics.store(w, kw(k, K_SLEEPING), 0);
    }
  } finally {
    Atomics.store(w, kw(k, K_SLEEPING), 0);
    Atomics.store(w, kw(k, K_STOP), 0);
    Atomics.store(w, kw(k, K_TASK), 0);
    Atomics.and(w, t.base + TaskL.flags, ~(PF_MEMALLOC | PF_KSWAPD));
  }
}

/** kthread_stop for kswapd: it returns at its next look at the stop word (a stop before it starts counts). */
export function kswapd_stop(k: Kernel): void {
  const w = k.arena.i32;
  Atomics.store(w, kw(k, K_STOP), 1);
  Atomics.add(w, kw(k, K_SEQ), 1);
  k.sched.wake(kw(k, K_SEQ), Infinity);
}
