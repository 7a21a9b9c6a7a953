// hmm_range_fault and a minimal mirror driver (test/fixtures/mirror.ts) under `sim` over
// several seeds, and one `threads` run. Each test names the reference section or §9 scenario
// it checks (../shared/reference/kernel-semantics.md). Every run ends with the mirror
// invariant unbroken (no 'mirror_invariant' record), no other klog record than the test
// expects, and no frame, table, VMA or process left behind.

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import type { Kernel } from '../src/sched/kernel.js';
import type { RunResult } from '../src/sched/scheduler.js';
import { SimScheduler } from '../src/sched/sim.js';
import type { KlogRecord } from '../src/shm/klog.js';
import { EAGAIN, EBUSY, EFAULT, EINVAL, ENOENT, EPERM } from '../src/shm/errno.js';
import { spin_lock, spin_unlock } from '../src/sync/spinlock.js';
import {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_PROTECTION_PAGE,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_RELEASE,
  MMU_NOTIFY_UNMAP,
  MnL,
  MmuNotifierRange,
  defineNotifierOps,
  mmu_interval_read_begin,
  mmu_notifier_init,
  mmu_notifier_invalidate_range_end,
  mmu_notifier_invalidate_range_start_nonblock,
  mmu_notifier_range_init,
  mmu_notifier_register,
  mmu_notifier_unregister,
} from '../src/notifier/index.js';
import { GFP_KERNEL } from '../src/mm/gfp.js';
import { mm_flags_set, mmap_read_lock, mmap_read_trylock, mmap_read_unlock } from '../src/mm/mm_inline.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { _PAGE_PROTNONE, pte_alloc_lookup, pte_lookup, ptl_of, tlb_finish_mmu, tlb_gather_mmu } from '../src/mm/mm_pt.js';
import { MADV_DONTNEED, MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_NONE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { do_madvise } from '../src/mm/madvise.js';
import { vm_mmap, vm_munmap } from '../src/mm/mmap.js';
import { do_mprotect } from '../src/mm/mprotect.js';
import { PG_device_private, PageL, ZERO_PFN } from '../src/mm/page.js';
import { __free_page, alloc_page } from '../src/mm/page_alloc.js';
import { SWP_DEVICE_PRIVATE_READ, SWP_DEVICE_PRIVATE_WRITE, SWP_MIGRATION_WRITE, pte_pfn, pte_present, pte_write, swp_entry_to_pte } from '../src/mm/pgtable.js';
import { do_fork, reap_zombies, spawn_process, waitpid, type ProcessContext, type ProcessFn } from '../src/mm/process.js';
import { get_user, put_user } from '../src/mm/uaccess.js';
import { unmap_single_vma } from '../src/mm/unmap.js';
import { MMF_UNSTABLE, MmL, ULONG_MAX } from '../src/mm/types.js';
import { vma_end, vma_lookup, vma_start } from '../src/mm/vma.js';
import {
  HMM_PFN_DMA_MAPPED,
  HMM_PFN_ERROR,
  HMM_PFN_FLAGS,
  HMM_PFN_ORDER_SHIFT,
  HMM_PFN_P2PDMA,
  HMM_PFN_P2PDMA_BUS,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HMM_RANGE_DEFAULT_TIMEOUT,
  HmmRange,
  hmm_pfn_flags,
  hmm_pfn_flags_order,
  hmm_pfn_set,
  hmm_pfn_to_map_order,
  hmm_pfn_to_page,
  hmm_pfn_to_pfn,
  hmm_pfn_value,
  hmm_pfns_alloc,
  hmm_range_fault,
} from '../src/hmm/hmm.js';
import {
  FAULT_CHUNK,
  LIVELOCK_ROUNDS,
  MirrorL,
  QUIRK_NO_SET_SEQ,
  dmirror_entries,
  dmirror_lock,
  dmirror_log,
  dmirror_open,
  dmirror_read,
  dmirror_release,
  dmirror_set_hooks,
  dmirror_stats,
  dmirror_unlock,
  dmirror_write,
  type DmirrorCmd,
} from './fixtures/mirror.js';
import { CtlL, hmmCpu, type HmmStressArgs } from './fixtures/hmm_tasks.js';

const SEEDS = [1, 2, 3];
const P = 4096;
const W = P / 4; // words per page
const N = 8;

const CFG: BootConfig = {
  maxTasks: 24,
  lockClasses: 128,
  lockdepEdges: 1024,
  eventRecords: 1 << 14,
  klogBytes: 1 << 18,
  strings: 512,
  stringBytes: 16384,
  kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 32, 1024: 16 },
  mem: { pages: 1024, pageSize: P },
};

// ---- harness -------------------------------------------------------------------------------------

async function n(v: number | Promise<number>): Promise<number> {
  return typeof v === 'number' ? v : await v;
}

interface World {
  k: Kernel;
  s: SimScheduler;
  /** a word tasks wait on and raise (waitFor / raise) */
  step: number;
  before: ReturnType<typeof mmUsage>;
  kmallocBefore: Record<string, number>;
}

function world(seed: number, cfg: BootConfig = {}): World {
  const k = bootKernel({ ...CFG, ...cfg });
  const step = k.kmalloc.kzalloc(8);
  return { k, s: new SimScheduler(k, { seed, stallMs: 5000 }), step, before: mmUsage(k), kmallocBefore: k.kmalloc.usage() };
}

/** Run to the end; reap; check nothing leaked and klog holds only the kinds allowed. */
async function finish(wd: World, allow: string[] = []): Promise<{ r: RunResult; log: KlogRecord[] }> {
  const { k, s } = wd;
  const r = await s.run();
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  reap_zombies(k);
  expect(log.filter((x) => !allow.includes(x.kind)), dumpLog(log)).toEqual([]);
  expect(mmUsage(k)).toEqual(wd.before);
  expect(k.kmalloc.usage()).toEqual(wd.kmallocBefore);
  return { r, log };
}

