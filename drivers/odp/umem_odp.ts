// ib_umem_odp (drivers/infiniband/core/umem_odp.c, v6.16-era, the hmm_dma_map version): the
// ODP part of an MR. One interval notifier over the MR's pages (the device's embedded
// subscription), the umem_mutex (the device's notifier lock), and the pfn_list that
// hmm_range_fault fills in place, two words per page as hmm_pfns. HMM_PFN_DMA_MAPPED is the
// sticky bit hmm_dma_map_pfn sets; clearing the flags is what "unmapping" a page means here.
// The MTT the HCA reads is the device's shadow page table (mr.ts programs it).

import {
  DEV_STAT,
  DevL,
  EBUSY,
  EFAULT,
  EINVAL,
  ENOMEM,
  EOVERFLOW,
  HMM_PFN_ERROR,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HMM_RANGE_DEFAULT_TIMEOUT,
  HmmRange,
  current,
  defineStruct,
  device_fence_busy,
  device_fence_fail,
  device_fence_wait,
  device_lock,
  device_lock_obj,
  device_mm,
  device_notifier_seen,
  device_priv,
  device_stat_add,
  device_trylock,
  device_unlock,
  hmm_range_fault,
  lockdep_assert_held,
  mmap_read_lock,
  mmap_read_unlock,
  mmget_not_zero,
  mmput,
  mmu_interval_notifier_insert,
  mmu_interval_read_begin,
  mmu_interval_read_retry,
  mmu_interval_set_seq,
  mmu_notifier_priv,
  mmu_notifier_range_blockable,
  set_page_dirty,
  shadow_pte_zap,
  splat,
  type MmuNotifierRange,
} from '../../src/device/index.js';
// not in the device API (yet): the sticky DMA bit and the flag mask, lockdep priming
import { HMM_PFN_DMA_MAPPED, HMM_PFN_FLAGS } from '../../src/hmm/pfn.js';
import { defineIntervalNotifierOps } from '../../src/notifier/ops.js';
import { GFP_KERNEL } from '../../src/mm/gfp.js';
import { fs_reclaim_acquire, fs_reclaim_release } from '../../src/mm/page_alloc.js';

// enum ib_access_flags
export const IB_ACCESS_LOCAL_WRITE = 1 << 0;
export const IB_ACCESS_REMOTE_WRITE = 1 << 1;
export const IB_ACCESS_REMOTE_READ = 1 << 2;
export const IB_ACCESS_REMOTE_ATOMIC = 1 << 3;
export const IB_ACCESS_MW_BIND = 1 << 4;
export const IB_ACCESS_ON_DEMAND = 1 << 6;

export function ib_access_writable(access: number): boolean {
  return (access & (IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_ATOMIC | IB_ACCESS_MW_BIND)) !== 0;
}

/** the pfn_list is one kmalloc object (1024 words, two per page) */
export const ODP_MAX_PAGES = 512;

/**
 * Policy: in a non-blockable range, trylock the umem_mutex instead of refusing outright, as
 * ib_umem_notifier_invalidate_range_start did with down_read_trylock(&per_mm->umem_rwsem)
 * (v4.19 to v5.4). The default is today's mlx5/rxe: !mmu_notifier_range_blockable -> false.
 */
export const ODP_NONBLOCK_TRYLOCK = 1 << 0;

/** MR states (mlx5: the mkey is in dev->odp_mkeys or it is not) */
export const MR_STATE_INVALID = 0;
export const MR_STATE_VALID = 1;

/** struct ib_umem_odp + the mlx5_ib_mr words ODP needs; the device's state */
export const OdpL = defineStruct('ib_umem_odp', {
  address: 2, // f64: umem.address
  length: 2, // f64: umem.length
  start: 2, // f64: ib_umem_start
  end: 2, // f64: ib_umem_end
  pfn_list: 1, // map.pfn_list, kmalloc'd, 2 words per page
  nr_entries: 1,
  npages: 1, // pages DMA mapped
  writable: 1,
  access: 1,
  flags: 1, // ODP_*
  /** the sequence of the last successful map_dma_and_lock: read under umem_mutex */
  notifier_seq: 1,
  /** mmkey.usecount: 1 for the registration + one per fault, prefetch and work request */
  usecount: 1,
  mr_state: 1,
  /** counters */
  invalidations: 1,
  nonblock_refused: 1,
  page_faults: 1,
  fault_pages: 1,
  prefetch: 1,
  prefetch_pages: 1,
  dereg_waited: 1,
});

export function odp_start(dev: number): number {
  return current.k.arena.f64[(device_priv(dev) + OdpL.start) >> 1];
}

export function odp_end(dev: number): number {
  return current.k.arena.f64[(device_priv(dev) + OdpL.end) >> 1];
}

/**
 * ib_init_umem_odp: the pfn_list and the interval notifier over [start, end). Called at
 * registration from a thread of the owning process (which holds the mm).
 */
