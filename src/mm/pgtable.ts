// Page tables: four levels of 512-entry tables (pgd, pud, pmd, pte) from an index pool in the
// arena, like x86-64 with 4-level paging. Upper-level entries hold the child table's pool
// index; a PTE is one Int32 word:
//   bit 0 present, 1 write, 2 dirty, 3 accessed (young), 4 special (no struct page: zero page),
//   5 soft-dirty, bits 8-11 the non-present entry type, bits 12-31 the pfn or swap offset.
// Callers hold the mm's page-table lock (PTL) while they read-modify-write entries.

import type { Arena, ArenaPlan } from '../shm/arena.js';
import { IndexPool } from '../shm/pool.js';

export const PTRS_PER_TABLE = 512;
const LEVEL_BITS = 9;
export const PT_LEVELS = 4;

export const _PAGE_PRESENT = 1 << 0;
export const _PAGE_RW = 1 << 1;
export const _PAGE_DIRTY = 1 << 2;
export const _PAGE_ACCESSED = 1 << 3;
export const _PAGE_SPECIAL = 1 << 4;
export const _PAGE_SOFT_DIRTY = 1 << 5;
const TYPE_SHIFT = 8;
const TYPE_MASK = 0xf << TYPE_SHIFT;
const PFN_SHIFT = 12;
/** largest pfn or swap offset a PTE can hold */
export const PTE_PFN_MAX = (1 << 20) - 1;

/** non-present entry types (swp_type) */
export const SWP_SWAP = 1;
export const SWP_MIGRATION_READ = 2;
export const SWP_MIGRATION_WRITE = 3;
export const SWP_DEVICE_PRIVATE_READ = 4;
export const SWP_DEVICE_PRIVATE_WRITE = 5;
export const SWP_DEVICE_EXCLUSIVE_READ = 6;
export const SWP_DEVICE_EXCLUSIVE_WRITE = 7;

export const pte_none = (pte: number): boolean => pte === 0;
export const pte_present = (pte: number): boolean => (pte & _PAGE_PRESENT) !== 0;
export const pte_write = (pte: number): boolean => (pte & _PAGE_RW) !== 0;
export const pte_dirty = (pte: number): boolean => (pte & _PAGE_DIRTY) !== 0;
export const pte_young = (pte: number): boolean => (pte & _PAGE_ACCESSED) !== 0;
export const pte_special = (pte: number): boolean => (pte & _PAGE_SPECIAL) !== 0;
export const pte_pfn = (pte: number): number => pte >>> PFN_SHIFT;
export const pte_mkwrite = (pte: number): number => pte | _PAGE_RW;
export const pte_wrprotect = (pte: number): number => pte & ~_PAGE_RW;
export const pte_mkdirty = (pte: number): number => pte | _PAGE_DIRTY | _PAGE_SOFT_DIRTY;
export const pte_mkclean = (pte: number): number => pte & ~_PAGE_DIRTY;
export const pte_mkyoung = (pte: number): number => pte | _PAGE_ACCESSED;
export const pte_mkold = (pte: number): number => pte & ~_PAGE_ACCESSED;

/** mk_pte: a present PTE for pfn */
export function mk_pte(pfn: number, write: boolean): number {
  return ((pfn << PFN_SHIFT) | _PAGE_PRESENT | (write ? _PAGE_RW : 0)) | 0;
}

/** is_swap_pte: not none and not present */
export const is_swap_pte = (pte: number): boolean => pte !== 0 && (pte & _PAGE_PRESENT) === 0;
export const swp_type = (pte: number): number => (pte & TYPE_MASK) >>> TYPE_SHIFT;
export const swp_offset = (pte: number): number => pte >>> PFN_SHIFT;

export function swp_entry_to_pte(type: number, offset: number): number {
  return ((offset << PFN_SHIFT) | (type << TYPE_SHIFT)) | 0;
}

export const is_migration_entry = (pte: number): boolean => is_swap_pte(pte) && (swp_type(pte) === SWP_MIGRATION_READ || swp_type(pte) === SWP_MIGRATION_WRITE);
export const is_device_private_entry = (pte: number): boolean =>
  is_swap_pte(pte) && (swp_type(pte) === SWP_DEVICE_PRIVATE_READ || swp_type(pte) === SWP_DEVICE_PRIVATE_WRITE);
export const is_device_exclusive_entry = (pte: number): boolean =>
  is_swap_pte(pte) && (swp_type(pte) === SWP_DEVICE_EXCLUSIVE_READ || swp_type(pte) === SWP_DEVICE_EXCLUSIVE_WRITE);
/** a real swap slot entry (non_swap_entry is false) */
export const is_swap_entry = (pte: number): boolean => is_swap_pte(pte) && swp_type(pte) === SWP_SWAP;
/** make_readable_*_entry: the read-only twin of a writable migration / device entry (each
 *  writable type is numbered one above its readable twin) */
