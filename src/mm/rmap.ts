// Reverse map: from a frame to every (mm, address) whose PTE maps it. Each mapping is a node
// in an arena pool, linked from struct page `mapping`; a page's mapcount is its node count.
// The kernel finds mappings through anon_vma/i_mmap trees of VMAs and checks each PTE; one node
// per PTE gives the same answer without the tree. One raw lock guards every list; walkers copy
// the list under it and then visit each mapping under that mm's PTE lock.
//
// try_to_unmap / try_to_unmap_one (reference §6.1) is driven by reclaim (next issue): a CLEAR
// start/end pair per mapping, always paired, even when a pinned anon page keeps its PTE.

import { defineStruct } from '../shm/layout.js';
import { arch_spin_lock, arch_spin_unlock } from '../shm/rawlock.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { MMU_NOTIFY_CLEAR, MmuNotifierRange, mmu_notifier_range_init } from '../notifier/range.js';
import { mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start } from '../notifier/invalidate.js';
import { mmdrop, mmgrab } from './mm_inline.js';
import { MMG_RMAP_LOCK } from './mm_layer.js';
import { flush_tlb_mm, folio_maybe_dma_pinned, pte_lookup, ptl_of, put_page } from './mm_pt.js';
import { PG_anon, PG_anon_exclusive, PG_dirty, PG_swapcache, PageL } from './page.js';
import { SWP_SWAP, pte_dirty, pte_pfn, pte_present, pte_special, swp_entry_to_pte } from './pgtable.js';
import { MM_ANONPAGES, MM_SHMEMPAGES, MM_SWAPENTS, MmL } from './types.js';

/** one mapping of a frame */
export const RmapL = defineStruct('rmap_node', {
  addr: 2, // f64: user address of the PTE
  mm: 1,
  next: 1,
});

const R_ADDR = RmapL.addr;
const R_MM = RmapL.mm;
const R_NEXT = RmapL.next;
const P_MAPPING = PageL.mapping;
const P_MAPCOUNT = PageL.mapcount;

/**
 * Add a mapping of pfn at (mm, addr): page_add_anon_rmap / page_add_file_rmap /
 * folio_add_new_anon_rmap. False if the node pool is empty (the caller fails with OOM).
 */
export function page_add_rmap(k: Kernel, pfn: number, mm: number, addr: number): boolean {
  const pool = k.mmLayer.rmap;
  const i = pool.alloc();
  if (i === 0) return false;
  const node = pool.at(i);
  const w = k.arena.i32;
  k.arena.f64[(node + R_ADDR) >> 1] = addr;
  w[node + R_MM] = mm;
  const p = k.zone.page(pfn);
  const lock = k.mmLayer.g + MMG_RMAP_LOCK;
  arch_spin_lock(w, lock);
  w[node + R_NEXT] = w[p + P_MAPPING];
  w[p + P_MAPPING] = node;
  w[p + P_MAPCOUNT]++;
  arch_spin_unlock(w, lock);
  return true;
}

/** page_remove_rmap: drop the mapping of pfn at (mm, addr). */
export function page_remove_rmap(k: Kernel, pfn: number, mm: number, addr: number): void {
  const w = k.arena.i32;
  const f = k.arena.f64;
  const p = k.zone.page(pfn);
  const lock = k.mmLayer.g + MMG_RMAP_LOCK;
  arch_spin_lock(w, lock);
  let prev = 0;
  let node = w[p + P_MAPPING];
  while (node !== 0 && !(w[node + R_MM] === mm && f[(node + R_ADDR) >> 1] === addr)) {
    prev = node;
    node = w[node + R_NEXT];
  }
  if (node !== 0) {
    if (prev === 0) w[p + P_MAPPING] = w[node + R_NEXT];
    else w[prev + R_NEXT] = w[node + R_NEXT];
    w[p + P_MAPCOUNT]--;
    if (w[p + P_MAPCOUNT] === 0) Atomics.and(w, p + PageL.flags, ~PG_anon_exclusive); // atomic: PG_locked / PG_lru move under us
  }
  arch_spin_unlock(w, lock);
  if (node === 0) {
    splat(k, 'bug', `BUG: page_remove_rmap: pfn ${pfn} has no mapping at ${mm.toString(16)}:0x${addr.toString(16)}`);
    return;
  }
  const pool = k.mmLayer.rmap;
  pool.free((node - pool.base) / pool.objWords);
}

/** Move a mapping to a new address in the same mm (mremap's move_ptes). */
export function page_move_rmap(k: Kernel, pfn: number, mm: number, from: number, to: number): void {
  const w = k.arena.i32;
  const f = k.arena.f64;
  const lock = k.mmLayer.g + MMG_RMAP_LOCK;
  arch_spin_lock(w, lock);
  for (let node = w[k.zone.page(pfn) + P_MAPPING]; node !== 0; node = w[node + R_NEXT]) {
    if (w[node + R_MM] === mm && f[(node + R_ADDR) >> 1] === from) {
      f[(node + R_ADDR) >> 1] = to;
      break;
    }
  }
  arch_spin_unlock(w, lock);
}

/** folio_mapcount */
export function folio_mapcount(k: Kernel, pfn: number): number {
  return Atomics.load(k.arena.i32, k.zone.page(pfn) + P_MAPCOUNT);
}

