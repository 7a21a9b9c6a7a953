// HMM_DMIRROR_SNAPSHOT: hmm_range_fault with no fault flags, chunk by chunk, each under a
// temporary interval notifier whose invalidate only moves its sequence; one HMM_DMIRROR_PROT_*
// byte per page goes to user memory.

import { current } from '../../src/sched/current.js';
import type { Kernel } from '../../src/sched/kernel.js';
import { defineStruct } from '../../src/shm/layout.js';
import { EBUSY, EFAULT, EINVAL, ENOMEM } from '../../src/shm/errno.js';
import { mutex_lock, mutex_trylock, mutex_unlock } from '../../src/sync/mutex.js';
import {
  MinL,
  defineIntervalNotifierOps,
  mmu_interval_notifier_insert,
  mmu_interval_notifier_remove,
  mmu_interval_read_begin,
  mmu_interval_read_retry,
  mmu_interval_set_seq,
  mmu_notifier_priv,
  mmu_notifier_range_blockable,
} from '../../src/notifier/index.js';
import { is_device_private_page } from '../../src/mm/memremap.js';
import { mmap_read_lock, mmap_read_unlock } from '../../src/mm/mm_inline.js';
import { mmget_not_zero, mmput } from '../../src/mm/mm_struct.js';
import { ZERO_PFN } from '../../src/mm/page.js';
import { PMD_SHIFT } from '../../src/mm/types.js';
import { copy_to_user } from '../../src/mm/uaccess.js';
import { HMM_PFN_ERROR, HMM_PFN_VALID, HMM_PFN_WRITE, HmmRange, hmm_pfn_flags, hmm_pfn_to_map_order, hmm_pfn_to_pfn, hmm_pfns_alloc, hmm_range_fault } from '../../src/hmm/hmm.js';
import { DMIRROR_CHUNK_PAGES, DMIRROR_RANGE_FAULT_TIMEOUT, dmirror_mdevice, dmirror_mm, dmirror_mutex } from './dmirror.js';
import { dmirror_page_to_device } from './devmem.js';
import {
  HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL,
  HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE,
  HMM_DMIRROR_PROT_ERROR,
  HMM_DMIRROR_PROT_NONE,
  HMM_DMIRROR_PROT_PMD,
  HMM_DMIRROR_PROT_PUD,
  HMM_DMIRROR_PROT_READ,
  HMM_DMIRROR_PROT_WRITE,
  HMM_DMIRROR_PROT_ZERO,
} from './uapi.js';

const PUD_SHIFT = 30;

/** struct dmirror_interval: a notifier of its own, and the mirror it belongs to */
const DmirrorIntervalL = defineStruct('dmirror_interval', {
  notifier: MinL.$size,
  dmirror: 1,
});

/** dmirror_mkentry: the perm byte for one hmm_pfns entry */
function dmirror_mkentry(k: Kernel, d: number, pfns: Uint32Array, i: number): number {
  const f = hmm_pfn_flags(pfns, i);
  if ((f & HMM_PFN_ERROR) !== 0) return HMM_DMIRROR_PROT_ERROR;
  if ((f & HMM_PFN_VALID) === 0) return HMM_DMIRROR_PROT_NONE;
  const pfn = hmm_pfn_to_pfn(pfns, i);
  let perm: number;
  if (is_device_private_page(k, pfn)) {
    // Is the page migrated to this device or some other?
    perm = dmirror_mdevice(k, d) === dmirror_page_to_device(k, pfn) ? HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL : HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE;
  } else if (pfn === ZERO_PFN) perm = HMM_DMIRROR_PROT_ZERO;
  else perm = HMM_DMIRROR_PROT_NONE;
  perm |= (f & HMM_PFN_WRITE) !== 0 ? HMM_DMIRROR_PROT_WRITE : HMM_DMIRROR_PROT_READ;
  const order = hmm_pfn_to_map_order(pfns, i);
  const shift = order + k.mmLayer.pageShift;
  if (order !== 0 && shift === PMD_SHIFT) perm |= HMM_DMIRROR_PROT_PMD;
  else if (order !== 0 && shift === PUD_SHIFT) perm |= HMM_DMIRROR_PROT_PUD;
  return perm;
}

