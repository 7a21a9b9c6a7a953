// mprotect (mm/mprotect.c). change_protection starts its MMU_NOTIFY_PROTECTION_VMA range
// lazily, at the first populated pud of each pgd entry's part of the range, over
// [that address, end of the part) (change_pud_range), so an unpopulated range raises nothing.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { EINVAL, ENOMEM } from '../shm/errno.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { MMU_NOTIFY_PROTECTION_VMA, MmuNotifierRange, mmu_notifier_range_init } from '../notifier/range.js';
import { mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start } from '../notifier/invalidate.js';
import { drive } from '../notifier/drive.js';
import { EACCES, PROT_EXEC, PROT_GROWSDOWN, PROT_GROWSUP, PROT_READ, PROT_SEM, PROT_WRITE } from './mman.js';
import { mmap_write_lock, mmap_write_unlock } from './mm_inline.js';
import { PTRS_PER_TABLE, _PAGE_PROTNONE, flush_tlb_mm, level_span, ptl_of } from './mm_pt.js';
import { PG_anon, PG_anon_exclusive, PageL } from './page.js';
import { _PAGE_RW, is_swap_pte, is_writable_swp_entry, make_readable_swp_entry, pte_pfn, pte_present, pte_special } from './pgtable.js';
import { MmL, VM_ACCESS_FLAGS, VM_SHARED, VM_WRITE } from './types.js';
import { V_FLAGS, calc_vm_prot_bits, find_vma, split_vma, vma_end, vma_merge_neighbours, vma_start } from './vma.js';


/** The PTE a present entry becomes under a VMA's new flags (pte_modify + the write upgrade). */
function pte_modify(k: Kernel, pte: number, vflags: number): number {
  if ((vflags & VM_ACCESS_FLAGS) === 0) return (pte & ~_PAGE_RW) | _PAGE_PROTNONE;
  let n = pte & ~(_PAGE_RW | _PAGE_PROTNONE);
  if ((vflags & VM_WRITE) === 0) return n;
  if ((vflags & VM_SHARED) !== 0) return n | _PAGE_RW; // shmem: vm_page_prot is writable
  // private: MM_CP_TRY_CHANGE_WRITABLE, only for exclusive anon pages (can_change_pte_writable)
  if (!pte_special(pte)) {
    const f = k.arena.i32[k.zone.page(pte_pfn(pte)) + PageL.flags];
    if ((f & (PG_anon | PG_anon_exclusive)) === (PG_anon | PG_anon_exclusive)) n |= _PAGE_RW;
  }
  return n;
}

/** change_pte_range over the PTE table `table` for [start, end), PTE lock held. */
function change_pte_table(k: Kernel, table: number, base: number, start: number, end: number, vflags: number): number {
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const at = k.pgtables.pool.at(table);
  const first = Math.max(0, Math.floor((start - base) / ps));
  const last = Math.min(PTRS_PER_TABLE - 1, Math.floor((end - 1 - base) / ps));
  let pages = 0;
  for (let i = first; i <= last; i++) {
    const pte = w[at + i];
    if (!pte_present(pte)) {
      // As change_pte_range: a writable migration, device-private or device-exclusive entry
      // becomes read-only whatever the new protection ("a protection check is difficult so
      // just be safe and disable write"); the next write fault decides again.
      if (is_swap_pte(pte) && is_writable_swp_entry(pte)) {
        w[at + i] = make_readable_swp_entry(pte);
        pages++;
      }
      continue;
    }
    const n = pte_modify(k, pte, vflags);
    if (n !== pte) w[at + i] = n;
    pages++;
  }
  return pages;
}

/**
 * change_protection: apply `vflags` to the present PTEs of [start, end) of one VMA. A generator
 * (run by drive) because a notifier start or end may sleep.
 */
