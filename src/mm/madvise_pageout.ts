// MADV_PAGEOUT (mm/madvise.c madvise_pageout, madvise_cold_or_pageout_pte_range): reclaim a
// range now. Under the mmap_lock (read), one page table at a time and under its PTE lock:
// each present page that is anonymous, mapped only here and on an LRU list gets its young bit
// and PG_referenced cleared and is isolated; with the PTE lock dropped, reclaim_pages
// (vmscan.ts) reclaims the batch as shrink_folio_list does, ignoring references: a CLEAR
// invalidation per mapping (try_to_unmap_one, blockable), swap-out, and what could not go
// (a pinned page keeps its PTE, reference §6.1) back on its list. As in the kernel, pinned
// pages are not filtered here: reclaim is what refuses them, after their start/end pair.
// Shared pages (mapcount > 1) and shmem pages are skipped (pageout_anon_only_filter: shmem
// pageout is not modelled), as are the zero page and device-private entries.

import type { Kernel } from '../sched/kernel.js';
import { EINVAL } from '../shm/errno.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { folio_isolate_lru, folio_on_lru } from './lru.js';
import { flush_tlb_mm, pte_lookup, ptl_of } from './mm_pt.js';
import { PG_anon, PG_referenced, PageL } from './page.js';
import { _PAGE_ACCESSED, pte_pfn, pte_present, pte_special } from './pgtable.js';
import { folio_mapcount } from './rmap.js';
import { MmL, VM_HUGETLB, VM_LOCKED, VM_PFNMAP } from './types.js';
import { reclaim_pages } from './vmscan.js';
import { V_FLAGS } from './vma.js';

// include/uapi/asm-generic/mman-common.h
export const MADV_COLD = 20;
export const MADV_PAGEOUT = 21;

/** can_madv_lru_vma */
export function can_madv_lru_vma(vflags: number): boolean {
  return (vflags & (VM_LOCKED | VM_PFNMAP | VM_HUGETLB)) === 0;
}

/** One page table's worth of [addr, end): isolate the candidates into `list`. PTE lock held. */
function pageout_pte_range(k: Kernel, mm: number, addr: number, end: number, list: number[]): boolean {
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const pgd = w[mm + MmL.pgd];
  let flush = false;
  for (; addr < end; addr += ps) {
    const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
    if (slot < 0) continue;
    const pte = w[slot];
    if (!pte_present(pte) || pte_special(pte)) continue;
    const pfn = pte_pfn(pte);
    const p = k.zone.page(pfn);
    // Do not interfere with other mappings of this folio and non-LRU folio.
    if (!folio_on_lru(k, pfn) || folio_mapcount(k, pfn) !== 1) continue;
    if ((Atomics.load(w, p + PageL.flags) & PG_anon) === 0) continue; // pageout_anon_only_filter
    if ((pte & _PAGE_ACCESSED) !== 0) {
      // ptep_get_and_clear_full + pte_mkold + set_pte_at: no notifier for the young bit
      Atomics.and(w, slot, ~_PAGE_ACCESSED);
      flush = true;
    }
    // the VM could not reclaim it while it looks recently used
    Atomics.and(w, p + PageL.flags, ~PG_referenced);
    if (folio_isolate_lru(k, pfn)) list.push(pfn);
  }
  return flush;
}

/**
 * madvise_pageout for [start, end) inside vma (the caller holds the mmap_lock for read and
 * walks the VMAs). 0, or -EINVAL for a VM_LOCKED, VM_PFNMAP or hugetlb VMA.
 */
export function madvise_pageout(k: Kernel, mm: number, vma: number, start: number, end: number): number | Promise<number> {
  if (!can_madv_lru_vma(k.arena.i32[vma + V_FLAGS])) return -EINVAL;
  return pageoutRange(k, mm, start, end);
}

async function pageoutRange(k: Kernel, mm: number, start: number, end: number): Promise<number> {
  const span = k.mmLayer.pageSize * 512; // one page table
  const list: number[] = [];
  for (let addr = start; addr < end; ) {
    const next = Math.min(end, (Math.floor(addr / span) + 1) * span);
    const ptl = ptl_of(k, mm);
    spin_lock(ptl);
    let flush: boolean;
    try {
      flush = pageout_pte_range(k, mm, addr, next, list);
    } finally {
      spin_unlock(ptl);
    }
    if (flush) flush_tlb_mm(k, mm);
    if (list.length > 0) {
      const r = reclaim_pages(k, list.splice(0, list.length));
      if (typeof r !== 'number') await r;
    }
    const p = k.sched.point(); // cond_resched
    if (p !== undefined) await p;
    addr = next;
  }
  return 0;
}