export async function ib_umem_odp_get(dev: number, addr: number, size: number, access: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const f = k.arena.f64;
  const st = device_priv(dev);
  const ps = k.mmLayer.pageSize;
  if ((access & IB_ACCESS_ON_DEMAND) === 0) {
    splat(k, 'warn', 'WARNING: ib_umem_odp_get: WARN_ON_ONCE(!(access & IB_ACCESS_ON_DEMAND))');
    return -EINVAL;
  }
  if (!Number.isInteger(addr) || !Number.isInteger(size) || addr < 0 || size <= 0) return -EINVAL;
  const start = addr - (addr % ps);
  const end = Math.ceil((addr + size) / ps) * ps;
  if (!Number.isSafeInteger(end) || end > k.mmLayer.vaLimit) return -EOVERFLOW;
  // The notifier can be called within reclaim and takes umem_mutex: teach lockdep about it.
  fs_reclaim_acquire(k, GFP_KERNEL);
  const p = device_lock(dev);
  if (p !== undefined) await p;
  device_unlock(dev);
  fs_reclaim_release(k, GFP_KERNEL);
  const nr = (end - start) / ps;
  if (nr > ODP_MAX_PAGES) return -EINVAL;
  const pl = k.kmalloc.kzalloc(2 * nr);
  if (pl === 0) return -ENOMEM;
  f[(st + OdpL.address) >> 1] = addr;
  f[(st + OdpL.length) >> 1] = size;
  f[(st + OdpL.start) >> 1] = start;
  f[(st + OdpL.end) >> 1] = end;
  w[st + OdpL.pfn_list] = pl;
  w[st + OdpL.nr_entries] = nr;
  w[st + OdpL.access] = access;
  w[st + OdpL.writable] = ib_access_writable(access) ? 1 : 0;
  const r = mmu_interval_notifier_insert(dev + DevL.notifier, device_mm(dev), start, end - start, odpMnOps, dev);
  const ret = typeof r === 'number' ? r : await r;
  if (ret !== 0) {
    k.kmalloc.kfree(pl);
    w[st + OdpL.pfn_list] = 0;
  }
  return ret;
}

/**
 * ib_umem_odp_unmap_dma_pages: forget the pages of [virt, bound) (umem_mutex held): DMA
 * unmap what is mapped, set_page_dirty each mapped writable page, clear every pfn's flags.
 * The MTT must already be zapped.
 */
export function ib_umem_odp_unmap_dma_pages(dev: number, virt: number, bound: number): void {
  const k = current.k;
  const u = k.arena.u32;
  const st = device_priv(dev);
  const ps = k.mmLayer.pageSize;
  lockdep_assert_held(device_lock_obj(dev));
  const start = odp_start(dev);
  virt = Math.max(virt, start);
  bound = Math.min(bound, odp_end(dev));
  const pl = k.arena.i32[st + OdpL.pfn_list];
  for (let addr = virt; addr < bound; addr += ps) {
    const hi = pl + 2 * ((addr - start) / ps) + 1;
    if ((u[hi] & HMM_PFN_DMA_MAPPED) !== 0) {
      // hmm_dma_unmap_pfn; the HCA may have written a writable page: dirty it under
      // umem_mutex (not the page lock), or reclaim would drop the data of a clean page
      if ((u[hi] & HMM_PFN_WRITE) !== 0) set_page_dirty(k, u[hi - 1] + (u[hi] & ~HMM_PFN_FLAGS) * 2 ** 32);
      k.arena.i32[st + OdpL.npages]--;
    }
    u[hi] &= ~HMM_PFN_FLAGS;
  }
}

/**
 * ib_umem_odp_map_dma_and_lock: fault (or, without `fault`, snapshot) [user_virt, +bcnt) into
 * the pfn_list through the §3.4 loop. On success returns the pages covered with umem_mutex
 * HELD and OdpL.notifier_seq the sequence they are good for; the caller programs the MTT and
 * unlocks. hmm_range_fault writes the pfn_list in place without the lock, as the kernel's
 * does: only what passes mmu_interval_read_retry under the lock is ever programmed.
 */