export function* change_protection(k: Kernel, mm: number, start: number, end: number, vflags: number): Generator<unknown, number, unknown> {
  const w = k.arena.i32;
  const pgd = w[mm + MmL.pgd];
  if (pgd === 0) return 0;
  const pool = k.pgtables.pool;
  const s0 = level_span(k, 0);
  const s1 = level_span(k, 1);
  const s2 = level_span(k, 2);
  const ptl = ptl_of(k, mm);
  let pages = 0;
  for (let addr = start; addr < end; ) {
    const next = Math.min(end, (Math.floor(addr / s0) + 1) * s0);
    const pud = w[pool.at(pgd) + (Math.floor(addr / s0) % PTRS_PER_TABLE)];
    if (pud !== 0) {
      // change_pud_range: the range opens at the first populated pud
      let range: MmuNotifierRange | null = null;
      for (let a = addr; a < next; ) {
        const pnext = Math.min(next, (Math.floor(a / s1) + 1) * s1);
        const pmd = w[pool.at(pud) + (Math.floor(a / s1) % PTRS_PER_TABLE)];
        if (pmd !== 0) {
          if (range === null) {
            range = new MmuNotifierRange();
            mmu_notifier_range_init(range, MMU_NOTIFY_PROTECTION_VMA, 0, mm, a, next);
            const p = mmu_notifier_invalidate_range_start(range);
            if (p !== undefined) yield p;
          }
          spin_lock(ptl);
          try {
            for (let b = a; b < pnext; ) {
              const bnext = Math.min(pnext, (Math.floor(b / s2) + 1) * s2);
              const pte = w[pool.at(pmd) + (Math.floor(b / s2) % PTRS_PER_TABLE)];
              if (pte !== 0) pages += change_pte_table(k, pte, Math.floor(b / s2) * s2, b, bnext, vflags);
              b = bnext;
            }
          } finally {
            spin_unlock(ptl);
          }
        }
        a = pnext;
      }
      if (range !== null) {
        flush_tlb_mm(k, mm);
        const p = mmu_notifier_invalidate_range_end(range);
        if (p !== undefined) yield p;
      }
    }
    addr = next;
  }
  return pages;
}

/**
 * mprotect_fixup: give [start, end) of vma the flags `newflags`, splitting and merging VMAs;
 * nothing at all (not even a notifier) when the flags do not change.
 */
function* mprotect_fixup(k: Kernel, mm: number, vma: number, start: number, end: number, newflags: number): Generator<unknown, number, unknown> {
  const w = k.arena.i32;
  if (w[vma + V_FLAGS] === newflags) return 0;
  if (start > vma_start(k, vma)) {
    if (split_vma(k, mm, vma, start, true) === 0) return -ENOMEM;
  }
  if (end < vma_end(k, vma)) {
    if (split_vma(k, mm, vma, end, false) === 0) return -ENOMEM;
  }
  w[vma + V_FLAGS] = newflags;
  vma_merge_neighbours(k, mm, vma);
  yield* change_protection(k, mm, start, end, newflags);
  return 0;
}

/**
 * do_mprotect_pkey (pkey -1): change the protection of [start, start + len) of mm. 0, -EINVAL
 * (unaligned start, bad prot), -ENOMEM (overflow, or a hole: VMAs before the hole are changed,
 * as in the kernel), -EACCES (a right the VMA may never have).
 */
export function do_mprotect(mm: number, start: number, len: number, prot: number): number | Promise<number> {
  return drive(mprotectGen(current.k, mm, start, len, prot));
}

function* mprotectGen(k: Kernel, mm: number, start: number, len: number, prot: number): Generator<unknown, number, unknown> {
  const ps = k.mmLayer.pageSize;
  const grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP);
  prot &= ~(PROT_GROWSDOWN | PROT_GROWSUP);
  if (grows === (PROT_GROWSDOWN | PROT_GROWSUP)) return -EINVAL;
  if (!Number.isInteger(start) || start < 0 || start % ps !== 0) return -EINVAL;
  if (!Number.isInteger(len) || len < 0) return -EINVAL;
  if (len === 0) return 0;
  len = Math.ceil(len / ps) * ps;
  const end = start + len;
  if (end <= start || end > 2 ** 64 - ps) return -ENOMEM;
  if ((prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM)) !== 0) return -EINVAL;
  if (grows !== 0) return -EINVAL; // no VM_GROWSDOWN/UP mappings here
  const l = mmap_write_lock(mm);
  if (l !== undefined) yield l;
  try {
    const w = k.arena.i32;
    let vma = find_vma(k, mm, start);
    if (vma === 0 || vma_start(k, vma) >= end || vma_start(k, vma) > start) return -ENOMEM;
    let nstart = start;
    let tmp = vma_start(k, vma);
    let error = 0;
    while (vma !== 0 && vma_start(k, vma) < end) {
      if (vma_start(k, vma) !== tmp) {
        error = -ENOMEM;
        break;
      }
      const old = w[vma + V_FLAGS];
      const newflags = calc_vm_prot_bits(prot) | (old & ~VM_ACCESS_FLAGS);
      // newflags >> 4 shifts VM_MAY* onto VM_*
      if ((newflags & ~(newflags >> 4) & VM_ACCESS_FLAGS) !== 0) {
        error = -EACCES;
        break;
      }
      tmp = Math.min(vma_end(k, vma), end);
      error = yield* mprotect_fixup(k, mm, vma, nstart, tmp, newflags);
      if (error !== 0) break;
      // continue after the VMA the changed part ended up in (it may have merged onward)
      tmp = vma_end(k, find_vma(k, mm, tmp - 1));
      nstart = tmp;
      vma = find_vma(k, mm, tmp);
    }
    if (error === 0 && tmp < end) error = -ENOMEM;
    return error;
  } finally {
    mmap_write_unlock(mm);
  }
}
