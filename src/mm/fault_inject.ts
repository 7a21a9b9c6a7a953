// Fault injection a scenario or a test task can call (issue 5): each is a plain function over
// the kernel's own paths, so what a driver meets is what the kernel would give it.
//   inject_alloc_failure       fail_page_alloc (fail_page_alloc.ts): the next allocations fail
//   inject_reclaim_range       MADV_PAGEOUT of a chosen range: CLEAR per mapping, swap-out
//   inject_oom                 the OOM killer's kill of a chosen process, under oom_lock; the
//                              oom_reaper then reaps it (non-blockable UNMAP per VMA)
//   inject_nonblock_invalidate a non-blockable invalidation of a chosen range, the end only if
//                              the start succeeded (as the OOM reaper does): 0 or -EAGAIN

import type { Kernel } from '../sched/kernel.js';
import { EAGAIN, EBUSY, EINVAL, EPERM } from '../shm/errno.js';
import {
  MMU_NOTIFY_UNMAP,
  MmuNotifierRange,
  mmu_notifier_invalidate_range_end,
  mmu_notifier_invalidate_range_start_nonblock,
  mmu_notifier_range_init,
  type MmuNotifierEvent,
} from '../notifier/index.js';
import { fail_page_alloc_set } from './fail_page_alloc.js';
import { do_madvise } from './madvise.js';
import { MADV_PAGEOUT } from './madvise_pageout.js';
import { OOM_SCORE_ADJ_MIN, oom_kill_process, oom_lock_trylock, oom_unlock } from './oom_kill.js';
import { PROC_RUNNING, ProcL } from './process.js';
import { MMF_OOM_SKIP, MmL, is_ulong } from './types.js';

export { fail_page_alloc_get, fail_page_alloc_injected, fail_page_alloc_set, should_fail_alloc_page, type FailPageAllocAttr } from './fail_page_alloc.js';

/** errno ESRCH (no such process) */
export const ESRCH = 3;

export interface AllocFailureOpts {
  /** failures to force; -1 = until inject_alloc_failure_stop */
  times: number;
  /** percent of candidate allocations that fail (default 100) */
  probability?: number;
  /** only every interval-th candidate may fail (default 1) */
  interval?: number;
  /** fail only allocations that may sleep (GFP_KERNEL, a CPU fault's GFP_HIGHUSER_MOVABLE), never GFP_ATOMIC/NOWAIT ones */
  gfpWaitOnly?: boolean;
  /** the kernel's ignore-gfp-wait: never fail allocations that may sleep (default false here) */
  ignoreGfpWait?: boolean;
  /** pages allocated normally before failures start (the kernel's `space`) */
  space?: number;
  /** 0 (default here) quiet; 1-2 a 'fault_inject' klog line per failure, as the kernel's verbose */
  verbose?: number;
  /** the random stream's seed when probability < 100 (default 1) */
  seed?: number;
}

/**
 * inject_alloc_failure: arm fail_page_alloc for order-0 pages (min-order 0). Every allocation
 * but __GFP_NOFAIL ones is a candidate unless filtered by gfpWaitOnly / ignoreGfpWait.
 */
export function inject_alloc_failure(k: Kernel, o: AllocFailureOpts): void {
  if (o.gfpWaitOnly === true && o.ignoreGfpWait === true) throw new RangeError('inject_alloc_failure: gfpWaitOnly and ignoreGfpWait together fail nothing');
  fail_page_alloc_set(k, {
    probability: o.probability ?? 100,
    interval: o.interval ?? 1,
    times: o.times,
    space: o.space ?? 0,
    verbose: o.verbose ?? 0,
    min_order: 0,
    ignore_gfp_wait: o.ignoreGfpWait ?? false,
    gfp_wait_only: o.gfpWaitOnly ?? false,
    seed: o.seed ?? 1,
  });
}

/** Disarm fail_page_alloc (probability 0). */
export function inject_alloc_failure_stop(k: Kernel): void {
  fail_page_alloc_set(k, { probability: 0 });
}

/**
 * inject_reclaim_range: reclaim the private anonymous pages of [start, end) of mm now, as
 * madvise(MADV_PAGEOUT) does. The caller holds a reference on mm and not its mmap_lock.
 * 0, -EINVAL (bad range, a locked/PFN/hugetlb VMA), -ENOMEM (part of the range is unmapped).
 */
export function inject_reclaim_range(_k: Kernel, mm: number, start: number, end: number): number | Promise<number> {
  if (!is_ulong(start) || !is_ulong(end) || end < start) return -EINVAL;
  return do_madvise(mm, start, end - start, MADV_PAGEOUT);
}

/**
 * inject_oom: the OOM killer picks `pid` (instead of the biggest) and kills it with the
 * kernel's path: under oom_lock (trylock, as __alloc_pages_may_oom takes it), SIGKILL to it and
 * to every process sharing its mm, then the oom_reaper is queued (the reaper kthread must run).
 * 0; -ESRCH when there is no such running process with an mm, or its mm already has
 * MMF_OOM_SKIP (the OOM killer ignores it); -EBUSY when it is already a victim on its way out;
 * -EPERM when its oom_score_adj is OOM_SCORE_ADJ_MIN (never chosen); -EAGAIN when another OOM
 * kill holds oom_lock.
 */
export function inject_oom(k: Kernel, pid: number): number {
  const pool = k.mmLayer.procs;
  const w = k.arena.i32;
  if (!Number.isInteger(pid) || pid <= 0 || pid >= pool.capacity || !pool.inUse(pid)) return -ESRCH;
  if (!oom_lock_trylock(k)) return -EAGAIN;
  try {
    const p = pool.at(pid);
    const mm = w[p + ProcL.mm];
    if (w[p + ProcL.state] !== PROC_RUNNING || mm === 0) return -ESRCH;
    if ((Atomics.load(w, mm + MmL.flags) & (1 << MMF_OOM_SKIP)) !== 0) return -ESRCH;
    if (w[p + ProcL.oom_mm] !== 0) return -EBUSY; // tsk_is_oom_victim: the killer would wait
    if (w[p + ProcL.oom_score_adj] === OOM_SCORE_ADJ_MIN) return -EPERM; // never chosen
    oom_kill_process(k, pid, 'Out of memory (fault injection)');
    return 0;
  } finally {
    oom_unlock(k);
  }
}

/**
 * inject_nonblock_invalidate: mmu_notifier_invalidate_range_start_nonblock over [start, end)
 * of mm (flags 0, owner NULL), then the end only if the start returned 0, as
 * __oom_reap_task_mm does per VMA. Nothing is unmapped: secondary MMUs drop their mappings and
 * refault. Any task may call it (it never sleeps). 0, -EAGAIN (a subscriber refused: no end
 * was called), -EINVAL (no mm, or a bad range).
 */
export function inject_nonblock_invalidate(k: Kernel, mm: number, start: number, end: number, event: MmuNotifierEvent = MMU_NOTIFY_UNMAP): number {
  const ps = k.mmLayer.pageSize;
  if (!(mm > 0) || !is_ulong(start) || !is_ulong(end) || start >= end || start % ps !== 0 || end % ps !== 0) return -EINVAL;
  const range = new MmuNotifierRange();
  mmu_notifier_range_init(range, event, 0, mm, start, end);
  const r = mmu_notifier_invalidate_range_start_nonblock(range);
  if (r !== 0) return r;
  if (mmu_notifier_invalidate_range_end(range) !== undefined) throw new Error('inject_nonblock_invalidate: a non-blockable range end slept');
  return 0;
}
