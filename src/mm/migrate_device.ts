// Device memory migration (mm/migrate_device.c): move anonymous pages between system memory
// and a driver's device-private pages (memremap.ts). The driver's side, as in the kernel:
//   migrate_vma_setup(args)    collect the range under one MMU_NOTIFY_MIGRATE (owner =
//                              args.pgmap_owner, blockable); lock each page and swap its PTE for
//                              a migration entry; pinned and extra-referenced pages are restored
//   (driver)                   allocate dst pages, copy contents, fill args.dst
//   migrate_vma_pages(args)    move the struct page state; empty PTEs get the new page directly
//                              (a second MIGRATE over [first such page, end))
//   (driver)                   update its own page table
//   migrate_vma_finalize(args) the migration entries become the new entries (device-private
//                              for device pages, present for system pages), or the old ones
// migrate_device_range/pfns + migrate_device_pages/finalize do the same by pfn, without a VMA,
// to evict a whole pagemap (dmirror's RELEASE); their unmapping raises CLEAR per mapping
// (try_to_migrate_one). The caller holds the mmap_lock (read) across the migrate_vma_* calls.
//
// Bookkeeping: a migration entry keeps its PTE's rmap node and page reference
// (device_entries.ts), so remove_migration_ptes finds every entry through the rmap list.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { EFAULT, EINVAL, ENOMEM } from '../shm/errno.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { MMU_NOTIFY_MIGRATE, MmuNotifierRange, mmu_notifier_range_init_owner } from '../notifier/range.js';
import { mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start } from '../notifier/invalidate.js';
import { make_migration_entry } from './device_entries.js';
import { folio_ref_count, folio_trylock, folio_try_get, folio_unlock } from './folio_lock.js';
import { FAULT_FLAG_REMOTE, FAULT_FLAG_WRITE, VM_FAULT_ERROR, VM_FAULT_OOM, handle_mm_fault } from './memory.js';
import { folio_get, folio_put, is_device_private_page, page_pgmap, DevPagemapL } from './memremap.js';
import { folio_mapped_live, remove_migration_ptes, try_to_migrate } from './migrate.js';
import { mm_flags_test, mmap_assert_locked } from './mm_inline.js';
import { _PAGE_PROTNONE, flush_tlb_mm, folio_maybe_dma_pinned, pte_alloc_lookup, pte_lookup, ptl_of } from './mm_pt.js';
import { PG_anon, PG_anon_exclusive, PG_device_private, PG_dirty, PG_locked, PG_swapbacked, PG_swapcache, PG_uptodate, PageL, ZERO_PFN } from './page.js';
import {
  SWP_DEVICE_PRIVATE_READ,
  SWP_DEVICE_PRIVATE_WRITE,
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_RW,
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
import { page_add_rmap } from './rmap.js';
import { folio_free_swap } from './swap_state.js';
import { folio_add_lru, folio_add_lru_vma, folio_isolate_lru, lru_isolated_done, lru_putback } from './lru.js';
import { MMF_UNSTABLE, MM_ANONPAGES, MmL, VM_ACCESS_FLAGS, VM_DONTEXPAND, VM_HUGETLB, VM_IO, VM_MIXEDMAP, VM_PFNMAP, VM_WRITE } from './types.js';
import { V_FLAGS, V_MM, V_SHM, anon_vma_prepare, vma_end, vma_start } from './vma.js';

// include/linux/migrate.h
export const MIGRATE_PFN_VALID = 1 << 0;
export const MIGRATE_PFN_MIGRATE = 1 << 1;
export const MIGRATE_PFN_WRITE = 1 << 3;
export const MIGRATE_PFN_SHIFT = 6;

export const MIGRATE_VMA_SELECT_SYSTEM = 1 << 0;
export const MIGRATE_VMA_SELECT_DEVICE_PRIVATE = 1 << 1;
export const MIGRATE_VMA_SELECT_DEVICE_COHERENT = 1 << 2;

const VM_SPECIAL = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP;

/**
 * 'v6.0' (default, and newer): collect's fast path moves a dirty PTE's dirty bit to the page
 * ("mm/migrate_device.c: copy pte dirty bit to page", v6.0) and the migration entry keeps it;
 * a swap-cache page leaves the swap cache to move to device memory (folio_free_swap).
 * 'v5.19': the fast path installs migration entries carrying neither the dirty nor the young
 * bit, the page is not dirtied, and a swap-cache page never moves to device memory: a
 * migration that fails or is refused then restores a clean PTE over newer contents.
 */
export type MigrateDevicePolicy = 'v6.0' | 'v5.19';

declare module '../sched/kernel.js' {
  interface KernelConfig {
    migrateDevicePolicy?: MigrateDevicePolicy;
  }
}

function v5_19(k: Kernel): boolean {
  const p = k.config.migrateDevicePolicy ?? 'v6.0';
  if (p !== 'v6.0' && p !== 'v5.19') throw new RangeError(`kernel config: migrateDevicePolicy must be 'v6.0' or 'v5.19', got '${String(p)}'`);
  return p === 'v5.19';
}

/** migrate_pfn: pfn | VALID, for a dst entry */
export function migrate_pfn(pfn: number): number {
  return pfn * 2 ** MIGRATE_PFN_SHIFT + MIGRATE_PFN_VALID;
}

/** migrate_pfn_to_page: the pfn of a VALID entry, else 0 (NULL; pfn 0 is the zero page, never migrated) */
export function migrate_pfn_to_page(mpfn: number): number {
  return (mpfn & MIGRATE_PFN_VALID) !== 0 ? Math.floor(mpfn / 2 ** MIGRATE_PFN_SHIFT) : 0;
}

/** struct migrate_vma: the caller's own; src and dst hold at least (end - start) / PAGE_SIZE entries. */
export class MigrateVma {
  vma = 0;
  dst: Uint32Array = new Uint32Array(0);
  src: Uint32Array = new Uint32Array(0);
  cpages = 0;
  npages = 0;
  start = 0;
  end = 0;
  /** compared with the pagemap owner of device pages to select; carried by the MIGRATE events */
  pgmap_owner = 0;
  /** MIGRATE_VMA_SELECT_* */
  flags = 0;
  /** migrate_to_ram: the device page that faulted (locked by the fault), 0 = NULL */
  fault_page = 0;
}

function point(k: Kernel): Promise<void> | undefined {
  return k.sched.point();
}

const vma_is_anonymous = (k: Kernel, vma: number): boolean => k.arena.i32[vma + V_SHM] === 0;
const page_flags = (k: Kernel, pfn: number): number => k.arena.i32[k.zone.page(pfn) + PageL.flags];

// ---- collect ------------------------------------------------------------------------------------

/** migrate_vma_collect_pmd for one page, PTE lock held: its src entry. */
function collect_one(k: Kernel, m: MigrateVma, addr: number, slot: number, anon: boolean, flushed: { unmapped: boolean }): number {
  const w = k.arena.i32;
  const pte = slot < 0 ? 0 : w[slot];
  if (pte === 0) {
    if (!anon) return 0;
    m.cpages++;
    return MIGRATE_PFN_MIGRATE;
  }
  let pfn: number;
  let mpfn: number;
  if (!pte_present(pte)) {
    // Only care about unaddressable device page special page table entry.
    if (!is_device_private_entry(pte)) return 0;
    pfn = swp_offset(pte);
    const pgmap = page_pgmap(k, pfn);
    if ((m.flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE) === 0 || pgmap === 0 || w[pgmap + DevPagemapL.owner] !== m.pgmap_owner) return 0;
    mpfn = migrate_pfn(pfn) | MIGRATE_PFN_MIGRATE;
    if (is_writable_swp_entry(pte)) mpfn |= MIGRATE_PFN_WRITE;
  } else {
    pfn = pte_pfn(pte);
    if (pte_special(pte)) {
      if (pfn === ZERO_PFN && (m.flags & MIGRATE_VMA_SELECT_SYSTEM) !== 0) {
        m.cpages++;
        return MIGRATE_PFN_MIGRATE;
      }
      return 0; // vm_normal_page() is NULL
    }
    if ((m.flags & MIGRATE_VMA_SELECT_SYSTEM) === 0) return 0;
    mpfn = migrate_pfn(pfn) | MIGRATE_PFN_MIGRATE;
    if (pte_write(pte)) mpfn |= MIGRATE_PFN_WRITE;
  }
  if (w[k.zone.page(pfn) + PageL.mapping] === 0) return 0; // !page->mapping
  // Our reference pins the page until finalize; a page we cannot lock now is skipped.
  folio_get(k, pfn);
  if (pfn !== m.fault_page && !folio_trylock(k, pfn)) {
    folio_put(k, pfn);
    return 0;
  }
  const pf = page_flags(k, pfn);
  if (pte_present(pte) && (pf & (PG_anon | PG_anon_exclusive)) === (PG_anon | PG_anon_exclusive) && folio_maybe_dma_pinned(k, pfn)) {
    // folio_try_share_anon_rmap_pte fails: a possibly pinned page keeps its PTE
    if (pfn !== m.fault_page) folio_unlock(k, pfn);
    folio_put(k, pfn);
    return 0;
  }
  m.cpages++;
  const old = v5_19(k);
  if (pte_present(pte) && pte_dirty(pte) && !old) Atomics.or(w, k.zone.page(pfn) + PageL.flags, PG_dirty);
  Atomics.store(w, slot, make_migration_entry(pfn, (mpfn & MIGRATE_PFN_WRITE) !== 0, old ? pte & ~(_PAGE_DIRTY | _PAGE_ACCESSED) : pte));
  if (pte_present(pte)) flushed.unmapped = true;
  return mpfn;
}

/** migrate_vma_collect: the whole range under one MIGRATE invalidation carrying the owner. */
async function migrate_vma_collect(k: Kernel, m: MigrateVma): Promise<void> {
  const w = k.arena.i32;
  const mm = w[m.vma + V_MM];
  const ps = k.mmLayer.pageSize;
  const span = ps * 512;
  const anon = vma_is_anonymous(k, m.vma);
  const range = new MmuNotifierRange();
  mmu_notifier_range_init_owner(range, MMU_NOTIFY_MIGRATE, 0, mm, m.start, m.end, m.pgmap_owner);
  const s = mmu_notifier_invalidate_range_start(range);
  if (s !== undefined) await s;
  const ptl = ptl_of(k, mm);
  for (let addr = m.start; addr < m.end; ) {
    const next = Math.min(m.end, (Math.floor(addr / span) + 1) * span);
    const flushed = { unmapped: false };
    spin_lock(ptl);
    const pgd = w[mm + MmL.pgd];
    for (; addr < next; addr += ps) {
      const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
      m.dst[m.npages] = 0;
      m.src[m.npages++] = collect_one(k, m, addr, slot, anon, flushed);
    }
    spin_unlock(ptl);
    if (flushed.unmapped) flush_tlb_mm(k, mm);
    const p = point(k);
    if (p !== undefined) await p;
  }
  const e = mmu_notifier_invalidate_range_end(range);
  if (e !== undefined) await e;
  m.end = m.start + m.npages * ps;
}

// ---- unmap ---------------------------------------------------------------------------------------

/**
 * migrate_vma_check_page: no reference beyond its mappings (migration entries included),
 * ours from collect, the fault's, and the page cache's for a shmem page. Pinned pages fail.
 */
function migrate_vma_check_page(k: Kernel, pfn: number, fault_page: number): boolean {
  const pf = page_flags(k, pfn);
  let extra = 1 + (pfn === fault_page ? 1 : 0);
  if ((pf & (PG_anon | PG_device_private)) === 0 || (pf & PG_swapcache) !== 0) extra++; // folio_mapping(): the shmem object or the swap cache
  return folio_ref_count(k, pfn) - extra <= k.arena.i32[k.zone.page(pfn) + PageL.mapcount];
}

/** migrate_device_unmap: unmap what collect left mapped; restore what cannot move. Returns pages marked migrating. */
async function migrate_device_unmap(k: Kernel, src: Uint32Array, npages: number, fault_page: number): Promise<number> {
  let unmapped = 0;
  let restore = 0;
  for (let i = 0; i < npages; i++) {
    const pfn = migrate_pfn_to_page(src[i]);
    if (pfn === 0) {
      if ((src[i] & MIGRATE_PFN_MIGRATE) !== 0) unmapped++;
      continue;
    }
    const sys = !is_device_private_page(k, pfn);
    if (sys) {
      // off the LRU first (reclaim may hold it isolated: then it stays); the isolation's
      // reference replaces collect's
      if (!folio_isolate_lru(k, pfn)) {
        src[i] &= ~MIGRATE_PFN_MIGRATE;
        restore++;
        continue;
      }
      folio_put(k, pfn);
    }
    if (folio_mapped_live(k, pfn)) await try_to_migrate(k, pfn);
    if (folio_mapped_live(k, pfn) || !migrate_vma_check_page(k, pfn, fault_page)) {
      if (sys) lru_putback(k, pfn); // folio_get + folio_putback_lru: the restore below drops the reference
      src[i] &= ~MIGRATE_PFN_MIGRATE;
      restore++;
      continue;
    }
    unmapped++;
  }
  for (let i = 0; i < npages && restore > 0; i++) {
    const pfn = migrate_pfn_to_page(src[i]);
    if (pfn === 0 || (src[i] & MIGRATE_PFN_MIGRATE) !== 0) continue;
    remove_migration_ptes(k, pfn, pfn);
    src[i] = 0;
    if (pfn !== fault_page) folio_unlock(k, pfn);
    folio_put(k, pfn);
    restore--;
  }
  return unmapped;
}

// ---- migrate_vma_pages -------------------------------------------------------------------------------

/** migrate_vma_insert_page: an empty (or zero-page) PTE gets the new page directly; src tells the result. */
function migrate_vma_insert_page(k: Kernel, m: MigrateVma, addr: number, dst: number, i: number): void {
  const w = k.arena.i32;
  const vma = m.vma;
  const mm = w[vma + V_MM];
  const vflags = w[vma + V_FLAGS];
  // Only allow populating anonymous memory
  if (!vma_is_anonymous(k, vma)) {
    m.src[i] &= ~MIGRATE_PFN_MIGRATE;
    return;
  }
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  let ok = false;
  let flush = false;
  const slot = w[mm + MmL.pgd] === 0 ? -2 : pte_alloc_lookup(k, w[mm + MmL.pgd], addr);
  const orig = slot < 0 ? 0 : w[slot];
  const emptyish = orig === 0 || (pte_present(orig) && pte_special(orig) && pte_pfn(orig) === ZERO_PFN);
  if (slot >= 0 && emptyish && !mm_flags_test(MMF_UNSTABLE, mm)) {
    anon_vma_prepare(k, vma);
    if (page_add_rmap(k, dst, mm, addr)) {
      const p = k.zone.page(dst);
      Atomics.or(w, p + PageL.flags, PG_anon | PG_anon_exclusive | PG_swapbacked | PG_uptodate);
      k.arena.f64[(p + PageL.index) >> 1] = addr / k.mmLayer.pageSize;
      if (!is_device_private_page(k, dst)) folio_add_lru_vma(k, dst, vma);
      folio_get(k, dst);
      w[mm + MmL.rss_stat + MM_ANONPAGES]++;
      const write = (vflags & VM_WRITE) !== 0;
      let pte: number;
      if (is_device_private_page(k, dst)) pte = swp_entry_to_pte(write ? SWP_DEVICE_PRIVATE_WRITE : SWP_DEVICE_PRIVATE_READ, dst);
      else {
        pte = mk_pte(dst, write) | (write ? _PAGE_DIRTY : 0);
        if ((vflags & VM_ACCESS_FLAGS) === 0) pte = (pte & ~_PAGE_RW) | _PAGE_PROTNONE;
      }
      flush = orig !== 0;
      Atomics.store(w, slot, pte);
      ok = true;
    }
  }
  spin_unlock(ptl);
  if (flush) flush_tlb_mm(k, mm);
  if (ok) m.src[i] = MIGRATE_PFN_MIGRATE;
  else m.src[i] &= ~MIGRATE_PFN_MIGRATE;
}

/** folio_migrate_flags: what the new page takes over from the old one */
const MIGRATE_FLAGS = PG_anon | PG_anon_exclusive | PG_swapbacked | PG_uptodate | PG_dirty;

async function __migrate_device_pages(k: Kernel, src: Uint32Array, dst: Uint32Array, npages: number, m: MigrateVma | null): Promise<void> {
  const w = k.arena.i32;
  let range: MmuNotifierRange | null = null;
  for (let i = 0; i < npages; i++) {
    const newpage = migrate_pfn_to_page(dst[i]);
    const page = migrate_pfn_to_page(src[i]);
    if (newpage === 0) {
      src[i] &= ~MIGRATE_PFN_MIGRATE;
      continue;
    }
    if (page === 0) {
      if ((src[i] & MIGRATE_PFN_MIGRATE) === 0) continue;
      if (m === null) continue; // only migrate_vma has a VMA to insert into
      const addr = m.start + i * k.mmLayer.pageSize;
      if (range === null) {
        range = new MmuNotifierRange();
        mmu_notifier_range_init_owner(range, MMU_NOTIFY_MIGRATE, 0, w[m.vma + V_MM], addr, m.end, m.pgmap_owner);
        const s = mmu_notifier_invalidate_range_start(range);
        if (s !== undefined) await s;
      }
      migrate_vma_insert_page(k, m, addr, newpage, i);
      continue;
    }
    const pf = page_flags(k, page);
    if (is_device_private_page(k, newpage)) {
      // only anonymous memory moves to device memory; a swap-cache page leaves the swap cache first
      if ((pf & PG_anon) === 0 || ((pf & PG_swapcache) !== 0 && (v5_19(k) || !folio_free_swap(k, page)))) {
        src[i] &= ~MIGRATE_PFN_MIGRATE;
        continue;
      }
    }
    // folio_migrate_mapping: no new reference may have appeared since unmap
    if (!migrate_vma_check_page(k, page, m?.fault_page ?? 0)) {
      src[i] &= ~MIGRATE_PFN_MIGRATE;
      continue;
    }
    const np = k.zone.page(newpage);
    Atomics.or(w, np + PageL.flags, page_flags(k, page) & MIGRATE_FLAGS); // read again: folio_free_swap dirtied it
    k.arena.f64[(np + PageL.index) >> 1] = k.arena.f64[(k.zone.page(page) + PageL.index) >> 1];
  }
  if (range !== null) {
    const e = mmu_notifier_invalidate_range_end(range);
    if (e !== undefined) await e;
  }
}

/** migrate_vma_pages: move struct page state from src to dst; fill empty PTEs. */
export function migrate_vma_pages(m: MigrateVma): Promise<void> {
  return __migrate_device_pages(current.k, m.src, m.dst, m.npages, m);
}

/** migrate_device_pages: the same for migrate_device_range/pfns (no VMA, nothing to insert). */
export function migrate_device_pages(src: Uint32Array, dst: Uint32Array, npages: number): Promise<void> {
  return __migrate_device_pages(current.k, src, dst, npages, null);
}

// ---- finalize ---------------------------------------------------------------------------------------

function __migrate_device_finalize(k: Kernel, src: Uint32Array, dst: Uint32Array, npages: number, fault_page: number): void {
  for (let i = 0; i < npages; i++) {
    const newpage = migrate_pfn_to_page(dst[i]);
    const page = migrate_pfn_to_page(src[i]);
    if (page === 0) {
      if (newpage !== 0) {
        folio_unlock(k, newpage);
        folio_put(k, newpage);
      }
      continue;
    }
    let to = newpage;
    if ((src[i] & MIGRATE_PFN_MIGRATE) === 0 || newpage === 0) {
      if (newpage !== 0) {
        folio_unlock(k, newpage);
        folio_put(k, newpage);
      }
      to = page;
    }
    // a system page joins the LRU: the new one, or the isolated old one going back
    if (!is_device_private_page(k, to)) {
      if (to === page) lru_putback(k, to);
      else folio_add_lru(k, to);
    }
    if (to !== page && !is_device_private_page(k, page)) lru_isolated_done(k); // the old one goes
    remove_migration_ptes(k, page, to);
    if (page !== fault_page) folio_unlock(k, page);
    folio_put(k, page); // collect's reference: the old page goes when nothing maps it
    if (to !== page) {
      folio_unlock(k, to);
      folio_put(k, to); // the driver's allocation reference: the new entries hold their own
    }
  }
}

/** migrate_vma_finalize: the migration entries become the new pages' entries, or the old ones. */
export function migrate_vma_finalize(m: MigrateVma): void {
  __migrate_device_finalize(current.k, m.src, m.dst, m.npages, m.fault_page);
}

/** migrate_device_finalize: the same for migrate_device_range/pfns. */
export function migrate_device_finalize(src: Uint32Array, dst: Uint32Array, npages: number): void {
  __migrate_device_finalize(current.k, src, dst, npages, 0);
}

// ---- setup -------------------------------------------------------------------------------------------

/**
 * migrate_vma_setup: collect and unmap [start, end) of args.vma (mmap_lock held). 0, with
 * args.src filled (MIGRATE set on what can move: pages, and empty PTEs of anonymous memory
 * with no VALID), args.cpages the count; or -EINVAL (no VMA, a VM_SPECIAL/hugetlb VMA, a range
 * outside it or empty, arrays too short, fault_page not a locked device page).
 */
export async function migrate_vma_setup(args: MigrateVma): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const nr_pages = Math.floor((args.end - args.start) / ps);
  args.start -= args.start % ps;
  args.end -= args.end % ps;
  const vma = args.vma;
  if (!(vma > 0) || (w[vma + V_FLAGS] & (VM_SPECIAL | VM_HUGETLB)) !== 0) return -EINVAL;
  if (nr_pages <= 0) return -EINVAL;
  if (args.start < vma_start(k, vma) || args.start >= vma_end(k, vma)) return -EINVAL;
  if (args.end <= vma_start(k, vma) || args.end > vma_end(k, vma)) return -EINVAL;
  if (!(args.src instanceof Uint32Array) || !(args.dst instanceof Uint32Array) || args.src.length < nr_pages || args.dst.length < nr_pages) return -EINVAL;
  if (args.fault_page !== 0 && (!is_device_private_page(k, args.fault_page) || (page_flags(k, args.fault_page) & PG_locked) === 0)) return -EINVAL;
  mmap_assert_locked(w[vma + V_MM]);
  args.src.fill(0, 0, nr_pages);
  args.cpages = 0;
  args.npages = 0;
  await migrate_vma_collect(k, args);
  if (args.cpages !== 0) args.cpages = await migrate_device_unmap(k, args.src, args.npages, args.fault_page);
  // pages are locked and unmapped: their contents are stable for the driver to copy
  return 0;
}

