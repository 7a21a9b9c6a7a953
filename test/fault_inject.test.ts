// Fault injection (src/mm/fail_page_alloc.ts, src/mm/fault_inject.ts, MADV_PAGEOUT in
// src/mm/madvise_pageout.ts) under `sim` over several seeds, and one `threads` run of every
// injection: fail_page_alloc's attributes as lib/fault-inject.c orders them; allocation
// failures reaching a GUP fault, a CPU fault and the dmirror driver's allocations (each fails
// cleanly: nothing mapped, nothing leaked); reclaim of a chosen range (reference §6.1, §7:
// CLEAR per mapping, a pinned page keeps its PTE); OOM of a chosen process (reference §5: it
// and only it is killed, the reaper reaps with non-blockable UNMAPs); and a non-blockable
// invalidation of a chosen range (§9 scenario 15's rule: with the driver lock held the start
// fails with -EAGAIN and no end follows; without it the start/end pair completes). Every run
// ends with no unexpected klog record and nothing leaked (frames, tables, VMAs, kmalloc, devices,
// swap slots).

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bootKernel } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import type { Kernel } from '../src/sched/kernel.js';
import { EAGAIN, EBUSY, EINVAL, ENOENT, ENOMEM, EPERM } from '../src/shm/errno.js';
import { mutex_lock, mutex_unlock } from '../src/sync/mutex.js';
import { MMU_NOTIFY_CLEAR, MMU_NOTIFY_UNMAP, MnL, defineNotifierOps, mmu_notifier_init, mmu_notifier_register, mmu_notifier_unregister, type MmuNotifierRange } from '../src/notifier/index.js';
import {
  ESRCH,
  fail_page_alloc_get,
  fail_page_alloc_injected,
  fail_page_alloc_set,
  inject_alloc_failure,
  inject_alloc_failure_stop,
  inject_nonblock_invalidate,
  inject_oom,
  inject_reclaim_range,
} from '../src/mm/fault_inject.js';
import { FAIL_PAGE_ALLOC_DEFAULTS } from '../src/mm/fail_page_alloc.js';
import { GFP_ATOMIC, GFP_KERNEL, __GFP_NOFAIL, __GFP_NOWARN } from '../src/mm/gfp.js';
import { FOLL_WRITE, pin_user_pages, unpin_user_pages } from '../src/mm/gup.js';
import { MADV_PAGEOUT } from '../src/mm/madvise_pageout.js';
import { do_madvise } from '../src/mm/madvise.js';
import { SIGBUS, SIGKILL } from '../src/mm/memory.js';
import { mm_flags_test, mmap_read_lock, mmap_read_unlock } from '../src/mm/mm_inline.js';
import { vm_munmap } from '../src/mm/mmap.js';
import { OOM_SCORE_ADJ_MIN, oomStats, oom_lock_trylock, oom_unlock, oom_reaper, oom_reaper_stop, oom_score_adj_write, oom_set_reaper_policy } from '../src/mm/oom_kill.js';
import { __free_page, alloc_page } from '../src/mm/page_alloc.js';
import { is_swap_entry, pte_pfn, pte_present } from '../src/mm/pgtable.js';
import { PROC_RUNNING, cond_resched, process_info, reap_zombies, waitpid } from '../src/mm/process.js';
import { MMF_OOM_SKIP, MMF_UNSTABLE, MM_ANONPAGES, MmL } from '../src/mm/types.js';
import { put_user, uaccess_signal } from '../src/mm/uaccess.js';
import { HMM_DMIRROR_MIGRATE_TO_DEV, HMM_DMIRROR_READ, dmirror_close, dmirror_entries, dmirror_ioctl, dmirror_log, dmirror_of, dmirror_open, dmirror_stats, hmm_dmirror_exit, hmm_dmirror_init } from '../drivers/dmirror/index.js';
import { dmirror_mutex } from '../drivers/dmirror/dmirror.js';
import { CFG, N, P, SEEDS, badPages, dumpLog, f1, finish, mapRW, n, proc, pteAt, ptes, usage, world, writePages, type World } from './fixtures/swap_world.js';
import { FiCtlL, fiSetup } from './fixtures/fault_inject_tasks.js';

