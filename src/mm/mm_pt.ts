// What the mm's page-table code shares: the PTE lock (mm->page_table_lock), the mm's pgd,
// a fast PTE lookup, the PROT_NONE PTE bit, struct page reference helpers, and the mmu_gather
// that frees frames and tables only after a TLB flush.
//
// TLB flush under `threads`: a CPU task's user access reads a PTE and then the frame with no
// lock (that is the MMU). Each task marks itself "in a user access" in its per-task word; a
// flush waits until no other task of the mm is inside one, so a frame or table is never freed
// under an access that saw the old PTE (the kernel's flush IPI). Under `sim` an access never
// spans a switch, so a flush costs nothing.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { Spinlock } from '../sync/spinlock.js';
import { PG_device_private, PG_dirty, PG_free, PageL, ZERO_PFN } from './page.js';
import { __free_page } from './page_alloc.js';
import { PTRS_PER_TABLE } from './pgtable.js';
import { TASK_MM, TASK_UACCESS, TASK_WORDS } from './mm_layer.js';
import { MmL } from './types.js';

/**
 * PROT_NONE on a present PTE (x86's _PAGE_PROTNONE): the frame stays mapped but no access is
 * allowed. Bit 6 is free in present PTEs (pgtable.ts uses 0-5 and 12-31).
 */
export const _PAGE_PROTNONE = 1 << 6;
export const pte_protnone = (pte: number): boolean => (pte & (_PAGE_PROTNONE | 1)) === (_PAGE_PROTNONE | 1);

const P_REF = PageL.refcount;
const P_MAPCOUNT = PageL.mapcount;
const P_MAPPING = PageL.mapping;
const M_PGD = MmL.pgd;
const M_PTL = MmL.page_table_lock;

// ---- the PTE lock ---------------------------------------------------------------------------

let ptlK: Kernel | null = null;
let ptlMm = 0;
let ptlHandle: Spinlock | null = null;
const ptlCache = new WeakMap<Kernel, Map<number, Spinlock>>();

/** &mm->page_table_lock as a handle (cached: lock paths allocate nothing). */
export function ptl_of(k: Kernel, mm: number): Spinlock {
  if (ptlMm === mm && ptlK === k) return ptlHandle!;
  let m = ptlCache.get(k);
  if (!m) ptlCache.set(k, (m = new Map()));
  let l = m.get(mm);
  if (!l) m.set(mm, (l = new Spinlock(k, mm + M_PTL)));
  ptlK = k;
  ptlMm = mm;
  ptlHandle = l;
  return l;
}

/** mm->pgd, allocated at first use (mm_alloc_pgd); 0 if the table pool is empty. */
export function mm_pgd(k: Kernel, mm: number): number {
  const w = k.arena.i32;
  const pgd = w[mm + M_PGD];
  if (pgd !== 0) return pgd;
  const fresh = k.pgtables.pgd_alloc();
  if (fresh === 0) return 0;
  const old = Atomics.compareExchange(w, mm + M_PGD, 0, fresh);
  if (old === 0) return fresh;
  k.pgtables.pool.free(fresh);
  return old;
}

// ---- lookup ---------------------------------------------------------------------------------

/**
 * The word offset of addr's PTE, or -1 if a table on the way is missing. No lock, no
 * allocation: what the MMU and the fast paths use. Table indices from the virtual page number
 * split in two halves of 18 bits, so every step is small-integer arithmetic.
 */
export function pte_lookup(k: Kernel, pgd: number, addr: number): number {
  const w = k.arena.i32;
  const pool = k.pgtables.pool;
  const base = pool.base;
  const tw = pool.objWords;
  const vpn = Math.floor(addr / k.mmLayer.pageSize);
  const hi = Math.floor(vpn / 262144);
  const lo = vpn - hi * 262144;
  const pud = w[base + pgd * tw + ((hi >>> 9) & 511)];
  if (pud === 0) return -1;
  const pmd = w[base + pud * tw + (hi & 511)];
  if (pmd === 0) return -1;
  const pte = w[base + pmd * tw + (lo >>> 9)];
  if (pte === 0) return -1;
  return base + pte * tw + (lo & 511);
}

/**
 * pte_alloc + lookup, PTE lock held: the slot of addr's PTE, allocating missing tables;
 * -2 when the table pool is empty (-ENOMEM).
 */
export function pte_alloc_lookup(k: Kernel, pgd: number, addr: number): number {
  const slot = pte_lookup(k, pgd, addr);
  return slot >= 0 ? slot : k.pgtables.pte_offset(pgd, addr, true);
}

/** PAGE_ALIGN with the kernel's page size */
export function page_align(k: Kernel, v: number): number {
  const ps = k.mmLayer.pageSize;
  return Math.ceil(v / ps) * ps;
}

/** bytes an entry at `level` (0 = pgd ... 3 = pte) maps */
export function level_span(k: Kernel, level: number): number {
  return 2 ** (k.mmLayer.pageShift + (3 - level) * 9);
}

/** word offset of entry `i` of table `table` */
export function table_slot(k: Kernel, table: number, i: number): number {
  return k.pgtables.pool.at(table) + i;
}

export { PTRS_PER_TABLE };

