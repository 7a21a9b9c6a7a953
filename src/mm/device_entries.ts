// Non-swap entries that map a page (include/linux/swapops.h): migration, device-private and
// device-exclusive entries. How a CPU fault (do_swap_page), a zap and fork treat them; this
// module installs itself into the mm core's hooks when it loads (migrate_device.ts and
// device_exclusive.ts import it, so any user of device memory has it in its worker).
//
// Our bookkeeping: each of these entries keeps the rmap node and the page reference its PTE
// had. The kernel's device-private and (≥ v6.15) device-exclusive entries do too; its migration
// entries hold neither, but keeping them lets remove_migration_ptes find every entry (fork's
// copies included) through the page's rmap list. rss counts all three as the page's kind, as
// the kernel does. A migration entry also keeps the PTE's young and dirty bits (bits 3 and 2,
// free in a non-present entry), like make_migration_entry_young/dirty.

import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { EBUSY, ENOENT, ENOMEM } from '../shm/errno.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { is_cow_mapping, forkHooks } from './fork.js';
import { VM_FAULT_SIGBUS, faultHooks } from './memory.js';
import { folio_get, folio_put, page_pgmap, pgmap_ops, type VmFault } from './memremap.js';
import { pte_lookup, ptl_of } from './mm_pt.js';
import { folio_trylock, folio_unlock } from './folio_lock.js';
import { PG_anon, PG_anon_exclusive, PageL } from './page.js';
import {
  SWP_DEVICE_PRIVATE_READ,
  SWP_DEVICE_PRIVATE_WRITE,
  SWP_MIGRATION_READ,
  SWP_MIGRATION_WRITE,
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  is_device_exclusive_entry,
  is_device_private_entry,
  is_migration_entry,
  is_writable_swp_entry,
  pte_pfn,
  pte_present,
  pte_special,
  swp_entry_to_pte,
  swp_offset,
  swp_type,
} from './pgtable.js';
import { page_add_rmap, page_remove_rmap } from './rmap.js';
import { MM_ANONPAGES, MM_SHMEMPAGES, MmL } from './types.js';
import { zapHooks } from './unmap.js';
import { V_FLAGS, V_MM } from './vma.js';
import { remove_device_exclusive_entry, try_restore_exclusive_pte } from './device_exclusive.js';

/** How long one migration_entry_wait sleeps at most before the fault looks again (ns). */
export const MIGRATION_WAIT_NS = 1_000_000;

/** bits of the PTE a migration entry carries over (make_migration_entry_young/dirty) */
const MIG_CARRY = _PAGE_ACCESSED | _PAGE_DIRTY;

/** A migration entry for pfn; young/dirty come from the PTE it replaces. */
export function make_migration_entry(pfn: number, write: boolean, pte: number): number {
  return swp_entry_to_pte(write ? SWP_MIGRATION_WRITE : SWP_MIGRATION_READ, pfn) | (pte_present(pte) ? pte & MIG_CARRY : 0);
}

export const is_migration_entry_young = (pte: number): boolean => (pte & _PAGE_ACCESSED) !== 0;
export const is_migration_entry_dirty = (pte: number): boolean => (pte & _PAGE_DIRTY) !== 0;

/** The read-only form of a writable migration or device-private entry (carried bits kept). */
function make_readable(pte: number): number {
  const t = swp_type(pte);
  const ro = t === SWP_MIGRATION_WRITE ? SWP_MIGRATION_READ : t === SWP_DEVICE_PRIVATE_WRITE ? SWP_DEVICE_PRIVATE_READ : t;
  return swp_entry_to_pte(ro, swp_offset(pte)) | (pte & MIG_CARRY);
}

/** is the entry one of ours: a page is behind it */
export function is_pfn_swap_entry(pte: number): boolean {
  return is_migration_entry(pte) || is_device_private_entry(pte) || is_device_exclusive_entry(pte);
}

/** mm_counter: the rss counter a page counts in (all file pages here are shmem) */
export function mm_counter(k: Kernel, pfn: number): number {
  return (k.arena.i32[k.zone.page(pfn) + PageL.flags] & PG_anon) !== 0 ? MM_ANONPAGES : MM_SHMEMPAGES;
}

