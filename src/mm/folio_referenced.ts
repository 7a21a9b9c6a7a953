// Young-bit aging through the reverse map (mm/rmap.c folio_referenced / folio_referenced_one,
// mm/page_idle.c): for each PTE mapping a page, test and clear its accessed (young) bit and
// ask the secondary MMUs of that mm whether they used the page since they were last asked
// (mmu_notifier_clear_flush_young / clear_young / test_young, hlist subscribers only). Each
// mapping is visited under its mm's PTE lock, so the notifier callbacks must not sleep.
//
// The CPU's MMU sets the young bit with a compare-and-swap on every access (uaccess.ts), so
// clearing it is an atomic AND. No TLB flush follows: this MMU keeps no cached translation
// (ptep_clear_flush_young's flush only makes the next access set the bit again).

import type { Kernel } from '../sched/kernel.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { mmu_notifier_clear_flush_young, mmu_notifier_clear_young, mmu_notifier_test_young } from '../notifier/mmu_notifier.js';
import { mmdrop } from './mm_inline.js';
import { pte_lookup, ptl_of } from './mm_pt.js';
import { _PAGE_ACCESSED, pte_pfn, pte_present, pte_special } from './pgtable.js';
import { rmap_mappings } from './rmap.js';
import { MmL } from './types.js';

const CLEAR_FLUSH = 0; // reclaim: ptep_clear_flush_young_notify
const CLEAR = 1; // page_idle: ptep_clear_young_notify
const TEST = 2; // khugepaged: pte_young || mmu_notifier_test_young

/** Mappings of pfn whose CPU PTE or secondary MMU reported it young. */
function walk(k: Kernel, pfn: number, memcg: number, op: number): number {
  const maps = rmap_mappings(k, pfn, true); // each mm grabbed while its mapping pins it
  if (maps.length === 0) return 0;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  let referenced = 0;
  for (const m of maps) {
    const mm = m.mm;
    // memcg reclaim looks only at mappings of mms in the target memcg (mm_match_cgroup)
    if (memcg !== 0 && w[mm + MmL.memcg] !== memcg) {
      mmdrop(mm);
      continue;
    }
    const ptl = ptl_of(k, mm);
    spin_lock(ptl);
    try {
      const pgd = w[mm + MmL.pgd];
      const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, m.addr);
      const pte = slot < 0 ? 0 : w[slot];
      if (pte_present(pte) && !pte_special(pte) && pte_pfn(pte) === pfn) {
        let young: boolean;
        if (op === TEST) young = (pte & _PAGE_ACCESSED) !== 0 || mmu_notifier_test_young(mm, m.addr) !== 0;
        else {
          young = (Atomics.and(w, slot, ~_PAGE_ACCESSED) & _PAGE_ACCESSED) !== 0;
          const sec = op === CLEAR_FLUSH ? mmu_notifier_clear_flush_young(mm, m.addr, m.addr + ps) : mmu_notifier_clear_young(mm, m.addr, m.addr + ps);
          if (sec !== 0) young = true;
        }
        if (young) referenced++;
      }
    } finally {
      spin_unlock(ptl);
      mmdrop(mm);
    }
  }
  return referenced;
}

/**
 * folio_referenced: how many mappings of pfn were used since the last look (their young bits
 * are cleared, in the CPU PTE and in every secondary MMU). `memcg` (not 0) restricts the walk
 * to mms charged to that memcg, as memcg reclaim does.
 */
export function folio_referenced(k: Kernel, pfn: number, memcg = 0): number {
  return walk(k, pfn, memcg, CLEAR_FLUSH);
}

/** page_idle_clear_pte_refs: clear the young bits of every mapping (secondary MMUs without a flush). */
export function page_idle_clear_pte_refs(k: Kernel, pfn: number): number {
  return walk(k, pfn, 0, CLEAR);
}

/** Young in some mapping, by the CPU PTE or a secondary MMU's test_young; clears nothing (khugepaged's check). */
export function folio_test_young_mappings(k: Kernel, pfn: number): number {
  return walk(k, pfn, 0, TEST);
}
