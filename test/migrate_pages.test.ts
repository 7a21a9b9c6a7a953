// Migration of system pages (src/mm/migrate_pages.ts, compaction.ts): reference §6.1 "Related
// paths" (try_to_migrate uses CLEAR, pinned pages cannot be migrated), §6.2 (pins do not stop
// invalidations) and §7 (NUMA / compaction / move_pages: CLEAR, blockable), with the dmirror
// driver mirroring the pages, under `sim` over several seeds; then migration racing a device
// and CPU threads under sim (random and PCT) and under `threads`. Every run ends with no klog
// record the test did not expect (no mirror-invariant violation, no bad page state) and
// nothing leaked. Already covered elsewhere and not repeated here: FOLL_LONGTERM moving
// device-private pages back (test/migrate.test.ts) and fork copying pinned anon pages at once
// (test/mm.test.ts, test/drivers_hlist.test.ts).

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bootKernel } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import { current } from '../src/sched/current.js';
import type { Kernel } from '../src/sched/kernel.js';
import type { RunResult } from '../src/sched/scheduler.js';
import { SimScheduler } from '../src/sched/sim.js';
import { EAGAIN, EFAULT, EINVAL, ENOENT } from '../src/shm/errno.js';
import {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_UNMAP,
  MnL,
  defineNotifierOps,
  mmu_notifier_init,
  mmu_notifier_register,
  mmu_notifier_unregister,
  type MmuNotifierRange,
} from '../src/notifier/index.js';
import { compact_range } from '../src/mm/compaction.js';
import { FOLL_WRITE, pin_user_pages, unpin_user_pages } from '../src/mm/gup.js';
import { folio_on_lru, lruStats } from '../src/mm/lru.js';
import { NR_MAX_MIGRATE_PAGES_RETRY } from '../src/mm/migrate_pages.js';
import { mmap_read_lock, mmap_read_unlock } from '../src/mm/mm_inline.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { pte_lookup } from '../src/mm/mm_pt.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { vm_mmap, vm_munmap } from '../src/mm/mmap.js';
import { do_mprotect } from '../src/mm/mprotect.js';
import { PG_free, PG_swapcache, PageL } from '../src/mm/page.js';
import { is_migration_entry, is_swap_entry, pte_pfn, pte_present, swp_offset } from '../src/mm/pgtable.js';
import { reap_zombies, spawn_process, type ProcessFn } from '../src/mm/process.js';
import { MmL } from '../src/mm/types.js';
import { slot_cache, swapUsage } from '../src/mm/swapfile.js';
import { do_madvise } from '../src/mm/madvise.js';
import { MADV_PAGEOUT } from '../src/mm/madvise_pageout.js';
import { copy_from_user, copy_to_user, get_user, put_user } from '../src/mm/uaccess.js';
import { HMM_DMIRROR_READ, dmirror_close, dmirror_entries, dmirror_ioctl, dmirror_log, dmirror_open, hmm_dmirror_exit, hmm_dmirror_init } from '../drivers/dmirror/index.js';
import { CFG, P, dumpLog, finish, n, world, type World } from './device_world.js';
import { MpCtlL, mpSetup, type MpArgs } from './fixtures/migrate_pages_tasks.js';

const SEEDS = [1, 2, 3, 4];
const W = P / 4;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;

// ---- helpers ------------------------------------------------------------------------------------

const pat = (tag: number, p: number, j: number): number => (tag * 1_000_003 + p * 4099 + j * 7) | 0;

async function writePattern(a: number, pages: number, tag: number): Promise<void> {
  const buf = new Int32Array(pages * W);
  for (let p = 0; p < pages; p++) for (let j = 0; j < W; j++) buf[p * W + j] = pat(tag, p, j);
  expect(await copy_to_user(a, new Uint8Array(buf.buffer))).toBe(0);
}