const MS = 1e6;

// ---- helpers ------------------------------------------------------------------------------------

async function waitFor(k: Kernel, at: number, v: number): Promise<void> {
  const w = k.arena.i32;
  for (let c = Atomics.load(w, at); c < v; c = Atomics.load(w, at)) {
    const r = k.sched.wait(at, c);
    if (typeof r !== 'number') await r;
  }
}

function raise(k: Kernel, at: number, v: number): void {
  Atomics.store(k.arena.i32, at, v);
  k.sched.wake(at, Infinity);
}

async function sleepMs(k: Kernel, ms: number): Promise<void> {
  const p = k.sched.sleep(ms * MS);
  if (p !== undefined) await p;
}

async function allocN(k: Kernel, gfp: number, count: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push(await n(alloc_page(k, gfp)));
  for (const pfn of out) if (pfn !== 0) __free_page(k, pfn);
  return out.map((pfn) => (pfn === 0 ? 0 : 1));
}

async function locked<T>(mm: number, fn: () => Promise<T>): Promise<T> {
  const l = mmap_read_lock(mm);
  if (l !== undefined) await l;
  try {
    return await fn();
  } finally {
    mmap_read_unlock(mm);
  }
}

/** A process that loads dmirror and opens /dev/hmm_dmirror0 around `fn`. */
function withDmirror(wd: World, fn: (c: { k: Kernel; mm: number; mod: number; fd: number }) => Promise<void>, name = 'p'): number {
  return proc(
    wd,
    async ({ k, mm }) => {
      const mod = await hmm_dmirror_init({ chunkPages: 32 });
      expect(mod).toBeGreaterThan(0);
      const fd = await dmirror_open(mod, 0);
      expect(fd).toBeGreaterThan(0);
      await fn({ k, mm, mod, fd });
      expect(await dmirror_close(mod, fd)).toBe(0);
      await hmm_dmirror_exit(mod);
    },
    name,
  );
}

// ---- a recording hlist subscriber -----------------------------------------------------------------

