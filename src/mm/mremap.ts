// mremap (mm/mremap.c): shrink in place (munmap of the tail), grow in place when the room
// after the VMA is free, else move: MMU_NOTIFY_UNMAP over the old range while the PTEs move
// (move_page_tables), then munmap's UNMAP of the old range (reference §7).

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { EFAULT, EINVAL, ENOMEM } from '../shm/errno.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { MMU_NOTIFY_UNMAP, MmuNotifierRange, mmu_notifier_range_init } from '../notifier/range.js';
import { mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start } from '../notifier/invalidate.js';
import { drive } from '../notifier/drive.js';
import { get_unmapped_area, munmap_locked } from './mmap.js';
import { MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE } from './mman.js';
import { mmap_write_lock, mmap_write_unlock } from './mm_inline.js';
import { flush_tlb_mm, mm_pgd, page_align, pte_alloc_lookup, pte_lookup, ptl_of } from './mm_pt.js';
import { is_swap_entry, is_swap_pte, pte_pfn, pte_present, pte_special, swp_offset } from './pgtable.js';
import { page_move_rmap } from './rmap.js';
import { is_ulong } from './types.js';
import { V_NEXT, vm_area_dup, vma_adjust, vma_end, vma_link, vma_lookup, vma_merge_neighbours, vma_pgoff, vma_set_range, vma_start } from './vma.js';

/**
 * do_mremap: shrink in place, grow in place when the room is free, else move (MREMAP_MAYMOVE,
 * MREMAP_FIXED). Moving raises UNMAP over the old range as the PTEs move, then munmap's UNMAP
 * of it. MREMAP_DONTUNMAP and old_len 0 are not supported here (-EINVAL).
 */
export function do_mremap(mm: number, addr: number, old_len: number, new_len: number, flags: number, new_addr = 0): number | Promise<number> {
  return drive(mremapGen(current.k, mm, addr, old_len, new_len, flags, new_addr));
}

function* mremapGen(k: Kernel, mm: number, addr: number, old_len: number, new_len: number, flags: number, new_addr: number): Generator<unknown, number, unknown> {
  const ps = k.mmLayer.pageSize;
  if ((flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)) !== 0) return -EINVAL;
  if ((flags & MREMAP_FIXED) !== 0 && (flags & MREMAP_MAYMOVE) === 0) return -EINVAL;
  if ((flags & MREMAP_DONTUNMAP) !== 0) return -EINVAL;
  if (!is_ulong(addr) || !is_ulong(old_len) || !is_ulong(new_len) || !is_ulong(new_addr) || addr % ps !== 0) return -EINVAL;
  old_len = page_align(k, old_len);
  new_len = page_align(k, new_len);
  if (new_len === 0 || old_len === 0) return -EINVAL;
  const ts = k.mmLayer.taskSize;
  if (addr + old_len > ts || new_len > ts) return -EINVAL;
  const l = mmap_write_lock(mm);
  if (l !== undefined) yield l;
  try {
    if ((flags & MREMAP_FIXED) !== 0) {
      if (new_addr % ps !== 0 || new_addr > ts - new_len) return -EINVAL;
      if (new_addr < addr + old_len && addr < new_addr + new_len) return -EINVAL; // overlap
      const r = yield* munmap_locked(k, mm, new_addr, new_addr + new_len, false);
      if (r !== 0) return r;
      if (old_len > new_len) {
        const r2 = yield* munmap_locked(k, mm, addr + new_len, addr + old_len, false);
        if (r2 !== 0) return r2;
        old_len = new_len;
      }
    } else if (old_len >= new_len) {
      if (old_len > new_len) {
        const r = yield* munmap_locked(k, mm, addr + new_len, addr + old_len, false);
        if (r !== 0) return r;
      }
      return addr;
    }
    const vma = vma_lookup(k, mm, addr);
    if (vma === 0 || addr + old_len > vma_end(k, vma)) return -EFAULT;
    if ((flags & MREMAP_FIXED) === 0) {
      // grow in place when the VMA ends here and the room after it is free
      if (addr + old_len === vma_end(k, vma) && addr + new_len <= ts) {
        const nx = k.arena.i32[vma + V_NEXT];
        if (nx === 0 || vma_start(k, nx) >= addr + new_len) {
          vma_adjust(k, vma, vma_start(k, vma), addr + new_len, vma_pgoff(k, vma));
          vma_merge_neighbours(k, mm, vma);
          return addr;
        }
      }
      if ((flags & MREMAP_MAYMOVE) === 0) return -ENOMEM;
      new_addr = get_unmapped_area(k, mm, 0, new_len, 0);
      if (new_addr < 0) return new_addr;
    }
    return yield* move_vma(k, mm, vma, addr, old_len, new_len, new_addr);
  } finally {
    mmap_write_unlock(mm);
  }
}

/** move_vma: a new VMA at new_addr takes over the old range's pages; the old range is unmapped. */
function* move_vma(k: Kernel, mm: number, vma: number, old_addr: number, old_len: number, new_len: number, new_addr: number): Generator<unknown, number, unknown> {
  const ps = k.mmLayer.pageSize;
  const nv = vm_area_dup(k, vma);
  if (nv === 0) return -ENOMEM;
  const pgoff = vma_pgoff(k, vma) + (old_addr - vma_start(k, vma)) / ps;
  vma_set_range(k, nv, new_addr, new_addr + new_len, pgoff);
  vma_link(k, mm, nv);
  // move_page_tables: UNMAP over the old range while the PTEs move
  const range = new MmuNotifierRange();
  mmu_notifier_range_init(range, MMU_NOTIFY_UNMAP, 0, mm, old_addr, old_addr + old_len);
  const s = mmu_notifier_invalidate_range_start(range);
  if (s !== undefined) yield s;
  const moved = move_ptes(k, mm, old_addr, new_addr, old_len);
  const e = mmu_notifier_invalidate_range_end(range);
  if (e !== undefined) yield e;
  if (!moved) return -ENOMEM;
  const r = yield* munmap_locked(k, mm, old_addr, old_addr + old_len, false);
  if (r !== 0) return r;
  vma_merge_neighbours(k, mm, nv);
  return new_addr;
}

/** Move every entry of [old, old + len) to [new, new + len), PTE lock held; rmap follows. */
function move_ptes(k: Kernel, mm: number, old_addr: number, new_addr: number, len: number): boolean {
  const w = k.arena.i32;
  const pgd = mm_pgd(k, mm);
  if (pgd === 0) return false;
  const entries: [number, number][] = [];
  k.pgtables.walk(pgd, old_addr, old_addr + len, (_slot, a) => entries.push([a, 0]));
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  let ok = true;
  try {
    for (const [a] of entries) {
      const to = new_addr + (a - old_addr);
      const dst = pte_alloc_lookup(k, pgd, to);
      if (dst < 0) {
        ok = false;
        break;
      }
      const src = pte_lookup(k, pgd, a);
      const pte = Atomics.exchange(w, src, 0);
      w[dst] = pte;
      if (pte_present(pte) && !pte_special(pte)) page_move_rmap(k, pte_pfn(pte), mm, a, to);
      // migration and device entries keep their page's rmap node, and name the page by offset
      else if (is_swap_pte(pte) && !is_swap_entry(pte)) page_move_rmap(k, swp_offset(pte), mm, a, to);
    }
  } finally {
    spin_unlock(ptl);
  }
  flush_tlb_mm(k, mm);
  return ok;
}