export function make_readable_swp_entry(pte: number): number {
  return is_writable_swp_entry(pte) ? swp_entry_to_pte(swp_type(pte) - 1, swp_offset(pte)) : pte;
}

/** writable migration / device entries */
export const is_writable_swp_entry = (pte: number): boolean => {
  const t = swp_type(pte);
  return t === SWP_MIGRATION_WRITE || t === SWP_DEVICE_PRIVATE_WRITE || t === SWP_DEVICE_EXCLUSIVE_WRITE;
};

/**
 * The page-table pool. A table is 512 words; index 0 is never a table, so 0 in an upper
 * entry means "none".
 */
export class PageTables {
  readonly pool: IndexPool;
  private readonly w: Int32Array;
  readonly pageShift: number;

  constructor(arena: Arena, pageSize: number) {
    this.pool = new IndexPool(arena, 'pgtables', PTRS_PER_TABLE);
    this.w = arena.i32;
    this.pageShift = Math.log2(pageSize);
  }

  static plan(plan: ArenaPlan, tables: number): void {
    IndexPool.plan(plan, 'pgtables', PTRS_PER_TABLE, tables);
  }

  static init(arena: Arena, tables: number): void {
    IndexPool.init(arena, 'pgtables', tables);
  }

  /** pgd_alloc: a new empty top-level table; 0 if out of tables (-ENOMEM). */
  pgd_alloc(): number {
    return this.pool.alloc();
  }

  /** the word index of a table entry for a level (0 = pgd ... 3 = pte) */
  private index(addr: number, level: number): number {
    const vpn = Math.floor(addr / 2 ** this.pageShift);
    const shift = (PT_LEVELS - 1 - level) * LEVEL_BITS;
    return Math.floor(vpn / 2 ** shift) % PTRS_PER_TABLE;
  }

  /**
   * The word offset of addr's PTE, allocating missing tables if `alloc` (pte_alloc);
   * -1 if a table is missing and alloc is false, -2 if the pool is exhausted (-ENOMEM).
   */
  pte_offset(pgd: number, addr: number, alloc: boolean): number {
    const w = this.w;
    let table = pgd;
    for (let level = 0; level < PT_LEVELS - 1; level++) {
      const slot = this.pool.at(table) + this.index(addr, level);
      let child = w[slot];
      if (child === 0) {
        if (!alloc) return -1;
        child = this.pool.alloc();
        if (child === 0) return -2;
        w[slot] = child;
      }
      table = child;
    }
    return this.pool.at(table) + this.index(addr, PT_LEVELS - 1);
  }

  /**
   * Visit every present-or-swap PTE in [start, end): fn(slotWordOffset, addr).
   * Skips missing tables at every level, so a sparse range costs what is mapped.
   */
  walk(pgd: number, start: number, end: number, fn: (slot: number, addr: number) => void): void {
    this.walkLevel(pgd, 0, 0, start, end, fn);
  }

  private walkLevel(table: number, level: number, base: number, start: number, end: number, fn: (slot: number, addr: number) => void): void {
    const w = this.w;
    const span = 2 ** (this.pageShift + (PT_LEVELS - 1 - level) * LEVEL_BITS);
    const first = Math.max(0, Math.floor((start - base) / span));
    const last = Math.min(PTRS_PER_TABLE - 1, Math.floor((end - 1 - base) / span));
    const at = this.pool.at(table);
    for (let i = first; i <= last; i++) {
      const v = w[at + i];
      if (v === 0) continue;
      const a = base + i * span;
      if (level === PT_LEVELS - 1) fn(at + i, a);
      else this.walkLevel(v, level + 1, a, start, end, fn);
    }
  }

  /** free_pgtables: release every table under pgd, and pgd itself if `freePgd`. */
  free_pgtables(pgd: number, freePgd: boolean): number {
    let freed = this.freeLevel(pgd, 0);
    if (freePgd) {
      this.pool.free(pgd);
      freed++;
    } else {
      this.w.fill(0, this.pool.at(pgd), this.pool.at(pgd) + PTRS_PER_TABLE);
    }
    return freed;
  }

  private freeLevel(table: number, level: number): number {
    if (level === PT_LEVELS - 1) return 0;
    const w = this.w;
    const at = this.pool.at(table);
    let freed = 0;
    for (let i = 0; i < PTRS_PER_TABLE; i++) {
      const child = w[at + i];
      if (child === 0) continue;
      freed += this.freeLevel(child, level + 1);
      this.pool.free(child);
      w[at + i] = 0;
      freed++;
    }
    return freed;
  }

  get tablesInUse(): number {
    return this.pool.used;
  }
}
