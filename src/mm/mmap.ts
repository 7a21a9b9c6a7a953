// The address-space syscalls of mm/mmap.c and mm/vma.c for anonymous memory, raising exactly
// the kernel's invalidations (reference §7):
// - munmap: one MMU_NOTIFY_UNMAP over the unmapped range, blockable (none if nothing is mapped);
// - mmap with MAP_FIXED over mappings: their munmap first;
// - exit_mmap's unmap: UNMAP over [0, ULONG_MAX).
// madvise.ts and mremap.ts hold the other two. Every entry takes an explicit mm (the kernel's
// current->mm). They return a number when nothing slept, a promise otherwise.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { EEXIST, EINVAL, ENOMEM, EOVERFLOW } from '../shm/errno.js';
import { downgrade_write } from '../sync/rwsem.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { drive } from '../notifier/drive.js';
import { FAULT_FLAG_WRITE, VM_FAULT_ERROR, handle_mm_fault } from './memory.js';
import { EBADF, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_POPULATE, MAP_PRIVATE, MAP_SHARED, MAP_SHARED_VALIDATE, MAP_TYPE, PROT_EXEC, PROT_READ, PROT_SEM, PROT_WRITE } from './mman.js';
import { mmap_lock_of, mmap_read_lock, mmap_read_unlock, mmap_write_lock, mmap_write_unlock } from './mm_inline.js';
import { page_align, ptl_of, tlb_finish_mmu, tlb_gather_mmu } from './mm_pt.js';
import { MmL, NR_MM_COUNTERS, ULONG_MAX, VM_ACCESS_FLAGS, VM_MAYEXEC, VM_MAYREAD, VM_MAYSHARE, VM_MAYWRITE, VM_NORESERVE, VM_SHARED, VM_WRITE, is_ulong, mmLabel } from './types.js';
import { free_pgtables, unmap_vmas } from './unmap.js';
import {
  V_FLAGS,
  V_NEXT,
  V_PREV,
  V_SHM,
  calc_vm_prot_bits,
  find_vma,
  find_vma_intersection,
  shmem_object_new,
  split_vma,
  vm_area_alloc,
  vm_area_free,
  vma_end,
  vma_link,
  vma_lookup,
  vma_merge_neighbours,
  vma_prev_of,
  vma_set_range,
  vma_start,
  vma_unlink,
} from './vma.js';

/** sysctl vm.max_map_count */
export const DEFAULT_MAX_MAP_COUNT = 65530;
/** sysctl vm.mmap_min_addr */
export const MMAP_MIN_ADDR = 65536;
/** the gap mmap_base leaves under the top for the stack */
const MIN_GAP = 128 * 1024 * 1024;

/** mm->mmap_base, set at first use (arch_pick_mmap_layout, without randomisation). */
export function mmap_base(k: Kernel, mm: number): number {
  const f = k.arena.f64;
  let base = f[(mm + MmL.mmap_base) >> 1];
  if (base === 0) {
    const top = k.mmLayer.taskSize;
    base = page_align(k, top - Math.min(MIN_GAP, Math.floor(top / 6))) - k.mmLayer.pageSize;
    f[(mm + MmL.mmap_base) >> 1] = base;
  }
  return base;
}

/** The highest free gap of `len` bytes below mmap_base (vm_unmapped_area, top-down); -ENOMEM if none. */
function unmapped_area_topdown(k: Kernel, mm: number, len: number): number {
  const w = k.arena.i32;
  const high = mmap_base(k, mm);
  const low = Math.max(MMAP_MIN_ADDR, k.mmLayer.pageSize);
  let last = w[mm + MmL.mmap];
  if (last !== 0) while (w[last + V_NEXT] !== 0) last = w[last + V_NEXT];
  // gaps from the top: [end of v's predecessor, start of v), starting above the last VMA
  let gapEnd = k.mmLayer.taskSize;
  for (let v = last; ; v = w[v + V_PREV]) {
    const gapStart = v === 0 ? 0 : vma_end(k, v);
    const top = Math.min(gapEnd, high);
    const bottom = Math.max(gapStart, low);
    if (top - len >= bottom) return top - len;
    if (v === 0) break;
    gapEnd = vma_start(k, v);
  }
  return -ENOMEM;
}