/** migrate_device_pfn_lock: a referenced, locked page, or 0 if it is free or busy. */
function migrate_device_pfn_lock(k: Kernel, pfn: number): number {
  if (!(pfn > 0 && pfn < k.zone.nrPages)) return 0;
  if (!folio_try_get(k, pfn)) return 0;
  if (!folio_trylock(k, pfn)) {
    folio_put(k, pfn);
    return 0;
  }
  return migrate_pfn(pfn) | MIGRATE_PFN_MIGRATE;
}

/**
 * migrate_device_range: like migrate_vma_setup, but for the device pages [start, start +
 * npages) by pfn, wherever they are mapped (evicting a pagemap). Free pages give 0 entries.
 */
export async function migrate_device_range(src: Uint32Array, start: number, npages: number): Promise<number> {
  const k = current.k;
  for (let i = 0; i < npages; i++) src[i] = migrate_device_pfn_lock(k, start + i);
  await migrate_device_unmap(k, src, npages, 0);
  return 0;
}

/** migrate_device_pfns: the same for a list of pfns given in src (pagemap pages need not be contiguous here). */
export async function migrate_device_pfns(src: Uint32Array, npages: number): Promise<number> {
  const k = current.k;
  for (let i = 0; i < npages; i++) src[i] = migrate_device_pfn_lock(k, src[i]);
  await migrate_device_unmap(k, src, npages, 0);
  return 0;
}

