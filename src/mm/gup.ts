// get_user_pages and pin_user_pages (mm/gup.c, reference §6.2): take references on the frames
// behind a user range, faulting pages in as GUP does (a write fault breaks COW first), so a
// driver can hand the frames to a device. A "page" here is its pfn.
// - FOLL_GET adds one reference per page; the caller drops it with put_page.
// - FOLL_PIN (pin_user_pages*) adds GUP_PIN_COUNTING_BIAS to the refcount and one to pincount,
//   and marks the mm MMF_HAS_PINNED (fork then copies pinned anon pages eagerly); the caller
//   drops it with unpin_user_page(s). Pins do not stop invalidations: munmap, mprotect and COW
//   still notify; they stop reclaim from unmapping the page (folio_maybe_dma_pinned).
// - The shared zero page is never counted (put_page ignores it too).
// - A device-private entry is faulted like any non-present one (migrate_to_ram brings the page
//   back); under FOLL_LONGTERM it is migrated to system memory before the pin, so a long-term
//   pin never holds device memory (the hmm_gup_test selftest sees system pages).
// Not modelled: ZONE_MOVABLE/CMA (there is one zone), the lockless fast path (the _fast variants
// take the mmap_lock), and unsharing a COW-shared anon page on a read pin (FAULT_FLAG_UNSHARE).

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { EFAULT, EINVAL, ENOMEM } from '../shm/errno.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { FAULT_FLAG_REMOTE, FAULT_FLAG_WRITE, VM_FAULT_ERROR, VM_FAULT_OOM, handle_mm_fault } from './memory.js';
import { emitFault, emitFaultDone } from './events.js';
import { migrate_device_pages_to_ram } from './migrate_device.js';
import { mm_flags_set, mmap_assert_locked, mmap_read_lock, mmap_read_unlock } from './mm_inline.js';
import { pte_lookup, pte_protnone, ptl_of, put_page } from './mm_pt.js';
import { GUP_PIN_COUNTING_BIAS, PG_dirty, PageL, ZERO_PFN } from './page.js';
import { _PAGE_ACCESSED, _PAGE_DIRTY, is_device_private_entry, pte_pfn, pte_present, pte_write } from './pgtable.js';
import { MMF_HAS_PINNED, MmL, VM_IO, VM_MAYREAD, VM_PFNMAP, VM_READ, VM_WRITE } from './types.js';
import { current_mm } from './uaccess.js';
import { V_FLAGS, vma_end, vma_lookup } from './vma.js';

// the public gup_flags (include/linux/mm_types.h)
export const FOLL_WRITE = 1 << 0;
export const FOLL_GET = 1 << 1;
export const FOLL_DUMP = 1 << 2;
export const FOLL_FORCE = 1 << 3;
export const FOLL_NOWAIT = 1 << 4;
export const FOLL_NOFAULT = 1 << 5;
export const FOLL_HWPOISON = 1 << 6;
export const FOLL_ANON = 1 << 7;
export const FOLL_LONGTERM = 1 << 8;
export const FOLL_SPLIT_PMD = 1 << 9;
export const FOLL_PCI_P2PDMA = 1 << 10;
export const FOLL_INTERRUPTIBLE = 1 << 11;
export const FOLL_HONOR_NUMA_FAULT = 1 << 12;
// internal ones (mm/internal.h), after the public enum
export const FOLL_TOUCH = 1 << 13;
export const FOLL_TRIED = 1 << 14;
export const FOLL_REMOTE = 1 << 15;
export const FOLL_PIN = 1 << 16;
export const FOLL_FAST_ONLY = 1 << 17;

/** What callers may pass in gup_flags (the wrappers add GET/PIN/REMOTE/TOUCH themselves). */
const FOLL_CALLER = FOLL_WRITE | FOLL_DUMP | FOLL_FORCE | FOLL_NOWAIT | FOLL_NOFAULT | FOLL_HWPOISON | FOLL_ANON | FOLL_LONGTERM | FOLL_SPLIT_PMD | FOLL_PCI_P2PDMA | FOLL_INTERRUPTIBLE | FOLL_HONOR_NUMA_FAULT;

/** where a page list goes: pfns, one per page */
export type GupPages = Int32Array | number[];

/** try_grab_folio: FOLL_GET takes a reference, FOLL_PIN a pin. The zero page is not counted. */
function try_grab_page(k: Kernel, pfn: number, flags: number): void {
  if (pfn === ZERO_PFN) return;
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  if ((flags & FOLL_PIN) !== 0) {
    Atomics.add(w, p + PageL.refcount, GUP_PIN_COUNTING_BIAS);
    Atomics.add(w, p + PageL.pincount, 1);
  } else Atomics.add(w, p + PageL.refcount, 1);
}

const NEED_FAULT = -1;
const NEED_MIGRATE = -2; // FOLL_LONGTERM met device memory: migrate it to RAM, then look again

/**
 * follow_page_pte: the pfn behind addr with a reference or pin taken, under the PTE lock;
 * NEED_FAULT when the PTE does not allow the access yet; -EFAULT for what GUP cannot take.
 */