function dumpLog(log: KlogRecord[]): string {
  return log.map((x) => `[${x.kind}] ${x.text}`).join('\n---\n');
}

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

function proc(wd: World, fn: ProcessFn): number {
  const pid = spawn_process(wd.k, wd.s, { name: 'p', fn });
  expect(pid).toBeGreaterThan(0);
  return pid;
}

/** mmap `pages` private RW pages and write i + 1 into word 0 of page i. */
async function mapWritten(mm: number, pages: number, flags = MAP_PRIVATE): Promise<number> {
  const a = await n(vm_mmap(mm, 0, pages * P, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS));
  expect(a).toBeGreaterThan(0);
  for (let i = 0; i < pages; i++) expect(await n(put_user(i + 1, a + i * P))).toBe(0);
  return a;
}

async function open(k: Kernel, mm: number, a: number, pages: number, owner = 1): Promise<number> {
  const dev = await n(dmirror_open(k, mm, a, pages, owner));
  expect(dev).toBeGreaterThan(0);
  return dev;
}

function cmd(ret: number, cpages: number, faults: number): DmirrorCmd {
  return { ret, cpages, faults };
}

/** The host PTE of addr in mm. */
function hostPte(k: Kernel, mm: number, addr: number): number {
  const pgd = k.arena.i32[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  return slot < 0 ? 0 : k.arena.i32[slot];
}

function words0(buf: Int32Array, pages: number): number[] {
  return Array.from({ length: pages }, (_, i) => buf[i * W]);
}

async function userWords(a: number, pages: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < pages; i++) out.push(await n(get_user(a + i * P)));
  return out;
}

const seq = (from: number, count: number): number[] => Array.from({ length: count }, (_, i) => from + i);

// ---- §3.2: the bit layout ----------------------------------------------------------------------

describe('§3.2 hmm_pfns bit layout (two Uint32 words per unsigned long)', () => {
  it('flags at bits 63..58, order at 53..57, HMM_PFN_FLAGS the top 11 bits, REQ_* alias VALID/WRITE', () => {
    const pfns = hmm_pfns_alloc(1);
    const bit = (flags: number): bigint => {
      hmm_pfn_set(pfns, 0, flags, 0);
      return hmm_pfn_value(pfns, 0);
    };
    expect(bit(HMM_PFN_VALID)).toBe(1n << 63n);
    expect(bit(HMM_PFN_WRITE)).toBe(1n << 62n);
    expect(bit(HMM_PFN_ERROR)).toBe(1n << 61n);
    expect(bit(HMM_PFN_DMA_MAPPED)).toBe(1n << 60n);
    expect(bit(HMM_PFN_P2PDMA)).toBe(1n << 59n);
    expect(bit(HMM_PFN_P2PDMA_BUS)).toBe(1n << 58n);
    expect(bit(HMM_PFN_FLAGS)).toBe(((1n << 64n) - 1n) & ~((1n << 53n) - 1n));
    expect(HMM_PFN_ORDER_SHIFT).toBe(53);
    expect(bit(hmm_pfn_flags_order(9))).toBe(9n << 53n);
    expect(HMM_PFN_REQ_FAULT).toBe(HMM_PFN_VALID);
    expect(HMM_PFN_REQ_WRITE).toBe(HMM_PFN_WRITE);
    // a PMD-order write entry with a pfn above 32 bits
    hmm_pfn_set(pfns, 0, HMM_PFN_VALID | HMM_PFN_WRITE | hmm_pfn_flags_order(9), 2 ** 40 + 5);
    expect(hmm_pfn_value(pfns, 0)).toBe((1n << 63n) | (1n << 62n) | (9n << 53n) | (2n ** 40n + 5n));
    expect(hmm_pfn_to_pfn(pfns, 0)).toBe(2 ** 40 + 5);
    expect(hmm_pfn_to_map_order(pfns, 0)).toBe(9);
    expect((hmm_pfn_flags(pfns, 0) & HMM_PFN_VALID) !== 0).toBe(true);
    expect((hmm_pfn_flags(pfns, 0) & HMM_PFN_ERROR) !== 0).toBe(false);
    const k = bootKernel(CFG);
    hmm_pfn_set(pfns, 0, HMM_PFN_VALID, 7);
    expect(hmm_pfn_to_page(k.zone, pfns, 0)).toBe(k.zone.page(7));
    expect(HMM_RANGE_DEFAULT_TIMEOUT).toBe(1000);
  });
});

// ---- §9 scenarios through the mirror driver -----------------------------------------------------------

