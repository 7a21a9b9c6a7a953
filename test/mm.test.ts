// The mm layer under `sim` (and one `threads` run): faults, fork's copy-on-write, the
// syscalls and exactly the invalidations each raises (reference §7), VMA split/merge, rmap's
// try_to_unmap_one (§6.1), teardown without leaks, and the kernel's errors for bad input.
// Invalidations are seen by a recording hlist subscriber (and an interval one where only
// interval subscribers are reached, as after exit's release).

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import type { Kernel } from '../src/sched/kernel.js';
import { SimScheduler } from '../src/sched/sim.js';
import { EBADF, EACCES, MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_POPULATE, MAP_PRIVATE, MAP_SHARED, MREMAP_MAYMOVE, PROT_NONE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { EEXIST, EFAULT, EINVAL, ENOMEM } from '../src/shm/errno.js';
import {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_PROTECTION_PAGE,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_RELEASE,
  MMU_NOTIFY_UNMAP,
  MinL,
  MnL,
  defineIntervalNotifierOps,
  defineNotifierOps,
  mmu_interval_notifier_insert,
  mmu_interval_notifier_remove,
  mmu_interval_set_seq,
  mmu_notifier_init,
  mmu_notifier_range_blockable,
  mmu_notifier_register,
  mmu_notifier_unregister,
  type MmuNotifierRange,
} from '../src/notifier/index.js';
import { FAULT_FLAG_WRITE, SIGBUS, SIGKILL, SIGSEGV, VM_FAULT_SIGSEGV, handle_mm_fault } from '../src/mm/memory.js';
import { mm_flags_set, mmap_read_lock, mmap_read_unlock } from '../src/mm/mm_inline.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { _PAGE_PROTNONE, pte_lookup } from '../src/mm/mm_pt.js';
import { do_madvise } from '../src/mm/madvise.js';
import { vm_mmap, vm_munmap } from '../src/mm/mmap.js';
import { do_mremap } from '../src/mm/mremap.js';
import { do_mprotect } from '../src/mm/mprotect.js';
import { GFP_NOWAIT } from '../src/mm/gfp.js';
import { GUP_PIN_COUNTING_BIAS, PG_swapcache, PageL } from '../src/mm/page.js';
import { __free_page } from '../src/mm/page_alloc.js';
import { SWP_SWAP, is_swap_entry, pte_dirty, pte_mkclean, pte_mkold, pte_pfn, pte_present, pte_special, pte_write, pte_young, swp_offset, swp_type } from '../src/mm/pgtable.js';
import { PROC_ZOMBIE, cond_resched, do_fork, kill_process, process_info, reap_zombies, spawn_process, waitpid, type ProcessContext } from '../src/mm/process.js';
import { folio_mapcount, try_to_unmap } from '../src/mm/rmap.js';
import { folio_trylock, folio_unlock } from '../src/mm/folio_lock.js';
import { folio_alloc_swap } from '../src/mm/swap_state.js';
import { MMF_HAS_PINNED, MMF_OOM_SKIP, MMF_UNSTABLE, MM_ANONPAGES, MM_SHMEMPAGES, MM_SWAPENTS, MmL, ULONG_MAX, VM_READ, VM_WRITE } from '../src/mm/types.js';
import { UACCESS_FAULT, copy_from_user, copy_to_user, get_user, put_user, uaccess_signal } from '../src/mm/uaccess.js';
import { vma_list, vma_lookup } from '../src/mm/vma.js';
import type { StressArgs } from './fixtures/mm_tasks.js';
import { dump, seeds } from './helpers.js';

const P = 4096;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const SHARED = MAP_SHARED | MAP_ANONYMOUS;
const CFG: BootConfig = {
  maxTasks: 16,
  mem: { pages: 512, pageSize: P },
  mm: { pgtables: 160, vmas: 64, rmapNodes: 1200, shmObjs: 8, procs: 8 },
  klogBytes: 1 << 17,
  eventRecords: 1 << 12,
};

// ---- recording subscribers ------------------------------------------------------------------

interface Ev {
  who: 'hlist' | 'itree';
  phase: 'start' | 'end' | 'release';
  event: number;
  start: number;
  end: number;
  blockable: boolean;
  mm: number;
}
const log: Ev[] = [];
const rec = (who: Ev['who'], phase: Ev['phase'], r: MmuNotifierRange): void => {
  log.push({ who, phase, event: r.event, start: r.start, end: r.end, blockable: mmu_notifier_range_blockable(r), mm: r.mm });
};
const recorder = defineNotifierOps('mm_test_recorder', {
  invalidate_range_start(_sub: number, r: MmuNotifierRange) {
    rec('hlist', 'start', r);
    return 0;
  },
  invalidate_range_end(_sub: number, r: MmuNotifierRange) {
    rec('hlist', 'end', r);
  },
  release(_sub: number, mm: number) {
    log.push({ who: 'hlist', phase: 'release', event: -1, start: 0, end: 0, blockable: true, mm });
  },
});
const itreeRecorder = defineIntervalNotifierOps('mm_test_itree_recorder', {
  invalidate(sub: number, r: MmuNotifierRange, cur_seq: number) {
    mmu_interval_set_seq(sub, cur_seq);
    rec('itree', 'start', r);
    return true;
  },
});

/** Register the recording hlist subscriber on mm (from a task or the boot context). */
async function watch(k: Kernel, mm: number): Promise<number> {
  const sub = k.kmalloc.kzalloc(MnL.$size);
  expect(mmu_notifier_init(sub, recorder)).toBe(0);
  const r = mmu_notifier_register(sub, mm);
  expect(typeof r === 'number' ? r : await r).toBe(0);
  return sub;
}

/** Events as [event, start, end, blockable] for one phase of one subscriber kind. */
function evs(phase: Ev['phase'] = 'start', who: Ev['who'] = 'hlist'): [number, number, number, boolean][] {
  return log.filter((e) => e.phase === phase && e.who === who).map((e) => [e.event, e.start, e.end, e.blockable]);
}
/** Every recorded start has its end, in order (check 2 from the subscriber's side). */
function expectPaired(): void {
  const starts = log.filter((e) => e.who === 'hlist' && e.phase === 'start').map((e) => [e.event, e.start, e.end]);
  const ends = log.filter((e) => e.who === 'hlist' && e.phase === 'end').map((e) => [e.event, e.start, e.end]);
  expect(ends).toEqual(starts);
}

// ---- harness ------------------------------------------------------------------------------------

async function n(v: number | Promise<number>): Promise<number> {
  return typeof v === 'number' ? v : await v;
}

function pteAt(k: Kernel, mm: number, addr: number): number {
  const pgd = k.arena.i32[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  return slot < 0 ? 0 : k.arena.i32[slot];
}
const rss = (k: Kernel, mm: number, i: number): number => k.arena.i32[mm + MmL.rss_stat + i];

type Program = (ctx: ProcessContext<unknown>) => Promise<void>;

/**
 * Boot, run one process (and optional extra tasks) under `sim`, reap, and check the run ended
 * cleanly with every frame, table, VMA, rmap node, object and process slot back.
 */
async function runProcess(seed: number, prog: Program, cfg: BootConfig = CFG, extra?: (k: Kernel, s: SimScheduler, pid: number) => void, allowKinds: string[] = []): Promise<{ k: Kernel; pid: number }> {
  log.length = 0;
  const k = bootKernel(cfg);
  const before = mmUsage(k);
  const kmBefore = k.kmalloc.usage();
  const s = new SimScheduler(k, { seed, stallMs: 5000 });
  const pid = spawn_process(k, s, { name: 'prog', fn: prog as never });
  expect(pid).toBeGreaterThan(0);
  extra?.(k, s, pid);
  const r = await s.run();
  const klog = k.klog.read();
  expect(r.status, r.report ?? dump(klog)).toBe('done');
  expect(r.failed, dump(klog)).toEqual([]);
  expect(klog.filter((x) => !allowKinds.includes(x.kind)).map((x) => `[${x.kind}] ${x.text}`)).toEqual([]);
  expect(process_info(k, pid).state).toBe(PROC_ZOMBIE);
  reap_zombies(k);
  expect(mmUsage(k)).toEqual(before);
  expect(k.kmalloc.usage(), 'mm structs and subscriptions freed').toEqual(kmBefore);
  return { k, pid };
}

/** Drop a subscriber after its mm exited (unregister drops the mm reference it holds). */
async function unwatch(k: Kernel, sub: number, mm: number): Promise<void> {
  expect(await mmu_notifier_unregister(sub, mm)).toBe(0);
  k.kmalloc.kfree(sub);
}

// ---- faults -------------------------------------------------------------------------------------

describe('faults (reference §9 scenarios 3, 4; §7 COW break)', () => {
  it('a read of an untouched private page maps the zero page read-only; the first write copies it with CLEAR on that page', async () => {
    await runProcess(1, async ({ k, mm }) => {
      const a = await n(vm_mmap(mm, 0, 2 * P, RW, PRIV));
      const sub = await watch(k, mm);
      expect(await n(get_user(a + 8))).toBe(0);
      let pte = pteAt(k, mm, a);
      expect([pte_present(pte), pte_special(pte), pte_pfn(pte), pte_write(pte)]).toEqual([true, true, 0, false]);
      expect(rss(k, mm, MM_ANONPAGES)).toBe(0);
      expect(log).toEqual([]);
      expect(pte_young(pte)).toBe(true);
      expect(await n(put_user(7, a + 8))).toBe(0);
      expect(evs()).toEqual([[MMU_NOTIFY_CLEAR, a, a + P, true]]);
      expectPaired();
      pte = pteAt(k, mm, a);
      expect(pte_write(pte) && pte_pfn(pte) !== 0 && pte_dirty(pte) && pte_young(pte)).toBe(true);
      // the MMU sets accessed/dirty on a PTE that lost them
      k.arena.i32[pte_lookup(k, k.arena.i32[mm + MmL.pgd], a)] = pte_mkold(pte_mkclean(pte));
      expect(await n(get_user(a + 8))).toBe(7);
      expect([pte_young(pteAt(k, mm, a)), pte_dirty(pteAt(k, mm, a))]).toEqual([true, false]);
      expect(await n(put_user(7, a + 8))).toBe(0);
      expect(pte_dirty(pteAt(k, mm, a))).toBe(true);
      // an untouched page: a plain anonymous write fault, no invalidation
      expect(await n(put_user(8, a + P))).toBe(0);
      expect(evs().length).toBe(1);
      expect([await n(get_user(a + 8)), await n(get_user(a + P))]).toEqual([7, 8]);
      expect(rss(k, mm, MM_ANONPAGES)).toBe(2);
      const buf = new Uint8Array([1, 2, 3, 4, 5]);
      expect(await copy_to_user(a + P - 2, buf)).toBe(0); // across the page boundary
      const back = new Uint8Array(5);
      expect(await copy_from_user(back, a + P - 2)).toBe(0);
      expect([...back]).toEqual([1, 2, 3, 4, 5]);
      pendingUnwatch.push([sub, mm]);
    }, CFG, afterExit);
  });

  it('writes to a PROT_READ mapping fail (SIGSEGV, -EFAULT); PROT_NONE and holes fault; mprotect RW then lets the write in', async () => {
    await runProcess(2, async ({ k, mm }) => {
      const ro = await n(vm_mmap(mm, 0, P, PROT_READ, PRIV));
      expect(await n(get_user(ro))).toBe(0); // scenario 4: the zero page
      expect(await n(put_user(1, ro))).toBe(-EFAULT);
      expect(uaccess_signal()).toBe(SIGSEGV);
      const none = await n(vm_mmap(mm, 0, P, PROT_NONE, PRIV));
      expect(await n(get_user(none))).toBe(UACCESS_FAULT);
      expect(uaccess_signal()).toBe(SIGSEGV);
      expect(await copy_from_user(new Uint8Array(8), none)).toBe(8);
      // handle_mm_fault itself: the same answers a GUP or HMM caller gets
      await mmap_read_lock(mm);
      expect(handle_mm_fault(mm, vma_lookup(k, mm, none), none, 0)).toBe(VM_FAULT_SIGSEGV);
      expect(handle_mm_fault(mm, vma_lookup(k, mm, ro), ro, FAULT_FLAG_WRITE)).toBe(VM_FAULT_SIGSEGV);
      mmap_read_unlock(mm);
      const hole = none + 64 * P;
      expect(vma_lookup(k, mm, hole)).toBe(0);
      expect(await n(put_user(1, hole))).toBe(-EFAULT);
      expect(uaccess_signal()).toBe(SIGSEGV);
      expect(await n(do_mprotect(mm, ro, P, RW))).toBe(0);
      expect(await n(put_user(5, ro))).toBe(0);
      expect(await n(get_user(ro))).toBe(5);
    });
  });

  it('MMF_UNSTABLE: a fault that would install an anon PTE gets SIGBUS; mapped pages still work (check_stable_address_space)', async () => {
    await runProcess(3, async ({ mm }) => {
      const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
      expect(await n(put_user(1, a))).toBe(0);
      mm_flags_set(MMF_UNSTABLE, mm);
      expect(await n(put_user(2, a + P))).toBe(-EFAULT);
      expect(uaccess_signal()).toBe(SIGBUS);
      expect(await n(get_user(a + 2 * P))).toBe(UACCESS_FAULT);
      expect(uaccess_signal()).toBe(SIGBUS);
      expect(await n(put_user(3, a))).toBe(0);
      expect(await n(get_user(a))).toBe(3);
    });
  });

  it('mmap places mappings top-down under mmap_base (get_unmapped_area), and honours a free hint', async () => {
    await runProcess(14, async ({ k, mm }) => {
      const a = await n(vm_mmap(mm, 0, 2 * P, RW, PRIV));
      const b = await n(vm_mmap(mm, 0, P, PROT_READ, PRIV));
      expect(a + 2 * P).toBeLessThanOrEqual(k.arena.f64[(mm + MmL.mmap_base) >> 1]);
      expect(b).toBe(a - P); // the next gap down
      const hint = 0x10000000;
      expect(await n(vm_mmap(mm, hint, P, RW, PRIV))).toBe(hint);
      const c = await n(vm_mmap(mm, hint, P, RW, PRIV)); // taken: placed elsewhere
      expect(c).not.toBe(hint);
      expect(c).toBe(b - P);
    });
  });

  for (const seed of seeds(2)) {
    it(`seed ${seed}: an allocation that sleeps (direct reclaim) drops the PTE lock and rechecks the PTE: two threads faulting one page end on one frame`, async () => {
      log.length = 0;
      const k = bootKernel(CFG);
      const before = mmUsage(k);
      const hoard: number[] = [];
      for (let pfn = k.zone.rmqueue(GFP_NOWAIT); pfn !== 0; pfn = k.zone.rmqueue(GFP_NOWAIT)) hoard.push(pfn);
      let reclaims = 0;
      k.zone.reclaim = {
        // a stand-in for direct reclaim: it sleeps, then gives back one frame
        async direct(kk: Kernel) {
          reclaims++;
          await kk.sched.sleep(1000);
          const pfn = hoard.pop();
          if (pfn === undefined) return 0;
          __free_page(kk, pfn);
          return 1;
        },
        wakeKswapd() {},
      };
      const s = new SimScheduler(k, { seed, stallMs: 5000 });
      const addr = k.kmalloc.kzalloc(2);
      const pid = spawn_process(k, s, {
        name: 'racers',
        threads: 2,
        fn: async ({ mm, thread }: ProcessContext<unknown>) => {
          if (thread === 0) k.arena.f64[addr >> 1] = await n(vm_mmap(mm, 0, 2 * P, RW, PRIV));
          while (k.arena.f64[addr >> 1] === 0) await k.sched.sleep(100);
          const a = k.arena.f64[addr >> 1];
          expect(await n(put_user(thread + 1, a + 4 * thread))).toBe(0);
          expect(await n(get_user(a + P))).toBe(0); // a read of the zero page
          expect(await n(put_user(9, a + P + 4 * thread))).toBe(0); // COW from the zero page, sleeping too
        },
      });
      const r = await s.run();
      const klog = k.klog.read();
      expect(r.status, r.report ?? dump(klog)).toBe('done');
      expect(r.failed, dump(klog)).toEqual([]);
      expect(klog).toEqual([]);
      expect(reclaims).toBeGreaterThanOrEqual(2);
      reap_zombies(k);
      k.zone.reclaim = null;
      for (const pfn of hoard) __free_page(k, pfn);
      k.kmalloc.kfree(addr);
      expect(mmUsage(k)).toEqual(before);
      expect(process_info(k, pid).state).toBe(0);
    });
  }

  it('shared anonymous memory: an access beyond the object (after mremap grew the mapping) is SIGBUS', async () => {
    await runProcess(4, async ({ mm }) => {
      const a = await n(vm_mmap(mm, 0, P, RW, SHARED));
      expect(await n(put_user(9, a))).toBe(0);
      const b = await n(do_mremap(mm, a, P, 2 * P, MREMAP_MAYMOVE));
      expect(b).toBeGreaterThan(0);
      expect(await n(get_user(b))).toBe(9);
      expect(await n(get_user(b + P))).toBe(UACCESS_FAULT);
      expect(uaccess_signal()).toBe(SIGBUS);
    });
  });
});

/** Subscriptions registered inside a program, dropped after it exits (see afterExit). */
const pendingUnwatch: [number, number][] = [];
/** A task that waits for the process to exit, then unregisters every subscriber it left. */
function afterExit(k: Kernel, s: SimScheduler, pid: number): void {
  s.spawn({
    name: 'unwatch',
    fn: async () => {
      while (process_info(k, pid).state !== PROC_ZOMBIE) await k.sched.sleep(1000);
      for (const [sub, mm] of pendingUnwatch.splice(0)) await unwatch(k, sub, mm);
    },
  });
}

// ---- fork ----------------------------------------------------------------------------------------

describe('fork and copy-on-write (reference §9 scenario 7, §6.2)', () => {
  for (const seed of seeds(3)) {
    it(`seed ${seed}: the parent gets PROTECTION_PAGE over its COW VMA; COW keeps both sides' data; MAP_SHARED stays shared`, async () => {
      let childPid = 0;
      await runProcess(
        seed,
        async ({ k, mm }) => {
          const w = k.arena.i32;
          const flags = k.kmalloc.kzalloc(2); // [parent done, child done]
          const priv = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
          const shared = await n(vm_mmap(mm, 0, 2 * P, RW, SHARED));
          const untouched = await n(vm_mmap(mm, 0, 2 * P, RW, PRIV)); // no anon_vma: nothing to copy
          for (let i = 0; i < 4; i++) expect(await n(put_user(100 + i, priv + i * P))).toBe(0);
          expect(await n(put_user(500, shared))).toBe(0);
          const sub = await watch(k, mm);
          pendingUnwatch.push([sub, mm]);
          childPid = await do_fork({
            name: 'child',
            fn: async ({ mm: cmm }: ProcessContext<unknown>) => {
              while (Atomics.load(w, flags) === 0) await k.sched.wait(flags, 0);
              expect(cmm).not.toBe(mm);
              expect(await n(get_user(priv))).toBe(100); // the parent's write after fork is not seen
              for (let i = 1; i < 4; i++) {
                expect(await n(get_user(priv + i * P))).toBe(100 + i);
                expect(await n(put_user(200 + i, priv + i * P))).toBe(0);
                expect(await n(get_user(priv + i * P))).toBe(200 + i);
              }
              expect(await n(get_user(shared))).toBe(500);
              expect(await n(put_user(600, shared))).toBe(0);
              expect(await n(get_user(untouched))).toBe(0);
              Atomics.store(w, flags + 1, 1);
              k.sched.wake(flags + 1, 1);
            },
          });
          expect(childPid).toBeGreaterThan(0);
          // exactly one PROTECTION_PAGE, over the private VMA that had anonymous pages
          expect(evs()).toEqual([[MMU_NOTIFY_PROTECTION_PAGE, priv, priv + 4 * P, true]]);
          expect(log.every((e) => e.mm === mm)).toBe(true);
          expect(pte_write(pteAt(k, mm, priv))).toBe(false);
          expect(pte_write(pteAt(k, mm, shared))).toBe(true);
          // the parent breaks COW on page 0: CLEAR over that page
          log.length = 0;
          expect(await n(put_user(300, priv))).toBe(0);
          expect(evs()).toEqual([[MMU_NOTIFY_CLEAR, priv, priv + P, true]]);
          expectPaired();
          Atomics.store(w, flags, 1);
          k.sched.wake(flags, 1);
          while (Atomics.load(w, flags + 1) === 0) await k.sched.wait(flags + 1, 0);
          expect(await n(get_user(priv))).toBe(300);
          for (let i = 1; i < 4; i++) expect(await n(get_user(priv + i * P))).toBe(100 + i);
          expect(await n(get_user(shared))).toBe(600);
          // the child copied its pages, so the parent's are its own again: reused, no CLEAR
          log.length = 0;
          for (let i = 1; i < 4; i++) expect(await n(put_user(400 + i, priv + i * P))).toBe(0);
          expect(evs()).toEqual([]);
          k.kmalloc.kfree(flags);
        },
        CFG,
        afterExit,
      );
      expect(childPid).toBeGreaterThan(0);
    });
  }

  it('a pinned anon page is copied into the child at once: the parent keeps its writable PTE and no COW happens', async () => {
    await runProcess(5, async ({ k, mm }) => {
      const w = k.arena.i32;
      const a = await n(vm_mmap(mm, 0, 2 * P, RW, PRIV));
      expect(await n(put_user(11, a))).toBe(0);
      expect(await n(put_user(12, a + P))).toBe(0);
      const pinned = pte_pfn(pteAt(k, mm, a));
      const pg = k.zone.page(pinned);
      // pin_user_pages(FOLL_PIN) on a small folio
      w[pg + PageL.refcount] += GUP_PIN_COUNTING_BIAS;
      w[pg + PageL.pincount]++;
      mm_flags_set(MMF_HAS_PINNED, mm);
      const sub = await watch(k, mm);
      pendingUnwatch.push([sub, mm]);
      const done = k.kmalloc.kzalloc(1);
      let childPfn = -1;
      const cpid = await do_fork({
        name: 'child',
        fn: async ({ mm: cmm }: ProcessContext<unknown>) => {
          childPfn = pte_pfn(pteAt(k, cmm, a));
          expect(pte_write(pteAt(k, cmm, a))).toBe(true);
          expect(await n(get_user(a))).toBe(11);
          expect(await n(get_user(a + P))).toBe(12);
          Atomics.store(w, done, 1);
          k.sched.wake(done, 1);
        },
      });
      expect(cpid).toBeGreaterThan(0);
      expect(pte_write(pteAt(k, mm, a))).toBe(true); // the pinned page stayed writable
      expect(pte_write(pteAt(k, mm, a + P))).toBe(false); // the other page is COW
      log.length = 0;
      expect(await n(put_user(21, a))).toBe(0);
      expect(evs()).toEqual([]); // no COW break on the pinned page
      expect(pte_pfn(pteAt(k, mm, a))).toBe(pinned);
      while (Atomics.load(w, done) === 0) await k.sched.wait(done, 0);
      expect(childPfn).not.toBe(pinned);
      // unpin_user_page
      w[pg + PageL.refcount] -= GUP_PIN_COUNTING_BIAS;
      w[pg + PageL.pincount]--;
      k.kmalloc.kfree(done);
    }, CFG, afterExit);
  });
});

// ---- syscalls and their invalidations --------------------------------------------------------------

describe('syscalls raise exactly the §7 invalidations', () => {
  it('munmap: one UNMAP over the range, blockable; a partial munmap splits the VMA; an empty range raises nothing (§9 scenario 5)', async () => {
    await runProcess(6, async ({ k, mm }) => {
      const a = await n(vm_mmap(mm, 0, 8 * P, RW, PRIV));
      for (let i = 0; i < 8; i++) expect(await n(put_user(i, a + i * P))).toBe(0);
      const sub = await watch(k, mm);
      pendingUnwatch.push([sub, mm]);
      expect(await n(vm_munmap(mm, a + 2 * P, 2 * P))).toBe(0);
      expect(evs()).toEqual([[MMU_NOTIFY_UNMAP, a + 2 * P, a + 4 * P, true]]);
      expectPaired();
      expect(vma_list(k, mm).map((v) => [v.start, v.end])).toEqual([
        [a, a + 2 * P],
        [a + 4 * P, a + 8 * P],
      ]);
      expect(k.arena.i32[mm + MmL.map_count]).toBe(2);
      expect(rss(k, mm, MM_ANONPAGES)).toBe(6);
      expect(await n(get_user(a + 2 * P))).toBe(UACCESS_FAULT);
      log.length = 0;
      expect(await n(vm_munmap(mm, a + 2 * P, 2 * P))).toBe(0); // nothing there
      expect(log).toEqual([]);
      // over a hole and both sides: still one range, the whole of it
      expect(await n(vm_munmap(mm, a + P, 4 * P))).toBe(0);
      expect(evs()).toEqual([[MMU_NOTIFY_UNMAP, a + P, a + 5 * P, true]]);
      expect(rss(k, mm, MM_ANONPAGES)).toBe(4);
      // MAP_FIXED back into the hole merges with both neighbours
      log.length = 0;
      expect(await n(vm_mmap(mm, a + P, 4 * P, RW, PRIV | MAP_FIXED))).toBe(a + P);
      expect(log).toEqual([]);
      expect(vma_list(k, mm).map((v) => [v.start, v.end])).toEqual([[a, a + 8 * P]]);
      expect([await n(get_user(a)), await n(get_user(a + 2 * P)), await n(get_user(a + 7 * P))]).toEqual([0, 0, 7]);
      // MAP_FIXED over mapped pages: they are unmapped first
      log.length = 0;
      expect(await n(vm_mmap(mm, a + 6 * P, 2 * P, RW, PRIV | MAP_FIXED))).toBe(a + 6 * P);
      expect(evs()).toEqual([[MMU_NOTIFY_UNMAP, a + 6 * P, a + 8 * P, true]]);
      expect(await n(get_user(a + 7 * P))).toBe(0);
    }, CFG, afterExit);
  });

  it('mprotect: PROTECTION_VMA only over populated ranges; split and merge; PROT_NONE keeps the frame', async () => {
    await runProcess(7, async ({ k, mm }) => {
      const a = await n(vm_mmap(mm, 0, 6 * P, RW, PRIV));
      const sub = await watch(k, mm);
      pendingUnwatch.push([sub, mm]);
      // unpopulated: no page table at all, so no event (change_protection starts lazily)
      expect(await n(do_mprotect(mm, a + 2 * P, 2 * P, PROT_READ))).toBe(0);
      expect(log).toEqual([]);
      expect(vma_list(k, mm).map((v) => [v.start, v.end, v.flags & (VM_READ | VM_WRITE)])).toEqual([
        [a, a + 2 * P, VM_READ | VM_WRITE],
        [a + 2 * P, a + 4 * P, VM_READ],
        [a + 4 * P, a + 6 * P, VM_READ | VM_WRITE],
      ]);
      expect(await n(do_mprotect(mm, a + 2 * P, 2 * P, RW))).toBe(0);
      expect(vma_list(k, mm).length).toBe(1);
      expect(log).toEqual([]);
      // populated
      expect(await n(put_user(42, a))).toBe(0);
      expect(await n(do_mprotect(mm, a + 2 * P, 2 * P, PROT_READ))).toBe(0);
      expect(evs()).toEqual([[MMU_NOTIFY_PROTECTION_VMA, a + 2 * P, a + 4 * P, true]]);
      expectPaired();
      expect(await n(put_user(1, a + 2 * P))).toBe(-EFAULT);
      // the same protection again: nothing to do, nothing raised
      log.length = 0;
      expect(await n(do_mprotect(mm, a + 2 * P, 2 * P, PROT_READ))).toBe(0);
      expect(log).toEqual([]);
      // PROT_NONE over a mapped page: the frame stays, no access gets through
      const pfn = pte_pfn(pteAt(k, mm, a));
      expect(await n(do_mprotect(mm, a, P, PROT_NONE))).toBe(0);
      expect(evs()).toEqual([[MMU_NOTIFY_PROTECTION_VMA, a, a + P, true]]);
      expect((pteAt(k, mm, a) & _PAGE_PROTNONE) !== 0 && pte_pfn(pteAt(k, mm, a)) === pfn).toBe(true);
      expect(await n(get_user(a))).toBe(UACCESS_FAULT);
      expect(rss(k, mm, MM_ANONPAGES)).toBe(1);
      // back to RW: one range per VMA whose flags change (the RW ones in between raise none);
      // the exclusive anon page is writable again without a fault
      log.length = 0;
      expect(await n(do_mprotect(mm, a, 6 * P, RW))).toBe(0);
      expect(evs()).toEqual([
        [MMU_NOTIFY_PROTECTION_VMA, a, a + P, true],
        [MMU_NOTIFY_PROTECTION_VMA, a + 2 * P, a + 4 * P, true],
      ]);
      expect(pte_write(pteAt(k, mm, a))).toBe(true);
      expect(await n(get_user(a))).toBe(42);
      expect(vma_list(k, mm).length).toBe(1);
    }, CFG, afterExit);
  });

  it('madvise(MADV_DONTNEED): CLEAR per VMA part; private pages come back zero, shared ones keep their data', async () => {
    await runProcess(8, async ({ k, mm }) => {
      const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
      const s = await n(vm_mmap(mm, 0, P, RW, SHARED));
      for (let i = 0; i < 4; i++) expect(await n(put_user(10 + i, a + i * P))).toBe(0);
      expect(await n(put_user(77, s))).toBe(0);
      expect(await n(do_mprotect(mm, a + 2 * P, 2 * P, PROT_READ))).toBe(0); // two VMAs now
      const sub = await watch(k, mm);
      pendingUnwatch.push([sub, mm]);
      expect(await n(do_madvise(mm, a + P, 2 * P, MADV_DONTNEED))).toBe(0);
      expect(evs()).toEqual([
        [MMU_NOTIFY_CLEAR, a + P, a + 2 * P, true],
        [MMU_NOTIFY_CLEAR, a + 2 * P, a + 3 * P, true],
      ]);
      expectPaired();
      expect(rss(k, mm, MM_ANONPAGES)).toBe(2);
      expect([await n(get_user(a)), await n(get_user(a + P)), await n(get_user(a + 2 * P)), await n(get_user(a + 3 * P))]).toEqual([10, 0, 0, 13]);
      log.length = 0;
      expect(await n(do_madvise(mm, s, P, MADV_DONTNEED))).toBe(0);
      expect(evs()).toEqual([[MMU_NOTIFY_CLEAR, s, s + P, true]]);
      expect(rss(k, mm, MM_SHMEMPAGES)).toBe(0);
      expect(await n(get_user(s))).toBe(77);
      expect(rss(k, mm, MM_SHMEMPAGES)).toBe(1);
    }, CFG, afterExit);
  });

  it('mremap: grow in place, move (UNMAP over the old range as the pages move), shrink (UNMAP over the tail); data follows', async () => {
    await runProcess(9, async ({ k, mm }) => {
      const a = await n(vm_mmap(mm, 0, 2 * P, RW, PRIV));
      expect(await n(vm_mmap(mm, a - 2 * P, 2 * P, RW, PRIV | MAP_FIXED))).toBe(a - 2 * P); // a neighbour below
      expect(await n(put_user(1, a))).toBe(0);
      expect(await n(put_user(2, a + P))).toBe(0);
      const sub = await watch(k, mm);
      pendingUnwatch.push([sub, mm]);
      // in place: the room above is free
      expect(await n(do_mremap(mm, a, 2 * P, 3 * P, 0))).toBe(a);
      expect(log).toEqual([]);
      // blocked above: move
      expect(await n(vm_mmap(mm, a + 3 * P, P, RW, PRIV | MAP_FIXED))).toBe(a + 3 * P);
      expect(await n(do_mremap(mm, a, 3 * P, 4 * P, 0))).toBe(-ENOMEM);
      const b = await n(do_mremap(mm, a, 3 * P, 4 * P, MREMAP_MAYMOVE));
      expect(b).toBeGreaterThan(0);
      expect(b).not.toBe(a);
      expect(evs()).toEqual([
        [MMU_NOTIFY_UNMAP, a, a + 3 * P, true],
        [MMU_NOTIFY_UNMAP, a, a + 3 * P, true],
      ]);
      expect([await n(get_user(b)), await n(get_user(b + P)), await n(get_user(b + 3 * P))]).toEqual([1, 2, 0]);
      expect(await n(get_user(a))).toBe(UACCESS_FAULT);
      log.length = 0;
      expect(await n(do_mremap(mm, b, 4 * P, P, 0))).toBe(b);
      expect(evs()).toEqual([[MMU_NOTIFY_UNMAP, b + P, b + 4 * P, true]]);
      expect(await n(get_user(b))).toBe(1);
    }, CFG, afterExit);
  });

  for (const seed of seeds(2)) {
    it(`seed ${seed}: exit (§5 exit_mmap, §9 scenario 21): ->release to the hlist and RELEASE to the itree, then UNMAP [0, ULONG_MAX) to the itree only; MMF_OOM_SKIP; nothing left`, async () => {
      let mmSeen = 0;
      let isub = 0;
      await runProcess(
        seed,
        async ({ k, mm }) => {
          mmSeen = mm;
          const a = await n(vm_mmap(mm, 0, 3 * P, RW, PRIV));
          const s = await n(vm_mmap(mm, 0, 2 * P, RW, SHARED | MAP_POPULATE));
          expect(rss(k, mm, MM_SHMEMPAGES)).toBe(2); // MAP_POPULATE faulted them in
          for (let i = 0; i < 3; i++) expect(await n(put_user(i, a + i * P))).toBe(0);
          expect(await n(put_user(5, s))).toBe(0);
          const sub = await watch(k, mm);
          pendingUnwatch.push([sub, mm]);
          isub = k.kmalloc.kzalloc(MinL.$size);
          expect(await n(mmu_interval_notifier_insert(isub, mm, 0, 2 ** 47, itreeRecorder))).toBe(0);
          log.length = 0;
        },
        CFG,
        (k, s, pid) => {
          s.spawn({
            name: 'after',
            fn: async () => {
              while (process_info(k, pid).state !== PROC_ZOMBIE) await k.sched.sleep(1000);
              expect(log.map((e) => [e.who, e.phase, e.event, e.start, e.end, e.blockable])).toEqual([
                ['itree', 'start', MMU_NOTIFY_RELEASE, 0, ULONG_MAX, true],
                ['hlist', 'release', -1, 0, 0, true],
                ['itree', 'start', MMU_NOTIFY_UNMAP, 0, ULONG_MAX, true],
              ]);
              expect((k.arena.i32[mmSeen + MmL.flags] & (1 << MMF_OOM_SKIP)) !== 0).toBe(true);
              expect(k.arena.i32[mmSeen + MmL.pgd]).toBe(0);
              expect(k.arena.i32[mmSeen + MmL.map_count]).toBe(0);
              expect(await n(mmu_interval_notifier_remove(isub))).toBe(0);
              k.kmalloc.kfree(isub);
              for (const [sub, mm] of pendingUnwatch.splice(0)) await unwatch(k, sub, mm);
            },
          });
        },
      );
    });
  }
});

// ---- rmap ------------------------------------------------------------------------------------------

describe('rmap: try_to_unmap (reference §6.1, scenario 22 without the device)', () => {
  it('a pinned anon page gets its CLEAR start/end pair and keeps its PTE; once unpinned and in the swap cache it is unmapped', async () => {
    await runProcess(10, async ({ k, mm }) => {
      const w = k.arena.i32;
      const a = await n(vm_mmap(mm, 0, P, RW, PRIV));
      expect(await n(put_user(31, a))).toBe(0);
      const pte0 = pteAt(k, mm, a);
      const pfn = pte_pfn(pte0);
      const pg = k.zone.page(pfn);
      w[pg + PageL.refcount] += GUP_PIN_COUNTING_BIAS;
      w[pg + PageL.pincount]++;
      mm_flags_set(MMF_HAS_PINNED, mm);
      const sub = await watch(k, mm);
      pendingUnwatch.push([sub, mm]);
      expect(await Promise.resolve(try_to_unmap(k, pfn))).toBe(false);
      expect(evs()).toEqual([[MMU_NOTIFY_CLEAR, a, a + P, true]]);
      expectPaired();
      expect(pteAt(k, mm, a)).toBe(pte0);
      expect(folio_mapcount(k, pfn)).toBe(1);
      expect(await n(get_user(a))).toBe(31);
      // unpin; reclaim puts it in the swap cache (locked, with a slot) before unmapping
      w[pg + PageL.refcount] -= GUP_PIN_COUNTING_BIAS;
      w[pg + PageL.pincount]--;
      expect(folio_trylock(k, pfn)).toBe(true);
      expect(folio_alloc_swap(k, pfn)).toBe(true); // takes the swap cache's reference
      const slot = w[pg + PageL.private];
      log.length = 0;
      expect(await Promise.resolve(try_to_unmap(k, pfn))).toBe(true);
      expect(evs()).toEqual([[MMU_NOTIFY_CLEAR, a, a + P, true]]);
      const e = pteAt(k, mm, a);
      expect([is_swap_entry(e), swp_type(e), swp_offset(e)]).toEqual([true, SWP_SWAP, slot]);
      expect([rss(k, mm, MM_ANONPAGES), rss(k, mm, MM_SWAPENTS)]).toEqual([0, 1]);
      expect(w[pg + PageL.refcount]).toBe(1);
      expect((w[pg + PageL.flags] & PG_swapcache) !== 0).toBe(true);
      // zapping the entry at exit balances MM_SWAPENTS and frees the slot and the swap-cache page
      folio_unlock(k, pfn);
    }, { ...CFG, swap: { slots: 8 } }, afterExit);
  });

  it('a shared page is unmapped from every mm that maps it, one CLEAR pair each, and refaults with its data', async () => {
    await runProcess(11, async ({ k, mm }) => {
      const w = k.arena.i32;
      const s = await n(vm_mmap(mm, 0, P, RW, SHARED));
      expect(await n(put_user(55, s))).toBe(0);
      const pfn = pte_pfn(pteAt(k, mm, s));
      const done = k.kmalloc.kzalloc(2);
      const cpid = await do_fork({
        name: 'child',
        fn: async () => {
          expect(await n(get_user(s))).toBe(55); // maps the same frame
          Atomics.store(w, done, 1);
          k.sched.wake(done, 1);
          while (Atomics.load(w, done + 1) === 0) await k.sched.wait(done + 1, 0);
          expect(await n(get_user(s))).toBe(55);
        },
      });
      expect(cpid).toBeGreaterThan(0);
      while (Atomics.load(w, done) === 0) await k.sched.wait(done, 0);
      expect(folio_mapcount(k, pfn)).toBe(2);
      const sub = await watch(k, mm);
      pendingUnwatch.push([sub, mm]);
      expect(await Promise.resolve(try_to_unmap(k, pfn))).toBe(true);
      expect(evs()).toEqual([[MMU_NOTIFY_CLEAR, s, s + P, true]]); // the child's mm has no subscriber
      expect(pteAt(k, mm, s)).toBe(0);
      expect(rss(k, mm, MM_SHMEMPAGES)).toBe(0);
      expect(await n(get_user(s))).toBe(55);
      expect(pte_pfn(pteAt(k, mm, s))).toBe(pfn);
      Atomics.store(w, done + 1, 1);
      k.sched.wake(done + 1, 1);
      k.kmalloc.kfree(done);
    }, CFG, afterExit);
  });
});

// ---- processes ---------------------------------------------------------------------------------------

describe('processes: kill, exit and waitpid (DESIGN check 7: nothing left after the last exit)', () => {
  it("a parent forks a child, kills it, and waitpid reaps its status; the parent's memory is untouched", async () => {
    await runProcess(15, async ({ k, mm }) => {
      const a = await n(vm_mmap(mm, 0, P, RW, PRIV));
      expect(await n(put_user(1, a))).toBe(0);
      const cpid = await do_fork({
        name: 'spinner',
        fn: async () => {
          for (;;) {
            expect(await n(put_user(2, a))).toBe(0);
            await cond_resched();
          }
        },
      });
      expect(cpid).toBeGreaterThan(0);
      await k.sched.sleep(5000);
      expect(kill_process(k, cpid)).toBe(0);
      expect(await waitpid(cpid)).toEqual({ code: SIGKILL, signal: SIGKILL });
      expect(await n(get_user(a))).toBe(1);
    });
  });

  for (const seed of seeds(3)) {
    it(`seed ${seed}: SIGKILL reaches every thread at its next user access; the last one out tears the mm down`, async () => {
      log.length = 0;
      const k = bootKernel(CFG);
      const before = mmUsage(k);
      const s = new SimScheduler(k, { seed, stallMs: 5000 });
      const pid = spawn_process(k, s, {
        name: 'looper',
        threads: 2,
        fn: async ({ mm, thread }: ProcessContext<unknown>) => {
          const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
          for (let i = 0; ; i++) {
            const r = await n(put_user(i, a + (i % 4) * P + 4 * thread));
            if (r !== 0) throw new Error(`put_user ${r}`);
            if (i % 8 === 7) await k.sched.sleep(500);
          }
        },
      });
      s.spawn({
        name: 'killer',
        fn: async () => {
          await k.sched.sleep(20_000);
          expect(kill_process(k, pid)).toBe(0);
        },
      });
      const r = await s.run();
      expect(r.status, r.report ?? dump(k.klog.read())).toBe('done');
      expect(r.failed).toEqual([]);
      expect(k.klog.read()).toEqual([]);
      expect(process_info(k, pid)).toMatchObject({ state: PROC_ZOMBIE, signal: SIGKILL, live: 0 });
      reap_zombies(k);
      expect(mmUsage(k)).toEqual(before);
    });
  }
});

// ---- bad input ------------------------------------------------------------------------------------

describe('bad input (unaligned, overflowing, unknown address, len 0): the kernel error codes, and nothing changed', () => {
  it('mmap, munmap, mprotect, madvise, mremap refuse what the kernel refuses', async () => {
    await runProcess(12, async ({ k, mm }) => {
      const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
      expect(await n(put_user(3, a))).toBe(0);
      const snap = () => JSON.stringify([vma_list(k, mm), mmUsage(k), rss(k, mm, MM_ANONPAGES)]);
      const s0 = snap();
      const TS = k.mmLayer.taskSize;
      const cases: [string, () => number | Promise<number>, number][] = [
        ['mmap len 0', () => vm_mmap(mm, 0, 0, RW, PRIV), -EINVAL],
        ['mmap len past TASK_SIZE', () => vm_mmap(mm, 0, TS + P, RW, PRIV), -ENOMEM],
        ['mmap len ULONG_MAX', () => vm_mmap(mm, 0, ULONG_MAX, RW, PRIV), -ENOMEM],
        ['mmap unaligned offset', () => vm_mmap(mm, 0, P, RW, PRIV, 123), -EINVAL],
        ['mmap MAP_FIXED unaligned', () => vm_mmap(mm, a + 1, P, RW, PRIV | MAP_FIXED), -EINVAL],
        ['mmap MAP_FIXED past the top', () => vm_mmap(mm, TS, 2 * P, RW, PRIV | MAP_FIXED), -ENOMEM],
        ['mmap no MAP_SHARED/PRIVATE', () => vm_mmap(mm, 0, P, RW, MAP_ANONYMOUS), -EINVAL],
        ['mmap a file (no files here)', () => vm_mmap(mm, 0, P, RW, MAP_PRIVATE), -EBADF],
        ['mmap bad prot', () => vm_mmap(mm, 0, P, 0x100, PRIV), -EINVAL],
        ['mmap negative len', () => vm_mmap(mm, 0, -P, RW, PRIV), -EINVAL],
        ['mmap fractional addr', () => vm_mmap(mm, 0.5, P, RW, PRIV), -EINVAL],
        ['mmap NOREPLACE over a mapping', () => vm_mmap(mm, a, P, RW, PRIV | MAP_FIXED_NOREPLACE), -EEXIST],
        ['munmap unaligned', () => vm_munmap(mm, a + 8, P), -EINVAL],
        ['munmap len 0', () => vm_munmap(mm, a, 0), -EINVAL],
        ['munmap past TASK_SIZE', () => vm_munmap(mm, a, TS), -EINVAL],
        ['munmap overflowing', () => vm_munmap(mm, a, ULONG_MAX), -EINVAL],
        ['munmap NaN', () => vm_munmap(mm, NaN, P), -EINVAL],
        ['mprotect unaligned', () => do_mprotect(mm, a + 1, P, PROT_READ), -EINVAL],
        ['mprotect bad prot', () => do_mprotect(mm, a, P, 0x40), -EINVAL],
        ['mprotect overflowing', () => do_mprotect(mm, a, ULONG_MAX, PROT_READ), -ENOMEM],
        ['mprotect unknown address', () => do_mprotect(mm, P * 16, P, PROT_READ), -ENOMEM],
        ['madvise unknown advice', () => do_madvise(mm, a, P, 1234), -EINVAL],
        ['madvise unaligned', () => do_madvise(mm, a + 4, P, MADV_DONTNEED), -EINVAL],
        ['madvise unknown address', () => do_madvise(mm, P * 16, P, MADV_DONTNEED), -ENOMEM],
        ['mremap unaligned', () => do_mremap(mm, a + 4, P, 2 * P, MREMAP_MAYMOVE), -EINVAL],
        ['mremap to 0', () => do_mremap(mm, a, P, 0, MREMAP_MAYMOVE), -EINVAL],
        ['mremap bad flags', () => do_mremap(mm, a, P, 2 * P, 0x80), -EINVAL],
        ['mremap unknown address', () => do_mremap(mm, P * 16, P, 2 * P, MREMAP_MAYMOVE), -EFAULT],
        ['mremap across the VMA end', () => do_mremap(mm, a, 8 * P, 9 * P, MREMAP_MAYMOVE), -EFAULT],
      ];
      for (const [what, call, want] of cases) {
        expect(await n(call()), what).toBe(want);
        expect(snap(), what).toBe(s0);
      }
      expect(await n(do_mprotect(mm, a, 0, PROT_READ))).toBe(0); // len 0 is a no-op
      expect(await n(do_madvise(mm, a, 0, MADV_DONTNEED))).toBe(0);
      // a hole inside the range: the VMAs before it are changed, then -ENOMEM (as the kernel)
      const b = await n(vm_mmap(mm, a + 5 * P, P, RW, PRIV | MAP_FIXED));
      expect(await n(do_mprotect(mm, a, 6 * P, PROT_READ))).toBe(-ENOMEM);
      expect(vma_list(k, mm).map((v) => v.flags & (VM_READ | VM_WRITE))).toEqual([VM_READ, VM_READ | VM_WRITE]);
      expect(await n(do_madvise(mm, a, 6 * P, MADV_DONTNEED))).toBe(-ENOMEM);
      expect(await n(get_user(a))).toBe(0); // zapped before the hole was met
      expect(b).toBe(a + 5 * P);
      expect(EACCES).toBe(13);
    });
  });
});

// ---- page size ----------------------------------------------------------------------------------------

describe("the page size is the kernel's", () => {
  for (const pageSize of [1024, 16384]) {
    it(`${pageSize}-byte pages: mappings, faults, fork and teardown follow it`, async () => {
      const cfg: BootConfig = { ...CFG, mem: { pages: 256, pageSize } };
      // every layer, the notifier core's range checks included, uses the kernel's page size
      const allow: string[] = [];
      await runProcess(13, async ({ k, mm }) => {
        expect(k.mmLayer.pageSize).toBe(pageSize);
        const a = await n(vm_mmap(mm, 0, 3 * pageSize + 1, RW, PRIV));
        expect(a % pageSize).toBe(0);
        expect(vma_list(k, mm)[0].end - a).toBe(4 * pageSize);
        for (let i = 0; i < 4; i++) expect(await n(put_user(i + 1, a + i * pageSize + pageSize - 4))).toBe(0);
        expect(rss(k, mm, MM_ANONPAGES)).toBe(4);
        const done = k.kmalloc.kzalloc(1);
        expect(
          await do_fork({
            name: 'child',
            fn: async () => {
              for (let i = 0; i < 4; i++) expect(await n(get_user(a + i * pageSize + pageSize - 4))).toBe(i + 1);
              Atomics.store(k.arena.i32, done, 1);
              k.sched.wake(done, 1);
            },
          }),
        ).toBeGreaterThan(0);
        while (Atomics.load(k.arena.i32, done) === 0) await k.sched.wait(done, 0);
        expect(await n(vm_munmap(mm, a + pageSize, pageSize))).toBe(0);
        expect(await n(vm_munmap(mm, a + 1, pageSize))).toBe(-EINVAL);
        expect(rss(k, mm, MM_ANONPAGES)).toBe(3);
        k.kmalloc.kfree(done);
      }, cfg, undefined, allow);
    });
  }
});

// ---- threads ------------------------------------------------------------------------------------------

describe('one process, four CPU tasks, the program named by module export', () => {
  it.each(['threads', 'sim'] as const)('%s: fault, mprotect, madvise and munmap concurrently; no crash, no leak, every frame accounted for at exit', async (scheduler) => {
    const k = bootKernel({ ...CFG, mem: { pages: 1024, pageSize: P }, mm: { pgtables: 256, vmas: 128, rmapNodes: 2400, shmObjs: 8, procs: 8 } });
    const before = mmUsage(k);
    const runner = scheduler === 'threads' ? new ThreadsRunner(k, { watchdogMs: 2000, timeoutMs: 45_000 }) : new SimScheduler(k, { seed: 5 });
    const w = k.arena.i32;
    const words = k.kmalloc.kzalloc(4);
    const args: StressArgs = { common: words, errors: words + 2, iters: 40, pages: 8, pageSize: P, threads: 4 };
    const MOD = fileURLToPath(new URL('./fixtures/mm_tasks.ts', import.meta.url));
    const pid = spawn_process(k, runner, { name: 'stress', module: MOD, fn: 'mmStress', args, threads: 4 });
    expect(pid).toBeGreaterThan(0);
    // the common region, mapped from the boot context before any thread runs
    const mm = process_info(k, pid).mm;
    const common = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
    expect(common).toBeGreaterThan(0);
    k.arena.f64[words >> 1] = common;
    const r = await runner.run();
    const klog = k.klog.read();
    expect(r.status, r.report ?? dump(klog)).toBe('done');
    expect(r.failed, dump(klog)).toEqual([]);
    expect(klog.map((x) => `[${x.kind}] ${x.text}`)).toEqual([]);
    expect(w[args.errors]).toBe(0);
    expect(process_info(k, pid)).toMatchObject({ state: PROC_ZOMBIE, live: 0, signal: 0 });
    reap_zombies(k);
    k.kmalloc.kfree(words);
    expect(mmUsage(k)).toEqual(before);
  });
});