// ---- for GUP ------------------------------------------------------------------------------------------

/**
 * For pin_user_pages(FOLL_LONGTERM) (reference §6.2), and any GUP walk that meets a
 * device-private entry: fault every device-private page of [start, end) in vma back to system
 * memory through its pagemap's migrate_to_ram, as a CPU touch would (handle_mm_fault), and
 * wait out migration entries. The caller holds the mmap_lock. 0, -EFAULT (a fault failed),
 * -ENOMEM (VM_FAULT_OOM).
 */
export async function migrate_device_pages_to_ram(mm: number, vma: number, start: number, end: number, write: boolean): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  mmap_assert_locked(mm);
  for (let addr = start - (start % ps); addr < end; ) {
    const pgd = w[mm + MmL.pgd];
    const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
    const pte = slot < 0 ? 0 : w[slot];
    if (!is_device_private_entry(pte) && !is_migration_entry(pte)) {
      addr += ps;
      continue;
    }
    let r = handle_mm_fault(mm, vma, addr, FAULT_FLAG_REMOTE | (write ? FAULT_FLAG_WRITE : 0));
    if (typeof r !== 'number') r = await r;
    if ((r & VM_FAULT_OOM) !== 0) return -ENOMEM;
    if ((r & VM_FAULT_ERROR) !== 0) return -EFAULT;
    const p = point(k);
    if (p !== undefined) await p;
  }
  return 0;
}
