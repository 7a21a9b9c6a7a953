// madvise (mm/madvise.c): MADV_DONTNEED zaps each VMA part of the range inside its own
// MMU_NOTIFY_CLEAR, blockable (zap_page_range_single, reference §7). MADV_PAGEOUT reclaims
// each VMA part now (madvise_pageout.ts).

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { EINVAL, ENOMEM } from '../shm/errno.js';
import { drive } from '../notifier/drive.js';
import { MADV_DONTNEED, MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED } from './mman.js';
import { mmap_read_lock, mmap_read_unlock } from './mm_inline.js';
import { page_align } from './mm_pt.js';
import { ULONG_MAX, VM_HUGETLB, VM_LOCKED, VM_PFNMAP, is_ulong } from './types.js';
import { zap_page_range_single } from './unmap.js';
import { MADV_PAGEOUT, madvise_pageout } from './madvise_pageout.js';
import { V_FLAGS, find_vma, vma_end, vma_start } from './vma.js';

/**
 * do_madvise: MADV_DONTNEED zaps (CLEAR per VMA part); MADV_PAGEOUT reclaims (-EINVAL for a
 * locked, PFN or hugetlb VMA); NORMAL/RANDOM/SEQUENTIAL/WILLNEED are
 * accepted and do nothing here. -EINVAL for other advice, an unaligned start or a locked/PFN
 * VMA; -ENOMEM when part of the range is unmapped (after the mapped parts were done).
 */
export function do_madvise(mm: number, start: number, len: number, behavior: number): number | Promise<number> {
  return drive(madviseGen(current.k, mm, start, len, behavior));
}

function* madviseGen(k: Kernel, mm: number, start: number, len_in: number, behavior: number): Generator<unknown, number, unknown> {
  if (![MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTNEED, MADV_PAGEOUT].includes(behavior)) return -EINVAL;
  if (!is_ulong(start) || !is_ulong(len_in) || start % k.mmLayer.pageSize !== 0) return -EINVAL;
  const len = page_align(k, len_in);
  if (len_in !== 0 && len === 0) return -EINVAL;
  const end = start + len;
  if (end < start || end > ULONG_MAX) return -EINVAL;
  if (end === start) return 0;
  const l = mmap_read_lock(mm);
  if (l !== undefined) yield l;
  try {
    let unmapped = 0;
    let vma = find_vma(k, mm, start);
    for (;;) {
      if (vma === 0) return -ENOMEM;
      if (start < vma_start(k, vma)) {
        unmapped = -ENOMEM;
        start = vma_start(k, vma);
        if (start >= end) break;
      }
      const tmp = Math.min(vma_end(k, vma), end);
      if (behavior === MADV_DONTNEED) {
        if ((k.arena.i32[vma + V_FLAGS] & (VM_LOCKED | VM_PFNMAP | VM_HUGETLB)) !== 0) return -EINVAL;
        const p = zap_page_range_single(k, mm, vma, start, tmp - start);
        if (p !== undefined) yield p;
      } else if (behavior === MADV_PAGEOUT) {
        let r = madvise_pageout(k, mm, vma, start, tmp);
        if (typeof r !== 'number') r = (yield r) as number;
        if (r !== 0) return r;
      }
      start = tmp;
      if (start >= end) break;
      vma = find_vma(k, mm, start);
    }
    return unmapped;
  } finally {
    mmap_read_unlock(mm);
  }
}

