// The rmap side of migration (mm/rmap.c try_to_migrate, mm/migrate.c remove_migration_ptes):
// turn every mapping of a page into a migration entry, and every migration entry of a page
// into the new page's entry (or the old one's again). Migration entries keep their PTE's rmap
// node and reference (device_entries.ts), so the page's rmap list finds them all.

import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { MMU_NOTIFY_CLEAR, MmuNotifierRange, mmu_notifier_range_init } from '../notifier/range.js';
import { mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start } from '../notifier/invalidate.js';
import { is_migration_entry_dirty, is_migration_entry_young, make_migration_entry, pte_maps_pfn } from './device_entries.js';
import { folio_get, folio_put, is_device_private_page } from './memremap.js';
import { mmdrop } from './mm_inline.js';
import { _PAGE_PROTNONE, flush_tlb_mm, folio_maybe_dma_pinned, pte_lookup, ptl_of } from './mm_pt.js';
import { PG_anon, PG_anon_exclusive, PG_dirty, PageL } from './page.js';
import {
  SWP_DEVICE_PRIVATE_READ,
  SWP_DEVICE_PRIVATE_WRITE,
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_RW,
  is_device_exclusive_entry,
  is_device_private_entry,
  is_migration_entry,
  is_writable_swp_entry,
  mk_pte,
  pte_dirty,
  pte_pfn,
  pte_present,
  pte_special,
  pte_write,
  swp_entry_to_pte,
  swp_offset,
} from './pgtable.js';
import { page_add_rmap, page_remove_rmap, rmap_mappings } from './rmap.js';
import { MmL, VM_ACCESS_FLAGS, VM_WRITE } from './types.js';
import { V_FLAGS, vma_lookup } from './vma.js';

const page_flags = (k: Kernel, pfn: number): number => k.arena.i32[k.zone.page(pfn) + PageL.flags];

/** folio_mapped, ours: a mapping that is not (yet) one of its migration entries */
export function folio_mapped_live(k: Kernel, pfn: number): boolean {
  const maps = rmap_mappings(k, pfn, true);
  let live = false;
  for (const m of maps) {
    const pte = live ? 0 : pte_maps_pfn(k, m.mm, m.addr, pfn);
    if (pte !== 0 && !is_migration_entry(pte)) live = true;
    mmdrop(m.mm);
  }
  return live;
}

/**
 * try_to_migrate_one: one mapping of pfn becomes a migration entry, inside a CLEAR
 * invalidation of that page. False when a possibly pinned anon page must keep its PTE.
 */
async function try_to_migrate_one(k: Kernel, pfn: number, mm: number, addr: number): Promise<boolean> {
  const w = k.arena.i32;
  const range = new MmuNotifierRange();
  mmu_notifier_range_init(range, MMU_NOTIFY_CLEAR, 0, mm, addr, addr + k.mmLayer.pageSize);
  const s = mmu_notifier_invalidate_range_start(range);
  if (s !== undefined) await s;
  let ret = true;
  let unmapped = false;
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  const pgd = w[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  const pte = slot < 0 ? 0 : w[slot];
  if (pte_present(pte) && !pte_special(pte) && pte_pfn(pte) === pfn) {
    const pf = page_flags(k, pfn);
    if ((pf & (PG_anon | PG_anon_exclusive)) === (PG_anon | PG_anon_exclusive) && folio_maybe_dma_pinned(k, pfn)) ret = false;
    else {
      if (pte_dirty(pte)) Atomics.or(w, k.zone.page(pfn) + PageL.flags, PG_dirty);
      Atomics.store(w, slot, make_migration_entry(pfn, pte_write(pte), pte));
      unmapped = true;
    }
  } else if ((is_device_private_entry(pte) || is_device_exclusive_entry(pte)) && swp_offset(pte) === pfn) {
    Atomics.store(w, slot, make_migration_entry(pfn, is_device_private_entry(pte) && is_writable_swp_entry(pte), pte));
  }
  spin_unlock(ptl);
  if (unmapped) flush_tlb_mm(k, mm);
  const e = mmu_notifier_invalidate_range_end(range);
  if (e !== undefined) await e;
  return ret;
}

/** try_to_migrate: every live mapping of pfn; stops at the first that must stay. */
export async function try_to_migrate(k: Kernel, pfn: number): Promise<void> {
  const maps = rmap_mappings(k, pfn, true);
  try {
    for (const m of maps) {
      if (!(await try_to_migrate_one(k, pfn, m.mm, m.addr))) break;
    }
  } finally {
    for (const m of maps) mmdrop(m.mm);
  }
}

/**
 * remove_migration_pte: the migration entry of src at (mm, addr) becomes dst's entry: a
 * device-private entry for a device page, else a present PTE. Writable if the entry was and
 * the VMA still is. Wakes anyone waiting on the entry.
 */
function remove_migration_pte(k: Kernel, src: number, dst: number, mm: number, addr: number): boolean {
  const w = k.arena.i32;
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  const pgd = w[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  const entry = slot < 0 ? 0 : w[slot];
  if (!is_migration_entry(entry) || swp_offset(entry) !== src) {
    spin_unlock(ptl);
    return false;
  }
  // the rmap lists every mm mapping the page; only the one whose VMA we walk holds its mmap_lock
  const vma = vma_lookup(k, mm, addr);
  const vflags = vma === 0 ? 0 : w[vma + V_FLAGS];
  const write = is_writable_swp_entry(entry) && (vflags & VM_WRITE) !== 0;
  if (dst !== src) {
    if (!page_add_rmap(k, dst, mm, addr)) {
      splat(k, 'bug', `BUG: remove_migration_pte: no rmap node for pfn ${dst} at 0x${addr.toString(16)}: pfn ${src} stays mapped`);
      dst = src;
    } else {
      page_remove_rmap(k, src, mm, addr);
      folio_put(k, src); // the entry's reference moves to dst
      folio_get(k, dst);
    }
  }
  let pte: number;
  if (is_device_private_page(k, dst)) pte = swp_entry_to_pte(write ? SWP_DEVICE_PRIVATE_WRITE : SWP_DEVICE_PRIVATE_READ, dst);
  else {
    pte = mk_pte(dst, write);
    if (is_migration_entry_young(entry)) pte |= _PAGE_ACCESSED;
    if (is_migration_entry_dirty(entry)) pte |= _PAGE_DIRTY;
    if ((vflags & VM_ACCESS_FLAGS) === 0) pte = (pte & ~_PAGE_RW) | _PAGE_PROTNONE;
  }
  Atomics.store(w, slot, pte);
  spin_unlock(ptl);
  k.sched.wake(slot, Infinity); // migration_entry_wait sleepers (CPU faults, hmm_range_fault)
  return true;
}

/**
 * remove_migration_ptes: every migration entry of src, found through its rmap list. Another
 * pass while the last one found some: a fork may have copied an entry after the snapshot.
 */
export function remove_migration_ptes(k: Kernel, src: number, dst: number): void {
  for (let found = 1; found > 0; ) {
    found = 0;
    const maps = rmap_mappings(k, src, true);
    try {
      for (const m of maps) if (remove_migration_pte(k, src, dst, m.mm, m.addr)) found++;
    } finally {
      for (const m of maps) mmdrop(m.mm);
    }
  }
}

