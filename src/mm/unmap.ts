// Tearing mappings down (mm/memory.c, mm/vma.c): zap the PTEs of a range, drop each page's
// rmap and PTE reference through an mmu_gather, and free page tables nobody can reach any more.
// - unmap_vmas: one MMU_NOTIFY_UNMAP over the whole [start, end), blockable (munmap, exit);
// - zap_page_range_single: MMU_NOTIFY_CLEAR over one VMA's part (MADV_DONTNEED).
// Both return undefined when no notifier slept, else a promise.

import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { MMU_NOTIFY_CLEAR, MMU_NOTIFY_UNMAP, MmuNotifierRange, mmu_notifier_range_init } from '../notifier/range.js';
import { mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start } from '../notifier/invalidate.js';
import { PTRS_PER_TABLE, level_span, ptl_of, table_used, tlb_finish_mmu, tlb_gather_mmu, type MmuGather } from './mm_pt.js';
import { PG_anon, PG_dirty, PageL } from './page.js';
import { is_swap_entry, pte_dirty, pte_pfn, pte_present, pte_special } from './pgtable.js';
import { page_remove_rmap } from './rmap.js';
import { MM_ANONPAGES, MM_SHMEMPAGES, MM_SWAPENTS, MmL } from './types.js';
import { vma_end, vma_start } from './vma.js';

/** Hook the swap layer fills: a zapped swap entry releases its slot (free_swap_and_cache). */
export const zapHooks: { free_swap_and_cache: ((k: Kernel, entry: number) => void) | null; zap_nonpresent: ((k: Kernel, mm: number, addr: number, entry: number) => void) | null } = {
  free_swap_and_cache: null,
  zap_nonpresent: null,
};

/**
 * zap_pte_range over [start, end) of mm, PTE lock held: clear every entry; present pages
 * lose their rmap and their PTE reference goes to the gather (dropped after the flush).
 */
function zap_range_locked(k: Kernel, tlb: MmuGather, mm: number, start: number, end: number): void {
  const w = k.arena.i32;
  const pgd = w[mm + MmL.pgd];
  if (pgd === 0) return;
  const rss = mm + MmL.rss_stat;
  const z = k.zone;
  k.pgtables.walk(pgd, start, end, (slot, addr) => {
    const pte = Atomics.exchange(w, slot, 0);
    if (pte === 0) return;
    if (pte_present(pte)) {
      if (pte_special(pte)) return; // the zero page: no struct page reference
      const pfn = pte_pfn(pte);
      const p = z.page(pfn);
      if ((w[p + PageL.flags] & PG_anon) !== 0) w[rss + MM_ANONPAGES]--;
      else {
        if (pte_dirty(pte)) Atomics.or(w, p + PageL.flags, PG_dirty);
        w[rss + MM_SHMEMPAGES]--;
      }
      page_remove_rmap(k, pfn, mm, addr);
      tlb.pages.push(pfn);
      return;
    }
    if (is_swap_entry(pte)) {
      w[rss + MM_SWAPENTS]--;
      zapHooks.free_swap_and_cache?.(k, pte);
    } else zapHooks.zap_nonpresent?.(k, mm, addr, pte);
  });
}

/** unmap_page_range for one VMA's part of [start, end). */
export function unmap_single_vma(k: Kernel, tlb: MmuGather, vma: number, start: number, end: number): void {
  const s = Math.max(start, vma_start(k, vma));
  const e = Math.min(end, vma_end(k, vma));
  if (s >= e) return;
  const mm = tlb.mm;
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  try {
    zap_range_locked(k, tlb, mm, s, e);
  } finally {
    spin_unlock(ptl);
  }
}

/**
 * unmap_vmas: zap [start, end) of every VMA in `vmas` inside one MMU_NOTIFY_UNMAP range,
 * blockable. end may be ULONG_MAX (exit_mmap).
 */