interface Rec {
  phase: 'start' | 'end';
  event: number;
  start: number;
  end: number;
  blockable: boolean;
}
const recs: Rec[] = [];
const recorder = defineNotifierOps('fault_inject_test_recorder', {
  invalidate_range_start(_sub: number, r: MmuNotifierRange) {
    recs.push({ phase: 'start', event: r.event, start: r.start, end: r.end, blockable: (r.flags & 1) !== 0 });
    return 0;
  },
  invalidate_range_end(_sub: number, r: MmuNotifierRange) {
    recs.push({ phase: 'end', event: r.event, start: r.start, end: r.end, blockable: (r.flags & 1) !== 0 });
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

/** [event, start, end, blockable] of each start, relative to `a`; the ends must match one for one */
function paired(a: number): [number, number, number, boolean][] {
  const m = (r: Rec): [number, number, number, boolean] => [r.event, r.start - a, r.end - a, r.blockable];
  const s = recs.filter((r) => r.phase === 'start').map(m);
  expect(recs.filter((r) => r.phase === 'end').map(m)).toEqual(s);
  return s;
}

// ---- fail_page_alloc -----------------------------------------------------------------------------------

describe('fail_page_alloc (mm/fail_page_alloc.c, lib/fault-inject.c should_fail_ex)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: the kernel's defaults fail no order-0 page; times, space, interval, __GFP_NOFAIL, ignore-gfp-wait and the gfp-wait-only filter; the injected counter`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      wd.s.spawn({
        name: 'alloc',
        fn: async () => {
          out.defaults = fail_page_alloc_get(k);
          fail_page_alloc_set(k, { probability: 100, times: -1 }); // min-order 1, ignore-gfp-wait: as the kernel boots
          out.kernelDefaults = [...(await allocN(k, GFP_KERNEL, 2)), ...(await allocN(k, GFP_ATOMIC, 2))];
          fail_page_alloc_set(k, { probability: 0 });
          inject_alloc_failure(k, { times: 3 });
          out.times = await allocN(k, GFP_KERNEL, 5);
          out.timesLeft = fail_page_alloc_get(k).times;
          inject_alloc_failure(k, { times: 2, space: 3 });
          out.space = await allocN(k, GFP_KERNEL, 6);
          inject_alloc_failure(k, { times: -1, interval: 3 });
          out.interval = await allocN(k, GFP_KERNEL, 7);
          out.nofail = await allocN(k, GFP_KERNEL | __GFP_NOFAIL, 2);
          inject_alloc_failure(k, { times: -1, gfpWaitOnly: true });
          out.waitOnly = [...(await allocN(k, GFP_KERNEL, 2)), ...(await allocN(k, GFP_ATOMIC, 2))];
          inject_alloc_failure(k, { times: -1, ignoreGfpWait: true });
          out.ignoreWait = [...(await allocN(k, GFP_KERNEL, 2)), ...(await allocN(k, GFP_ATOMIC, 2))];
          inject_alloc_failure_stop(k);
          out.stopped = await allocN(k, GFP_ATOMIC, 3);
          out.injected = fail_page_alloc_injected(k);
          expect(() => inject_alloc_failure(k, { times: 1, probability: 101 })).toThrow(RangeError);
          expect(() => inject_alloc_failure(k, { times: 1, gfpWaitOnly: true, ignoreGfpWait: true })).toThrow(RangeError);
        },
      });
      await finish(wd);
      expect(out).toEqual({
        defaults: FAIL_PAGE_ALLOC_DEFAULTS,
        kernelDefaults: [1, 1, 1, 1],
        times: [0, 0, 0, 1, 1],
        timesLeft: 0,
        space: [1, 1, 0, 0, 1, 1],
        interval: [1, 1, 0, 1, 1, 0, 1],
        nofail: [1, 1],
        waitOnly: [0, 0, 1, 1],
        ignoreWait: [1, 1, 0, 0],
        stopped: [1, 1, 1],
        injected: 3 + 2 + 2 + 2 + 2,
      });
    });
  }

  it('probability < 100 draws from the attributes\' own seeded stream: the same seed fails the same allocations, another seed others', async () => {
    const pattern = async (seed: number, streamSeed: number): Promise<number[]> => {
      const wd = world(seed);
      let got: number[] = [];
      wd.s.spawn({
        name: 'alloc',
        fn: async () => {
          inject_alloc_failure(wd.k, { times: -1, probability: 30, seed: streamSeed });
          got = await allocN(wd.k, GFP_KERNEL, 40);
          inject_alloc_failure_stop(wd.k);
        },
      });
      await finish(wd);
      return got;
    };
    const a = await pattern(1, 7);
    expect(await pattern(2, 7)).toEqual(a); // the scheduler's seed does not matter, the stream's does
    expect(await pattern(1, 8)).not.toEqual(a);
    const fails = a.filter((x) => x === 0).length;
    expect(fails).toBeGreaterThan(2);
    expect(fails).toBeLessThan(25);
  });

  it('verbose prints "FAULT_INJECTION: forcing a failure." (kind fault_inject) unless __GFP_NOWARN, at most 10 per 5 s', async () => {
    const wd = world(1);
    const { k } = wd;
    wd.s.spawn({
      name: 'alloc',
      fn: async () => {
        inject_alloc_failure(k, { times: -1, verbose: 2 });
        await allocN(k, GFP_KERNEL | __GFP_NOWARN, 3);
        await allocN(k, GFP_KERNEL, 12);
        inject_alloc_failure_stop(k);
      },
    });
    const log = await finish(wd, ['fault_inject']);
    expect(log.length).toBe(10);
    expect(log[0].text).toBe('FAULT_INJECTION: forcing a failure.\nname fail_page_alloc, interval 1, probability 100, space 0, times -1\nCPU: alloc/1');
  });
});

// ---- allocation failures on the kernel's paths ---------------------------------------------------------------

describe('allocation failures reach faults and drivers, which fail cleanly', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: dmirror's module init whose device chunk allocation fails unwinds (-ENOMEM); a GUP fault gets -ENOMEM and maps nothing; a CPU write fault maps nothing (SIGBUS, or a retry once pagefault_out_of_memory runs); MIGRATE_TO_DEV whose device page's allocation fails moves nothing (-ENOENT); nothing leaks`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      proc(wd, async ({ mm }) => {
        // module init: device 1's first chunk fails at its first page (device 0's 32 went
        // through): memremap_pages and hmm_dmirror_init unwind everything
        inject_alloc_failure(k, { times: 1, space: 33 });
        out.init = await hmm_dmirror_init({ chunkPages: 32 });
        out.initInjected = fail_page_alloc_get(k).times;
        inject_alloc_failure_stop(k);
        const mod = await hmm_dmirror_init({ chunkPages: 32 });
        expect(mod).toBeGreaterThan(0);
        const fd = await dmirror_open(mod, 0);
        expect(fd).toBeGreaterThan(0);
        const a = await mapRW(mm, 4);
        // GUP: the write fault's page allocation fails
        const free0 = k.zone.nrFree;
        inject_alloc_failure(k, { times: 1 });
        const pages = [0];
        out.gup = await locked(mm, () => pin_user_pages(a, 1, FOLL_WRITE, pages));
        out.gupPte = pteAt(k, mm, a);
        out.gupFree = k.zone.nrFree - free0;
        out.gupRss = k.arena.i32[mm + MmL.rss_stat + MM_ANONPAGES];
        expect(await locked(mm, () => pin_user_pages(a, 1, FOLL_WRITE, pages))).toBe(1);
        unpin_user_pages(pages, 1);
        // a CPU write fault
        const inj = fail_page_alloc_injected(k);
        inject_alloc_failure(k, { times: 1 });
        const r = await n(put_user(42, a + P));
        if (r !== 0) out.cpu = ['SIGBUS', uaccess_signal() === SIGBUS, pteAt(k, mm, a + P)];
        else out.cpu = ['retried', fail_page_alloc_injected(k) === inj + 1, pte_present(pteAt(k, mm, a + P))];
        inject_alloc_failure_stop(k);
        // the driver: the backing page of the first device page
        await writePages(a, 4, f1);
        inject_alloc_failure(k, { times: 1 });
        out.dev1 = (await dmirror_ioctl(mod, fd, HMM_DMIRROR_MIGRATE_TO_DEV, { addr: a, ptr: a, npages: 1 })).ret;
        out.devPte = pte_pfn(pteAt(k, mm, a)) !== 0 && pte_present(pteAt(k, mm, a));
        inject_alloc_failure_stop(k);
        out.dev3 = (await dmirror_ioctl(mod, fd, HMM_DMIRROR_MIGRATE_TO_DEV, { addr: a, ptr: a, npages: 4 })).ret;
        expect(await badPages(a, 4, f1)).toEqual([]); // back from the device on touch
        expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
        expect(await dmirror_close(mod, fd)).toBe(0);
        await hmm_dmirror_exit(mod);
      });
      const log = await finish(wd, ['pagefault_oom']);
      expect(out).toMatchObject({ init: -ENOMEM, initInjected: 0, gup: -ENOMEM, gupPte: 0, gupFree: 0, gupRss: 0, dev1: -ENOENT, devPte: true, dev3: 0 });
      const cpu = out.cpu as [string, boolean, number | boolean];
      if (cpu[0] === 'SIGBUS') expect(cpu).toEqual(['SIGBUS', true, 0]);
      else {
        expect(cpu).toEqual(['retried', true, true]);
        expect(log.map((x) => x.kind)).toEqual(['pagefault_oom']);
      }
    });
  }
});