function follow_page(k: Kernel, mm: number, addr: number, flags: number): number {
  const w = k.arena.i32;
  const pgd = w[mm + MmL.pgd];
  if (pgd === 0) return NEED_FAULT;
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  try {
    const slot = pte_lookup(k, pgd, addr);
    const pte = slot < 0 ? 0 : w[slot];
    if (!pte_present(pte)) {
      // a fault brings a device-private page back (migrate_to_ram); a long-term pin migrates
      // it to system memory first, as check_and_migrate_movable_pages does (reference §6.2)
      if (is_device_private_entry(pte) && (flags & FOLL_LONGTERM) !== 0) return NEED_MIGRATE;
      return NEED_FAULT;
    }
    if (pte_protnone(pte)) return NEED_FAULT;
    if ((flags & FOLL_WRITE) !== 0 && !pte_write(pte)) return NEED_FAULT;
    const pfn = pte_pfn(pte); // a present PTE never maps a device-private page
    try_grab_page(k, pfn, flags);
    // FOLL_TOUCH: mark_page_accessed, and dirty for a write
    if ((flags & FOLL_TOUCH) !== 0) Atomics.or(w, slot, _PAGE_ACCESSED | ((flags & FOLL_WRITE) !== 0 ? _PAGE_DIRTY : 0));
    return pfn;
  } finally {
    spin_unlock(ptl);
  }
}

/** check_vma_flags: -EFAULT when the VMA does not allow the access GUP wants. */
function check_vma_flags(vflags: number, flags: number): number {
  if ((vflags & (VM_IO | VM_PFNMAP)) !== 0) return -EFAULT;
  if ((flags & FOLL_WRITE) !== 0) {
    if ((vflags & VM_WRITE) === 0 && (flags & FOLL_FORCE) === 0) return -EFAULT;
  } else if ((vflags & VM_READ) === 0) {
    if ((flags & FOLL_FORCE) === 0 || (vflags & VM_MAYREAD) === 0) return -EFAULT;
  }
  return 0;
}

/**
 * __get_user_pages: the mmap_lock is held. Returns the pages taken (> 0, possibly fewer than
 * asked), or a negative errno when none was: -EFAULT (no VMA, no right, fault failed),
 * -ENOMEM (the fault ran out of memory).
 */
async function __get_user_pages(mm: number, start: number, nr_pages: number, flags: number, pages: GupPages | null): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  if (nr_pages <= 0) return 0;
  if (start % ps !== 0) return -EINVAL;
  mmap_assert_locked(mm);
  let vma = 0;
  let i = 0;
  const partial = (err: number): number => (i > 0 ? i : err);
  for (; i < nr_pages; i++) {
    const addr = start + i * ps;
    if (vma === 0 || addr >= vma_end(k, vma)) {
      vma = vma_lookup(k, mm, addr);
      if (vma === 0) return partial(-EFAULT);
      const bad = check_vma_flags(w[vma + V_FLAGS], flags);
      if (bad !== 0) return partial(bad);
    }
    for (let tries = 0; ; tries++) {
      const pfn = follow_page(k, mm, addr, flags);
      if (pfn >= 0) {
        if (pages) pages[i] = pfn;
        break;
      }
      if (pfn === NEED_MIGRATE) {
        const m = await migrate_device_pages_to_ram(mm, vma, addr, addr + k.mmLayer.pageSize, (flags & FOLL_WRITE) !== 0);
        if (m < 0) return partial(m);
        continue;
      }
      if (pfn !== NEED_FAULT) return partial(pfn);
      if ((flags & FOLL_NOFAULT) !== 0) return partial(-EFAULT);
      // faultin_page
      emitFault(k, mm, addr, ((flags & FOLL_WRITE) !== 0 ? FAULT_FLAG_WRITE : 0) | ((flags & FOLL_REMOTE) !== 0 ? FAULT_FLAG_REMOTE : 0));
      let r = handle_mm_fault(mm, vma, addr, ((flags & FOLL_WRITE) !== 0 ? FAULT_FLAG_WRITE : 0) | ((flags & FOLL_REMOTE) !== 0 ? FAULT_FLAG_REMOTE : 0));
      if (typeof r !== 'number') r = await r;
      emitFaultDone(k, mm, addr, r);
      if ((r & VM_FAULT_ERROR) !== 0) return partial((r & VM_FAULT_OOM) !== 0 ? -ENOMEM : -EFAULT);
      // the fault raced with an invalidation: let others run before looking again
      if (tries > 0) {
        const p = k.sched.point();
        if (p !== undefined) await p;
      }
    }
  }
  return i;
}

function badFlags(gup_flags: number, what: string): boolean {
  if ((gup_flags & ~FOLL_CALLER) === 0) return false;
  splat(current.k, 'warn', `WARNING: ${what}: WARN_ON_ONCE(gup_flags & ~FOLL_CALLER): gup_flags 0x${gup_flags.toString(16)} hold internal flags (FOLL_GET/FOLL_PIN are the wrappers' own)`);
  return true;
}

