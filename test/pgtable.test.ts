import { describe, expect, it } from 'vitest';
import { Arena, ArenaPlan } from '../src/shm/arena.js';
import {
  PageTables, SWP_MIGRATION_WRITE, SWP_SWAP, is_migration_entry, is_swap_entry, is_swap_pte, mk_pte, pte_dirty, pte_mkclean,
  pte_mkdirty, pte_none, pte_pfn, pte_present, pte_write, pte_wrprotect, swp_entry_to_pte, swp_offset, swp_type,
} from '../src/mm/pgtable.js';

function tables(n: number): PageTables {
  const plan = new ArenaPlan();
  PageTables.plan(plan, n);
  const arena = Arena.create(plan.layout());
  PageTables.init(arena, n);
  return new PageTables(arena, 4096);
}

describe('page tables: PTE words and the 4-level walk', () => {
  it('encodes present and non-present entries with the kernel helpers', () => {
    const pte = mk_pte(0xfffff, true);
    expect(pte_present(pte) && pte_write(pte)).toBe(true);
    expect(pte_pfn(pte)).toBe(0xfffff);
    expect(pte_write(pte_wrprotect(pte))).toBe(false);
    expect(pte_dirty(pte_mkdirty(pte))).toBe(true);
    expect(pte_dirty(pte_mkclean(pte_mkdirty(pte)))).toBe(false);
    const swp = swp_entry_to_pte(SWP_SWAP, 77);
    expect(pte_present(swp) || pte_none(swp)).toBe(false);
    expect(is_swap_pte(swp) && is_swap_entry(swp)).toBe(true);
    expect([swp_type(swp), swp_offset(swp)]).toEqual([SWP_SWAP, 77]);
    const mig = swp_entry_to_pte(SWP_MIGRATION_WRITE, 5);
    expect(is_migration_entry(mig) && !is_swap_entry(mig)).toBe(true);
  });

  it('allocates tables on demand, finds the same slot again, and walks only what is mapped', () => {
    const pt = tables(64);
    const w = pt.pool['w' as never] as unknown as Int32Array;
    const pgd = pt.pgd_alloc();
    expect(pt.pte_offset(pgd, 0x7f0000001000, false)).toBe(-1);
    const addrs = [0x1000, 0x2000, 0x200000, 0x7f0000001000, 0x7fffffffe000];
    addrs.forEach((a, i) => {
      const slot = pt.pte_offset(pgd, a, true);
      expect(slot).toBeGreaterThan(0);
      w[slot] = mk_pte(i + 1, false);
    });
    expect(pt.pte_offset(pgd, 0x2000, false)).toBe(pt.pte_offset(pgd, 0x2000, true));
    const seen: number[] = [];
    pt.walk(pgd, 0, 2 ** 47, (slot, addr) => {
      expect(pte_pfn(w[slot])).toBe(addrs.indexOf(addr) + 1);
      seen.push(addr);
    });
    expect(seen).toEqual(addrs);
    const part: number[] = [];
    pt.walk(pgd, 0x2000, 0x200001, (_s, addr) => part.push(addr));
    expect(part).toEqual([0x2000, 0x200000]);
    const used = pt.tablesInUse;
    expect(pt.free_pgtables(pgd, true)).toBe(used);
    expect(pt.tablesInUse).toBe(0);
  });

  it('reports pool exhaustion as -2 (-ENOMEM) without corrupting what was mapped', () => {
    const pt = tables(4); // pgd + pud + pmd + pte: exactly one path
    const pgd = pt.pgd_alloc();
    expect(pt.pte_offset(pgd, 0x1000, true)).toBeGreaterThan(0);
    expect(pt.pte_offset(pgd, 2 ** 40, true)).toBe(-2);
    expect(pt.pte_offset(pgd, 0x1000, false)).toBeGreaterThan(0);
  });
});