/** get_unmapped_area for anonymous memory: the hint if it is free, else top-down. */
export function get_unmapped_area(k: Kernel, mm: number, addr: number, len: number, flags: number): number {
  const ts = k.mmLayer.taskSize;
  if (len > ts) return -ENOMEM;
  if ((flags & MAP_FIXED) !== 0) {
    if (addr % k.mmLayer.pageSize !== 0) return -EINVAL;
    if (addr > ts - len) return -ENOMEM;
    return addr;
  }
  if (addr !== 0) {
    addr = page_align(k, addr);
    if (ts - len >= addr && addr >= MMAP_MIN_ADDR && find_vma_intersection(k, mm, addr, addr + len) === 0) return addr;
  }
  return unmapped_area_topdown(k, mm, len);
}

// ---- mmap --------------------------------------------------------------------------------------

/**
 * vm_mmap: map anonymous memory in mm. Returns the address, or -EINVAL (len 0, unaligned
 * offset or MAP_FIXED address, bad flags), -ENOMEM (no room, too long, out of VMAs), -EEXIST
 * (MAP_FIXED_NOREPLACE over a mapping), -EBADF (not anonymous: there are no files here).
 */
export function vm_mmap(mm: number, addr: number, len: number, prot: number, flags: number, offset = 0): number | Promise<number> {
  return drive(mmapGen(current.k, mm, addr, len, prot, flags, offset));
}

function* mmapGen(k: Kernel, mm: number, addr: number, len: number, prot: number, flags: number, offset: number): Generator<unknown, number, unknown> {
  const ps = k.mmLayer.pageSize;
  if (!is_ulong(addr) || !is_ulong(len) || !is_ulong(offset)) return -EINVAL;
  if (offset + page_align(k, len) < offset || offset % ps !== 0) return -EINVAL;
  const l = mmap_write_lock(mm);
  if (l !== undefined) yield l;
  let ret: number;
  let populate = 0;
  try {
    ret = yield* do_mmap(k, mm, addr, len, prot, flags, offset / ps);
    if (ret >= 0 && (flags & MAP_POPULATE) !== 0) populate = page_align(k, len);
  } finally {
    mmap_write_unlock(mm);
  }
  if (populate !== 0) yield* mm_populate(k, mm, ret, populate);
  return ret;
}

/** do_mmap, mmap_lock held for write. */
function* do_mmap(k: Kernel, mm: number, addr: number, len: number, prot: number, flags: number, pgoff: number): Generator<unknown, number, unknown> {
  const w = k.arena.i32;
  if (len === 0) return -EINVAL;
  if ((prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM)) !== 0) return -EINVAL;
  if ((flags & MAP_FIXED) === 0 && addr !== 0 && addr < MMAP_MIN_ADDR) addr = page_align(k, MMAP_MIN_ADDR); // round_hint_to_min
  len = page_align(k, len);
  if (len === 0 || len > 2 ** 53) return -ENOMEM;
  if (pgoff + len / k.mmLayer.pageSize < pgoff) return -EOVERFLOW;
  if (w[mm + MmL.map_count] > DEFAULT_MAX_MAP_COUNT) return -ENOMEM;
  const type = flags & MAP_TYPE;
  if (type !== MAP_SHARED && type !== MAP_PRIVATE && type !== MAP_SHARED_VALIDATE) return -EINVAL;
  if ((flags & MAP_ANONYMOUS) === 0) return -EBADF;
  const shared = type !== MAP_PRIVATE;
  if ((flags & MAP_FIXED_NOREPLACE) !== 0) flags |= MAP_FIXED;
  addr = get_unmapped_area(k, mm, addr, len, flags);
  if (addr < 0) return addr;
  const end = addr + len;
  if ((flags & MAP_FIXED_NOREPLACE) !== 0 && find_vma_intersection(k, mm, addr, end) !== 0) return -EEXIST;
  let vm_flags = calc_vm_prot_bits(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC;
  if (shared) vm_flags |= VM_SHARED | VM_MAYSHARE;
  if ((flags & MAP_NORESERVE) !== 0) vm_flags |= VM_NORESERVE;
  // MAP_FIXED over existing mappings: they go first (mmap_region's munmap of the area)
  if (find_vma_intersection(k, mm, addr, end) !== 0) {
    const r = yield* munmap_locked(k, mm, addr, end, false);
    if (r !== 0) return r;
  }
  const vma = vm_area_alloc(k, mm);
  if (vma === 0) return -ENOMEM;
  if (shared) {
    // shmem_zero_setup: a new object; the mapping starts at its page 0
    const obj = shmem_object_new(k, len / k.mmLayer.pageSize);
    if (obj === 0) {
      vm_area_free(k, vma);
      return -ENOMEM;
    }
    w[vma + V_SHM] = obj;
    pgoff = 0;
  } else {
    pgoff = addr / k.mmLayer.pageSize;
  }
  vma_set_range(k, vma, addr, end, pgoff);
  w[vma + V_FLAGS] = vm_flags;
  vma_link(k, mm, vma);
  vma_merge_neighbours(k, mm, vma);
  return addr;
}

