// Swap (mm/swapfile.c, mm/swap_state.c, do_swap_page; reference §6, §7) under `sim` over
// several seeds, and a `threads` run where a CPU task swaps pages in while a reclaimer swaps
// them out. Swap-out is shrink_folio_list's sequence for one page (test/fixtures/swap_tasks.ts);
// swap-in comes from CPU faults and fork's children. hmm_range_fault, device drivers and the
// data-integrity check are in test/swap_device.test.ts. Every run ends with nothing leaked:
// frames, tables, VMAs, kmalloc objects, devices, and no swap slot or swap-cache page left.

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bootKernel } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import { MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MREMAP_FIXED, MREMAP_MAYMOVE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { do_madvise } from '../src/mm/madvise.js';
import { vm_mmap, vm_munmap } from '../src/mm/mmap.js';
import { do_mprotect } from '../src/mm/mprotect.js';
import { do_mremap } from '../src/mm/mremap.js';
import { _PAGE_DIRTY, _PAGE_RW, is_swap_entry, pte_pfn, pte_present, swp_offset } from '../src/mm/pgtable.js';
import { current_pid, do_fork, reap_zombies, spawn_process, waitpid, type ProcessFn } from '../src/mm/process.js';
import { LRU_ACTIVE_ANON, LRU_INACTIVE_ANON, folio_isolate_lru, lru_count } from '../src/mm/lru.js';
import { cgroup_mkdir, cgroup_procs_write, memcgStats } from '../src/mm/memcontrol_files.js';
import { reclaim_pages } from '../src/mm/vmscan.js';
import { swapStats, swap_map } from '../src/mm/swapfile.js';
import { get_user, put_user, uaccess_signal } from '../src/mm/uaccess.js';
import { SIGSEGV } from '../src/mm/memory.js';
import { reclaimRange, SwapCtlL } from './fixtures/swap_tasks.js';
import { CFG, N, P, SEEDS, badPages, dumpLog, f1, f2, finish, mapRW, n, proc, ptes, rss, usage, world, writePages } from './fixtures/swap_world.js';

const SWAP_FIXTURE = fileURLToPath(new URL('./fixtures/swap_tasks.ts', import.meta.url));

// ---- swap-out and CPU swap-in ----------------------------------------------------------------------

describe('swap-out by reclaim, swap-in by CPU fault (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: every page goes out (PTE = swap entry, MM_SWAPENTS, frames freed) and comes back with its contents; a read fault keeps the clean swap-cache copy and maps the exclusive page writable-clean; munmap frees every slot`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapRW(mm, N);
        await writePages(a, N, f1);
        const free0 = k.zone.nrFree;
        const r = await reclaimRange(k, mm, a, N);
        expect(r.freed).toBe(N);
        expect(k.zone.nrFree - free0).toBe(N);
        const out = ptes(k, mm, a, N);
        expect(out.every(is_swap_entry)).toBe(true);
        expect(new Set(out.map(swp_offset)).size).toBe(N);
        expect(rss(k, mm)).toEqual([0, N]);
        expect(swapStats(k)).toMatchObject({ used: N, swapCache: 0, pswpout: N, pswpin: 0 });
        for (const e of out) expect(swap_map(k, swp_offset(e))).toBe(1);
        // swap-in by read faults: contents back; the pages stay in the swap cache
        expect(await badPages(a, N, f1)).toEqual([]);
        expect(rss(k, mm)).toEqual([N, 0]);
        expect(swapStats(k)).toMatchObject({ used: N, swapCache: N, pswpin: N, majfault: N });
        for (const pte of ptes(k, mm, a, N)) {
          expect(pte_present(pte)).toBe(true);
          expect([pte & _PAGE_RW, pte & _PAGE_DIRTY]).toEqual([_PAGE_RW, 0]); // exclusive: writable, clean
        }
        // the CPU writes through those PTEs (dirty bit only), and reclaim carries it to the slot
        await writePages(a, N, f2);
        expect((await reclaimRange(k, mm, a, N)).freed).toBe(N);
        expect(swapStats(k)).toMatchObject({ used: N, swapCache: 0, pswpout: 2 * N });
        // a write fault takes the page out of the swap cache at once (should_try_to_free_swap)
        for (let i = 0; i < N; i++) expect(await n(put_user(f1(i), a + i * P))).toBe(0);
        expect(swapStats(k)).toMatchObject({ used: 0, swapCache: 0 });
        for (let i = 0; i < N; i++) expect(await n(get_user(a + i * P + P - 4))).toBe(~f2(i));
        expect(await n(vm_munmap(mm, a, N * P))).toBe(0);
      });
      await finish(wd);
      expect(swapStats(wd.k).lostWrites).toBe(0);
    });
  }
});