describe('§9 mirror scenarios (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: §9.1 read: 0, cpages N, faults 1, entries tagged WRITE; §9.2 then write: faults 0`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const dev = await open(k, mm, a, N);
        const buf = new Int32Array(N * W);
        expect(await dmirror_read(k, dev, a, N, buf)).toEqual(cmd(0, N, 1));
        expect(words0(buf, N)).toEqual(seq(1, N));
        const e = dmirror_entries(k, dev);
        expect(e.map((x) => x.page)).toEqual(seq(0, N));
        for (const x of e) {
          expect(x.write).toBe(true); // the CPU PTEs are writable, even for a read fault
          expect(x.pfn).toBe(pte_pfn(hostPte(k, mm, a + x.page * P)));
        }
        // §9.2: the entries are WRITE-tagged already
        expect(await dmirror_write(k, dev, a, N)).toEqual(cmd(0, N, 0));
        expect(await userWords(a, N)).toEqual(seq(2, N));
        expect(dmirror_stats(k, dev)).toMatchObject({ programs: 1, violations: 0, accesses: 2 * N });
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.3 PROT_NONE: READ -> -EFAULT, the output untouched`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await n(vm_mmap(mm, 0, N * P, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS));
        const dev = await open(k, mm, a, N);
        const buf = new Int32Array(N * W).fill(0x5a5a);
        expect(await dmirror_read(k, dev, a, N, buf)).toEqual(cmd(-EFAULT, 0, 0));
        expect(buf.every((v) => v === 0x5a5a)).toBe(true);
        expect(dmirror_entries(k, dev)).toEqual([]);
        expect(hostPte(k, mm, a)).toBe(0); // nothing was faulted
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.4 PROT_READ untouched: READ via the zero page; WRITE -> -EPERM; after mprotect RW, WRITE -> 0, faults 1`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await n(vm_mmap(mm, 0, P, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS));
        const dev = await open(k, mm, a, 1);
        const buf = new Int32Array(W).fill(-1);
        expect(await dmirror_read(k, dev, a, 1, buf)).toEqual(cmd(0, 1, 1));
        expect(buf.every((v) => v === 0)).toBe(true);
        expect(dmirror_entries(k, dev)).toEqual([expect.objectContaining({ page: 0, pfn: ZERO_PFN, write: false })]);
        expect(await dmirror_write(k, dev, a, 1)).toEqual(cmd(-EPERM, 0, 0));
        expect(await n(do_mprotect(mm, a, P, PROT_READ | PROT_WRITE))).toBe(0);
        expect(dmirror_log(k, dev).at(-1)).toEqual({ event: MMU_NOTIFY_PROTECTION_VMA, start: a, end: a + P, blockable: true });
        expect(await dmirror_write(k, dev, a, 1)).toEqual(cmd(0, 1, 1));
        // the write fault left the zero page: a COW CLEAR made the walk retry
        expect(dmirror_log(k, dev).at(-1)).toMatchObject({ event: MMU_NOTIFY_CLEAR, start: a, end: a + P });
        const [e] = dmirror_entries(k, dev);
        expect(e.write).toBe(true);
        expect(e.pfn).not.toBe(ZERO_PFN);
        expect(await n(get_user(a))).toBe(1); // the device's write
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.5 munmap the upper half: UNMAP (blockable) erases its entries; READ of the whole range -> -EFAULT`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const dev = await open(k, mm, a, N);
        expect((await dmirror_read(k, dev, a, N)).ret).toBe(0);
        const half = a + (N / 2) * P;
        expect(await n(vm_munmap(mm, half, (N / 2) * P))).toBe(0);
        expect(dmirror_log(k, dev)).toEqual([{ event: MMU_NOTIFY_UNMAP, start: half, end: a + N * P, blockable: true }]);
        expect(dmirror_entries(k, dev).map((x) => x.page)).toEqual(seq(0, N / 2));
        // the lower half is copied, then the fault of the rest finds no VMA
        expect(await dmirror_read(k, dev, a, N)).toEqual(cmd(-EFAULT, N / 2, 0));
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.6 mprotect RW -> R: PROTECTION_VMA erases; WRITE -> -EPERM; READ re-faults read-only entries`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const dev = await open(k, mm, a, N);
        expect((await dmirror_read(k, dev, a, N)).ret).toBe(0);
        expect(await n(do_mprotect(mm, a, N * P, PROT_READ))).toBe(0);
        expect(dmirror_log(k, dev)).toEqual([{ event: MMU_NOTIFY_PROTECTION_VMA, start: a, end: a + N * P, blockable: true }]);
        expect(dmirror_entries(k, dev)).toEqual([]);
        expect(await dmirror_write(k, dev, a, N)).toEqual(cmd(-EPERM, 0, 0));
        const buf = new Int32Array(N * W);
        expect(await dmirror_read(k, dev, a, N, buf)).toEqual(cmd(0, N, 1));
        expect(words0(buf, N)).toEqual(seq(1, N));
        expect(dmirror_entries(k, dev).every((x) => !x.write)).toBe(true);
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.7 fork: PROTECTION_PAGE on the parent; a device WRITE breaks COW (CLEAR, -EBUSY, retry); the child keeps its data`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const go = wd.step;
      const childSaw: number[][] = [];
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const dev = await open(k, mm, a, N);
        expect((await dmirror_read(k, dev, a, N)).ret).toBe(0);
        const child = await do_fork({
          name: 'child',
          fn: async ({ mm: cmm }: ProcessContext) => {
            await waitFor(k, go, 1);
            childSaw.push(await userWords(a, N));
            // the child's own device writes the child's copy
            const d2 = await open(k, cmm, a, N, 2);
            expect(await dmirror_write(k, d2, a, N)).toEqual(cmd(0, N, 1));
            childSaw.push(await userWords(a, N));
            expect(await dmirror_release(k, d2)).toBe(0);
            raise(k, go, 2);
          },
        });
        expect(child).toBeGreaterThan(0);
        expect(dmirror_log(k, dev)).toEqual([{ event: MMU_NOTIFY_PROTECTION_PAGE, start: a, end: a + N * P, blockable: true }]);
        expect(dmirror_entries(k, dev)).toEqual([]);
        expect(await dmirror_write(k, dev, a, N)).toEqual(cmd(0, N, 1));
        const st = dmirror_stats(k, dev);
        expect(st.busy).toBeGreaterThan(0); // the COW breaks moved the seq under the walk
        expect(dmirror_log(k, dev).slice(1).every((x) => x.event === MMU_NOTIFY_CLEAR)).toBe(true);
        expect(await userWords(a, N)).toEqual(seq(2, N));
        raise(k, go, 1);
        await waitFor(k, go, 2);
        expect(await userWords(a, N)).toEqual(seq(2, N)); // the child's device wrote only the child
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
      expect(childSaw).toEqual([seq(1, N), seq(2, N)]);
    });

    it(`seed ${seed}: §9.7 fork with MAP_SHARED: no COW, the parent's device write is seen by both`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const go = wd.step;
      const childSaw: number[][] = [];
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N, MAP_SHARED);
        const dev = await open(k, mm, a, N);
        expect((await dmirror_read(k, dev, a, N)).ret).toBe(0);
        await do_fork({
          name: 'child',
          fn: async () => {
            await waitFor(k, go, 1);
            childSaw.push(await userWords(a, N));
            raise(k, go, 2);
          },
        });
        expect(dmirror_entries(k, dev)).toHaveLength(N);
        expect(await dmirror_write(k, dev, a, N)).toEqual(cmd(0, N, 0));
        raise(k, go, 1);
        await waitFor(k, go, 2);
        expect(await userWords(a, N)).toEqual(seq(2, N));
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
      expect(childSaw).toEqual([seq(2, N)]);
    });

    it(`seed ${seed}: §9.8 collision: an invalidation between hmm_range_fault and the driver lock; read_retry, nothing programmed, retry`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const dev = await open(k, mm, a, N);
        let calls = 0;
        let programsAtHook = -1;
        dmirror_set_hooks(dev, {
          async afterRangeFault() {
            if (calls++ > 0) return;
            expect(await n(do_madvise(mm, a, N * P, MADV_DONTNEED))).toBe(0);
            programsAtHook = dmirror_stats(k, dev).programs;
          },
        });
        const buf = new Int32Array(N * W).fill(-1);
        expect(await dmirror_read(k, dev, a, N, buf)).toEqual(cmd(0, N, 1));
        expect(programsAtHook).toBe(0);
        expect(dmirror_stats(k, dev)).toMatchObject({ retries: 1, programs: 1, violations: 0 });
        expect(dmirror_log(k, dev)).toEqual([{ event: MMU_NOTIFY_CLEAR, start: a, end: a + N * P, blockable: true }]);
        // the retry saw the zapped pages: the zero page, read-only, zeros
        expect(dmirror_entries(k, dev).every((x) => x.pfn === ZERO_PFN && !x.write)).toBe(true);
        expect(buf.every((v) => v === 0)).toBe(true);
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.8 with a driver that forgets mmu_interval_set_seq: read_retry misses the collision, and the first access through the stale entries is reported`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const dev = await open(k, mm, a, N);
        k.arena.i32[dev + MirrorL.quirks] = QUIRK_NO_SET_SEQ;
        let calls = 0;
        dmirror_set_hooks(dev, {
          async afterRangeFault() {
            if (calls++ === 0) expect(await n(do_madvise(mm, a, N * P, MADV_DONTNEED))).toBe(0);
          },
        });
        expect(await dmirror_read(k, dev, a, N)).toEqual(cmd(-EFAULT, 0, 1));
        expect(dmirror_stats(k, dev)).toMatchObject({ retries: 0, programs: 1, violations: 1 });
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      const { log } = await finish(wd, ['mirror_invariant']);
      expect(log.filter((x) => x.kind === 'mirror_invariant')).toHaveLength(1);
      expect(log[0].text).toMatch(/reads 0x[0-9a-f]+ through a shadow PTE .* but the host PTE is 0x0 \(none\): an invalidation was lost/);
    });

    it(`seed ${seed}: §9.24 collisions for longer than HMM_RANGE_DEFAULT_TIMEOUT: the driver loop gives up with -EBUSY`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const dev = await open(k, mm, a, N);
        dmirror_set_hooks(dev, {
          async afterRangeFault() {
            expect(await n(do_madvise(mm, a, P, MADV_DONTNEED))).toBe(0);
            await k.sched.sleep(100e6);
          },
        });
        const t0 = k.sched.now();
        expect(await dmirror_read(k, dev, a, N)).toEqual(cmd(-EBUSY, 0, 0));
        expect(k.sched.now() - t0).toBeGreaterThan(HMM_RANGE_DEFAULT_TIMEOUT * 1e6);
        expect(dmirror_stats(k, dev)).toMatchObject({ timeouts: 1, programs: 0 });
        expect(dmirror_stats(k, dev).retries).toBeGreaterThanOrEqual(10);
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.15 a non-blockable UNMAP of a VMA while the driver lock is held: -EAGAIN, no end, PTEs stay; once released it succeeds`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const step = wd.step;
      const sh: { mm: number; a: number; devs: number[] } = { mm: 0, a: 0, devs: [] };
      const out: Record<string, unknown> = {};
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const d1 = await open(k, mm, a, N, 1);
        const d2 = await open(k, mm, a, N, 2); // after d1 in tree order
        for (const d of [d1, d2]) expect((await dmirror_read(k, d, a, N)).ret).toBe(0);
        Object.assign(sh, { mm, a, devs: [d1, d2] });
        raise(k, step, 1);
        await waitFor(k, step, 5);
        // §9.25: after reaping, a device fault on the victim fails
        expect(await dmirror_read(k, d1, a, N)).toEqual(cmd(-EFAULT, 0, 0));
        for (const d of [d1, d2]) expect(await dmirror_release(k, d)).toBe(0);
      });
      wd.s.spawn({
        name: 'holder',
        fn: async () => {
          await waitFor(k, step, 1);
          await dmirror_lock(k, sh.devs[0]);
          raise(k, step, 2);
          await waitFor(k, step, 3);
          dmirror_unlock(k, sh.devs[0]);
          raise(k, step, 4);
        },
      });
      wd.s.spawn({
        name: 'oom_reaper',
        kind: 'kthread',
        fn: async () => {
          await waitFor(k, step, 2);
          const { mm, a, devs } = sh;
          const tryReap = (): number => {
            expect(mmap_read_trylock(mm)).toBe(true);
            try {
              const vma = vma_lookup(k, mm, a);
              const range = new MmuNotifierRange();
              mmu_notifier_range_init(range, MMU_NOTIFY_UNMAP, 0, mm, vma_start(k, vma), vma_end(k, vma));
              const ret = mmu_notifier_invalidate_range_start_nonblock(range);
              if (ret !== 0) return ret; // no PTE may change, and no end
              const tlb = tlb_gather_mmu(k, mm);
              unmap_single_vma(k, tlb, vma, range.start, range.end);
              expect(mmu_notifier_invalidate_range_end(range)).toBeUndefined();
              tlb_finish_mmu(tlb);
              return 0;
            } finally {
              mmap_read_unlock(mm);
            }
          };
          mm_flags_set(MMF_UNSTABLE, mm);
          out.first = tryReap();
          out.ptesAfterFail = seq(0, N).filter((i) => pte_present(hostPte(k, mm, a + i * P))).length;
          out.logsAfterFail = devs.map((d) => dmirror_log(k, d).length);
          out.entriesAfterFail = devs.map((d) => dmirror_entries(k, d).length);
          raise(k, step, 3);
          await waitFor(k, step, 4);
          out.second = tryReap();
          out.ptesAfter = seq(0, N).filter((i) => hostPte(k, mm, a + i * P) !== 0).length;
          out.logs = devs.map((d) => dmirror_log(k, d));
          out.entries = devs.map((d) => dmirror_entries(k, d).length);
          out.eagain = devs.map((d) => dmirror_stats(k, d).eagain);
          raise(k, step, 5);
        },
      });
      await finish(wd);
      const { a } = sh;
      const unmap = { event: MMU_NOTIFY_UNMAP, start: a, end: a + N * P, blockable: false };
      expect(out).toEqual({
        first: -EAGAIN,
        ptesAfterFail: N, // the CPU PTEs remain
        logsAfterFail: [0, 0], // d1 refused; d2, later in the tree, was never called
        entriesAfterFail: [N, N],
        second: 0,
        ptesAfter: 0,
        logs: [[unmap], [unmap]],
        entries: [0, 0],
        eagain: [1, 0],
      });
    });

    it(`seed ${seed}: §9.21 exit: RELEASE [0, ULONG_MAX] then UNMAP to the interval subscriber, ->release to the hlist one; the dead mm's READ livelocks (bounded, reported)`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const hlog: string[] = [];
      const hops = defineNotifierOps('hmm-test-exit-hlist', {
        release: () => void hlog.push('release'),
        invalidate_range_start: (_s, r) => (hlog.push(`start ${r.event}`), 0),
        invalidate_range_end: (_s, r) => void hlog.push(`end ${r.event}`),
      });
      const sh = { mm: 0, a: 0, dev: 0, hsub: 0 };
      const pid = proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const dev = await open(k, mm, a, N);
        expect((await dmirror_read(k, dev, a, N)).ret).toBe(0);
        const hsub = k.kmalloc.kzalloc(MnL.$size);
        expect(mmu_notifier_init(hsub, hops)).toBe(0);
        expect(await n(mmu_notifier_register(hsub, mm))).toBe(0);
        Object.assign(sh, { mm, a, dev, hsub });
      });
      const res: Record<string, unknown> = {};
      wd.s.spawn({
        name: 'dev-file',
        kind: 'driver',
        fn: async () => {
          const st = await waitpid(pid);
          expect(st).toEqual({ code: 0, signal: 0 });
          const { mm, a, dev, hsub } = sh;
          res.log = dmirror_log(k, dev);
          res.hlog = [...hlog];
          res.entries = dmirror_entries(k, dev).length;
          res.read = await dmirror_read(k, dev, a, N);
          expect(await dmirror_release(k, dev)).toBe(0);
          expect(await mmu_notifier_unregister(hsub, mm)).toBe(0);
          k.kmalloc.kfree(hsub);
        },
      });
      const { log } = await finish(wd, ['liveness']);
      expect(res.log).toEqual([
        { event: MMU_NOTIFY_RELEASE, start: 0, end: ULONG_MAX, blockable: true },
        { event: MMU_NOTIFY_UNMAP, start: 0, end: ULONG_MAX, blockable: true },
      ]);
      expect(res.hlog).toEqual(['release']);
      expect(res.entries).toBe(0);
      expect(res.read).toEqual({ ret: -ENOENT, cpages: 0, faults: LIVELOCK_ROUNDS, livelock: true });
      const live = log.filter((x) => x.kind === 'liveness');
      expect(live).toHaveLength(1);
      expect(live[0].text).toMatch(/mm is gone \(mm_users 0\)/);
    });
  }
});

