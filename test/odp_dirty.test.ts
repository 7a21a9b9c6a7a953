// drivers/odp dirties what the HCA may have written when it unmaps it, as the kernel's
// ib_umem_odp_unmap_dma_pages does (set_page_dirty on each DMA-mapped HMM_PFN_WRITE entry,
// under umem_mutex). Why it matters: a read swap-in maps an exclusive swap-cache page writable
// but clean (do_swap_page, v5.19+); hmm_range_fault hands the MR a writable entry without
// dirtying anything; an RDMA WRITE then changes the page behind the CPU's dirty bit. Reclaim's
// try_to_unmap runs the MR's invalidate, and only the driver's set_page_dirty makes pageout
// write the page instead of dropping it as identical to its swap copy ('data_integrity',
// "BUG: lost write"). The deregistration unmap dirties the same way. Under `sim`, seeds 1..3; every run ends with an empty klog and nothing
// leaked.

import { describe, expect, it } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import type { Kernel } from '../src/sched/kernel.js';
import { SimScheduler } from '../src/sched/sim.js';
import type { KlogRecord } from '../src/shm/klog.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { pte_lookup } from '../src/mm/mm_pt.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { vm_mmap, vm_munmap } from '../src/mm/mmap.js';
import { PG_dirty, PG_swapcache, PageL } from '../src/mm/page.js';
import { is_swap_entry, pte_dirty, pte_pfn, pte_present, pte_write } from '../src/mm/pgtable.js';
import { reap_zombies, spawn_process } from '../src/mm/process.js';
import { swapUsage } from '../src/mm/swapfile.js';
import { get_user, put_user } from '../src/mm/uaccess.js';
import { inject_reclaim_range } from '../src/mm/fault_inject.js';
import { MmL } from '../src/mm/types.js';
import { deviceUsage, shadowEntries } from '../src/device/index.js';
import { IB_ACCESS_LOCAL_WRITE, IB_ACCESS_ON_DEMAND, IB_ACCESS_REMOTE_READ, IB_ACCESS_REMOTE_WRITE, QpResL, ib_dereg_mr, ib_reg_mr, odpPfnList, spawnRdmaQp } from '../drivers/odp/index.js';

const SEEDS = [1, 2, 3];
const P = 4096;
const BASE = 0x40000000;
const WORD = 5; // the word the RDMA WRITE stores into
const CPU_VALUE = 0x77;
const ODP_ACCESS = IB_ACCESS_ON_DEMAND | IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ;

const CFG: BootConfig = {
  maxTasks: 16,
  lockClasses: 128,
  lockdepEdges: 2048,
  eventRecords: 1 << 14,
  klogBytes: 1 << 18,
  strings: 512,
  stringBytes: 16384,
  kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 64, 1024: 32 },
  mem: { pages: 512, pageSize: P, reclaim: true },
  swap: { slots: 64 },
};

async function n<T>(v: T | Promise<T>): Promise<T> {
  return v instanceof Promise ? await v : v;
}

const dumpLog = (log: KlogRecord[]): string => log.map((x) => `[${x.kind}] ${x.text}`).join('\n---\n');

function usage(k: Kernel): Record<string, unknown> {
  return { mm: mmUsage(k), kmalloc: k.kmalloc.usage(), dev: deviceUsage(k), swap: swapUsage(k) };
}