export const dmirror_mrn_ops = defineIntervalNotifierOps('dmirror_mrn_ops', {
  invalidate(mni, range, cur_seq) {
    const k = current.k;
    const d = k.arena.i32[mmu_notifier_priv(mni) + DmirrorIntervalL.dmirror];
    const m = dmirror_mutex(k, d);
    // Snapshots only need to set the sequence number since any invalidation in the interval invalidates the whole snapshot.
    const body = (): boolean => {
      mmu_interval_set_seq(mni, cur_seq);
      mutex_unlock(m);
      return true;
    };
    if (!mmu_notifier_range_blockable(range)) return mutex_trylock(m) ? body() : false;
    const p = mutex_lock(m);
    return p ? p.then(body) : body();
  },
});

/** dmirror_range_snapshot: one chunk, perm bytes into `perm` */
async function dmirror_range_snapshot(k: Kernel, d: number, range: HmmRange, perm: Uint8Array): Promise<number> {
  const mm = dmirror_mm(k, d);
  const m = dmirror_mutex(k, d);
  const dmi = k.kmalloc.kzalloc(DmirrorIntervalL.$size); // on the kernel's stack
  if (dmi === 0) return -ENOMEM;
  k.arena.i32[dmi + DmirrorIntervalL.dmirror] = d;
  range.notifier = dmi + DmirrorIntervalL.notifier;
  const ins = mmu_interval_notifier_insert(range.notifier, mm, range.start, range.end - range.start, dmirror_mrn_ops, dmi);
  let ret = typeof ins === 'number' ? ins : await ins;
  if (ret !== 0) {
    k.kmalloc.kfree(dmi);
    return ret;
  }
  const timeout = k.sched.now() + DMIRROR_RANGE_FAULT_TIMEOUT * 1e6;
  try {
    for (;;) {
      if (k.sched.now() > timeout) return (ret = -EBUSY);
      const s = mmu_interval_read_begin(range.notifier);
      range.notifier_seq = typeof s === 'number' ? s : await s;
      const l = mmap_read_lock(mm);
      if (l !== undefined) await l;
      try {
        ret = await hmm_range_fault(range);
      } finally {
        mmap_read_unlock(mm);
      }
      if (ret !== 0) {
        if (ret === -EBUSY) continue;
        return ret;
      }
      const p = mutex_lock(m);
      if (p !== undefined) await p;
      if (mmu_interval_read_retry(range.notifier, range.notifier_seq)) {
        mutex_unlock(m);
        continue;
      }
      break;
    }
    const n = (range.end - range.start) / k.mmLayer.pageSize;
    for (let i = 0; i < n; i++) perm[i] = dmirror_mkentry(k, d, range.hmm_pfns, i);
    mutex_unlock(m);
    return ret;
  } finally {
    const r = mmu_interval_notifier_remove(range.notifier);
    if (typeof r !== 'number') await r;
    k.kmalloc.kfree(dmi);
  }
}

/** dmirror_snapshot: cmd.cpages counts the bytes written */
export async function dmirror_snapshot(k: Kernel, d: number, cmd: { addr: number; ptr: number; npages: number; cpages: number }): Promise<number> {
  const mm = dmirror_mm(k, d);
  const ps = k.mmLayer.pageSize;
  const start = cmd.addr;
  const end = start + cmd.npages * ps;
  const range = new HmmRange();
  range.hmm_pfns = hmm_pfns_alloc(DMIRROR_CHUNK_PAGES);
  range.dev_private_owner = dmirror_mdevice(k, d);
  const perm = new Uint8Array(DMIRROR_CHUNK_PAGES);
  // Since the mm is for the mirrored process, get a reference first.
  if (!mmget_not_zero(mm)) return -EINVAL;
  let ret = 0;
  let uptr = cmd.ptr;
  try {
    for (let addr = start, next: number; addr < end; addr = next) {
      next = Math.min(addr + DMIRROR_CHUNK_PAGES * ps, end);
      range.start = addr;
      range.end = next;
      range.hmm_pfns.fill(0); // the walk reads its input: default_flags and mask are 0, so nothing is asked
      ret = await dmirror_range_snapshot(k, d, range, perm);
      if (ret !== 0) break;
      const n = (range.end - range.start) / ps;
      if ((await copy_to_user(uptr, perm, n)) !== 0) {
        ret = -EFAULT;
        break;
      }
      cmd.cpages += n;
      uptr += n;
    }
  } finally {
    const p = mmput(mm);
    if (p !== undefined) await p;
  }
  return ret;
}