// ---- hmm_range_fault directly ---------------------------------------------------------------------

/** A range over [a, a + pages) of dev's notifier; hmm_pfns filled with `fill` in both words. */
function mkRange(dev: number, a: number, pages: number, fill = 0): HmmRange {
  const r = new HmmRange();
  r.notifier = dev + MirrorL.notifier;
  r.start = a;
  r.end = a + pages * P;
  r.hmm_pfns = hmm_pfns_alloc(pages).fill(fill);
  return r;
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

describe('hmm_range_fault (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: §9.30 a stale seq is -EBUSY before any walk; without the mmap_lock the assertion fails (and the walk goes on, as the kernel's does)`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const dev = await open(k, mm, a, N);
        const sub = dev + MirrorL.notifier;
        const r = mkRange(dev, a, N, 0xdeadbeef);
        r.default_flags = HMM_PFN_REQ_FAULT;
        r.notifier_seq = await n(mmu_interval_read_begin(sub));
        expect(await n(do_madvise(mm, a, P, MADV_DONTNEED))).toBe(0); // moves the seq
        const rss = k.arena.i32[mm + MmL.rss_stat + 1];
        expect(await locked(mm, () => hmm_range_fault(r))).toBe(-EBUSY);
        expect(r.hmm_pfns.every((v) => v === 0xdeadbeef)).toBe(true); // nothing walked
        expect(hostPte(k, mm, a)).toBe(0); // nothing faulted
        expect(k.arena.i32[mm + MmL.rss_stat + 1]).toBe(rss);
        expect(k.klog.read()).toEqual([]);
        // §9.30 part 2
        r.notifier_seq = await n(mmu_interval_read_begin(sub));
        expect(await hmm_range_fault(r)).toBe(0);
        const asserts = k.klog.read().filter((x) => x.kind === 'lockdep_assert');
        expect(asserts).toHaveLength(1);
        expect(asserts[0].text).toMatch(/mmap_lock/);
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd, ['lockdep_assert']);
    });

    it(`seed ${seed}: snapshot mode (no fault flags): [PROT_NONE, hole, zero, RO, RW+sticky, dev-private local, remote, none]`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await n(vm_mmap(mm, 0, 8 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
        expect(await n(do_mprotect(mm, a, P, PROT_NONE))).toBe(0);
        expect(await n(vm_munmap(mm, a + P, P))).toBe(0);
        expect(await n(get_user(a + 2 * P))).toBe(0); // a read maps the zero page
        expect(await n(put_user(33, a + 3 * P))).toBe(0);
        expect(await n(do_mprotect(mm, a + 3 * P, P, PROT_READ))).toBe(0);
        expect(await n(put_user(44, a + 4 * P))).toBe(0);
        // device-private pages of owner 1 (ours) and 2 (another device), written into the PTEs by hand
        const local = await n(alloc_page(k, GFP_KERNEL));
        const remote = await n(alloc_page(k, GFP_KERNEL));
        const w = k.arena.i32;
        const ptl = ptl_of(k, mm);
        const slots: number[] = [];
        spin_lock(ptl);
        for (const [i, pfn, owner, type] of [[5, local, 1, SWP_DEVICE_PRIVATE_WRITE], [6, remote, 2, SWP_DEVICE_PRIVATE_READ]]) {
          w[k.zone.page(pfn) + PageL.flags] |= PG_device_private;
          w[k.zone.page(pfn) + PageL.owner] = owner;
          const slot = pte_alloc_lookup(k, w[mm + MmL.pgd], a + i * P);
          w[slot] = swp_entry_to_pte(type, pfn);
          slots.push(slot);
        }
        spin_unlock(ptl);
        const dev = await open(k, mm, a, 8, 1);
        const r = mkRange(dev, a, 8);
        r.dev_private_owner = 1;
        hmm_pfn_set(r.hmm_pfns, 4, HMM_PFN_DMA_MAPPED, 0); // sticky: carried to the output
        r.notifier_seq = await n(mmu_interval_read_begin(dev + MirrorL.notifier));
        const rss = Array.from(k.arena.i32.subarray(mm + MmL.rss_stat, mm + MmL.rss_stat + 4));
        expect(await locked(mm, () => hmm_range_fault(r))).toBe(0);
        const out = seq(0, 8).map((i) => [hmm_pfn_flags(r.hmm_pfns, i) >>> 0, hmm_pfn_to_pfn(r.hmm_pfns, i)]);
        expect(out).toEqual([
          [HMM_PFN_ERROR, 0], // no VM_READ
          [HMM_PFN_ERROR, 0], // no VMA
          [HMM_PFN_VALID, ZERO_PFN],
          [HMM_PFN_VALID, pte_pfn(hostPte(k, mm, a + 3 * P))],
          [(HMM_PFN_VALID | HMM_PFN_WRITE | HMM_PFN_DMA_MAPPED) >>> 0, pte_pfn(hostPte(k, mm, a + 4 * P))],
          [(HMM_PFN_VALID | HMM_PFN_WRITE) >>> 0, local], // reported as it is, never faulted
          [0, 0], // another owner's page: not faulted without a request
          [0, 0], // none
        ]);
        expect(seq(0, 8).every((i) => hmm_pfn_to_map_order(r.hmm_pfns, i) === 0)).toBe(true);
        expect(Array.from(k.arena.i32.subarray(mm + MmL.rss_stat, mm + MmL.rss_stat + 4))).toEqual(rss);
        expect(hostPte(k, mm, a + 7 * P)).toBe(0);
        // asking for a fault of the PROT_NONE page is -EFAULT; of the hole too
        const f = mkRange(dev, a, 1);
        f.default_flags = HMM_PFN_REQ_FAULT;
        f.notifier_seq = await n(mmu_interval_read_begin(dev + MirrorL.notifier));
        expect(await locked(mm, () => hmm_range_fault(f))).toBe(-EFAULT);
        // a write asked of the read-only VMA is -EPERM; per-page requests through pfn_flags_mask
        const q = mkRange(dev, a + 2 * P, 3);
        q.pfn_flags_mask = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
        hmm_pfn_set(q.hmm_pfns, 1, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE, 0);
        q.notifier_seq = await n(mmu_interval_read_begin(dev + MirrorL.notifier));
        expect(await locked(mm, () => hmm_range_fault(q))).toBe(-EPERM);
        hmm_pfn_set(q.hmm_pfns, 1, 0, 0);
        hmm_pfn_set(q.hmm_pfns, 2, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE, 0);
        q.notifier_seq = await n(mmu_interval_read_begin(dev + MirrorL.notifier));
        expect(await locked(mm, () => hmm_range_fault(q))).toBe(0);
        expect(hmm_pfn_flags(q.hmm_pfns, 2) >>> 0).toBe((HMM_PFN_VALID | HMM_PFN_WRITE) >>> 0);
        spin_lock(ptl);
        for (const s of slots) w[s] = 0;
        spin_unlock(ptl);
        __free_page(k, local);
        __free_page(k, remote);
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: a PROT_NONE PTE in an accessible VMA (NUMA hinting): snapshot 0; a fault request fixes it up`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 1);
        const dev = await open(k, mm, a, 1);
        const w = k.arena.i32;
        const slot = pte_lookup(k, w[mm + MmL.pgd], a);
        const ptl = ptl_of(k, mm);
        spin_lock(ptl);
        w[slot] = (w[slot] & ~2) | _PAGE_PROTNONE; // what change_prot_numa leaves
        spin_unlock(ptl);
        const snap = mkRange(dev, a, 1);
        snap.notifier_seq = await n(mmu_interval_read_begin(dev + MirrorL.notifier));
        expect(await locked(mm, () => hmm_range_fault(snap))).toBe(0);
        expect(hmm_pfn_flags(snap.hmm_pfns, 0)).toBe(0); // cpu flags 0: not VALID (the pfn bits stay, as in the kernel)
        const r = mkRange(dev, a, 1);
        r.default_flags = HMM_PFN_REQ_FAULT;
        r.notifier_seq = await n(mmu_interval_read_begin(dev + MirrorL.notifier));
        expect(await locked(mm, () => hmm_range_fault(r))).toBe(0);
        expect(hmm_pfn_flags(r.hmm_pfns, 0) & HMM_PFN_VALID).not.toBe(0);
        expect(hmm_pfn_to_pfn(r.hmm_pfns, 0)).toBe(pte_pfn(hostPte(k, mm, a)));
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: a migration entry: no fault asked -> 0; a fault asked waits for the entry to go, then succeeds`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const step = wd.step;
      const sh = { slot: 0, orig: 0 };
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 2);
        const dev = await open(k, mm, a, 2);
        const w = k.arena.i32;
        const slot = pte_lookup(k, w[mm + MmL.pgd], a + P);
        const orig = w[slot];
        const ptl = ptl_of(k, mm);
        spin_lock(ptl);
        w[slot] = swp_entry_to_pte(SWP_MIGRATION_WRITE, pte_pfn(orig));
        spin_unlock(ptl);
        Object.assign(sh, { slot, orig });
        const snap = mkRange(dev, a, 2);
        snap.notifier_seq = await n(mmu_interval_read_begin(dev + MirrorL.notifier));
        expect(await locked(mm, () => hmm_range_fault(snap))).toBe(0);
        expect(hmm_pfn_flags(snap.hmm_pfns, 1)).toBe(0);
        raise(k, step, 1);
        const r = mkRange(dev, a, 2);
        r.default_flags = HMM_PFN_REQ_FAULT;
        r.notifier_seq = await n(mmu_interval_read_begin(dev + MirrorL.notifier));
        const t0 = k.sched.now();
        expect(await locked(mm, () => hmm_range_fault(r))).toBe(0);
        expect(k.sched.now() - t0).toBeGreaterThanOrEqual(2e6); // it waited for the migration
        expect(hmm_pfn_to_pfn(r.hmm_pfns, 1)).toBe(pte_pfn(orig));
        expect(hmm_pfn_flags(r.hmm_pfns, 1) >>> 0).toBe((HMM_PFN_VALID | HMM_PFN_WRITE) >>> 0);
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      wd.s.spawn({
        name: 'migrate',
        fn: async () => {
          await waitFor(k, step, 1);
          await k.sched.sleep(2e6);
          // remove_migration_pte: the old PTE back, and the waiters woken
          Atomics.store(k.arena.i32, sh.slot, sh.orig);
          k.sched.wake(sh.slot, Infinity);
        },
      });
      await finish(wd);
    });

    it(`seed ${seed}: bad input: unaligned start/end, end <= start, hmm_pfns too short, no notifier -> -EINVAL, nothing written`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const dev = await open(k, mm, a, N);
        const sub = dev + MirrorL.notifier;
        // hmm_pfns one page short, as a view of an arena object with guard words after it
        const words = 2 * (N - 1);
        const obj = k.kmalloc.kzalloc(words + 8);
        k.arena.i32.fill(0x77, obj, obj + words + 8);
        const regions = ['pagedata', 'zone', 'pool:pgtables', 'pool:vmas'].map((name) => {
          const at = k.arena.region(name);
          return { name, at, copy: k.arena.i32.slice(at, at + k.arena.regionWords(name)) };
        });
        const cases: [string, (r: HmmRange) => void][] = [
          ['unaligned start', (r) => (r.start += 8)],
          ['unaligned end', (r) => (r.end -= 8)],
          ['end == start', (r) => (r.end = r.start)],
          ['end < start', (r) => (r.end = r.start - P)],
          ['hmm_pfns too short', (r) => (r.hmm_pfns = new Uint32Array(k.arena.sab, obj * 4, words))],
          ['no notifier', (r) => (r.notifier = 0)],
        ];
        for (const [what, spoil] of cases) {
          const r = mkRange(dev, a, N, 0x1234);
          r.default_flags = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
          r.notifier_seq = await n(mmu_interval_read_begin(sub));
          spoil(r);
          const before = r.hmm_pfns.slice();
          expect(await locked(mm, () => hmm_range_fault(r)), what).toBe(-EINVAL);
          expect(r.hmm_pfns, what).toEqual(before);
        }
        expect(Array.from(k.arena.i32.subarray(obj, obj + words + 8)).every((v) => v === 0x77)).toBe(true);
        for (const { name, at, copy } of regions) expect(Buffer.compare(new Uint8Array(k.arena.sab, at * 4, copy.length * 4), new Uint8Array(copy.buffer)), name).toBe(0);
        k.kmalloc.kfree(obj);
        expect(await dmirror_release(k, dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: a range longer than one PTE table and than FAULT_CHUNK faults in one READ (faults 1)`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        // 2 MiB + 3 pages at a 2 MiB boundary minus one page: three PTE tables
        const pages = 512 + 3;
        const a0 = await n(vm_mmap(mm, 0, (pages + 512) * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
        const a = Math.ceil(a0 / (512 * P)) * 512 * P - P;
        const r = mkRange(0, a, pages);
        const dev = await open(k, mm, a, 512);
        r.notifier = dev + MirrorL.notifier;
        r.default_flags = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
        r.notifier_seq = await n(mmu_interval_read_begin(r.notifier));
        expect(await locked(mm, () => hmm_range_fault(r))).toBe(0);
        for (let i = 0; i < pages; i++) {
          const pte = hostPte(k, mm, a + i * P);
          expect(pte_write(pte)).toBe(true);
          expect(hmm_pfn_to_pfn(r.hmm_pfns, i)).toBe(pte_pfn(pte));
        }
        expect((await dmirror_read(k, dev, a, 512)).faults).toBe(1);
        expect(dmirror_stats(k, dev).programs).toBe(512 / FAULT_CHUNK);
        expect(await dmirror_release(k, dev)).toBe(0);
        expect(await n(vm_munmap(mm, a0, (pages + 512) * P))).toBe(0);
      });
      await finish(wd);
    });
  }
});