// ---- munmap, MADV_DONTNEED, mremap, mprotect, exit ----------------------------------------------------

describe('swapped ranges through munmap, MADV_DONTNEED, mremap, mprotect and exit (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: zapping swap entries frees their slots (swap-cache pages too), mremap moves them, mprotect keeps them; exit frees the rest: no slot leaked`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const M = 4 * N;
      proc(wd, async ({ mm }) => {
        const a = await mapRW(mm, M);
        await writePages(a, M, f1);
        expect((await reclaimRange(k, mm, a, M)).freed).toBe(M);
        expect(await badPages(a, N, f1)).toEqual([]); // the first N back, still in the swap cache
        expect(swapStats(k)).toMatchObject({ used: M, swapCache: N });
        expect(await n(vm_munmap(mm, a, 2 * N * P))).toBe(0);
        expect(swapStats(k)).toMatchObject({ used: 2 * N, swapCache: 0 });
        expect(await n(do_madvise(mm, a + 2 * N * P, N * P, MADV_DONTNEED))).toBe(0);
        expect(swapStats(k)).toMatchObject({ used: N, swapCache: 0 });
        expect(await n(get_user(a + 2 * N * P))).toBe(0); // DONTNEED: zero-filled again
        expect(rss(k, mm)).toEqual([0, N]);
        // mremap moves the swap PTEs; the data follows
        const to = await mapRW(mm, 2 * N);
        expect(await n(vm_munmap(mm, to, 2 * N * P))).toBe(0);
        const b = await n(do_mremap(mm, a + 3 * N * P, N * P, 2 * N * P, MREMAP_MAYMOVE | MREMAP_FIXED, to));
        expect(b).toBe(to);
        expect(ptes(k, mm, a + 3 * N * P, N).every((pte) => pte === 0)).toBe(true);
        expect(ptes(k, mm, b, N).every(is_swap_entry)).toBe(true);
        expect(await badPages(b, N / 2, (i) => f1(3 * N + i))).toEqual([]);
        // mprotect keeps swap entries; a read swaps in, a write is refused
        expect(await n(do_mprotect(mm, b + (N / 2) * P, (N / 2) * P, PROT_READ))).toBe(0);
        expect(ptes(k, mm, b + (N / 2) * P, N / 2).every(is_swap_entry)).toBe(true);
        expect(await n(get_user(b + (N / 2) * P))).toBe(f1(3 * N + N / 2));
        expect(await n(put_user(1, b + (N / 2 + 1) * P))).toBeLessThan(0);
        expect(uaccess_signal()).toBe(SIGSEGV);
        expect(await n(do_mprotect(mm, b + (N / 2) * P, (N / 2) * P, PROT_READ | PROT_WRITE))).toBe(0);
        expect(await n(put_user(7, b + (N / 2 + 1) * P))).toBe(0);
        // exit with N - 2 swap entries and 2 swap-cache pages still there
        expect(rss(k, mm)[1]).toBe(N - N / 2 - 2);
      });
      await finish(wd);
    });
  }
});

// ---- fork ---------------------------------------------------------------------------------------------

describe('fork shares swap entries (sim)', () => {
  for (const seed of SEEDS) {
    for (const first of ['child', 'parent'] as const) {
      it(`seed ${seed}: both see the swapped data (${first} swaps in first); each slot counts both PTEs; the shared swap-cache page is mapped read-only and a write breaks COW; the slots go when both are done`, async () => {
        const wd = world(seed);
        const { k } = wd;
        const step = k.kmalloc.kzalloc(8);
        wd.before = usage(k);
        const w = k.arena.i32;
        const wait = async (v: number): Promise<void> => {
          for (let c = Atomics.load(w, step); c < v; c = Atomics.load(w, step)) {
            const r = k.sched.wait(step, c);
            if (typeof r !== 'number') await r;
          }
        };
        const raise = (v: number): void => {
          Atomics.store(w, step, v);
          k.sched.wake(step, Infinity);
        };
        const out: Record<string, unknown> = {};
        proc(wd, async ({ mm }) => {
          const a = await mapRW(mm, N);
          await writePages(a, N, f1);
          expect((await reclaimRange(k, mm, a, N)).freed).toBe(N);
          const slots = ptes(k, mm, a, N).map(swp_offset);
          const child = await do_fork({
            name: 'child',
            fn: (async ({ mm: cmm }) => {
              if (first === 'parent') await wait(1);
              out.childSees = await badPages(a, N, f1);
              out.childRO = ptes(k, cmm, a, N).every((pte) => pte_present(pte) && (pte & _PAGE_RW) === 0);
              await writePages(a, N, f2); // COW
              out.childAfter = await badPages(a, N, f2);
              out.childRss = rss(k, cmm);
              raise(2);
            }) as ProcessFn,
          });
          expect(child).toBeGreaterThan(0);
          out.maps = slots.map((s) => swap_map(k, s));
          if (first === 'parent') {
            out.parentSees = await badPages(a, N, f1);
            out.parentRO = ptes(k, mm, a, N).every((pte) => pte_present(pte) && (pte & _PAGE_RW) === 0);
            raise(1);
          }
          await wait(2);
          expect(await n(waitpid(child))).toMatchObject({ code: 0 });
          // the child's copies are gone with it; ours is the original data
          expect(await badPages(a, N, f1)).toEqual([]);
          await writePages(a, N, f2);
          expect(await badPages(a, N, f2)).toEqual([]);
          out.parentRss = rss(k, mm);
          expect(await n(vm_munmap(mm, a, N * P))).toBe(0);
        });
        await finish(wd);
        k.kmalloc.kfree(step);
        expect(out.maps).toEqual(Array(N).fill(2));
        expect(out.childSees).toEqual([]);
        expect(out.childRO).toBe(true);
        expect(out.childAfter).toEqual([]);
        expect(out.childRss).toEqual([N, 0]);
        expect(out.parentRss).toEqual([N, 0]);
        if (first === 'parent') {
          expect(out.parentSees).toEqual([]);
          expect(out.parentRO).toBe(true);
        }
      });
    }
  }
});