// ---- reclaim of a chosen range -----------------------------------------------------------------------------

describe('inject_reclaim_range / MADV_PAGEOUT (reference §6.1, §7 reclaim row: CLEAR, blockable)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: a mirrored range is swapped out with one blockable CLEAR per page; dmirror drops the entries; a pinned page is kept before unmapping (shrink_folio_list's folio_maybe_dma_pinned) and keeps its PTE; the data comes back; bad ranges are -EINVAL/-ENOMEM`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      withDmirror(wd, async ({ mm, mod, fd }) => {
        const a = await mapRW(mm, N);
        const mirror = await mapRW(mm, N);
        await writePages(a, N, f1);
        const pinned = [0];
        expect(await locked(mm, () => pin_user_pages(a + 3 * P, 1, FOLL_WRITE, pinned))).toBe(1);
        expect((await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: a, ptr: mirror, npages: N })).ret).toBe(0);
        const sub = await watch(k, mm);
        out.ret = await inject_reclaim_range(k, mm, a, a + N * P);
        out.ranges = paired(a);
        out.entries = dmirror_entries(mod, fd, a, a + N * P).length;
        const pt = ptes(k, mm, a, N);
        out.swapped = pt.filter((x) => is_swap_entry(x)).length;
        out.pinnedKept = pte_present(pt[3]) && pte_pfn(pt[3]) === pinned[0];
        expect(await badPages(a, N, f1)).toEqual([]);
        unpin_user_pages(pinned, 1);
        // MADV_PAGEOUT itself: the same path
        recs.length = 0;
        out.madvise = await n(do_madvise(mm, a, 2 * P, MADV_PAGEOUT));
        out.madviseRanges = paired(a).length;
        out.einval = [await n(inject_reclaim_range(k, mm, a + 1, a + P)), await n(inject_reclaim_range(k, mm, a + P, a))];
        expect(await n(vm_munmap(mm, a + N * P - P, P))).toBe(0);
        out.enomem = await n(inject_reclaim_range(k, mm, a + N * P - 2 * P, a + N * P));
        await unwatch(k, sub, mm);
        expect(await badPages(a, N - 1, f1)).toEqual([]);
        expect(await n(vm_munmap(mm, a, N * P))).toBe(0);
        expect(await n(vm_munmap(mm, mirror, N * P))).toBe(0);
      });
      await finish(wd);
      expect(out).toEqual({
        ret: 0,
        ranges: Array.from({ length: N }, (_, i) => [MMU_NOTIFY_CLEAR, i * P, (i + 1) * P, true]).filter((_, i) => i !== 3),
        entries: 0, // page 3's entry too: dmirror erases one page past each range (§4 quirk)
        swapped: N - 1,
        pinnedKept: true,
        madvise: 0,
        madviseRanges: 2,
        einval: [-EINVAL, -EINVAL],
        enomem: -ENOMEM,
      });
    });
  }
});

// ---- OOM of a chosen process -------------------------------------------------------------------------------

describe('inject_oom (reference §5): the chosen process and only it is killed; the reaper reaps it', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: a smaller process is chosen over a bigger one; SIGKILL, non-blockable UNMAP per VMA from the reaper, MMF_UNSTABLE, rss 0; -EBUSY/-ESRCH/-EAGAIN/-EPERM as documented`, async () => {
      const wd = world(seed);
      const { k } = wd;
      oom_set_reaper_policy(k, 'v4.6');
      const step = k.kmalloc.kzalloc(8);
      wd.before = usage(k); // the step words go after finish
      const out: Record<string, unknown> = {};
      const sh = { mm: 0, a: 0, sub: 0 };
      wd.s.spawn({ name: 'oom_reaper', kind: 'kthread', fn: oom_reaper });
      const victim = proc(
        wd,
        async ({ mm }) => {
          const a = await mapRW(mm, 4);
          await writePages(a, 4, f1);
          sh.sub = await watch(k, mm);
          Object.assign(sh, { mm, a });
          raise(k, step, 1);
          await waitFor(k, step + 1, 1); // stuck where SIGKILL is not noticed: the reaper must do the freeing
          for (;;) await cond_resched();
        },
        'victim',
      );
      const big = proc(
        wd,
        async ({ mm }) => {
          const a = await mapRW(mm, 12);
          await writePages(a, 12, f1);
          raise(k, step + 2, 1);
          await waitFor(k, step + 3, 1);
          expect(await badPages(a, 12, f1)).toEqual([]);
        },
        'big',
      );
      const unkillable = proc(
        wd,
        async () => {
          await waitFor(k, step + 3, 1);
        },
        'unkillable',
      );
      wd.s.spawn({
        name: 'ctl',
        kind: 'kthread',
        fn: async () => {
          await waitFor(k, step, 1);
          await waitFor(k, step + 2, 1);
          expect(oom_score_adj_write(k, unkillable, OOM_SCORE_ADJ_MIN)).toBe(0);
          out.eperm = inject_oom(k, unkillable);
          out.esrch = [inject_oom(k, 9999), inject_oom(k, 0)];
          expect(oom_lock_trylock(k)).toBe(true); // another OOM kill in progress
          out.eagain = inject_oom(k, victim);
          oom_unlock(k);
          out.kill = inject_oom(k, victim);
          out.again = inject_oom(k, victim); // already a victim, not yet reaped
          while (!mm_flags_test(MMF_OOM_SKIP, sh.mm)) await sleepMs(k, 10);
          out.afterSkip = inject_oom(k, victim);
          out.unstable = mm_flags_test(MMF_UNSTABLE, sh.mm);
          out.rss = k.arena.i32[sh.mm + MmL.rss_stat + MM_ANONPAGES];
          out.reaperRanges = paired(sh.a).filter(([, , , b]) => !b).map(([ev, s, e]) => [ev, s, e]);
          out.bigAlive = process_info(k, big).state === PROC_RUNNING;
          const st = oomStats(k);
          out.stats = [st.kills, st.reaped, st.unableToReap];
          raise(k, step + 1, 1);
          out.victimSignal = ((await waitpid(victim)) as { signal: number }).signal;
          await unwatch(k, sh.sub, sh.mm);
          raise(k, step + 3, 1);
          out.bigExit = await waitpid(big);
          await waitpid(unkillable);
          oom_reaper_stop(k);
        },
      });
      const log = await finish(wd, ['oom_kill', 'oom_reaper']);
      k.kmalloc.kfree(step);
      expect(out).toEqual({
        eperm: -EPERM,
        esrch: [-ESRCH, -ESRCH],
        eagain: -EAGAIN,
        kill: 0,
        again: -EBUSY,
        afterSkip: -ESRCH,
        unstable: true,
        rss: 0,
        reaperRanges: [[MMU_NOTIFY_UNMAP, 0, 4 * P]],
        bigAlive: true,
        stats: [1, 1, 0],
        victimSignal: SIGKILL,
        bigExit: { code: 0, signal: 0 },
      });
      const kills = log.filter((x) => x.kind === 'oom_kill').map((x) => x.text);
      expect(kills).toHaveLength(1);
      expect(kills[0]).toMatch(new RegExp(`^Out of memory \\(fault injection\\): Killed process ${victim} \\(victim\\)`));
      expect(log.filter((x) => x.kind === 'oom_reaper')[0].text).toMatch(new RegExp(`^oom_reaper: reaped process ${victim} \\(victim\\), now anon-rss:0kB`));
    });
  }
});

