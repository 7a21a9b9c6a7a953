// Device-exclusive access (mm/rmap.c make_device_exclusive, mm/memory.c
// remove_device_exclusive_entry / restore_exclusive_pte), as in ≥ v6.15: one page at a time,
// the PTE replaced by a device-exclusive entry that keeps the page's mapcount and reference.
// The entry is always "writable": a CPU fault restores the PTE, writable only if the VMA is
// now, so mprotect needs no special case (its PROTECTION_VMA tells the device).
//
// Events (reference §7): make_device_exclusive raises EXCLUSIVE with the caller's owner over
// the page, blockable; a CPU fault on the entry raises EXCLUSIVE with owner NULL.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { EFAULT, ENOMEM, EOPNOTSUPP } from '../shm/errno.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { MMU_NOTIFY_EXCLUSIVE, MmuNotifierRange, mmu_notifier_range_init_owner } from '../notifier/range.js';
import { mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start } from '../notifier/invalidate.js';
import './device_entries.js'; // the fault, zap and fork hooks for the entries made here
import { folio_lock, folio_test_locked, folio_trylock, folio_try_get, folio_unlock } from './folio_lock.js';
import { FAULT_FLAG_REMOTE, FAULT_FLAG_WRITE, VM_FAULT_ERROR, VM_FAULT_OOM, handle_mm_fault } from './memory.js';
import { folio_get, folio_put, type VmFault } from './memremap.js';
import { mmap_assert_locked } from './mm_inline.js';
import { _PAGE_PROTNONE, flush_tlb_mm, pte_lookup, pte_protnone, ptl_of } from './mm_pt.js';
import { PG_anon, PG_anon_exclusive, PG_dirty, PageL } from './page.js';
import { SWP_DEVICE_EXCLUSIVE_WRITE, _PAGE_DIRTY, _PAGE_RW, mk_pte, pte_dirty, pte_pfn, pte_present, pte_special, pte_write, swp_entry_to_pte, swp_offset } from './pgtable.js';
import { MmL, VM_ACCESS_FLAGS, VM_IO, VM_PFNMAP, VM_WRITE } from './types.js';
import { V_FLAGS, vma_lookup } from './vma.js';


/**
 * get_user_page_vma_remote(FOLL_GET | FOLL_WRITE) for one page: fault it in writable (a
 * device-exclusive or device-private entry is undone by that fault) and take a reference.
 * Its pfn, or -EFAULT (no VMA, not writable, VM_IO/VM_PFNMAP, fault failed), -ENOMEM.
 */
async function get_user_page_write(k: Kernel, mm: number, addr: number): Promise<number> {
  const w = k.arena.i32;
  const vma = vma_lookup(k, mm, addr);
  if (vma === 0) return -EFAULT;
  // check_vma_flags: a write needs VM_WRITE (no FOLL_FORCE here)
  if ((w[vma + V_FLAGS] & (VM_IO | VM_PFNMAP)) !== 0 || (w[vma + V_FLAGS] & VM_WRITE) === 0) return -EFAULT;
  const ptl = ptl_of(k, mm);
  for (;;) {
    spin_lock(ptl);
    const pgd = w[mm + MmL.pgd];
    const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
    const pte = slot < 0 ? 0 : w[slot];
    if (pte_present(pte) && !pte_special(pte) && pte_write(pte) && !pte_protnone(pte)) {
      folio_get(k, pte_pfn(pte));
      spin_unlock(ptl);
      return pte_pfn(pte);
    }
    spin_unlock(ptl);
    let r = handle_mm_fault(mm, vma, addr, FAULT_FLAG_WRITE | FAULT_FLAG_REMOTE);
    if (typeof r !== 'number') r = await r;
    if ((r & VM_FAULT_OOM) !== 0) return -ENOMEM;
    if ((r & VM_FAULT_ERROR) !== 0) return -EFAULT;
    const p = k.sched.point();
    if (p !== undefined) await p;
  }
}

/**
 * make_device_exclusive(mm, addr, owner, &folio): mark the page at addr for exclusive use by a
 * device. The caller holds the mmap_lock (read). Returns the page's pfn, locked and
 * referenced: the driver programs its exclusive mapping under its notifier lock, then calls
 * folio_unlock(k, pfn) and folio_put(k, pfn); from then on a CPU access revokes it. Errors:
 * -EFAULT (no VMA, not writable, fault failed), -ENOMEM, -EOPNOTSUPP (not anonymous memory).
 */
