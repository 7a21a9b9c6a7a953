// compact_range: migrate every present page of a user range to a new frame, the way
// compaction moves movable pages out of a block (mm/compaction.c isolate_migratepages_range +
// migrate_pages) and move_pages(2) resolves addresses to pages (mm/migrate.c
// add_page_for_migration). Pages are found under the mmap_lock (read) and the PTE lock, taken
// off the LRU (folio_isolate_lru), and migrated with the mmap_lock dropped, as the kernel does;
// what did not move goes back on the LRU. Every page moves whoever else maps it (compaction's
// rule, move_pages' MPOL_MF_MOVE_ALL): no -EACCES for shared pages.

import type { Kernel } from '../sched/kernel.js';
import { EBUSY, EFAULT, EINVAL, ENOENT } from '../shm/errno.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { GFP_HIGHUSER_MOVABLE } from './gfp.js';
import { folio_isolate_lru } from './lru.js';
import { MIGRATE_SYNC, MR_COMPACTION, migrate_pages, putback_movable_pages, type MigrateMode, type MigratePagesOut } from './migrate_pages.js';
import { mmap_read_lock, mmap_read_unlock } from './mm_inline.js';
import { get_page, pte_lookup, ptl_of, put_page } from './mm_pt.js';
import { pte_pfn, pte_present, pte_special } from './pgtable.js';
import { MmL, VM_HUGETLB, VM_IO, VM_PFNMAP, is_ulong } from './types.js';
import { V_FLAGS, vma_end, vma_lookup } from './vma.js';

export interface CompactRangeOpts {
  /** MIGRATE_SYNC (default, as move_pages), MIGRATE_SYNC_LIGHT or MIGRATE_ASYNC (as kcompactd's first pass) */
  mode?: MigrateMode;
  /** one entry per page of the range: 0 moved; -ENOENT not present (hole, swap entry, device-private
   *  entry); -EFAULT no VMA, a VM_IO/PFNMAP/hugetlb VMA, or the zero page; -EBUSY not on the LRU
   *  (isolated by someone else) or not movable here; -EAGAIN still mapped or referenced after
   *  every pass (a pinned page); -ENOMEM no target frame */
  status?: Int32Array;
  /** the targets' gfp (alloc_migration_target's GFP_HIGHUSER_MOVABLE by default) */
  gfp?: number;
  /** filled with migrate_pages' counters */
  out?: MigratePagesOut;
}

/**
 * compact_range(k, mm, start, end): migrate the present pages of [start, end) of mm. Returns
 * the number of candidate pages that did not move (0 when all did), -ENOMEM when a target
 * could not be allocated (pages not yet tried stay where they are), or -EINVAL for an
 * unaligned, empty or overflowing range. The caller holds a reference on mm (mmget) and not its
 * mmap_lock.
 */
export async function compact_range(k: Kernel, mm: number, start: number, end: number, opts: CompactRangeOpts = {}): Promise<number> {
  const ps = k.mmLayer.pageSize;
  if (!is_ulong(start) || !is_ulong(end) || start % ps !== 0 || end % ps !== 0 || end <= start) return -EINVAL;
  const npages = (end - start) / ps;
  const status = opts.status;
  if (status !== undefined && status.length < npages) return -EINVAL;
  const w = k.arena.i32;
  const list: number[] = [];
  const at = new Map<number, number>(); // pfn -> page index, for the status
  const l = mmap_read_lock(mm);
  if (l !== undefined) await l;
  try {
    let vma = 0;
    for (let i = 0; i < npages; i++) {
      const addr = start + i * ps;
      if (vma === 0 || addr >= vma_end(k, vma)) vma = vma_lookup(k, mm, addr);
      let err = 0;
      if (vma === 0 || (w[vma + V_FLAGS] & (VM_IO | VM_PFNMAP | VM_HUGETLB)) !== 0) err = -EFAULT; // !vma_migratable
      let pfn = 0;
      if (err === 0) {
        // follow_page(FOLL_GET | FOLL_DUMP)
        const ptl = ptl_of(k, mm);
        spin_lock(ptl);
        const pgd = w[mm + MmL.pgd];
        const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
        const pte = slot < 0 ? 0 : w[slot];
        if (!pte_present(pte)) err = -ENOENT;
        else if (pte_special(pte)) err = -EFAULT; // FOLL_DUMP: the zero page
        else {
          pfn = pte_pfn(pte);
          get_page(k, pfn);
        }
        spin_unlock(ptl);
      }
      if (pfn !== 0) {
        if (folio_isolate_lru(k, pfn)) {
          list.push(pfn);
          at.set(pfn, i);
          err = 1;
        } else err = -EBUSY;
        put_page(k, pfn); // the lookup's reference; isolation holds its own
      }
      if (status !== undefined) status[i] = err;
    }
  } finally {
    mmap_read_unlock(mm);
  }
  if (list.length === 0) return 0;
  const out = opts.out ?? { nr_succeeded: 0, nr_failed_pages: 0, rc: new Map<number, number>() };
  const ret = await migrate_pages(k, list, opts.mode ?? MIGRATE_SYNC, MR_COMPACTION, out, opts.gfp ?? GFP_HIGHUSER_MOVABLE);
  if (list.length !== 0) putback_movable_pages(k, list);
  if (status !== undefined) {
    for (const [pfn, i] of at) {
      const rc = out.rc.get(pfn);
      status[i] = rc === undefined ? ret : rc; // not tried: the call's -ENOMEM
    }
  }
  return ret;
}