// ---- swap full ------------------------------------------------------------------------------------------

describe('swap full (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: with 4 slots for 8 pages, reclaim swaps 4 out and keeps 4 mapped (folio_alloc_swap fails); no swap at all keeps every anon page; the data is intact`, async () => {
      const wd = world(seed, { swap: { slots: 4 } });
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapRW(mm, 8);
        await writePages(a, 8, f1);
        const r = await reclaimRange(k, mm, a, 8);
        expect([r.freed, r.swap_full]).toEqual([4, 4]);
        expect(swapStats(k)).toMatchObject({ used: 4, free: 0, allocFail: 4 });
        expect(ptes(k, mm, a, 8).filter(pte_present).length).toBe(4);
        expect(await badPages(a, 8, f1)).toEqual([]);
        expect(await n(vm_munmap(mm, a, 8 * P))).toBe(0);
      });
      await finish(wd);
      const nw = world(seed, { swap: undefined });
      proc(nw, async ({ mm }) => {
        const a = await mapRW(mm, 4);
        await writePages(a, 4, f1);
        expect((await reclaimRange(nw.k, mm, a, 4)).swap_full).toBe(4);
        expect(await badPages(a, 4, f1)).toEqual([]);
      });
      await finish(nw);
      expect(swapStats(nw.k)).toMatchObject({ slots: 0, allocFail: 0 });
    });
  }
});

// ---- vmscan's reclaim_pages and the memcg charge ------------------------------------------------------