// ---- stress: no lost invalidation -----------------------------------------------------------------

const BASE = 0x40000000;

interface StressOpts {
  pages: number;
  iters: number;
  cpus: number;
  devs: number;
  seed: number;
}

/** The process (thread 0 maps the window and opens the devices), the devices and the closer. */
function stressSetup(k: Kernel, spawner: { spawn: SimScheduler['spawn'] }, mod: string, o: StressOpts): { ctl: number; args: HmmStressArgs } {
  const ctl = k.kmalloc.kzalloc(CtlL.$size);
  const args: HmmStressArgs = { ctl, base: BASE, pageSize: P, ...o };
  // under sim the program is a function: process.ts loads program modules with require()
  // whenever it exists, and under vitest it does, but cannot load .ts
  const prog = spawner instanceof SimScheduler ? { fn: hmmCpu as ProcessFn<HmmStressArgs> } : { module: mod, fn: 'hmmCpu' };
  const pid = spawn_process(k, spawner, { name: 'cpu', ...prog, args, threads: o.cpus });
  expect(pid).toBeGreaterThan(0);
  for (let d = 0; d < o.devs; d++) spawner.spawn({ name: `dev${d}`, kind: 'driver', module: mod, fn: 'hmmDevice', args: { ...args, dev: d } });
  spawner.spawn({ name: 'closer', kind: 'driver', module: mod, fn: 'hmmCloser', args: { ...args, pid } });
  return { ctl, args };
}

