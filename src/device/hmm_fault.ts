// The canonical driver fault loop (reference §3.4) for drivers on an interval notifier:
// mmget_not_zero; mmu_interval_read_begin; hmm_range_fault under the mmap_lock (-EBUSY: again);
// the notifier lock; mmu_interval_read_retry (true: unlock, again); install from the pfns;
// unlock. Bounded by HMM_RANGE_DEFAULT_TIMEOUT (virtual time under sim, wall time under
// threads), past which it returns -EBUSY as drivers do. Counts fault rounds, -EBUSY and
// retries in the device's statistics.

import { current } from '../sched/current.js';
import { EBUSY, EFAULT } from '../shm/errno.js';
import { mmu_interval_read_begin, mmu_interval_read_retry } from '../notifier/interval.js';
import { mmap_read_lock, mmap_read_unlock } from '../mm/mm_inline.js';
import { mmget_not_zero, mmput } from '../mm/mm_struct.js';
import { HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_RANGE_DEFAULT_TIMEOUT, HmmRange, hmm_range_fault } from '../hmm/hmm.js';
import { device_stat_add } from './device.js';
import { device_lock, device_unlock } from './driver.js';
import { shadow_pte_install_range } from './install.js';
import { DEV_FAULT_WRITE, DEV_STAT, DevL } from './types.js';

/**
 * device_hmm_fault: fault [addr, addr + npages pages) into the device through the §3.4 loop on
 * interval subscription `sub` (default the device's). 0 when the range is installed; -EFAULT
 * when the mm is gone or a page cannot be faulted; -EPERM for a write to a read-only VMA;
 * -EBUSY after HMM_RANGE_DEFAULT_TIMEOUT of collisions.
 */
export async function device_hmm_fault(dev: number, addr: number, npages: number, flags: number, sub = 0): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const mm = w[dev + DevL.mm];
  const ps = k.mmLayer.pageSize;
  const range = new HmmRange();
  range.notifier = sub !== 0 ? sub : dev + DevL.notifier;
  range.start = addr - (addr % ps);
  range.end = range.start + npages * ps;
  range.hmm_pfns = new Uint32Array(2 * npages);
  range.default_flags = HMM_PFN_REQ_FAULT | ((flags & DEV_FAULT_WRITE) !== 0 ? HMM_PFN_REQ_WRITE : 0);
  range.pfn_flags_mask = 0;
  range.dev_private_owner = w[dev + DevL.owner];
  // the mm is the mirrored process's: hold a user reference across the walk
  if (!mmget_not_zero(mm)) return -EFAULT;
  try {
    const timeout = k.sched.now() + HMM_RANGE_DEFAULT_TIMEOUT * 1e6;
    for (;;) {
      if (k.sched.now() > timeout) return -EBUSY;
      device_stat_add(dev, DEV_STAT.fault_rounds);
      const s = mmu_interval_read_begin(range.notifier);
      range.notifier_seq = typeof s === 'number' ? s : await s;
      const l = mmap_read_lock(mm);
      if (l !== undefined) await l;
      let ret: number;
      try {
        ret = await hmm_range_fault(range);
      } finally {
        mmap_read_unlock(mm);
      }
      if (ret === -EBUSY) {
        device_stat_add(dev, DEV_STAT.ebusy);
        continue;
      }
      if (ret !== 0) return ret;
      const p = device_lock(dev);
      if (p !== undefined) await p;
      try {
        if (mmu_interval_read_retry(range.notifier, range.notifier_seq)) {
          device_stat_add(dev, DEV_STAT.retries);
          continue;
        }
        return shadow_pte_install_range(dev, range);
      } finally {
        device_unlock(dev);
      }
    }
  } finally {
    const p = mmput(mm);
    if (p !== undefined) await p;
  }
}
