// do_swap_page (mm/memory.c) for real swap entries, and the swap layer's hooks into the mm
// core: the fault, zap (free_swap_and_cache), fork and try_to_unmap_one (swap_duplicate).
// This module installs them when it loads; boot.ts imports it, so every worker has it.
//
// The fault: find the page in the swap cache or read it in (swap_state.ts), lock it, check
// that it is still the slot's page and that the PTE still holds the entry, then map it:
// - the PTE's swap count goes (swap_free); a write fault that leaves the slot with no other
//   user frees it from the swap cache (should_try_to_free_swap -> folio_free_swap), as does a
//   swap area more than half full or a VM_LOCKED VMA;
// - an exclusive page is mapped writable when the VMA is (dirty only on a write fault), a
//   shared one read-only; a write to a shared one then breaks COW through handle_mm_fault.
// The kernel knows exclusivity from the swap PTE's SWP_EXCLUSIVE bit, which try_to_unmap_one
// sets for a PG_anon_exclusive page. Our swap PTEs carry no such bit (rmap.ts writes the
// entry), so we decide it the way that bit would have: no other swap PTE names the slot, no
// PTE maps the page, and nobody but us and the swap cache holds a reference. A read fault
// keeps the page in the swap cache: its slot still holds a clean copy.

import type { Kernel } from '../sched/kernel.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { folio_lock, folio_trylock, folio_unlock } from './folio_lock.js';
import { forkHooks } from './fork.js';
import { FAULT_FLAG_WRITE, VM_FAULT_MAJOR, VM_FAULT_OOM, VM_FAULT_SIGBUS, faultHooks, handle_mm_fault } from './memory.js';
import { pte_lookup, ptl_of, put_page, swapCacheHooks } from './mm_pt.js';
import { PG_anon, PG_anon_exclusive, PG_swapcache, PG_uptodate, PageL } from './page.js';
import { _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_RW, mk_pte, swp_offset } from './pgtable.js';
import { page_add_rmap, rmapHooks } from './rmap.js';
import { mem_cgroup_swapin_charge_folio } from './memcontrol.js';
import { SWAPIN_GONE, folio_free_swap, free_swap_and_cache, free_swap_cache, read_swap_cache_async, swap_cache_get_folio, swapHooks } from './swap_state.js';
import { swap_count, swap_duplicate, swap_entry_slot, swap_free, vm_swap_full } from './swapfile.js';
import { MM_ANONPAGES, MM_SWAPENTS, MmL, VM_LOCKED, VM_WRITE } from './types.js';
import { V_FLAGS, anon_vma_prepare } from './vma.js';
import { zapHooks } from './unmap.js';
import { emitSwapin } from './events.js';

const P_FLAGS = PageL.flags;
const P_REF = PageL.refcount;

/**
 * do_swap_page on a swap entry `orig` at addr (mmap_lock held for read, PTE lock not held).
 * 0 (mapped, or the PTE changed: the access retries), VM_FAULT_MAJOR when the slot was read,
 * VM_FAULT_OOM, VM_FAULT_SIGBUS. A number when nothing slept.
 */
export function do_swap_page(k: Kernel, mm: number, vma: number, addr: number, orig: number, flags: number): number | Promise<number> {
  const s = swap_entry_slot(k, orig, 'do_swap_page');
  if (s === 0) return VM_FAULT_SIGBUS;
  const got = swap_cache_get_folio(k, s);
  if (got > 0 && folio_trylock(k, got)) return swapin_map(k, mm, vma, addr, orig, flags, got, 0);
  return swapSlow(k, mm, vma, addr, orig, flags, s, got);
}

async function swapSlow(k: Kernel, mm: number, vma: number, addr: number, orig: number, flags: number, s: number, got: number): Promise<number> {
  let pfn = got > 0 ? got : 0;
  let ret = 0;
  if (pfn === 0) {
    const out = { major: false };
    const r = read_swap_cache_async(k, s, mm, out);
    pfn = typeof r === 'number' ? r : await r;
    if (pfn === SWAPIN_GONE) return 0; // zapped or swapped in by someone else: retry
    if (pfn === 0) return pte_same(k, mm, addr, orig) ? VM_FAULT_OOM : 0;
    if (out.major) {
      emitSwapin(k, mm, addr, s);
      ret = VM_FAULT_MAJOR;
      k.swap.count('majfault');
    }
  }
  const l = folio_lock(k, pfn);
  if (l !== undefined) await l;
  return swapin_map(k, mm, vma, addr, orig, flags, pfn, ret);
}