/** After the run: no record, no error, nothing left mapped or mirrored, nothing leaked. */
function stressCheck(k: Kernel, ctl: number, o: StressOpts, r: RunResult, before: ReturnType<typeof mmUsage>): Record<string, number> {
  const w = k.arena.i32;
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  expect(log, dumpLog(log)).toEqual([]);
  const sum = Object.fromEntries(Object.keys(CtlL.$fields).filter((f) => f !== 'devs').map((f) => [f, w[ctl + (CtlL as unknown as Record<string, number>)[f]]]));
  expect(sum).toMatchObject({ errors: 0, checked: 0, violations: 0, left: 0, not_unmap: 0, closed: o.devs, ready: 1 });
  k.kmalloc.kfree(ctl);
  reap_zombies(k);
  expect(mmUsage(k)).toEqual(before);
  return sum;
}

describe('stress (sim): CPU faults, munmap, mprotect and DONTNEED against mirror fault loops', () => {
  const MOD = new URL('./fixtures/hmm_tasks.ts', import.meta.url).href;
  for (const [seed, strategy] of [[21, 'random'], [22, 'pct'], [23, 'random'], [24, 'pct']] as const) {
    it(`seed ${seed} (${strategy}): 2 CPU threads, 2 devices, no lost invalidation`, async () => {
      const k = bootKernel(CFG);
      const before = mmUsage(k);
      const s = new SimScheduler(k, { seed, strategy, pctDepth: 3, pctSteps: 50_000, stallMs: 5000 });
      const o = { pages: 16, iters: 120, cpus: 2, devs: 2, seed };
      const { ctl } = stressSetup(k, s, MOD, o);
      const sum = stressCheck(k, ctl, o, await s.run(), before);
      expect(sum.invalidations).toBeGreaterThan(0);
      expect(sum.programs).toBeGreaterThan(0);
      expect(sum.dev_ok).toBeGreaterThan(0);
      expect(sum.accesses).toBeGreaterThan(0);
    });
  }
});

describe('stress (threads): one worker per task over the same arena', () => {
  const MOD = fileURLToPath(new URL('./fixtures/hmm_tasks.ts', import.meta.url));
  it('2 CPU threads and 2 devices on one mm: every device access and the final check agree with the host page table', async () => {
    const k = bootKernel(CFG);
    const before = mmUsage(k);
    const runner = new ThreadsRunner(k, { watchdogMs: 3000, timeoutMs: 40_000 });
    const o = { pages: 16, iters: 300, cpus: 2, devs: 2, seed: 5 };
    const { ctl } = stressSetup(k, runner, MOD, o);
    const sum = stressCheck(k, ctl, o, await runner.run(), before);
    expect(sum.invalidations).toBeGreaterThan(0);
    expect(sum.accesses).toBeGreaterThan(0);
  }, 60_000);
});