describe('reclaim_pages (vmscan.ts) swaps out, and swap-in charges the faulting memcg (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: an isolated range goes out through shrink_folio_list, its charge leaves with the frames, and comes back charged to the mm's memcg (mem_cgroup_swapin_charge_folio) with its contents`, async () => {
      const wd = world(seed, { memcg: { groups: 2 } });
      const { k } = wd;
      const g = cgroup_mkdir(k, 'g');
      expect(g).toBeGreaterThan(0);
      const cur = (): number => memcgStats(k, g)!.current;
      const res: number[] = [];
      proc(wd, async ({ mm }) => {
        expect(cgroup_procs_write(k, g, current_pid())).toBe(0);
        const a = await mapRW(mm, N);
        await writePages(a, N, f1);
        res.push(cur());
        const pfns = ptes(k, mm, a, N).map(pte_pfn);
        for (const pfn of pfns) expect(folio_isolate_lru(k, pfn)).toBe(true);
        expect(await n(reclaim_pages(k, pfns))).toBe(N);
        expect(ptes(k, mm, a, N).every(is_swap_entry)).toBe(true);
        res.push(cur());
        expect(await badPages(a, N, f1)).toEqual([]);
        res.push(cur(), lru_count(k, LRU_INACTIVE_ANON) + lru_count(k, LRU_ACTIVE_ANON));
        expect(await n(vm_munmap(mm, a, N * P))).toBe(0);
        res.push(cur());
      });
      await finish(wd);
      expect(res).toEqual([N, 0, N, N, 0]);
    });
  }
});

// ---- races ---------------------------------------------------------------------------------------------

describe('races (sim, 8 seeds): swap-in, MADV_DONTNEED and rewrites in three threads of one mm while a reclaimer swaps out', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    it(`seed ${seed}: every value read is one that was written there (or zero after DONTNEED); no BUG; no slot or swap-cache page left`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const ctl = k.kmalloc.kzalloc(8);
      wd.before = usage(k);
      const w = k.arena.i32;
      const BASE = 0x40000000;
      const bad: string[] = [];
      const ok = (i: number, v: number): boolean => v === 0 || v === f1(i) || v === f2(i);
      const pid = spawn_process(k, wd.s, {
        name: 'racer',
        threads: 3,
        fn: (async ({ mm, thread }) => {
          if (thread === 0) {
            expect(await n(vm_mmap(mm, BASE, N * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED))).toBe(BASE);
            await writePages(BASE, N, f1);
            w[ctl + 1] = mm;
            Atomics.store(w, ctl, 1);
            k.sched.wake(ctl, Infinity);
          }
          while (Atomics.load(w, ctl) === 0) await n(k.sched.wait(ctl, 0));
          for (let r = 0; r < 6; r++) {
            for (let i = 0; i < N; i++) {
              const at = BASE + i * P;
              if (thread === 1) {
                const v = await n(get_user(at));
                if (!ok(i, v)) bad.push(`page ${i} read ${v}`);
              } else if (thread === 2) {
                if (i % 4 === r % 4) expect(await n(do_madvise(mm, at, P, MADV_DONTNEED))).toBe(0);
                else expect(await n(put_user(r & 1 ? f2(i) : f1(i), at))).toBe(0);
              } else {
                const v = await n(get_user(at + P - 4));
                if (v !== 0 && v !== ~f1(i)) bad.push(`page ${i} tail read ${v}`);
              }
            }
            // the next round starts after another reclaim pass
            for (let c = Atomics.load(w, ctl + 3); c < r + 1; c = Atomics.load(w, ctl + 3)) await n(k.sched.wait(ctl + 3, c));
          }
          Atomics.add(w, ctl + 2, 1);
          k.sched.wake(ctl + 2, Infinity);
          while (Atomics.load(w, ctl + 2) < 4) await n(k.sched.wait(ctl + 2, Atomics.load(w, ctl + 2)));
        }) as ProcessFn,
      });
      expect(pid).toBeGreaterThan(0);
      wd.s.spawn({
        name: 'reclaimer',
        kind: 'kthread',
        fn: async () => {
          while (Atomics.load(w, ctl) === 0) await n(k.sched.wait(ctl, 0));
          while (Atomics.load(w, ctl + 2) < 3) {
            await reclaimRange(k, w[ctl + 1], BASE, N);
            Atomics.add(w, ctl + 3, 1);
            k.sched.wake(ctl + 3, Infinity);
            await n(k.sched.sleep(50_000));
          }
          Atomics.add(w, ctl + 2, 1); // the threads may exit now: their mm is ours no more
          k.sched.wake(ctl + 2, Infinity);
        },
      });
      await finish(wd);
      k.kmalloc.kfree(ctl);
      expect(bad).toEqual([]);
      expect(swapStats(k).pswpout).toBeGreaterThan(N);
    });
  }
});

// ---- threads --------------------------------------------------------------------------------------------

describe('swap under threads (a CPU task swapping in while a reclaimer swaps out, each in its own worker)', () => {
  it('every value the CPU task reads is the one it last wrote; pages went out and came back; no lost write; nothing leaked', async () => {
    const k = bootKernel(CFG);
    const before = usage(k);
    const ctl = k.kmalloc.kzalloc(SwapCtlL.$size);
    const runner = new ThreadsRunner(k, { watchdogMs: 8000, timeoutMs: 30_000 });
    const args = { ctl, base: 0x40000000, pages: N, pageSize: P, rounds: 40 };
    const pid = spawn_process(k, runner, { name: 'cpu', module: SWAP_FIXTURE, fn: 'swapCpu', args });
    expect(pid).toBeGreaterThan(0);
    runner.spawn({ name: 'reclaimer', kind: 'kthread', module: SWAP_FIXTURE, fn: 'swapReclaimer', args });
    const r = await runner.run();
    const log = k.klog.read();
    expect(r.failed, dumpLog(log)).toEqual([]);
    expect(r.status, r.report ?? dumpLog(log)).toBe('done');
    expect(log, dumpLog(log)).toEqual([]);
    const w = k.arena.i32;
    expect([w[ctl + SwapCtlL.rounds], w[ctl + SwapCtlL.bad], w[ctl + SwapCtlL.faults]]).toEqual([40, 0, 0]);
    const st = swapStats(k);
    expect(w[ctl + SwapCtlL.passes]).toBeGreaterThanOrEqual(40);
    expect(w[ctl + SwapCtlL.freed]).toBeGreaterThan(0);
    expect(st.pswpin).toBeGreaterThan(0);
    expect(st.lostWrites).toBe(0);
    reap_zombies(k);
    k.kmalloc.kfree(ctl);
    expect(usage(k)).toEqual(before);
  }, 40_000);
});