// ---- struct page references -------------------------------------------------------------------

/** folio_get */
export function get_page(k: Kernel, pfn: number): void {
  Atomics.add(k.arena.i32, k.zone.page(pfn) + P_REF, 1);
}

/** folio_put: the last reference frees the frame. The zero page is never counted. */
/** How a device-private page's reference is dropped: memremap installs it (to the pagemap). */
export const devicePageHooks: { put: ((k: Kernel, pfn: number) => void) | null } = { put: null };

export function put_page(k: Kernel, pfn: number): void {
  if (pfn === ZERO_PFN) return;
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  // a device page never goes to the zone allocator
  if ((w[p + PageL.flags] & PG_device_private) !== 0) return devicePageHooks.put!(k, pfn);
  const old = Atomics.sub(w, p + P_REF, 1);
  if (old > 1) return;
  if (old <= 0 || (w[p + PageL.flags] & PG_free) !== 0) {
    Atomics.add(w, p + P_REF, 1);
    splat(k, 'bug', `BUG: Bad page state: put_page of pfn ${pfn} with refcount ${old}`);
    return;
  }
  if (w[p + P_MAPCOUNT] !== 0 || w[p + P_MAPPING] !== 0) {
    splat(k, 'bug', `BUG: Bad page state: pfn ${pfn} freed while still mapped (mapcount ${w[p + P_MAPCOUNT]})`);
    return;
  }
  __free_page(k, pfn);
}

/**
 * set_page_dirty for a driver that wrote a page through its own mapping (ODP unmap, like
 * unpin_user_pages_dirty_lock). Only system pages: the zero page and device-private pages
 * have nothing to write back. PG_dirty is set atomically; reclaim rereads it under the folio
 * lock before it drops the page, and the driver's lock (umem_mutex) orders this against the
 * unmap that made the page reclaimable.
 */
export function set_page_dirty(k: Kernel, pfn: number): void {
  if (pfn === ZERO_PFN || pfn >= k.zone.nrPages) return;
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  const f = w[p + PageL.flags];
  if ((f & (PG_device_private | PG_free)) !== 0) return;
  Atomics.or(w, p + PageL.flags, PG_dirty);
}

/**
 * free_swap_cache (the swap layer fills it): a page whose PTE reference is about to go leaves
 * the swap cache when nothing maps it any more and nobody holds its lock, so a zap or a COW
 * break does not strand its slot (free_pages_and_swap_cache, wp_page_copy).
 */
export const swapCacheHooks: { free_swap_cache: ((k: Kernel, pfn: number) => void) | null } = { free_swap_cache: null };

/** folio_maybe_dma_pinned: a small folio counts pins in its refcount (reference §6.2). */
export function folio_maybe_dma_pinned(k: Kernel, pfn: number): boolean {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  return w[p + PageL.pincount] > 0 || w[p + P_REF] >= 1024;
}

// ---- TLB flush and mmu_gather ------------------------------------------------------------------

/** Wait until no other task of mm is inside a user access that may have read an old PTE. */
export function flush_tlb_mm(k: Kernel, mm: number): void {
  if (k.sched.kind === 'sim') return;
  const w = k.arena.i32;
  const l = k.mmLayer;
  const me = current.id;
  for (let id = 1; id <= l.maxTasks; id++) {
    if (id === me) continue;
    const t = l.taskBase + id * TASK_WORDS;
    if (Atomics.load(w, t + TASK_MM) !== mm) continue;
    for (let spins = 0; Atomics.load(w, t + TASK_UACCESS) !== 0 && Atomics.load(w, t + TASK_MM) === mm; spins++) {
      if (spins > 64) Atomics.wait(w, t + TASK_UACCESS, 1, 0.05);
    }
  }
}

/** struct mmu_gather: frames whose PTE reference dropped, and unlinked tables, freed after the flush. */
export class MmuGather {
  readonly pages: number[] = [];
  readonly tables: number[] = [];
  constructor(
    readonly k: Kernel,
    readonly mm: number,
  ) {}
}

export function tlb_gather_mmu(k: Kernel, mm: number): MmuGather {
  return new MmuGather(k, mm);
}

/** tlb_finish_mmu: flush, then drop the gathered page references and free the tables. */
export function tlb_finish_mmu(tlb: MmuGather): void {
  const { k, mm } = tlb;
  if (tlb.pages.length === 0 && tlb.tables.length === 0) return;
  flush_tlb_mm(k, mm);
  const fsc = swapCacheHooks.free_swap_cache;
  for (const pfn of tlb.pages) {
    if (fsc !== null) fsc(k, pfn); // free_pages_and_swap_cache
    put_page(k, pfn);
  }
  tlb.pages.length = 0;
  const pool = k.pgtables.pool;
  for (const t of tlb.tables) pool.free(t);
  tlb.tables.length = 0;
}

/** Words of `table` that are not zero (a table about to be freed must be empty). */
export function table_used(k: Kernel, table: number): number {
  const w = k.arena.i32;
  const at = k.pgtables.pool.at(table);
  let n = 0;
  for (let i = 0; i < PTRS_PER_TABLE; i++) if (w[at + i] !== 0) n++;
  return n;
}