// ---- a non-blockable invalidation of a chosen range ------------------------------------------------------------

describe('inject_nonblock_invalidate (§9 scenario 15 rule: a failed non-blockable start has no end)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: with dmirror's mutex held the start is -EAGAIN, no subscriber sees an end (nor the hlist a start), the entries stay; without it the pair completes non-blockable and the entries go; the pages stay mapped`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const step = k.kmalloc.kzalloc(8);
      wd.before = usage(k); // the step words go after finish
      const sh = { d: 0 };
      const out: Record<string, unknown> = {};
      withDmirror(wd, async ({ mm, mod, fd }) => {
        const a = await mapRW(mm, 4);
        const mirror = await mapRW(mm, 4);
        await writePages(a, 4, f1);
        expect((await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: a, ptr: mirror, npages: 4 })).ret).toBe(0);
        const sub = await watch(k, mm);
        sh.d = dmirror_of(mod, fd);
        const log0 = dmirror_log(mod, fd).length;
        raise(k, step, 1);
        await waitFor(k, step + 1, 1); // another task holds dmirror's mutex: the driver is inside its fault path
        out.held = inject_nonblock_invalidate(k, mm, a, a + 4 * P);
        raise(k, step + 2, 1);
        await waitFor(k, step + 3, 1);
        out.heldRecs = recs.length;
        out.heldEntries = dmirror_entries(mod, fd, a, a + 4 * P).length;
        out.eagain = dmirror_stats(mod, fd).eagain;
        out.free = inject_nonblock_invalidate(k, mm, a, a + 4 * P, MMU_NOTIFY_CLEAR);
        out.ranges = paired(a);
        out.log = dmirror_log(mod, fd).slice(log0).map((x) => [x.event, x.start - a, x.blockable]);
        out.entries = dmirror_entries(mod, fd, a, a + 4 * P).length;
        out.mapped = ptes(k, mm, a, 4).every((x) => pte_present(x));
        const r = await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: a, ptr: mirror, npages: 4 });
        out.reread = [r.ret, r.cpages, r.faults];
        out.einval = [inject_nonblock_invalidate(k, mm, a + 1, a + P), inject_nonblock_invalidate(k, mm, a, a), inject_nonblock_invalidate(k, 0, a, a + P)];
        await unwatch(k, sub, mm);
        expect(await badPages(mirror, 4, f1)).toEqual([]);
      });
      wd.s.spawn({
        name: 'holder',
        fn: async () => {
          await waitFor(k, step, 1);
          const m = dmirror_mutex(k, sh.d);
          const l = mutex_lock(m);
          if (l !== undefined) await l;
          raise(k, step + 1, 1);
          await waitFor(k, step + 2, 1);
          mutex_unlock(m);
          raise(k, step + 3, 1);
        },
      });
      await finish(wd);
      k.kmalloc.kfree(step);
      expect(out).toEqual({
        held: -EAGAIN,
        heldRecs: 0,
        heldEntries: 4,
        eagain: 1,
        free: 0,
        ranges: [[MMU_NOTIFY_CLEAR, 0, 4 * P, false]],
        log: [[MMU_NOTIFY_CLEAR, 0, false]],
        entries: 0,
        mapped: true,
        reread: [0, 4, 1],
        einval: [-EINVAL, -EINVAL, -EINVAL],
      });
    });
  }
});

// ---- threads -----------------------------------------------------------------------------------------

describe('every injection under threads (each task in its own worker)', () => {
  const MOD = fileURLToPath(new URL('./fixtures/fault_inject_tasks.ts', import.meta.url));
  it('two allocator workers share exactly `times` failures; a victim worker is reclaimed, invalidated (-EAGAIN with the lock held, 0 without), OOM-killed and reaped; nothing leaked', async () => {
    const k = bootKernel(CFG);
    const before = usage(k);
    oom_set_reaper_policy(k, 'v4.6');
    const runner = new ThreadsRunner(k, { watchdogMs: 4000, timeoutMs: 30_000 });
    const ctl = fiSetup(k, runner, MOD, { pages: 8, allocs: 200, times: 37, pageSize: P });
    const r = await runner.run();
    const log = k.klog.read();
    expect(r.failed, dumpLog(log)).toEqual([]);
    expect(r.status, r.report ?? dumpLog(log)).toBe('done');
    const w = k.arena.i32;
    const f = (x: keyof typeof FiCtlL): number => w[ctl + (FiCtlL[x] as number)];
    expect({
      errors: f('errors'),
      failed: f('alloc_failed'),
      injected: fail_page_alloc_injected(k),
      reclaimed: f('swapped'),
      held: f('held_ret'),
      free: f('free_ret'),
      oom: f('oom_ret'),
      reaped: oomStats(k).reaped,
      rss: f('rss_after'),
      signal: f('signal'),
    }).toEqual({ errors: 0, failed: 37, injected: 37, reclaimed: 8, held: -EAGAIN, free: 0, oom: 0, reaped: 1, rss: 0, signal: SIGKILL });
    expect(log.map((x) => x.kind)).toEqual(['oom_kill', 'oom_reaper']);
    k.kmalloc.kfree(ctl);
    const { reap_zombies } = await import('../src/mm/process.js');
    reap_zombies(k);
    expect(usage(k)).toEqual(before);
  }, 40_000);
});