/** the pages of [a, a + pages) whose contents are not pattern `tag` */
async function badPages(a: number, pages: number, tag: number): Promise<number[]> {
  const buf = new Int32Array(pages * W);
  expect(await copy_from_user(new Uint8Array(buf.buffer), a)).toBe(0);
  const bad: number[] = [];
  for (let p = 0; p < pages; p++) {
    for (let j = 0; j < W; j++) {
      if (buf[p * W + j] !== pat(tag, p, j)) {
        bad.push(p);
        break;
      }
    }
  }
  return bad;
}

function hostPte(k: Kernel, mm: number, addr: number): number {
  const pgd = k.arena.i32[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  return slot < 0 ? 0 : k.arena.i32[slot];
}

const pfnAt = (k: Kernel, mm: number, addr: number): number => (pte_present(hostPte(k, mm, addr)) ? pte_pfn(hostPte(k, mm, addr)) : 0);
const pfns = (k: Kernel, mm: number, a: number, pages: number): number[] => Array.from({ length: pages }, (_, i) => pfnAt(k, mm, a + i * P));
const isFree = (k: Kernel, pfn: number): boolean => (k.arena.i32[k.zone.page(pfn) + PageL.flags] & PG_free) !== 0;

/** A process that loads dmirror, opens /dev/hmm_dmirror0 and runs `fn`; closes and unloads. */
function withDmirror(wd: World, fn: (c: { k: Kernel; mm: number; mod: number; fd: number }) => Promise<void>, threads = 1, rest?: ProcessFn): number {
  const pid = spawn_process(wd.k, wd.s, {
    name: 'mp',
    threads,
    fn: (async (ctx) => {
      if (ctx.thread !== 0) return rest?.(ctx);
      const mod = await hmm_dmirror_init({ chunkPages: 32 });
      expect(mod).toBeGreaterThan(0);
      const fd = await dmirror_open(mod, 0);
      expect(fd).toBeGreaterThan(0);
      await fn({ k: ctx.k, mm: ctx.mm, mod, fd });
      expect(await dmirror_close(mod, fd)).toBe(0);
      await hmm_dmirror_exit(mod);
    }) as ProcessFn,
  });
  expect(pid).toBeGreaterThan(0);
  return pid;
}

/** dmirror READ of [a, a + pages) into `mirror`: the device now maps every page */
async function devRead(mod: number, fd: number, a: number, mirror: number, pages: number): Promise<{ ret: number; cpages: number; faults: number }> {
  return dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: a, ptr: mirror, npages: pages });
}

// ---- a recording hlist subscriber ------------------------------------------------------------------

interface Rec {
  phase: 'start' | 'end';
  event: number;
  start: number;
  end: number;
  blockable: boolean;
}
const recs: Rec[] = [];
/** while set, a CLEAR end sleeps until `gate.open` (the PTE is a migration entry meanwhile) */
const gate = { armed: false, open: false, inEnd: 0 };
const recorder = defineNotifierOps('migrate_pages_test_recorder', {
  invalidate_range_start(_sub: number, r: MmuNotifierRange) {
    recs.push({ phase: 'start', event: r.event, start: r.start, end: r.end, blockable: (r.flags & 1) !== 0 });
    return 0;
  },
  invalidate_range_end(_sub: number, r: MmuNotifierRange): void | Promise<void> {
    recs.push({ phase: 'end', event: r.event, start: r.start, end: r.end, blockable: (r.flags & 1) !== 0 });
    if (!gate.armed || r.event !== MMU_NOTIFY_CLEAR) return;
    gate.inEnd++;
    const k = current.k;
    return (async () => {
      while (!gate.open) {
        const p = k.sched.sleep(100_000);
        if (p !== undefined) await p;
      }
    })();
  },
});

async function watch(k: Kernel, mm: number): Promise<number> {
  recs.length = 0;
  const sub = k.kmalloc.kzalloc(MnL.$size);
  expect(mmu_notifier_init(sub, recorder)).toBe(0);
  expect(await n(mmu_notifier_register(sub, mm))).toBe(0);
  return sub;
}