/** __mm_populate: fault every page in (write for private writable mappings), errors ignored. */
function* mm_populate(k: Kernel, mm: number, start: number, len: number): Generator<unknown, void, unknown> {
  const l = mmap_read_lock(mm);
  if (l !== undefined) yield l;
  try {
    const ps = k.mmLayer.pageSize;
    for (let a = start; a < start + len; a += ps) {
      const vma = vma_lookup(k, mm, a);
      if (vma === 0) break;
      const f = k.arena.i32[vma + V_FLAGS];
      if ((f & VM_ACCESS_FLAGS) === 0) continue;
      const r = handle_mm_fault(mm, vma, a, (f & (VM_WRITE | VM_SHARED)) === VM_WRITE ? FAULT_FLAG_WRITE : 0);
      const v = typeof r === 'number' ? r : ((yield r) as number);
      if ((v & VM_FAULT_ERROR) !== 0) break;
    }
  } finally {
    mmap_read_unlock(mm);
  }
}

// ---- munmap --------------------------------------------------------------------------------------

/**
 * vm_munmap (__vm_munmap): 0, or -EINVAL for an unaligned start, len 0 or a range past
 * TASK_SIZE; -ENOMEM if a VMA cannot be split. Nothing mapped there is not an error.
 */
export function vm_munmap(mm: number, start: number, len: number): number | Promise<number> {
  return drive(munmapGen(current.k, mm, start, len));
}

function* munmapGen(k: Kernel, mm: number, start: number, len: number): Generator<unknown, number, unknown> {
  const ts = k.mmLayer.taskSize;
  if (!is_ulong(start) || !is_ulong(len) || start % k.mmLayer.pageSize !== 0 || start > ts || len > ts - start) return -EINVAL;
  len = page_align(k, len);
  if (len === 0) return -EINVAL;
  const l = mmap_write_lock(mm);
  if (l !== undefined) yield l;
  // munmap_locked downgrades to a read lock once the VMAs are detached
  const held = { write: true };
  try {
    return yield* munmap_locked(k, mm, start, start + len, true, held);
  } finally {
    if (held.write) mmap_write_unlock(mm);
    else mmap_read_unlock(mm);
  }
}

/**
 * do_vmi_munmap with the mmap_lock held for write: split at the edges, detach the VMAs, then
 * (downgraded to read if `downgrade`) zap inside one UNMAP range, free the page tables only
 * this range used, and free the VMAs.
 */
export function* munmap_locked(k: Kernel, mm: number, start: number, end: number, downgrade: boolean, held?: { write: boolean }): Generator<unknown, number, unknown> {
  const w = k.arena.i32;
  let vma = find_vma_intersection(k, mm, start, end);
  if (vma === 0) return 0;
  if (vma_start(k, vma) < start) {
    if (split_vma(k, mm, vma, start, true) === 0) return -ENOMEM;
  }
  const last = find_vma(k, mm, end - 1);
  if (last !== 0 && vma_start(k, last) < end && vma_end(k, last) > end) {
    if (split_vma(k, mm, last, end, false) === 0) return -ENOMEM;
  }
  const detached: number[] = [];
  for (vma = find_vma(k, mm, start); vma !== 0 && vma_start(k, vma) < end; ) {
    const next = w[vma + V_NEXT];
    detached.push(vma);
    vma_unlink(k, mm, vma);
    vma = next;
  }
  const prev = vma_prev_of(k, mm, start);
  const next = find_vma(k, mm, end - 1);
  const floor = prev === 0 ? 0 : vma_end(k, prev);
  const ceiling = next === 0 ? k.mmLayer.vaLimit : vma_start(k, next);
  if (downgrade && held) {
    downgrade_write(mmap_lock_of(mm));
    held.write = false;
  }
  const tlb = tlb_gather_mmu(k, mm);
  const p = unmap_vmas(k, tlb, detached, start, end);
  if (p !== undefined) yield p;
  free_pgtables(k, tlb, start, end, floor, ceiling);
  tlb_finish_mmu(tlb);
  for (const v of detached) vm_area_free(k, v);
  return 0;
}

