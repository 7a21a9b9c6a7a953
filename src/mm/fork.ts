// fork's address-space copy (kernel/fork.c dup_mmap, mm/memory.c copy_page_range).
// Private anonymous pages become copy-on-write: both PTEs lose write, inside one
// MMU_NOTIFY_PROTECTION_PAGE range over the parent VMA, blockable. Shared mappings (and
// private VMAs that never had an anonymous page) copy nothing: the child faults them in.
// An exclusive anon page that may be DMA-pinned is copied for the child at once, so the
// parent keeps writing the page the device pinned (reference §6.2).

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { ENOENT, ENOMEM } from '../shm/errno.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { down_write_nested } from '../sync/rwsem.js';
import { MMU_NOTIFY_PROTECTION_PAGE, MmuNotifierRange, mmu_notifier_range_init } from '../notifier/range.js';
import { mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start } from '../notifier/invalidate.js';
import { drive } from '../notifier/drive.js';
import { GFP_HIGHUSER_MOVABLE } from './gfp.js';
import { mm_flags_test, mmap_lock_of, mmap_write_lock, mmap_write_unlock } from './mm_inline.js';
import { flush_tlb_mm, folio_maybe_dma_pinned, get_page, mm_pgd, pte_alloc_lookup, pte_lookup, ptl_of, put_page } from './mm_pt.js';
import { PG_anon, PG_anon_exclusive, PG_swapbacked, PG_uptodate, PageL } from './page.js';
import { alloc_page, copyPage } from './page_alloc.js';
import { folio_add_lru_vma } from './lru.js';
import { _PAGE_ACCESSED, _PAGE_DIRTY, is_swap_entry, mk_pte, pte_mkold, pte_pfn, pte_present, pte_special, pte_wrprotect } from './pgtable.js';
import { page_add_rmap } from './rmap.js';
import { MMF_HAS_PINNED, MM_ANONPAGES, MM_SWAPENTS, MmL, VM_DONTCOPY, VM_MAYWRITE, VM_PFNMAP, VM_MIXEDMAP, VM_SHARED, VM_WIPEONFORK, VM_WRITE } from './types.js';
import { V_ANON, V_FLAGS, V_MM, V_NEXT, anon_vma_prepare, vm_area_dup, vma_end, vma_link, vma_start } from './vma.js';

/**
 * Hooks: swap_duplicate (the swap layer): a copied swap entry takes another reference on its
 * slot. copy_nonpresent (device_entries.ts): copy_nonpresent_pte for migration, device-private
 * and device-exclusive entries, parent's PTE lock held; writes the child's entry and returns 0,
 * or -ENOENT when it made the parent's PTE present again (copy that), or another -errno.
 */
export const forkHooks: {
  swap_duplicate: ((k: Kernel, entry: number) => void) | null;
  copy_nonpresent: ((k: Kernel, dst: number, src: number, srcSlot: number, dstSlot: number, addr: number) => number) | null;
} = { swap_duplicate: null, copy_nonpresent: null };

const SINGLE_DEPTH_NESTING = 1;

/** is_cow_mapping: private and may be written */
export function is_cow_mapping(flags: number): boolean {
  return (flags & (VM_SHARED | VM_MAYWRITE)) === VM_MAYWRITE;
}

/** vma_needs_copy: only VMAs with anonymous pages (an anon_vma) or raw PFN maps need their PTEs copied. */
function vma_needs_copy(k: Kernel, dst: number, src: number): boolean {
  const w = k.arena.i32;
  if ((w[dst + V_FLAGS] & VM_WIPEONFORK) !== 0) return false;
  if ((w[src + V_FLAGS] & (VM_PFNMAP | VM_MIXEDMAP)) !== 0) return true;
  return w[src + V_ANON] !== 0;
}

/**
 * copy_page_range: copy the PTEs of src_vma (parent) into dst_vma (child). A generator: the
 * notifier and the allocation of an eager copy may sleep. 0 or -ENOMEM.
 */