function pte_same(k: Kernel, mm: number, addr: number, orig: number): boolean {
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  const slot = pte_lookup(k, k.arena.i32[mm + MmL.pgd], addr);
  const same = slot >= 0 && k.arena.i32[slot] === orig;
  spin_unlock(ptl);
  return same;
}

/** should_try_to_free_swap: drop the swap cache now rather than keep the slot's copy. */
function should_try_to_free_swap(k: Kernel, pfn: number, vma: number, write: boolean): boolean {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  if ((Atomics.load(w, p + P_FLAGS) & PG_swapcache) === 0) return false;
  if (vm_swap_full(k) || (w[vma + V_FLAGS] & VM_LOCKED) !== 0) return true;
  // we are likely the only user: our reference and the cache's
  return write && Atomics.load(w, p + P_REF) === 2;
}

/** The page is locked and referenced (our reference becomes the PTE's): map it if the PTE still holds `orig`. */
function swapin_map(k: Kernel, mm: number, vma: number, addr: number, orig: number, flags: number, pfn: number, ret: number): number | Promise<number> {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  const s = swp_offset(orig);
  const drop = (r: number): number => {
    folio_unlock(k, pfn);
    put_page(k, pfn);
    return r;
  };
  // folio_free_swap or reclaim took it out of the swap cache under us: retry
  if ((Atomics.load(w, p + P_FLAGS) & PG_swapcache) === 0 || w[p + PageL.private] !== s) return drop(0);
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  const slot = pte_lookup(k, w[mm + MmL.pgd], addr);
  if (slot < 0 || w[slot] !== orig) {
    spin_unlock(ptl);
    // zapped meanwhile: free_swap_and_cache could not take the lock we hold, so do its part
    if (w[p + PageL.mapcount] === 0) folio_free_swap(k, pfn);
    return drop(ret);
  }
  if ((Atomics.load(w, p + P_FLAGS) & PG_uptodate) === 0) {
    spin_unlock(ptl);
    return drop(VM_FAULT_SIGBUS);
  }
  // pte_swp_exclusive, decided under the PTE lock (fork cannot share the entry meanwhile)
  const exclusive = swap_count(k, s) === 1 && w[p + PageL.mapcount] === 0 && Atomics.load(w, p + P_REF) === 2;
  anon_vma_prepare(k, vma);
  if (!page_add_rmap(k, pfn, mm, addr)) {
    spin_unlock(ptl);
    return drop(VM_FAULT_OOM);
  }
  swap_free(k, orig);
  const write = (flags & FAULT_FLAG_WRITE) !== 0;
  if (should_try_to_free_swap(k, pfn, vma, write)) folio_free_swap(k, pfn);
  w[mm + MmL.rss_stat + MM_ANONPAGES]++;
  w[mm + MmL.rss_stat + MM_SWAPENTS]--;
  let pte = mk_pte(pfn, false) | _PAGE_ACCESSED;
  let wrote = false;
  if (exclusive || Atomics.load(w, p + P_REF) === 1) {
    if ((w[vma + V_FLAGS] & VM_WRITE) !== 0) {
      pte |= _PAGE_RW;
      if (write) {
        pte |= _PAGE_DIRTY;
        wrote = true;
      }
    }
    Atomics.or(w, p + P_FLAGS, PG_anon | PG_anon_exclusive);
  } else Atomics.or(w, p + P_FLAGS, PG_anon);
  k.arena.f64[(p + PageL.index) >> 1] = addr / k.mmLayer.pageSize;
  Atomics.store(w, slot, pte);
  spin_unlock(ptl);
  folio_unlock(k, pfn);
  if (!write || wrote) return ret;
  // a write to a page we may not reuse: do_wp_page copies it
  const r = handle_mm_fault(mm, vma, addr, flags);
  return typeof r === 'number' ? ret | r : r.then((v) => ret | v);
}

/** fork's copy of a swap PTE (copy_nonpresent_pte): one more reference on the slot (a free one splats). */
function fork_swap_duplicate(k: Kernel, entry: number): void {
  swap_duplicate(k, entry);
}

faultHooks.do_swap_page = do_swap_page;
zapHooks.free_swap_and_cache = free_swap_and_cache;
forkHooks.swap_duplicate = fork_swap_duplicate;
rmapHooks.swap_duplicate = swap_duplicate;
swapCacheHooks.free_swap_cache = free_swap_cache;
swapHooks.swapin_charge = mem_cgroup_swapin_charge_folio;
