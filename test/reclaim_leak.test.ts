// A swap-cache page nobody else holds, left after the last exit (the 1-frame teardown leak of
// `shadowmm stress --pressure reclaim`, gpusvm seed 5 and userptr seed 61). Reclaim put a page
// in the swap cache while a COW fault held a reference on it and another task's COW had taken
// its last PTE; the fault then dropped its reference without free_swap_cache (wp_page_copy
// frees the swap cache only when it copied). The kernel leaves such a page to later reclaim
// (free_swap_cache is "just an optimization"), so the state is right; what was missing was the
// reclaim of cache-only slots (swap_reclaim_full_clusters / __try_to_reclaim_swap) that the
// harness now runs before its teardown check. The path is walked step by step by
// test/fixtures/reclaim_leak_tasks.ts under sim and threads, and the two stress runs replayed.

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { Kernel } from '../src/sched/kernel.js';
import { ThreadsRunner } from '../src/run/threads.js';
import { runStress } from '../src/run/stress.js';
import { folio_trylock, folio_unlock } from '../src/mm/folio_lock.js';
import { reap_zombies, spawn_process } from '../src/mm/process.js';
import { PG_dirty, PG_lru, PG_swapcache, PageL } from '../src/mm/page.js';
import { is_swap_entry, swp_offset } from '../src/mm/pgtable.js';
import { __try_to_reclaim_swap, swap_reclaim_full_clusters } from '../src/mm/swap_state.js';
import { SWAP_HAS_CACHE, swapStats, swap_map } from '../src/mm/swapfile.js';
import { vm_munmap } from '../src/mm/mmap.js';
import { put_page } from '../src/mm/mm_pt.js';
import { OrphanL } from './fixtures/reclaim_leak_tasks.js';
import { grabPage, shrinkPage } from './fixtures/swap_tasks.js';
import { CFG, P, SEEDS, badPages, dumpLog, f1, finish, mapRW, n, proc, ptes, usage, world, writePages } from './fixtures/swap_world.js';
import { bootKernel } from '../src/run/boot.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/reclaim_leak_tasks.ts', import.meta.url));

/** The state the process left: one frame held by the swap cache alone, for a slot nothing else names. */
function expectOrphan(k: Kernel, ctl: number, before: ReturnType<typeof usage>): number {
  const w = k.arena.i32;
  expect(w[ctl + OrphanL.step]).toBe(5);
  expect(w[ctl + OrphanL.isolated]).toBe(1);
  expect(w[ctl + OrphanL.mapcount]).toBe(0);
  expect(w[ctl + OrphanL.reclaimed]).toBe(0); // kept: __remove_mapping could not freeze 3 references
  const pfn = w[ctl + OrphanL.pfn];
  const s = w[ctl + OrphanL.slot];
  const p = k.zone.page(pfn);
  expect(s).toBeGreaterThan(0);
  expect(w[p + PageL.private]).toBe(s);
  expect(w[p + PageL.flags] & (PG_swapcache | PG_lru)).toBe(PG_swapcache | PG_lru);
  expect([w[p + PageL.refcount], w[p + PageL.mapcount]]).toEqual([1, 0]);
  expect(swap_map(k, s)).toBe(SWAP_HAS_CACHE); // no swap PTE names the slot
  // what the teardown check saw: one frame and one slot more in use than before the run
  const now = usage(k);
  expect(now.mm.freePages).toBe(before.mm.freePages - 1);
  expect(now.swap).toEqual({ used: 1, swapCache: 1 });
  return pfn;
}