// ---- exit_mmap ---------------------------------------------------------------------------------

/**
 * exit_mmap's unmap step (after mmu_notifier_release): under the read lock, zap every VMA
 * inside one UNMAP over [0, ULONG_MAX); nothing is raised when there is no VMA.
 */
export function exit_mmap_unmap(mm: number): Promise<void> | undefined {
  const r = drive(exitUnmapGen(current.k, mm));
  return r === undefined ? undefined : r;
}

function* exitUnmapGen(k: Kernel, mm: number): Generator<unknown, void, unknown> {
  const l = mmap_read_lock(mm);
  if (l !== undefined) yield l;
  try {
    const w = k.arena.i32;
    const vmas: number[] = [];
    for (let v = w[mm + MmL.mmap]; v !== 0; v = w[v + V_NEXT]) vmas.push(v);
    const tlb = tlb_gather_mmu(k, mm);
    const p = unmap_vmas(k, tlb, vmas, 0, ULONG_MAX);
    if (p !== undefined) yield p;
    tlb_finish_mmu(tlb);
  } finally {
    mmap_read_unlock(mm);
  }
}

/**
 * exit_mmap's last step (after MMF_OOM_SKIP is set): under the write lock, free every page
 * table (the pgd too: nothing walks a dead mm's tables) and every VMA, then check_mm.
 */
export function exit_mmap_free(mm: number): Promise<void> | undefined {
  const r = drive(exitFreeGen(current.k, mm));
  return r === undefined ? undefined : r;
}

function* exitFreeGen(k: Kernel, mm: number): Generator<unknown, void, unknown> {
  const l = mmap_write_lock(mm);
  if (l !== undefined) yield l;
  try {
    const w = k.arena.i32;
    const tlb = tlb_gather_mmu(k, mm);
    free_pgtables(k, tlb, 0, k.mmLayer.vaLimit, 0, k.mmLayer.vaLimit);
    tlb_finish_mmu(tlb);
    let count = 0;
    for (let v = w[mm + MmL.mmap]; v !== 0; ) {
      const next = w[v + V_NEXT];
      vma_unlink(k, mm, v);
      vm_area_free(k, v);
      v = next;
      count++;
    }
    if (w[mm + MmL.map_count] !== 0) splat(k, 'bug', `BUG: exit_mmap: ${mmLabel(mm)} map_count ${w[mm + MmL.map_count]} after freeing ${count} VMAs`);
    // under the PTE lock: an rmap walker still holding this mm reads the pgd under it
    const ptl = ptl_of(k, mm);
    spin_lock(ptl);
    const pgd = w[mm + MmL.pgd];
    w[mm + MmL.pgd] = 0;
    spin_unlock(ptl);
    if (pgd !== 0) k.pgtables.pool.free(pgd);
    check_mm(k, mm);
  } finally {
    mmap_write_unlock(mm);
  }
}

/** check_mm: every rss counter must be back to zero. */
function check_mm(k: Kernel, mm: number): void {
  const w = k.arena.i32;
  for (let i = 0; i < NR_MM_COUNTERS; i++) {
    const v = w[mm + MmL.rss_stat + i];
    if (v !== 0) splat(k, 'bug', `BUG: Bad rss-counter state mm:${mmLabel(mm)} type:${['MM_FILEPAGES', 'MM_ANONPAGES', 'MM_SWAPENTS', 'MM_SHMEMPAGES'][i]} val:${v}`);
  }
}