export async function make_device_exclusive(mm: number, addr: number, owner: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  mmap_assert_locked(mm);
  const ps = k.mmLayer.pageSize;
  addr -= addr % ps;
  const ptl = ptl_of(k, mm);
  for (;;) {
    const pfn = await get_user_page_write(k, mm, addr);
    if (pfn < 0) return pfn;
    if ((w[k.zone.page(pfn) + PageL.flags] & PG_anon) === 0) {
      folio_put(k, pfn);
      return -EOPNOTSUPP;
    }
    const l = folio_lock(k, pfn);
    if (l !== undefined) await l;
    // Tell secondary MMUs to unmap it now; the caller must filter this event out itself.
    const range = new MmuNotifierRange();
    mmu_notifier_range_init_owner(range, MMU_NOTIFY_EXCLUSIVE, 0, mm, addr, addr + ps, owner);
    const s = mmu_notifier_invalidate_range_start(range);
    if (s !== undefined) await s;
    // a second look: still the same page, mapped writable
    spin_lock(ptl);
    const slot = pte_lookup(k, w[mm + MmL.pgd], addr);
    const pte = slot < 0 ? 0 : w[slot];
    const same = pte_present(pte) && !pte_special(pte) && pte_pfn(pte) === pfn && pte_write(pte);
    if (same) {
      const old = Atomics.exchange(w, slot, swp_entry_to_pte(SWP_DEVICE_EXCLUSIVE_WRITE, pfn));
      if (pte_dirty(old)) Atomics.or(w, k.zone.page(pfn) + PageL.flags, PG_dirty);
    }
    spin_unlock(ptl);
    if (same) flush_tlb_mm(k, mm);
    const e = mmu_notifier_invalidate_range_end(range);
    if (e !== undefined) await e;
    if (same) return pfn;
    folio_unlock(k, pfn);
    folio_put(k, pfn);
  }
}

/**
 * restore_exclusive_pte: the entry at slot becomes an ordinary PTE again, PTE lock and folio
 * lock held. Old; writable (and dirty if the folio is) only where the VMA allows writing and
 * the page is still exclusively ours (can_change_pte_writable).
 */
export function restore_exclusive_pte(k: Kernel, vma: number, pfn: number, slot: number): void {
  const w = k.arena.i32;
  const vflags = w[vma + V_FLAGS];
  const pf = w[k.zone.page(pfn) + PageL.flags];
  let pte = mk_pte(pfn, false);
  if ((vflags & VM_ACCESS_FLAGS) === 0) pte |= _PAGE_PROTNONE;
  else if ((vflags & VM_WRITE) !== 0 && (pf & PG_anon_exclusive) !== 0) {
    pte |= _PAGE_RW;
    if ((pf & PG_dirty) !== 0) pte |= _PAGE_DIRTY;
  }
  if (!folio_test_locked(k, pfn)) splat(k, 'warn', `WARNING: restore_exclusive_pte: pfn ${pfn} is not locked`);
  w[slot] = pte;
}

/** try_restore_exclusive_pte (fork): restore it if the page lock is free now; false if busy. */
export function try_restore_exclusive_pte(k: Kernel, vma: number, _addr: number, slot: number, orig: number): boolean {
  const pfn = swp_offset(orig);
  if (!folio_trylock(k, pfn)) return false;
  restore_exclusive_pte(k, vma, pfn, slot);
  folio_unlock(k, pfn);
  return true;
}

/**
 * remove_device_exclusive_entry: a CPU fault on a device-exclusive entry. Lock the page,
 * raise EXCLUSIVE with owner NULL over it, restore the PTE if nobody changed it meanwhile.
 * Returns 0: the access retries.
 */
export async function remove_device_exclusive_entry(vmf: VmFault): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const { mm, vma, address, orig_pte, page } = vmf;
  // A racing zap may free the page: only a page with references is ours to lock.
  if (!folio_try_get(k, page)) return 0;
  const l = folio_lock(k, page);
  if (l !== undefined) await l;
  const range = new MmuNotifierRange();
  mmu_notifier_range_init_owner(range, MMU_NOTIFY_EXCLUSIVE, 0, mm, address, address + k.mmLayer.pageSize, 0);
  const s = mmu_notifier_invalidate_range_start(range);
  if (s !== undefined) await s;
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  const slot = pte_lookup(k, w[mm + MmL.pgd], address);
  if (slot >= 0 && w[slot] === orig_pte) restore_exclusive_pte(k, vma, page, slot);
  spin_unlock(ptl);
  folio_unlock(k, page);
  folio_put(k, page);
  const e = mmu_notifier_invalidate_range_end(range);
  if (e !== undefined) await e;
  return 0;
}