/** Does (mm, addr) map pfn, present or through one of our entries? Caller holds mm's PTE lock or accepts a racy look. */
export function pte_maps_pfn(k: Kernel, mm: number, addr: number, pfn: number): number {
  const pgd = k.arena.i32[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  if (slot < 0) return 0;
  const pte = k.arena.i32[slot];
  if (pte_present(pte)) return !pte_special(pte) && pte_pfn(pte) === pfn ? pte : 0;
  return is_pfn_swap_entry(pte) && swp_offset(pte) === pfn ? pte : 0;
}

// ---- do_swap_page for non-swap entries --------------------------------------------------------

/**
 * migration_entry_wait: sleep until the PTE stops being that migration entry (whoever removes
 * one wakes the PTE word; the bound covers one removed by a zap), then 0: the access retries.
 */
export async function migration_entry_wait(k: Kernel, mm: number, addr: number, pte: number): Promise<number> {
  const pgd = k.arena.i32[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  if (slot >= 0 && Atomics.load(k.arena.i32, slot) === pte) {
    const r = k.sched.wait(slot, pte, MIGRATION_WAIT_NS);
    if (typeof r !== 'number') await r;
  }
  return 0;
}

/**
 * do_swap_page on a device-private entry: with the page locked and referenced, the pagemap's
 * migrate_to_ram moves it back. A page someone else holds locked (a migration in flight)
 * makes the access retry.
 */
function do_device_private_fault(k: Kernel, mm: number, vma: number, addr: number, pte: number, flags: number): number | Promise<number> {
  const w = k.arena.i32;
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  const slot = pte_lookup(k, w[mm + MmL.pgd], addr);
  if (slot < 0 || w[slot] !== pte) {
    spin_unlock(ptl);
    return 0;
  }
  const pfn = swp_offset(pte);
  // Get a page reference while we know the page can't be freed.
  if (!folio_trylock(k, pfn)) {
    spin_unlock(ptl);
    return 0;
  }
  folio_get(k, pfn);
  spin_unlock(ptl);
  const done = (ret: number): number => {
    folio_unlock(k, pfn);
    folio_put(k, pfn);
    return ret;
  };
  const pgmap = page_pgmap(k, pfn);
  if (pgmap === 0) {
    splat(k, 'bug', `BUG: do_swap_page: device-private entry at 0x${addr.toString(16)} names pfn ${pfn}, which is not a device page`);
    return done(VM_FAULT_SIGBUS);
  }
  const vmf: VmFault = { mm, vma, address: addr, flags, orig_pte: pte, page: pfn };
  let r: number | Promise<number>;
  try {
    r = pgmap_ops(k, pgmap).migrate_to_ram(vmf);
  } catch (e) {
    done(0);
    throw e;
  }
  if (typeof r === 'number') return done(r);
  return r.then(done, (e: unknown) => {
    done(0);
    throw e;
  });
}

function do_non_swap_entry(k: Kernel, mm: number, vma: number, addr: number, pte: number, flags: number): number | Promise<number> {
  if (is_migration_entry(pte)) return migration_entry_wait(k, mm, addr, pte);
  if (is_device_private_entry(pte)) return do_device_private_fault(k, mm, vma, addr, pte, flags);
  if (is_device_exclusive_entry(pte)) return remove_device_exclusive_entry({ mm, vma, address: addr, flags, orig_pte: pte, page: swp_offset(pte) });
  splat(k, 'warn', `WARNING: do_swap_page: unknown non-swap entry 0x${(pte >>> 0).toString(16)} at 0x${addr.toString(16)}`);
  return VM_FAULT_SIGBUS;
}

// ---- zap ---------------------------------------------------------------------------------------

/** zap_nonpresent_ptes for our entries, PTE lock held: rss, rmap and the entry's reference go. */
function zap_non_swap_entry(k: Kernel, mm: number, addr: number, entry: number): void {
  if (!is_pfn_swap_entry(entry)) return;
  const pfn = swp_offset(entry);
  k.arena.i32[mm + MmL.rss_stat + mm_counter(k, pfn)]--;
  page_remove_rmap(k, pfn, mm, addr);
  folio_put(k, pfn);
}

// ---- fork --------------------------------------------------------------------------------------

/**
 * copy_nonpresent_pte for our entries, parent's PTE lock held. 0 (the child's entry is
 * written), -ENOENT (a device-exclusive entry was restored: copy the now present PTE), -EBUSY
 * (its page is locked: fork fails with -ENOMEM, as copy_pte_range makes it), -ENOMEM.
 * A writable entry of a COW mapping becomes read-only in both, as a present PTE would.
 */
function copy_non_swap_entry(k: Kernel, dst: number, src: number, srcSlot: number, dstSlot: number, addr: number): number {
  const w = k.arena.i32;
  const pte = w[srcSlot];
  if (is_device_exclusive_entry(pte)) return try_restore_exclusive_pte(k, src, addr, srcSlot, pte) ? -ENOENT : -EBUSY;
  if (!is_migration_entry(pte) && !is_device_private_entry(pte)) {
    w[dstSlot] = pte;
    return 0;
  }
  const pfn = swp_offset(pte);
  const dstMm = w[dst + V_MM];
  if (!page_add_rmap(k, pfn, dstMm, addr)) return -ENOMEM;
  folio_get(k, pfn);
  w[dstMm + MmL.rss_stat + mm_counter(k, pfn)]++;
  // folio_try_dup_anon_rmap_pte: shared now (device pages cannot be pinned, so it cannot fail)
  Atomics.and(w, k.zone.page(pfn) + PageL.flags, ~PG_anon_exclusive);
  let child = pte;
  if (is_writable_swp_entry(pte) && is_cow_mapping(w[src + V_FLAGS])) {
    child = make_readable(pte);
    w[srcSlot] = child;
  }
  w[dstSlot] = child;
  return 0;
}

faultHooks.do_non_swap_entry = do_non_swap_entry;
forkHooks.copy_nonpresent = copy_non_swap_entry;
// real swap entries go to the swap layer's free_swap_and_cache; everything else comes here
zapHooks.zap_nonpresent = zap_non_swap_entry;