export function* copy_page_range(k: Kernel, dst: number, src: number): Generator<unknown, number, unknown> {
  if (!vma_needs_copy(k, dst, src)) return 0;
  const w = k.arena.i32;
  const srcMm = w[src + V_MM];
  const dstMm = w[dst + V_MM];
  const start = vma_start(k, src);
  const end = vma_end(k, src);
  const cow = is_cow_mapping(w[src + V_FLAGS]);
  let range: MmuNotifierRange | null = null;
  if (cow) {
    range = new MmuNotifierRange();
    mmu_notifier_range_init(range, MMU_NOTIFY_PROTECTION_PAGE, 0, srcMm, start, end);
    const p = mmu_notifier_invalidate_range_start(range);
    if (p !== undefined) yield p;
  }
  try {
    const srcPgd = w[srcMm + MmL.pgd];
    const dstPgd = mm_pgd(k, dstMm);
    if (dstPgd === 0) return -ENOMEM;
    // the addresses with entries, read first: the copy may drop the lock to allocate
    const addrs: number[] = [];
    if (srcPgd !== 0) k.pgtables.walk(srcPgd, start, end, (_slot, addr) => addrs.push(addr));
    const ptl = ptl_of(k, srcMm);
    for (const addr of addrs) {
      let prealloc = 0;
      for (;;) {
        spin_lock(ptl);
        const r = copy_one_pte(k, dst, src, srcMm, dstMm, srcPgd, dstPgd, addr, cow, prealloc);
        spin_unlock(ptl);
        if (r === COPIED) break;
        if (r === NEED_PAGE) {
          // copy_present_page needs a frame: allocate without the lock, then try again
          const a = alloc_page(k, GFP_HIGHUSER_MOVABLE);
          prealloc = typeof a === 'number' ? a : ((yield a) as number);
          if (prealloc === 0) return -ENOMEM;
          continue;
        }
        return -ENOMEM;
      }
    }
    flush_tlb_mm(k, srcMm);
  } finally {
    if (range !== null) {
      const p = mmu_notifier_invalidate_range_end(range);
      if (p !== undefined) yield p;
    }
  }
  return 0;
}

const COPIED = 0;
const NEED_PAGE = 1;
const NO_MEMORY = 2;

/**
 * copy_present_pte / copy_nonpresent_pte for one address, the parent's PTE lock held (the
 * child mm is not visible to anyone yet). `prealloc` is a frame for an eager copy (consumed
 * or freed here).
 */