export function unmap_vmas(k: Kernel, tlb: MmuGather, vmas: readonly number[], start: number, end: number): Promise<void> | undefined {
  if (vmas.length === 0) return undefined;
  const range = new MmuNotifierRange();
  mmu_notifier_range_init(range, MMU_NOTIFY_UNMAP, 0, tlb.mm, start, end);
  const s = mmu_notifier_invalidate_range_start(range);
  const body = (): Promise<void> | undefined => {
    for (const v of vmas) unmap_single_vma(k, tlb, v, start, end);
    return mmu_notifier_invalidate_range_end(range);
  };
  return s === undefined ? body() : s.then(body);
}

/** zap_page_range_single: MMU_NOTIFY_CLEAR over [start, start + size) of one VMA, then zap and free. */
export function zap_page_range_single(k: Kernel, mm: number, vma: number, start: number, size: number): Promise<void> | undefined {
  const end = start + size;
  const range = new MmuNotifierRange();
  mmu_notifier_range_init(range, MMU_NOTIFY_CLEAR, 0, mm, start, end);
  const tlb = tlb_gather_mmu(k, mm);
  const s = mmu_notifier_invalidate_range_start(range);
  const body = (): Promise<void> | undefined => {
    unmap_single_vma(k, tlb, vma, start, end);
    const e = mmu_notifier_invalidate_range_end(range);
    if (e === undefined) {
      tlb_finish_mmu(tlb);
      return undefined;
    }
    return e.then(() => tlb_finish_mmu(tlb));
  };
  return s === undefined ? body() : s.then(body);
}

/**
 * free_pgtables: unlink every page table under [start, end) whose whole span lies inside
 * [floor, ceiling) (addresses no remaining VMA can use) and hand it to the gather. The pgd
 * stays. Tables must already be empty of PTEs.
 */
export function free_pgtables(k: Kernel, tlb: MmuGather, start: number, end: number, floor: number, ceiling: number): void {
  const mm = tlb.mm;
  const w = k.arena.i32;
  const pgd = w[mm + MmL.pgd];
  if (pgd === 0 || start >= end) return;
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  try {
    freeLevel(k, tlb, pgd, 0, 0, start, Math.min(end, k.mmLayer.vaLimit), floor, ceiling);
  } finally {
    spin_unlock(ptl);
  }
}

/** Entries of a level-`level` table at `base`: free children fully inside [floor, ceiling). */
function freeLevel(k: Kernel, tlb: MmuGather, table: number, level: number, base: number, start: number, end: number, floor: number, ceiling: number): void {
  const w = k.arena.i32;
  const span = level_span(k, level);
  const at = k.pgtables.pool.at(table);
  const first = Math.max(0, Math.floor((start - base) / span));
  const last = Math.min(PTRS_PER_TABLE - 1, Math.floor((end - 1 - base) / span));
  for (let i = first; i <= last; i++) {
    const child = w[at + i];
    if (child === 0) continue;
    const a = base + i * span;
    if (a >= floor && a + span <= ceiling) {
      w[at + i] = 0;
      gatherSubtree(k, tlb, child, level + 1);
    } else if (level < 2) {
      freeLevel(k, tlb, child, level + 1, a, start, end, floor, ceiling);
    }
  }
}

function gatherSubtree(k: Kernel, tlb: MmuGather, table: number, level: number): void {
  const w = k.arena.i32;
  const at = k.pgtables.pool.at(table);
  if (level === 3) {
    const used = table_used(k, table);
    if (used !== 0) splat(k, 'bug', `BUG: free_pgtables: a PTE table of ${tlb.mm.toString(16)} still has ${used} entries`);
  } else {
    for (let i = 0; i < PTRS_PER_TABLE; i++) {
      const child = w[at + i];
      if (child === 0) continue;
      w[at + i] = 0;
      gatherSubtree(k, tlb, child, level + 1);
    }
  }
  tlb.tables.push(table);
}