function pinStart(mm: number): void {
  mm_flags_set(MMF_HAS_PINNED, mm);
}

/** get_user_pages_remote: FOLL_GET references on another mm's pages; its mmap_lock is held. */
export function get_user_pages_remote(mm: number, start: number, nr_pages: number, gup_flags: number, pages: GupPages | null): Promise<number> {
  if (badFlags(gup_flags, 'get_user_pages_remote')) return Promise.resolve(-EINVAL);
  return __get_user_pages(mm, start, nr_pages, gup_flags | FOLL_GET | FOLL_TOUCH | FOLL_REMOTE, pages);
}

/** get_user_pages: FOLL_GET references on current's pages; the mmap_lock is held. */
export function get_user_pages(start: number, nr_pages: number, gup_flags: number, pages: GupPages | null): Promise<number> {
  if (badFlags(gup_flags, 'get_user_pages')) return Promise.resolve(-EINVAL);
  return __get_user_pages(current_mm(), start, nr_pages, gup_flags | FOLL_GET | FOLL_TOUCH, pages);
}

/** get_user_pages_unlocked: the same, taking the mmap_lock itself. */
export async function get_user_pages_unlocked(start: number, nr_pages: number, pages: GupPages | null, gup_flags: number): Promise<number> {
  return locked(current_mm(), () => get_user_pages(start, nr_pages, gup_flags, pages));
}

/** pin_user_pages_remote: FOLL_PIN pins on another mm's pages; its mmap_lock is held. */
export function pin_user_pages_remote(mm: number, start: number, nr_pages: number, gup_flags: number, pages: GupPages): Promise<number> {
  if (badFlags(gup_flags, 'pin_user_pages_remote')) return Promise.resolve(-EINVAL);
  pinStart(mm);
  return __get_user_pages(mm, start, nr_pages, gup_flags | FOLL_PIN | FOLL_TOUCH | FOLL_REMOTE, pages);
}

/** pin_user_pages: FOLL_PIN pins on current's pages; the mmap_lock is held. */
export function pin_user_pages(start: number, nr_pages: number, gup_flags: number, pages: GupPages): Promise<number> {
  if (badFlags(gup_flags, 'pin_user_pages')) return Promise.resolve(-EINVAL);
  const mm = current_mm();
  pinStart(mm);
  return __get_user_pages(mm, start, nr_pages, gup_flags | FOLL_PIN | FOLL_TOUCH, pages);
}

/** pin_user_pages_unlocked: the same, taking the mmap_lock itself. */
export function pin_user_pages_unlocked(start: number, nr_pages: number, pages: GupPages, gup_flags: number): Promise<number> {
  return locked(current_mm(), () => pin_user_pages(start, nr_pages, gup_flags, pages));
}

/** pin_user_pages_fast: no lockless walk here; it takes the mmap_lock as the slow path does. */
export function pin_user_pages_fast(start: number, nr_pages: number, gup_flags: number, pages: GupPages): Promise<number> {
  return pin_user_pages_unlocked(start, nr_pages, pages, gup_flags);
}

async function locked(mm: number, fn: () => Promise<number>): Promise<number> {
  if (!(mm > 0)) return -EFAULT;
  const l = mmap_read_lock(mm);
  if (l !== undefined) await l;
  try {
    return await fn();
  } finally {
    mmap_read_unlock(mm);
  }
}

/** unpin_user_page: drop one FOLL_PIN pin (the last reference frees the frame). */
export function unpin_user_page(pfn: number): void {
  if (pfn === ZERO_PFN) return;
  const k = current.k;
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  const pins = Atomics.sub(w, p + PageL.pincount, 1);
  if (pins <= 0 || w[p + PageL.refcount] < GUP_PIN_COUNTING_BIAS) {
    Atomics.add(w, p + PageL.pincount, 1);
    splat(k, 'bug', `BUG: unpin_user_page: pfn ${pfn} is not pinned (pincount ${pins}, refcount ${w[p + PageL.refcount]})`);
    return;
  }
  Atomics.sub(w, p + PageL.refcount, GUP_PIN_COUNTING_BIAS - 1);
  put_page(k, pfn);
}

export function unpin_user_pages(pages: GupPages, npages: number): void {
  for (let i = 0; i < npages; i++) unpin_user_page(pages[i]);
}

/** unpin_user_pages_dirty_lock: mark each page dirty (the device wrote it), then unpin. */
export function unpin_user_pages_dirty_lock(pages: GupPages, npages: number, make_dirty: boolean): void {
  const k = current.k;
  for (let i = 0; i < npages; i++) {
    const pfn = pages[i];
    if (make_dirty && pfn !== ZERO_PFN) Atomics.or(k.arena.i32, k.zone.page(pfn) + PageL.flags, PG_dirty);
    unpin_user_page(pfn);
  }
}

/** The pins on a frame (tests, reports). */
export function page_pincount(k: Kernel, pfn: number): number {
  return Atomics.load(k.arena.i32, k.zone.page(pfn) + PageL.pincount);
}