export async function ib_umem_odp_map_dma_and_lock(dev: number, user_virt: number, bcnt: number, write: boolean, fault: boolean): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const st = device_priv(dev);
  const ps = k.mmLayer.pageSize;
  const start = odp_start(dev);
  if (user_virt < start || user_virt + bcnt > odp_end(dev)) return -EFAULT;
  const mm = device_mm(dev);
  const sub = dev + DevL.notifier;
  const range = new HmmRange();
  range.notifier = sub;
  range.start = user_virt - (user_virt % ps);
  range.end = Math.ceil((user_virt + bcnt) / ps) * ps;
  const first = (range.start - start) / ps;
  const num = (range.end - range.start) / ps;
  if (fault) range.default_flags = HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0);
  const pl = w[st + OdpL.pfn_list];
  range.hmm_pfns = k.arena.u32.subarray(pl + 2 * first, pl + 2 * (first + num));
  const timeout = k.sched.now() + HMM_RANGE_DEFAULT_TIMEOUT * 1e6;
  for (;;) {
    // The kernel holds the mm across and drops it with mmput_async; with no mmput_async here
    // the reference covers the walk only: a last mmput under umem_mutex would run exit_mmap
    // into our own invalidate. An mm that dies meanwhile moves the sequence (RELEASE).
    if (!mmget_not_zero(mm)) return -EINVAL;
    let ret: number;
    let seq: number;
    try {
      device_stat_add(dev, DEV_STAT.fault_rounds);
      const s = mmu_interval_read_begin(sub);
      seq = range.notifier_seq = typeof s === 'number' ? s : await s;
      const l = mmap_read_lock(mm);
      if (l !== undefined) await l;
      try {
        ret = await hmm_range_fault(range);
      } finally {
        mmap_read_unlock(mm);
      }
    } finally {
      const p = mmput(mm);
      if (p !== undefined) await p;
    }
    if (ret !== 0) {
      if (ret === -EBUSY) {
        device_stat_add(dev, DEV_STAT.ebusy);
        if (k.sched.now() <= timeout) continue;
      }
      return ret;
    }
    const p = device_lock(dev);
    if (p !== undefined) await p;
    if (mmu_interval_read_retry(sub, seq)) {
      device_unlock(dev);
      device_stat_add(dev, DEV_STAT.retries);
      continue;
    }
    // hmm_range_fault was asked to populate every page: no error entry on success
    for (let j = 0; fault && j < num; j++) {
      const f = range.hmm_pfns[2 * j + 1];
      if ((f & HMM_PFN_ERROR) !== 0 || (f & HMM_PFN_VALID) === 0) {
        splat(k, 'warn', `WARNING: ib_umem_odp_map_dma_and_lock: WARN_ON(fault && !(hmm_pfns[${j}] & HMM_PFN_VALID))`);
        break;
      }
    }
    w[st + OdpL.notifier_seq] = seq;
    return num; // upon success the lock stays held for the caller
  }
}

// ---- the invalidate callback (mlx5_ib_invalidate_range / rxe_ib_invalidate_range) ------------------

/** Zap the MTT over the MR's part of the range, wait for the HCA, unmap. umem_mutex held; unlocks. */
function invalidate_locked(dev: number, sub: number, range: MmuNotifierRange, cur_seq: number, blockable: boolean): boolean | Promise<boolean> {
  const w = current.k.arena.i32;
  const st = device_priv(dev);
  mmu_interval_set_seq(sub, cur_seq);
  w[st + OdpL.invalidations]++;
  // nothing is DMA mapped, so nothing is in the MTT either
  if (w[st + OdpL.npages] === 0) {
    device_unlock(dev);
    return true;
  }
  const start = Math.max(odp_start(dev), range.start);
  const end = Math.min(odp_end(dev), range.end);
  // the UMR that zaps the MTTs completes only once the HCA stopped using them
  const gen = shadow_pte_zap(dev, start, end);
  if (!blockable) {
    const eng = device_fence_busy(dev, gen);
    if (eng >= 0) {
      device_fence_fail(dev, gen, eng);
      w[st + OdpL.nonblock_refused]++;
      device_stat_add(dev, DEV_STAT.eagain);
      device_unlock(dev);
      return false;
    }
    ib_umem_odp_unmap_dma_pages(dev, start, end);
    device_unlock(dev);
    return true;
  }
  const f = device_fence_wait(dev, gen);
  const finish = (): boolean => {
    ib_umem_odp_unmap_dma_pages(dev, start, end);
    device_unlock(dev);
    return true;
  };
  return f === undefined ? finish() : f.then(finish, (e) => (device_unlock(dev), Promise.reject(e)));
}

export const odpMnOps = defineIntervalNotifierOps('ib_umem_odp', {
  invalidate(sub: number, range: MmuNotifierRange, cur_seq: number): boolean | Promise<boolean> {
    const dev = mmu_notifier_priv(sub);
    const st = device_priv(dev);
    const w = current.k.arena.i32;
    device_notifier_seen(dev); // counted and remembered: a 'none' driver's own notifier
    if (!mmu_notifier_range_blockable(range)) {
      if ((w[st + OdpL.flags] & ODP_NONBLOCK_TRYLOCK) !== 0 && device_trylock(dev)) return invalidate_locked(dev, sub, range, cur_seq, false);
      // mlx5/rxe: the umem_mutex may be held across a fault; never wait in the OOM reaper
      w[st + OdpL.nonblock_refused]++;
      device_stat_add(dev, DEV_STAT.eagain);
      return false;
    }
    const p = device_lock(dev);
    if (p === undefined) return invalidate_locked(dev, sub, range, cur_seq, true);
    return p.then(() => invalidate_locked(dev, sub, range, cur_seq, true));
  },
});