function hostPte(k: Kernel, mm: number, addr: number): number {
  const pgd = k.arena.i32[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  return slot < 0 ? 0 : k.arena.i32[slot];
}

const pageFlags = (k: Kernel, pfn: number): number => k.arena.i32[k.zone.page(pfn) + PageL.flags];

async function waitFor(k: Kernel, at: number, v: number): Promise<void> {
  const w = k.arena.i32;
  for (let c = Atomics.load(w, at); c < v; c = Atomics.load(w, at)) {
    const r = k.sched.wait(at, c);
    if (typeof r !== 'number') await r;
  }
}

describe('odp: unmapping a writable entry dirties its page (ib_umem_odp_unmap_dma_pages set_page_dirty)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: swapped out, read back clean and writable, written by an RDMA WRITE, reclaimed again: the device's write survives and no lost write is reported`, async () => {
      const k = bootKernel(CFG);
      const before = usage(k);
      const s = new SimScheduler(k, { seed, stallMs: 5000 });
      const out: Record<string, unknown> = {};
      const pid = spawn_process(k, s, {
        name: 'p',
        fn: async ({ mm }) => {
          const a = await n(vm_mmap(mm, BASE, P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED));
          expect(a).toBe(BASE);
          expect(await n(put_user(CPU_VALUE, a + WORD * 4))).toBe(0);
          // out to swap, then back by a CPU read: writable (exclusive) but clean, in the swap cache
          expect(await n(inject_reclaim_range(k, mm, a, a + P))).toBe(0);
          out.swapped = is_swap_entry(hostPte(k, mm, a));
          expect(await n(get_user(a + WORD * 4))).toBe(CPU_VALUE);
          const pte = hostPte(k, mm, a);
          const pfn = pte_pfn(pte);
          out.readBack = { present: pte_present(pte), write: pte_write(pte), dirty: pte_dirty(pte), pgDirty: (pageFlags(k, pfn) & PG_dirty) !== 0, swapcache: (pageFlags(k, pfn) & PG_swapcache) !== 0 };
          // the MR maps the page writable; one RDMA WRITE stores 1 (the first request's value)
          const mr = await ib_reg_mr({ addr: a, length: P, access: ODP_ACCESS });
          expect(mr).toBeGreaterThan(0);
          const res = k.kmalloc.kzalloc(QpResL.$size);
          spawnRdmaQp(k, k.sched, { dev: mr, start: a, npages: 1, wrs: 1, wrPages: 1, ops: ['write'], word: WORD, seed, resultAt: res });
          await waitFor(k, res + QpResL.done, 1);
          out.wrOk = k.arena.i32[res + QpResL.wr_ok];
          out.entry = odpPfnList(k, mr).map((e) => ({ pfn: e.pfn === pfn, write: e.write, dmaMapped: e.dmaMapped }));
          out.stillCleanBeforeReclaim = !pte_dirty(hostPte(k, mm, a)) && (pageFlags(k, pfn) & PG_dirty) === 0;
          // reclaim: try_to_unmap invalidates the MR, whose unmap dirties the page, so pageout writes it
          expect(await n(inject_reclaim_range(k, mm, a, a + P))).toBe(0);
          out.swappedAgain = is_swap_entry(hostPte(k, mm, a));
          out.mttAfter = shadowEntries(k, mr).length;
          out.entryAfter = odpPfnList(k, mr).map((e) => e.valid || e.dmaMapped);
          out.cpuReads = await n(get_user(a + WORD * 4));
          // again clean and writable; now the MR goes first: deregistration's unmap dirties the page
          const pfn2 = pte_pfn(hostPte(k, mm, a));
          Atomics.store(k.arena.i32, res + QpResL.done, 0);
          spawnRdmaQp(k, k.sched, { dev: mr, start: a, npages: 1, wrs: 1, wrPages: 1, ops: ['write'], word: WORD + 1, seed, resultAt: res });
          await waitFor(k, res + QpResL.done, 1);
          out.cleanBeforeDereg = !pte_dirty(hostPte(k, mm, a)) && (pageFlags(k, pfn2) & PG_dirty) === 0;
          k.kmalloc.kfree(res);
          expect(await ib_dereg_mr(mr)).toBe(0);
          out.dirtyAfterDereg = (pageFlags(k, pfn2) & PG_dirty) !== 0;
          expect(await n(inject_reclaim_range(k, mm, a, a + P))).toBe(0);
          out.swappedThird = is_swap_entry(hostPte(k, mm, a));
          out.cpuReads2 = [await n(get_user(a + WORD * 4)), await n(get_user(a + (WORD + 1) * 4))];
          expect(await n(vm_munmap(mm, a, P))).toBe(0);
        },
      });
      expect(pid).toBeGreaterThan(0);
      const r = await s.run();
      const log = k.klog.read();
      expect(r.failed, dumpLog(log)).toEqual([]);
      expect(r.status, r.report ?? dumpLog(log)).toBe('done');
      reap_zombies(k);
      expect(log, dumpLog(log)).toEqual([]);
      expect(usage(k)).toEqual(before);
      expect(out).toEqual({
        swapped: true,
        readBack: { present: true, write: true, dirty: false, pgDirty: false, swapcache: true },
        wrOk: 1,
        entry: [{ pfn: true, write: true, dmaMapped: true }],
        stillCleanBeforeReclaim: true,
        swappedAgain: true,
        mttAfter: 0,
        entryAfter: [false],
        cpuReads: 1,
        cleanBeforeDereg: true,
        dirtyAfterDereg: true,
        swappedThird: true,
        cpuReads2: [1, 1],
      });
    });
  }
});