/**
 * Every (mm, addr) mapping pfn, newest first (reports, tests, rmap walks). A walk that visits
 * the mms passes grab: each mm is mmgrabbed under the rmap lock, while its mapping still pins
 * it (the kernel's walk holds the anon_vma lock, which exit_mmap needs before its mmdrop); a
 * grab after the unlock can come after an exiting mm's last mmdrop. The caller mmdrops each.
 */
export function rmap_mappings(k: Kernel, pfn: number, grab = false): { mm: number; addr: number }[] {
  const w = k.arena.i32;
  const f = k.arena.f64;
  const out: { mm: number; addr: number }[] = [];
  const lock = k.mmLayer.g + MMG_RMAP_LOCK;
  arch_spin_lock(w, lock);
  for (let node = w[k.zone.page(pfn) + P_MAPPING]; node !== 0; node = w[node + R_NEXT]) {
    out.push({ mm: w[node + R_MM], addr: f[(node + R_ADDR) >> 1] });
    if (grab) mmgrab(w[node + R_MM]);
  }
  arch_spin_unlock(w, lock);
  return out;
}

// ---- try_to_unmap ---------------------------------------------------------------------------

/**
 * Hook the swap layer fills: called under the PTL when an anon page in the swap cache loses a
 * PTE to a swap entry (swap_duplicate). Returns false to abort the unmap.
 */
export const rmapHooks: { swap_duplicate: ((k: Kernel, entry: number) => boolean) | null } = { swap_duplicate: null };

/**
 * try_to_unmap: unmap pfn from every mm that maps it (the caller holds the folio lock). Stops
 * at the first mapping that must stay (a pinned anon page). True when no mapping is left.
 */
export function try_to_unmap(k: Kernel, pfn: number): boolean | Promise<boolean> {
  // each mm held across the walk, grabbed while its mapping pins it
  const maps = rmap_mappings(k, pfn, true);
  let i = 0;
  const drop = (): boolean => {
    for (const m of maps) mmdrop(m.mm);
    return folio_mapcount(k, pfn) === 0;
  };
  const step = (): boolean | Promise<boolean> => {
    try {
      while (i < maps.length) {
        const m = maps[i++];
        const r = try_to_unmap_one(k, pfn, m.mm, m.addr);
        if (typeof r !== 'boolean') {
          return r.then(
            (ok) => (ok ? step() : drop()),
            (e: unknown) => {
              drop();
              throw e;
            },
          );
        }
        if (!r) break;
      }
    } catch (e) {
      drop();
      throw e;
    }
    return drop();
  };
  return step();
}

/**
 * try_to_unmap_one: one mapping. CLEAR over that page, blockable; the PTE is cleared (a shmem
 * page) or replaced by its swap entry (an anon page in the swap cache). An anon-exclusive page
 * that may be DMA-pinned keeps its PTE and aborts the walk, but its start/end pair still runs.
 * Returns false to stop the walk.
 */
export function try_to_unmap_one(k: Kernel, pfn: number, mm: number, addr: number): boolean | Promise<boolean> {
  const range = new MmuNotifierRange();
  mmu_notifier_range_init(range, MMU_NOTIFY_CLEAR, 0, mm, addr, addr + k.mmLayer.pageSize);
  const s = mmu_notifier_invalidate_range_start(range);
  if (s !== undefined) return s.then(() => unmapOneLocked(k, pfn, mm, addr, range));
  return unmapOneLocked(k, pfn, mm, addr, range);
}

function unmapOneLocked(k: Kernel, pfn: number, mm: number, addr: number, range: MmuNotifierRange): boolean | Promise<boolean> {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  let ret = true;
  let dropRef = false;
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  try {
    const pgd = w[mm + MmL.pgd];
    const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
    const pte = slot < 0 ? 0 : w[slot];
    if (slot >= 0 && pte_present(pte) && !pte_special(pte) && pte_pfn(pte) === pfn) {
      const flags = w[p + PageL.flags];
      if ((flags & PG_anon) !== 0) {
        if ((flags & PG_anon_exclusive) !== 0 && folio_maybe_dma_pinned(k, pfn)) {
          // folio_try_share_anon_rmap_pte failed: the PTE is restored and the walk aborts
          ret = false;
        } else if ((flags & PG_swapcache) === 0) {
          splat(k, 'warn', `WARNING: try_to_unmap_one: anon pfn ${pfn} is not in the swap cache; nothing to replace its PTE with`);
          ret = false;
        } else {
          const entry = swp_entry_to_pte(SWP_SWAP, w[p + PageL.private]);
          if (rmapHooks.swap_duplicate && !rmapHooks.swap_duplicate(k, entry)) ret = false;
          else {
            // the dirty bit moves to the page now the PTE is gone, as for every page
            if (pte_dirty(Atomics.exchange(w, slot, entry))) Atomics.or(w, p + PageL.flags, PG_dirty);
            w[mm + MmL.rss_stat + MM_ANONPAGES]--;
            w[mm + MmL.rss_stat + MM_SWAPENTS]++;
            dropRef = true;
          }
        }
      } else {
        const old = Atomics.exchange(w, slot, 0);
        if (pte_dirty(old)) Atomics.or(w, p + PageL.flags, PG_dirty);
        w[mm + MmL.rss_stat + MM_SHMEMPAGES]--;
        dropRef = true;
      }
      if (dropRef) page_remove_rmap(k, pfn, mm, addr);
    }
  } finally {
    spin_unlock(ptl);
  }
  if (dropRef) {
    flush_tlb_mm(k, mm);
    put_page(k, pfn);
  }
  const e = mmu_notifier_invalidate_range_end(range);
  return e === undefined ? ret : e.then(() => ret);
}