async function unwatch(k: Kernel, sub: number, mm: number): Promise<void> {
  expect(await mmu_notifier_unregister(sub, mm)).toBe(0);
  k.kmalloc.kfree(sub);
}

/** the recorded ranges as [event, start, end, blockable]; the ends must match the starts one for one */
function paired(): [number, number, number, boolean][] {
  const s = recs.filter((r) => r.phase === 'start').map((r): [number, number, number, boolean] => [r.event, r.start, r.end, r.blockable]);
  const e = recs.filter((r) => r.phase === 'end').map((r): [number, number, number, boolean] => [r.event, r.start, r.end, r.blockable]);
  expect(e).toEqual(s);
  return s;
}

// ---- §6.1 / §7: compaction of mirrored pages ----------------------------------------------------------------

const N = 8;

describe('compaction-style migration of mirrored system pages (reference §6.1 "Related paths", §7 compaction row: CLEAR, blockable)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: every page moves to a new frame under one blockable CLEAR per page; the dmirror entries are dropped and a re-READ maps the NEW frames; contents and LRU follow; the old frames are freed`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      withDmirror(wd, async ({ mm, mod, fd }) => {
        const a = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
        const mirror = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
        await writePattern(a, N, 3);
        expect((await devRead(mod, fd, a, mirror, N)).ret).toBe(0);
        const old = pfns(k, mm, a, N);
        expect(dmirror_entries(mod, fd, a, a + N * P).map((e) => e.pfn)).toEqual(old);
        const sub = await watch(k, mm);
        const logBefore = dmirror_log(mod, fd).length;
        const status = new Int32Array(N).fill(99);
        expect(await compact_range(k, mm, a, a + N * P, { status })).toBe(0);
        expect(Array.from(status)).toEqual(Array(N).fill(0));
        out.ranges = paired().map(([ev, s, e, b]) => [ev, s - a, e - a, b]);
        out.log = dmirror_log(mod, fd).slice(logBefore);
        const now = pfns(k, mm, a, N);
        out.moved = now.every((pfn, i) => pfn !== 0 && pfn !== old[i]);
        out.oldFreed = old.filter((pfn) => !now.includes(pfn)).every((pfn) => isFree(k, pfn));
        out.onLru = now.every((pfn) => folio_on_lru(k, pfn));
        out.isolated = lruStats(k).nr_isolated;
        out.entriesAfter = dmirror_entries(mod, fd, a, a + N * P).length;
        expect(await badPages(a, N, 3)).toEqual([]);
        // the device refaults and now mirrors the new frames
        const r = await devRead(mod, fd, a, mirror, N);
        out.reread = [r.ret, r.cpages, r.faults];
        out.remapped = dmirror_entries(mod, fd, a, a + N * P).map((e) => e.pfn);
        out.now = now;
        expect(await badPages(mirror, N, 3)).toEqual([]);
        await unwatch(k, sub, mm);
        expect(await n(vm_munmap(mm, a, N * P))).toBe(0);
        expect(await n(vm_munmap(mm, mirror, N * P))).toBe(0);
      });
      await finish(wd);
      expect(out.ranges).toEqual(Array.from({ length: N }, (_, i) => [MMU_NOTIFY_CLEAR, i * P, (i + 1) * P, true]));
      expect((out.log as { event: number; blockable: boolean }[]).map((x) => [x.event, x.blockable])).toEqual(Array(N).fill([MMU_NOTIFY_CLEAR, true]));
      expect(out).toMatchObject({ moved: true, oldFreed: true, onLru: true, isolated: 0, entriesAfter: 0, reread: [0, N, 1] });
      expect(out.remapped).toEqual(out.now);
    });

    it(`seed ${seed}: §6.1 a pinned page (pin_user_pages) is not migrated: -EAGAIN after ${NR_MAX_MIGRATE_PAGES_RETRY} passes, each with its CLEAR start/end pair; it keeps its frame and PTE; the others move; unpinned, it moves`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      withDmirror(wd, async ({ mm, mod, fd }) => {
        const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
        const mirror = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
        await writePattern(a, 4, 5);
        const pinned = [0];
        const l = mmap_read_lock(mm);
        if (l !== undefined) await l;
        try {
          expect(await pin_user_pages(a + P, 1, FOLL_WRITE, pinned)).toBe(1);
        } finally {
          mmap_read_unlock(mm);
        }
        expect((await devRead(mod, fd, a, mirror, 4)).ret).toBe(0);
        const old = pfns(k, mm, a, 4);
        expect(old[1]).toBe(pinned[0]);
        const sub = await watch(k, mm);
        const status = new Int32Array(4);
        out.ret = await compact_range(k, mm, a, a + 4 * P, { status });
        out.status = Array.from(status);
        const ranges = paired();
        out.pairsPinned = ranges.filter(([, s]) => s === a + P).length;
        out.pairsOther = [0, 2, 3].map((i) => ranges.filter(([, s]) => s === a + i * P).length);
        out.allClear = ranges.every(([ev, , , b]) => ev === MMU_NOTIFY_CLEAR && b);
        const now = pfns(k, mm, a, 4);
        out.pinnedKept = now[1] === pinned[0] && (hostPte(k, mm, a + P) & 2) !== 0;
        out.othersMoved = [0, 2, 3].every((i) => now[i] !== old[i]);
        // the pinned page's mirror entry went too: pins do not stop invalidations
        out.entries = dmirror_entries(mod, fd, a, a + 4 * P).length;
        expect(await badPages(a, 4, 5)).toEqual([]);
        unpin_user_pages(pinned, 1);
        recs.length = 0;
        out.after = await compact_range(k, mm, a, a + 4 * P);
        out.pinnedMoved = pfnAt(k, mm, a + P) !== pinned[0];
        expect(await badPages(a, 4, 5)).toEqual([]);
        await unwatch(k, sub, mm);
        expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
        expect(await n(vm_munmap(mm, mirror, 4 * P))).toBe(0);
      });
      await finish(wd);
      expect(out).toEqual({
        ret: 1,
        status: [0, -EAGAIN, 0, 0],
        pairsPinned: NR_MAX_MIGRATE_PAGES_RETRY,
        pairsOther: [1, 1, 1],
        allClear: true,
        pinnedKept: true,
        othersMoved: true,
        entries: 0,
        after: 0,
        pinnedMoved: true,
      });
    });

    it(`seed ${seed}: a CPU fault on a page mid-migration waits on the migration entry, then reads the data from the NEW frame`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      const sh = { mm: 0, a: 0, old: 0, cpuStarted: false, cpuDone: false };
      gate.armed = false;
      gate.open = false;
      gate.inEnd = 0;
      try {
        withDmirror(
          wd,
          async ({ mm }) => {
            const a = await n(vm_mmap(mm, 0, 2 * P, RW, PRIV));
            await writePattern(a, 2, 7);
            const sub = await watch(k, mm);
            Object.assign(sh, { mm, a, old: pfnAt(k, mm, a) });
            gate.armed = true;
            expect(await compact_range(k, mm, a, a + P)).toBe(0);
            gate.armed = false;
            while (!sh.cpuDone) await k.sched.sleep(100_000);
            out.newFrame = pfnAt(k, mm, a);
            await unwatch(k, sub, mm);
            expect(await n(vm_munmap(mm, a, 2 * P))).toBe(0);
          },
          2,
          async () => {
            while (gate.inEnd === 0) await k.sched.sleep(100_000);
            out.sawEntry = is_migration_entry(hostPte(k, sh.mm, sh.a)) && swp_offset(hostPte(k, sh.mm, sh.a)) === sh.old;
            sh.cpuStarted = true;
            out.value = await n(get_user(sh.a + 4 * 5));
            out.cpuSawFrame = pfnAt(k, sh.mm, sh.a);
            sh.cpuDone = true;
          },
        );
        wd.s.spawn({
          name: 'ctl',
          kind: 'kthread',
          fn: async () => {
            while (!sh.cpuStarted) await k.sched.sleep(100_000);
            await k.sched.sleep(5_000_000); // the CPU has met the entry by now and sleeps on it
            out.blocked = !sh.cpuDone && is_migration_entry(hostPte(k, sh.mm, sh.a));
            gate.open = true;
          },
        });
        await finish(wd);
      } finally {
        gate.armed = false;
        gate.open = false;
      }
      expect(out.sawEntry).toBe(true);
      expect(out.blocked).toBe(true);
      expect(out.value).toBe(pat(7, 0, 5));
      expect(out.cpuSawFrame).toBe(out.newFrame);
      expect(out.newFrame).not.toBe(sh.old);
    });
  }

  for (const seed of SEEDS) {
    it(`seed ${seed}: a swap-cache page moves with its slot: the new frame is in the swap cache under the same slot, the old one is freed; a dirty PTE's write follows (a later pageout writes it, not drops it), and nothing leaks`, async () => {
      const wd = world(seed, { swap: { slots: 64 } });
      const { k } = wd;
      const swapBefore = swapUsage(k);
      const out: Record<string, unknown> = {};
      withDmirror(wd, async ({ mm }) => {
        const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
        await writePattern(a, 4, 13);
        expect(await n(do_madvise(mm, a, 4 * P, MADV_PAGEOUT))).toBe(0);
        out.swappedOut = Array.from({ length: 4 }, (_, i) => is_swap_entry(hostPte(k, mm, a + i * P)));
        expect(await badPages(a, 4, 13)).toEqual([]); // read faults: each page stays in the swap cache
        const old = pfns(k, mm, a, 4);
        const slots = old.map((pfn) => k.arena.i32[k.zone.page(pfn) + PageL.private]);
        out.inCacheBefore = old.every((pfn) => (k.arena.i32[k.zone.page(pfn) + PageL.flags] & PG_swapcache) !== 0);
        const cache0 = swapUsage(k).swapCache;
        // a write dirties page 0 (its PTE only): migration must carry that, or pageout drops it as clean
        expect(await n(put_user(0x5eed, a + 8))).toBe(0);
        const status = new Int32Array(4);
        out.ret = await compact_range(k, mm, a, a + 4 * P, { status });
        out.status = Array.from(status);
        const now = pfns(k, mm, a, 4);
        out.moved = now.every((pfn, i) => pfn !== old[i]);
        out.cacheFollows = now.every((pfn, i) => (k.arena.i32[k.zone.page(pfn) + PageL.flags] & PG_swapcache) !== 0 && k.arena.i32[k.zone.page(pfn) + PageL.private] === slots[i] && slot_cache(k, slots[i]) === pfn);
        out.oldFreed = old.filter((pfn) => !now.includes(pfn)).every((pfn) => isFree(k, pfn));
        out.cacheCount = swapUsage(k).swapCache - cache0;
        expect(await n(do_madvise(mm, a, 4 * P, MADV_PAGEOUT))).toBe(0);
        out.swappedAgain = Array.from({ length: 4 }, (_, i) => is_swap_entry(hostPte(k, mm, a + i * P)));
        out.word = await n(get_user(a + 8));
        expect(await n(put_user(pat(13, 0, 2), a + 8))).toBe(0);
        expect(await badPages(a, 4, 13)).toEqual([]);
        expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
      });
      await finish(wd);
      expect(swapUsage(k)).toEqual(swapBefore);
      expect(out).toEqual({
        swappedOut: [true, true, true, true],
        inCacheBefore: true,
        ret: 0,
        status: [0, 0, 0, 0],
        moved: true,
        cacheFollows: true,
        oldFreed: true,
        cacheCount: 0,
        swappedAgain: [true, true, true, true],
        word: 0x5eed,
      });
    });
  }

  it('bad input: unaligned, empty or reversed ranges are -EINVAL; holes are -ENOENT, the zero page -EFAULT, no VMA -EFAULT (nothing to migrate: 0)', async () => {
    const wd = world(1);
    const { k } = wd;
    const out: Record<string, unknown> = {};
    withDmirror(wd, async ({ mm }) => {
      const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
      expect(await compact_range(k, mm, a + 1, a + P)).toBe(-EINVAL);
      expect(await compact_range(k, mm, a, a)).toBe(-EINVAL);
      expect(await compact_range(k, mm, a + P, a)).toBe(-EINVAL);
      expect(await compact_range(k, mm, a, a + 2 * P, { status: new Int32Array(1) })).toBe(-EINVAL);
      expect(await n(get_user(a + P))).toBe(0); // the zero page
      expect(await n(put_user(1, a + 2 * P))).toBe(0);
      const status = new Int32Array(5);
      out.ret = await compact_range(k, mm, a, a + 5 * P, { status });
      out.status = Array.from(status);
      expect(await n(get_user(a + 2 * P))).toBe(1);
      expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
    });
    await finish(wd);
    expect(out).toEqual({ ret: 0, status: [-ENOENT, -EFAULT, 0, -ENOENT, -EFAULT] });
  });
});