describe('a page only the swap cache holds after the last exit (stress --pressure reclaim teardown leak)', () => {
  for (const seed of SEEDS) {
    it(`sim seed ${seed}: COW reference + isolation + last PTE gone + reclaim kept it + reference dropped -> an orphan; swap_reclaim_full_clusters frees frame and slot, and nothing is left`, async () => {
      const wd = world(seed);
      const { k, s } = wd;
      const ctl = k.kmalloc.kzalloc(OrphanL.$size);
      const before = usage(k);
      expect(spawn_process(k, s, { name: 'cow', module: FIXTURE, fn: 'orphanSwapCache', args: { ctl, pageSize: P } })).toBeGreaterThan(0);
      const r = await s.run();
      const log = k.klog.read();
      expect(r.status, r.report ?? dumpLog(log)).toBe('done');
      expect(log, dumpLog(log)).toEqual([]);
      reap_zombies(k);
      const pfn = expectOrphan(k, ctl, before);
      // the swap allocator's reclaim of cache-only slots (and swapoff) frees it
      expect(swap_reclaim_full_clusters(k)).toBe(1);
      expect(k.arena.i32[k.zone.page(pfn) + PageL.refcount]).toBe(0);
      expect(swap_reclaim_full_clusters(k)).toBe(0);
      k.kmalloc.kfree(ctl);
      expect(usage(k)).toEqual(wd.before);
    });
  }

  it('threads: the same path in a worker; the main thread reclaims the orphan after the run', async () => {
    const k = bootKernel(CFG);
    const before0 = usage(k);
    const ctl = k.kmalloc.kzalloc(OrphanL.$size);
    const before = usage(k);
    const runner = new ThreadsRunner(k, { watchdogMs: 8000, timeoutMs: 30_000 });
    expect(spawn_process(k, runner, { name: 'cow', module: FIXTURE, fn: 'orphanSwapCache', args: { ctl, pageSize: P } })).toBeGreaterThan(0);
    const r = await runner.run();
    const log = k.klog.read();
    expect(r.failed, dumpLog(log)).toEqual([]);
    expect(r.status, r.report ?? dumpLog(log)).toBe('done');
    expect(log, dumpLog(log)).toEqual([]);
    reap_zombies(k);
    expectOrphan(k, ctl, before);
    expect(swap_reclaim_full_clusters(k)).toBe(1);
    k.kmalloc.kfree(ctl);
    expect(usage(k)).toEqual(before0);
  }, 40_000);

  for (const seed of SEEDS) {
    it(`sim seed ${seed}: __try_to_reclaim_swap leaves a slot a swap PTE still names and a locked page alone`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapRW(mm, 2);
        await writePages(a, 2, f1);
        // page 0 goes out while an extra reference keeps it in the swap cache: PTE = swap entry
        const pfn = grabPage(k, mm, a);
        const extra = grabPage(k, mm, a);
        expect(extra).toBe(pfn);
        expect(await shrinkPage(k, pfn)).toBe('busy');
        const pte = ptes(k, mm, a, 1)[0];
        expect(is_swap_entry(pte)).toBe(true);
        const s0 = swp_offset(pte);
        expect(swap_map(k, s0)).toBe(1 | SWAP_HAS_CACHE);
        expect(__try_to_reclaim_swap(k, s0)).toBe(-1);
        expect(swap_reclaim_full_clusters(k)).toBe(0);
        expect(swapStats(k)).toMatchObject({ used: 1, swapCache: 1 });
        // the swap PTE goes with munmap, but the page is locked: free_swap_and_cache and we both leave it
        expect(folio_trylock(k, pfn)).toBe(true);
        expect(await n(vm_munmap(mm, a, P))).toBe(0);
        expect(swap_map(k, s0)).toBe(SWAP_HAS_CACHE);
        expect(__try_to_reclaim_swap(k, s0)).toBe(-1);
        folio_unlock(k, pfn);
        // unlocked: the cache's reference goes, ours is the last; the page is dirty (no slot copy)
        expect(__try_to_reclaim_swap(k, s0)).toBe(1);
        expect(swapStats(k)).toMatchObject({ used: 0, swapCache: 0 });
        expect(k.arena.i32[k.zone.page(pfn) + PageL.flags] & (PG_swapcache | PG_dirty)).toBe(PG_dirty);
        expect(k.arena.i32[k.zone.page(pfn) + PageL.refcount]).toBe(1);
        expect(__try_to_reclaim_swap(k, s0)).toBe(0);
        put_page(k, pfn);
        // page 1 is untouched
        expect(await badPages(a + P, 1, (i) => f1(i + 1))).toEqual([]);
      });
      await finish(wd);
    });
  }
});

describe('the stress runs that reported the leak (sim, replayed through runStress)', () => {
  for (const [driver, seed] of [
    ['gpusvm', 5],
    ['userptr', 61],
  ] as const) {
    it(`${driver} --pressure reclaim --seed ${seed}: no teardown_leak`, async () => {
      const { report, violations } = await runStress({ drivers: [driver], scheduler: 'sim', pressure: 'reclaim', seed, runs: 1, quiet: true, durationMs: 60_000 });
      expect(report.runs).toBe(1);
      expect(violations.map((v) => `[${v.kind}] ${v.message}`)).toEqual([]);
      // the run still exercised swap: the orphan needs swap-out under a COW fault
      expect(report.counters.pressure.pswpout).toBeGreaterThan(0);
    }, 60_000);
  }
});