function copy_one_pte(k: Kernel, dst: number, src: number, srcMm: number, dstMm: number, srcPgd: number, dstPgd: number, addr: number, cow: boolean, prealloc: number): number {
  const w = k.arena.i32;
  const srcSlot = pte_lookup(k, srcPgd, addr);
  let pte = srcSlot < 0 ? 0 : w[srcSlot];
  const free = (): void => {
    if (prealloc !== 0) put_page(k, prealloc);
  };
  if (pte === 0) {
    free();
    return COPIED;
  }
  const dstSlot = pte_alloc_lookup(k, dstPgd, addr);
  if (dstSlot < 0) {
    free();
    return NO_MEMORY;
  }
  const rss = dstMm + MmL.rss_stat;
  if (!pte_present(pte)) {
    if (is_swap_entry(pte) || !forkHooks.copy_nonpresent) {
      if (is_swap_entry(pte)) {
        forkHooks.swap_duplicate?.(k, pte);
        w[rss + MM_SWAPENTS]++;
      }
      w[dstSlot] = pte;
      free();
      return COPIED;
    }
    const r = forkHooks.copy_nonpresent(k, dst, src, srcSlot, dstSlot, addr);
    if (r !== -ENOENT) {
      free();
      return r === 0 ? COPIED : NO_MEMORY; // copy_pte_range turns any failure into -ENOMEM
    }
    pte = w[srcSlot]; // a device-exclusive entry was made present again: copy that
  }
  if (pte_special(pte)) {
    w[dstSlot] = pte; // the zero page is shared by everyone already
    free();
    return COPIED;
  }
  const pfn = pte_pfn(pte);
  const p = k.zone.page(pfn);
  const pf = w[p + PageL.flags];
  if ((pf & PG_anon) !== 0 && (pf & PG_anon_exclusive) !== 0 && mm_flags_test(MMF_HAS_PINNED, srcMm) && folio_maybe_dma_pinned(k, pfn)) {
    // copy_present_page: the child gets its own copy now; the parent's PTE stays as it is
    if (prealloc === 0) return NEED_PAGE;
    copyPage(k, prealloc, pfn);
    const np = k.zone.page(prealloc);
    Atomics.or(w, np + PageL.flags, PG_anon | PG_anon_exclusive | PG_swapbacked | PG_uptodate);
    k.arena.f64[(np + PageL.index) >> 1] = addr / k.mmLayer.pageSize;
    if (!page_add_rmap(k, prealloc, dstMm, addr)) {
      put_page(k, prealloc);
      return NO_MEMORY;
    }
    anon_vma_prepare(k, dst);
    w[dstSlot] = mk_pte(prealloc, (w[dst + V_FLAGS] & VM_WRITE) !== 0) | _PAGE_DIRTY | _PAGE_ACCESSED;
    folio_add_lru_vma(k, prealloc, dst);
    w[rss + MM_ANONPAGES]++;
    return COPIED;
  }
  free();
  if (!page_add_rmap(k, pfn, dstMm, addr)) return NO_MEMORY;
  get_page(k, pfn);
  let child = pte;
  if ((pf & PG_anon) !== 0) {
    // folio_try_dup_anon_rmap_pte: the page is shared now
    Atomics.and(w, p + PageL.flags, ~PG_anon_exclusive); // atomic: reclaim may hold PG_locked
    w[rss + MM_ANONPAGES]++;
  }
  if (cow) {
    w[srcSlot] = pte_wrprotect(w[srcSlot]);
    child = pte_wrprotect(child);
  }
  w[dstSlot] = pte_mkold(child);
  return COPIED;
}

/**
 * dup_mmap: copy oldmm's VMAs and page tables into the new, empty mm. Both mmap_locks are
 * held for write (the child's nested). 0 or -ENOMEM (the caller mmputs the half-built mm).
 */
export function dup_mmap(newmm: number, oldmm: number): number | Promise<number> {
  return drive(dupGen(current.k, newmm, oldmm));
}

function* dupGen(k: Kernel, mm: number, oldmm: number): Generator<unknown, number, unknown> {
  const w = k.arena.i32;
  const f = k.arena.f64;
  const l1 = mmap_write_lock(oldmm);
  if (l1 !== undefined) yield l1;
  try {
    const l2 = down_write_nested(mmap_lock_of(mm), SINGLE_DEPTH_NESTING);
    if (l2 !== undefined) yield l2;
    try {
      f[(mm + MmL.mmap_base) >> 1] = f[(oldmm + MmL.mmap_base) >> 1];
      f[(mm + MmL.task_size) >> 1] = f[(oldmm + MmL.task_size) >> 1];
      for (let v = w[oldmm + MmL.mmap]; v !== 0; v = w[v + V_NEXT]) {
        if ((w[v + V_FLAGS] & VM_DONTCOPY) !== 0) continue;
        const tmp = vm_area_dup(k, v);
        if (tmp === 0) return -ENOMEM;
        w[tmp + V_MM] = mm;
        // anon_vma_fork: the child's anonymous pages get an anon_vma of their own
        w[tmp + V_ANON] = 0;
        if (w[v + V_ANON] !== 0 && (w[tmp + V_FLAGS] & VM_WIPEONFORK) === 0) anon_vma_prepare(k, tmp);
        vma_link(k, mm, tmp);
        if ((w[tmp + V_FLAGS] & VM_WIPEONFORK) === 0) {
          const r = yield* copy_page_range(k, tmp, v);
          if (r !== 0) return r;
        }
      }
      return 0;
    } finally {
      mmap_write_unlock(mm);
    }
  } finally {
    mmap_write_unlock(oldmm);
  }
}