// ---- §6.2: pins do not stop invalidations ---------------------------------------------------------------

describe('reference §6.2: pins do not stop invalidations', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: mprotect and munmap of a pinned, mirrored range still notify (PROTECTION_VMA, UNMAP, paired) and drop the dmirror entries; the frames live until unpin`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      withDmirror(wd, async ({ mm, mod, fd }) => {
        const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
        const mirror = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
        await writePattern(a, 4, 11);
        const pinned = [0, 0, 0, 0];
        const l = mmap_read_lock(mm);
        if (l !== undefined) await l;
        try {
          expect(await pin_user_pages(a, 4, FOLL_WRITE, pinned)).toBe(4);
        } finally {
          mmap_read_unlock(mm);
        }
        expect((await devRead(mod, fd, a, mirror, 4)).ret).toBe(0);
        const sub = await watch(k, mm);
        const log0 = dmirror_log(mod, fd).length;
        expect(await n(do_mprotect(mm, a, 4 * P, PROT_READ))).toBe(0);
        out.afterProtect = dmirror_entries(mod, fd, a, a + 4 * P).length;
        expect((await devRead(mod, fd, a, mirror, 4)).ret).toBe(0); // read-only entries again
        expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
        out.afterUnmap = dmirror_entries(mod, fd, a, a + 4 * P).length;
        out.ranges = paired().map(([ev, s, e, b]) => [ev, s - a, e - a, b]);
        out.log = dmirror_log(mod, fd).slice(log0).map((x) => [x.event, x.start - a, x.end - a, x.blockable]);
        out.alive = pinned.every((pfn) => !isFree(k, pfn));
        // the pinned frames still hold the data the device read
        expect(await badPages(mirror, 4, 11)).toEqual([]);
        unpin_user_pages(pinned, 4);
        out.freed = pinned.every((pfn) => isFree(k, pfn));
        await unwatch(k, sub, mm);
        expect(await n(vm_munmap(mm, mirror, 4 * P))).toBe(0);
      });
      await finish(wd);
      const whole = [0, 4 * P, true];
      expect(out).toEqual({
        afterProtect: 0,
        afterUnmap: 0,
        ranges: [
          [MMU_NOTIFY_PROTECTION_VMA, ...whole],
          [MMU_NOTIFY_UNMAP, ...whole],
        ],
        log: [
          [MMU_NOTIFY_PROTECTION_VMA, ...whole],
          [MMU_NOTIFY_UNMAP, ...whole],
        ],
        alive: true,
        freed: true,
      });
    });
  }
});

// ---- races: migration against a device and CPU threads ------------------------------------------------------------

const MP_BASE = 0x50000000;

function mpCheck(k: Kernel, ctl: number, r: RunResult, before: ReturnType<typeof mmUsage>, kb: Record<string, number>): Record<string, number> {
  const w = k.arena.i32;
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  expect(log, dumpLog(log)).toEqual([]);
  const f = (x: keyof typeof MpCtlL): number => w[ctl + (MpCtlL[x] as number)];
  const sum = { errors: f('errors'), violations: f('violations'), moved: f('moved'), compactions: f('compactions'), devReads: f('dev_ok'), cpuChecks: f('cpu_checks'), closed: f('closed'), overlap: f('overlap') };
  k.kmalloc.kfree(ctl);
  reap_zombies(k);
  expect(mmUsage(k)).toEqual(before);
  expect(k.kmalloc.usage()).toEqual(kb);
  expect(lruStats(k).nr_isolated).toBe(0);
  return sum;
}

describe('migration racing a device and CPU threads (data integrity, DESIGN check 6; mirror invariant, check 1)', () => {
  const MOD = new URL('./fixtures/migrate_pages_tasks.ts', import.meta.url).href;
  for (const [seed, strategy] of [[41, 'random'], [42, 'pct'], [43, 'random'], [44, 'pct']] as const) {
    it(`sim seed ${seed} (${strategy}): a compactor migrating the window, a dmirror device reading it, 2 CPU threads writing and checking their words: no lost write, no violation, pages moved, nothing leaked`, async () => {
      const k = bootKernel(CFG);
      const before = mmUsage(k);
      const kb = k.kmalloc.usage();
      const s = new SimScheduler(k, { seed, strategy, pctDepth: 3, pctSteps: 50_000, stallMs: 10_000 });
      const args: Omit<MpArgs, 'ctl'> = { base: MP_BASE, pages: 8, iters: 60, rounds: 6, cpus: 2, pageSize: P, seed };
      const ctl = mpSetup(k, s, MOD, args);
      const sum = mpCheck(k, ctl, await s.run(), before, kb);
      expect(sum).toMatchObject({ errors: 0, violations: 0, closed: 1, compactions: 6, cpuChecks: 2 * 60 });
      expect(sum.moved).toBeGreaterThan(0);
      expect(sum.devReads).toBeGreaterThan(0);
      expect(sum.overlap).toBeGreaterThan(0); // CPU and device work ran while pages were migrating
    });
  }
});

describe('migration racing a device under threads (each task in its own worker)', () => {
  const MOD = fileURLToPath(new URL('./fixtures/migrate_pages_tasks.ts', import.meta.url));
  it('compactor, dmirror device and 2 CPU threads in their own workers: no lost write, no violation, nothing leaked', async () => {
    const k = bootKernel(CFG);
    const before = mmUsage(k);
    const kb = k.kmalloc.usage();
    const runner = new ThreadsRunner(k, { watchdogMs: 4000, timeoutMs: 40_000 });
    const args: Omit<MpArgs, 'ctl'> = { base: MP_BASE, pages: 8, iters: 300, rounds: 30, cpus: 2, pageSize: P, seed: 5 };
    const ctl = mpSetup(k, runner, MOD, args);
    const sum = mpCheck(k, ctl, await runner.run(), before, kb);
    expect(sum).toMatchObject({ errors: 0, violations: 0, closed: 1, compactions: 30, cpuChecks: 2 * 300 });
    expect(sum.moved).toBeGreaterThan(0);
    expect(sum.devReads).toBeGreaterThan(0);
    expect(sum.overlap).toBeGreaterThan(0);
  }, 60_000);
});
