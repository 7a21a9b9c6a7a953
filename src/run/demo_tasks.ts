// Task bodies of `shadowmm demo`, written as a driver author writes driver paths. They are
// named exports so that both schedulers run the same code: `sim` imports this module on the
// main thread, `threads` in each task's worker. Locks travel as arena word offsets in args
// and are rebuilt here as handles over the same memory.

import type { TaskContext } from '../sched/scheduler.js';
import {
  Completion,
  Mutex,
  RwSem,
  complete_all,
  down_read,
  down_write,
  fs_reclaim_map,
  invalidate_start_map,
  lock_map_acquire,
  lock_map_release,
  mutex_lock,
  mutex_unlock,
  up_read,
  up_write,
  wait_for_completion,
} from '../sync/index.js';

// ---- (a) and (e): contention on a driver mutex and an mmap_lock-style rwsem ----------------

export interface ContendArgs {
  /** &drv->lock (struct mutex) */
  drv: number;
  /** &mm->mmap_lock (struct rw_semaphore) */
  mmap: number;
  /** a plain word only ever changed with &drv->lock held */
  counter: number;
  iters: number;
  /** a completion the last task to arrive completes, so that all start together even when
   *  their workers come up at different times; `arrived` counts arrivals up to `tasks` */
  start: number;
  arrived: number;
  tasks: number;
  /** munmap-style (mmap_lock for write) instead of fault-style (for read) */
  writer: boolean;
}

/**
 * A fault path (mmap_lock for read) or an munmap path (for write) that updates driver state
 * under the driver lock, always in the order mmap_lock -> &drv->lock. The counter update is
 * a read, a preemption point and a write: it only adds up if the mutex excludes.
 */
export async function contend({ k, args }: TaskContext<ContendArgs>): Promise<void> {
  const drv = new Mutex(k, args.drv);
  const mmap = new RwSem(k, args.mmap);
  const w = k.arena.i32;
  const start = new Completion(k, args.start);
  if (Atomics.add(w, args.arrived, 1) + 1 === args.tasks) complete_all(start);
  else await wait_for_completion(start);
  for (let i = 0; i < args.iters; i++) {
    if (args.writer) await down_write(mmap);
    else await down_read(mmap);
    await mutex_lock(drv);
    const v = w[args.counter];
    await k.sched.point();
    w[args.counter] = v + 1;
    mutex_unlock(drv);
    if (args.writer) up_write(mmap);
    else up_read(mmap);
  }
}

// ---- (b): an inversion that does not deadlock in this run -------------------------------------

export interface PairArgs {
  /** &svm->lock */
  outer: number;
  /** &svm->notifier_lock */
  inner: number;
  /** virtual ns to sleep first: the two paths never overlap in this run */
  delayNs: number;
}

/** GPU fault path: &svm->lock, then &svm->notifier_lock to commit the mapping (the documented order). */
export async function svmFault({ k, args }: TaskContext<PairArgs>): Promise<void> {
  const outer = new Mutex(k, args.outer);
  const inner = new Mutex(k, args.inner);
  await mutex_lock(outer);
  await mutex_lock(inner);
  mutex_unlock(inner);
  mutex_unlock(outer);
}

/** Eviction path with the bug: takes the two the other way round, long after the fault path. */
export async function svmEvict({ k, args }: TaskContext<PairArgs>): Promise<void> {
  const outer = new Mutex(k, args.outer);
  const inner = new Mutex(k, args.inner);
  await k.sched.sleep(args.delayNs);
  await mutex_lock(inner);
  await mutex_lock(outer);
  mutex_unlock(outer);
  mutex_unlock(inner);
}

// ---- (c): a driver lock held across a GFP_KERNEL allocation ---------------------------------

export interface ReclaimArgs {
  /** &drv->lock, which the driver's invalidate callback also takes */
  drv: number;
  delayNs: number;
}

/**
 * An ioctl that allocates with GFP_KERNEL while holding &drv->lock. The allocation may enter
 * direct reclaim, and reclaim may unmap pages and so start mmu notifier invalidations: what
 * the kernel's might_alloc() and mmu notifier priming tell lockdep.
 */
export async function allocUnderDriverLock({ k, args }: TaskContext<ReclaimArgs>): Promise<void> {
  const drv = new Mutex(k, args.drv);
  await mutex_lock(drv);
  lock_map_acquire(fs_reclaim_map(k)); // fs_reclaim_acquire(GFP_KERNEL)
  lock_map_acquire(invalidate_start_map(k)); // reclaim -> mmu_notifier_invalidate_range_start
  lock_map_release(invalidate_start_map(k));
  lock_map_release(fs_reclaim_map(k)); // fs_reclaim_release(GFP_KERNEL)
  mutex_unlock(drv);
}

/** The driver's invalidate_range_start callback, run inside the invalidate-start map as the notifier core runs it. */
export async function invalidateRangeStart({ k, args }: TaskContext<ReclaimArgs>): Promise<void> {
  const drv = new Mutex(k, args.drv);
  await k.sched.sleep(args.delayNs);
  lock_map_acquire(invalidate_start_map(k));
  await mutex_lock(drv);
  mutex_unlock(drv);
  lock_map_release(invalidate_start_map(k));
}

// ---- (d): a real ABBA deadlock ------------------------------------------------------------------

export interface AbbaArgs {
  first: number;
  second: number;
  /** held across a wait for the hardware, so the other path takes its first lock meanwhile */
  holdNs: number;
}

/** Takes `first`, waits for the hardware with it held, then takes `second`. */
export async function lockPairSlowly({ k, args }: TaskContext<AbbaArgs>): Promise<void> {
  const first = new Mutex(k, args.first);
  const second = new Mutex(k, args.second);
  await mutex_lock(first);
  await k.sched.sleep(args.holdNs);
  await mutex_lock(second);
  mutex_unlock(second);
  mutex_unlock(first);
}
