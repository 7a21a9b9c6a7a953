// drivers/odp (ib_umem_odp with mlx5/rxe) and drivers/gpusvm (drm_gpusvm with an xe-like
// driver) under `sim` over several seeds, and a short `threads` run of each with several
// device workers. Scenarios: faults; the odp non-blockable invalidation under umem_mutex,
// prefetch with and without fault, deregistration waiting for in-flight RDMA; the gpusvm
// range chunk choice, garbage collection outside the notifier, the notifier rwsem taken for
// write. Stress: munmap / mprotect / fork / MADV_DONTNEED while device programs run. Every run
// ends with no klog record (no mirror-invariant, retry-protocol, lockdep or liveness report)
// and nothing leaked (frames, tables, VMAs, kmalloc objects, devices).

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import type { Kernel } from '../src/sched/kernel.js';
import type { RunResult } from '../src/sched/scheduler.js';
import { SimScheduler } from '../src/sched/sim.js';
import type { KlogRecord } from '../src/shm/klog.js';
import { EAGAIN, EFAULT, ENOENT, EPERM } from '../src/shm/errno.js';
import { MMU_NOTIFY_UNMAP, MmuNotifierRange, mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start_nonblock, mmu_notifier_range_init } from '../src/notifier/index.js';
import { mm_flags_set, mmap_read_trylock, mmap_read_unlock } from '../src/mm/mm_inline.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { pte_lookup, tlb_finish_mmu, tlb_gather_mmu } from '../src/mm/mm_pt.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_NONE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { do_mprotect } from '../src/mm/mprotect.js';
import { vm_mmap, vm_munmap } from '../src/mm/mmap.js';
import { pte_pfn, pte_present, pte_write } from '../src/mm/pgtable.js';
import { reap_zombies, spawn_process, waitpid, type ProcessFn } from '../src/mm/process.js';
import { get_user, put_user } from '../src/mm/uaccess.js';
import { unmap_single_vma } from '../src/mm/unmap.js';
import { MMF_UNSTABLE, MmL } from '../src/mm/types.js';
import { vma_end, vma_lookup, vma_start } from '../src/mm/vma.js';
import { DEV_LIVE, DevL, ResL, deviceStats, deviceUsage, device_close, device_ioctl, shadowEntries, spawnDeviceFaultTask, spawnDeviceProgram } from '../src/device/index.js';
import { gpusvmModule, gpusvmNotifiers, gpusvmRanges, gpusvmStats, gpusvm_open, spawnGpusvmGcWorker } from '../drivers/gpusvm/index.js';
import {
  IB_ACCESS_LOCAL_WRITE,
  IB_ACCESS_ON_DEMAND,
  IB_ACCESS_REMOTE_READ,
  IB_ACCESS_REMOTE_WRITE,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE,
  IB_UVERBS_ADVISE_MR_FLAG_FLUSH,
  MR_STATE_VALID,
  ODP_NONBLOCK_TRYLOCK,
  QpResL,
  ib_advise_mr,
  ib_dereg_mr,
  ib_reg_mr,
  odpModule,
  odpPfnList,
  odpStats,
  odp_lock,
  odp_unlock,
  spawnRdmaQp,
} from '../drivers/odp/index.js';
import { CtlL, stressCpu, type StressArgs } from './fixtures/odp_gpusvm_tasks.js';

const SEEDS = [1, 2, 3];
const P = 4096;
const N = 8;
const BASE = 0x40000000; // 1 GiB: 2 MiB aligned
const ODP_ACCESS = IB_ACCESS_ON_DEMAND | IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ;

const CFG: BootConfig = {
  maxTasks: 32,
  lockClasses: 128,
  lockdepEdges: 2048,
  eventRecords: 1 << 14,
  klogBytes: 1 << 18,
  strings: 512,
  stringBytes: 16384,
  kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 64, 1024: 32 },
  mem: { pages: 2048, pageSize: P },
};

// ---- harness -------------------------------------------------------------------------------------

async function n(v: number | Promise<number>): Promise<number> {
  return typeof v === 'number' ? v : await v;
}

interface World {
  k: Kernel;
  s: SimScheduler;
  step: number;
  before: { mm: ReturnType<typeof mmUsage>; kmalloc: Record<string, number>; dev: ReturnType<typeof deviceUsage> };
}

function usage(k: Kernel): World['before'] {
  return { mm: mmUsage(k), kmalloc: k.kmalloc.usage(), dev: deviceUsage(k) };
}

function world(seed: number, cfg: BootConfig = {}): World {
  const k = bootKernel({ ...CFG, ...cfg });
  const before = usage(k);
  const step = k.kmalloc.kzalloc(8);
  return { k, s: new SimScheduler(k, { seed, stallMs: 5000 }), step, before };
}

function dumpLog(log: KlogRecord[]): string {
  return log.map((x) => `[${x.kind}] ${x.text}`).join('\n---\n');
}

/** Run to the end; reap; nothing in klog but `allow`; nothing leaked. */
async function finish(wd: World, allow: string[] = []): Promise<KlogRecord[]> {
  const { k, s } = wd;
  const r = await s.run();
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  reap_zombies(k);
  expect(log.filter((x) => !allow.includes(x.kind)), dumpLog(log)).toEqual([]);
  k.kmalloc.kfree(wd.step);
  expect(usage(k)).toEqual(wd.before);
  return log;
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

/** mmap `pages` private RW pages at `at` (MAP_FIXED) and write i + 1 into word 0 of the first `touched`. */
async function mapAt(mm: number, at: number, pages: number, touched = pages): Promise<number> {
  const a = await n(vm_mmap(mm, at, pages * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED));
  expect(a).toBe(at);
  for (let i = 0; i < touched; i++) expect(await n(put_user(i + 1, a + i * P))).toBe(0);
  return a;
}

function hostPte(k: Kernel, mm: number, addr: number): number {
  const pgd = k.arena.i32[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  return slot < 0 ? 0 : k.arena.i32[slot];
}

/** Every shadow entry agrees with the host PTE now (same frame, writable only if the host is). */
function shadowMatchesHost(k: Kernel, dev: number, mm: number): string[] {
  const bad: string[] = [];
  for (const e of shadowEntries(k, dev)) {
    const pte = hostPte(k, mm, e.addr);
    if (!pte_present(pte) || pte_pfn(pte) !== e.pfn || (e.write && !pte_write(pte))) bad.push(`0x${e.addr.toString(16)}`);
  }
  return bad;
}

const pagesOf = (k: Kernel, dev: number): number[] => shadowEntries(k, dev).map((e) => (e.addr - BASE) / P);

// ---- odp ----------------------------------------------------------------------------------------------

describe('odp (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: registration maps what is present (snapshot); RDMA WRITE and READ fault the rest in; munmap unmaps the MR's pages`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      proc(wd, async ({ mm }) => {
        const a = await mapAt(mm, BASE, N, N / 2);
        const mr = await ib_reg_mr({ addr: a, length: N * P, access: ODP_ACCESS });
        expect(mr).toBeGreaterThan(0);
        out.afterReg = pagesOf(k, mr);
        out.pfnValid = odpPfnList(k, mr).map((e) => e.valid);
        const res = k.kmalloc.kzalloc(QpResL.$size);
        spawnRdmaQp(k, k.sched, { dev: mr, start: a, npages: N, wrs: 24, wrPages: 3, ops: ['write', 'read'], seed, resultAt: res });
        await waitFor(k, res + QpResL.done, 1);
        const w = k.arena.i32;
        out.qp = { ok: w[res + QpResL.wr_ok], err: w[res + QpResL.wr_err], flushed: w[res + QpResL.wr_flushed] };
        out.faults = odpStats(k, mr).page_faults > 0;
        out.bad = shadowMatchesHost(k, mr, mm);
        // an RDMA WRITE lands where the CPU reads it
        const written = shadowEntries(k, mr).filter((e) => e.write).length;
        out.someWritable = written > 0;
        expect(await n(vm_munmap(mm, a + (N / 2) * P, (N / 2) * P))).toBe(0);
        out.afterMunmap = pagesOf(k, mr).every((p) => p < N / 2);
        out.pfnAfterMunmap = odpPfnList(k, mr)
          .slice(N / 2)
          .every((e) => !e.valid && !e.dmaMapped);
        k.kmalloc.kfree(res);
        expect(await ib_dereg_mr(mr)).toBe(0);
        expect(await n(vm_munmap(mm, a, (N / 2) * P))).toBe(0);
      });
      await finish(wd);
      expect(out).toEqual({
        afterReg: [0, 1, 2, 3],
        pfnValid: [true, true, true, true, false, false, false, false],
        qp: { ok: 24, err: 0, flushed: 0 },
        faults: true,
        bad: [],
        someWritable: true,
        afterMunmap: true,
        pfnAfterMunmap: true,
      });
    });
  }
});

/** The OOM reaper's attempt on the VMA at addr (§7: UNMAP, not blockable): 0 or -EAGAIN. */
function tryReap(k: Kernel, mm: number, addr: number): number {
  expect(mmap_read_trylock(mm)).toBe(true);
  try {
    const vma = vma_lookup(k, mm, addr);
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
}

const presentPages = (k: Kernel, mm: number, a: number, pages: number): number => Array.from({ length: pages }, (_, i) => i).filter((i) => pte_present(hostPte(k, mm, a + i * P))).length;

describe('odp: the OOM reaper, deregistration, prefetch (sim)', () => {
  for (const seed of SEEDS) {
    for (const policy of ['mlx5', 'trylock'] as const) {
      it(`seed ${seed} (${policy}): a non-blockable UNMAP while umem_mutex is held: false -> -EAGAIN, the MR keeps its pages and the PTEs stay; once released, ${policy === 'mlx5' ? 'still -EAGAIN (mlx5 never invalidates without blocking)' : 'the trylock succeeds and the VMA is reaped'}`, async () => {
        const wd = world(seed);
        const { k, step } = wd;
        const sh = { mm: 0, a: 0, mr: 0 };
        const out: Record<string, unknown> = {};
        proc(wd, async ({ mm }) => {
          const a = await mapAt(mm, BASE, N);
          const mr = await ib_reg_mr({ addr: a, length: N * P, access: ODP_ACCESS, odpFlags: policy === 'trylock' ? ODP_NONBLOCK_TRYLOCK : 0 });
          expect(mr).toBeGreaterThan(0);
          Object.assign(sh, { mm, a, mr });
          raise(k, step, 1);
          await waitFor(k, step, 5);
          expect(await ib_dereg_mr(mr)).toBe(0);
        });
        wd.s.spawn({
          name: 'holder',
          fn: async () => {
            await waitFor(k, step, 1);
            const p = odp_lock(sh.mr); // a page fault holding umem_mutex
            if (p !== undefined) await p;
            raise(k, step, 2);
            await waitFor(k, step, 3);
            odp_unlock(sh.mr);
            raise(k, step, 4);
          },
        });
        wd.s.spawn({
          name: 'oom_reaper',
          kind: 'kthread',
          fn: async () => {
            await waitFor(k, step, 2);
            const { mm, a, mr } = sh;
            mm_flags_set(MMF_UNSTABLE, mm);
            out.held = tryReap(k, mm, a);
            out.heldKeeps = [presentPages(k, mm, a, N), shadowEntries(k, mr).length, odpStats(k, mr).npages, odpPfnList(k, mr).filter((e) => e.valid).length];
            raise(k, step, 3);
            await waitFor(k, step, 4);
            out.released = tryReap(k, mm, a);
            out.after = [presentPages(k, mm, a, N), shadowEntries(k, mr).length, odpStats(k, mr).npages];
            out.refused = odpStats(k, mr).nonblock_refused;
            raise(k, step, 5);
          },
        });
        await finish(wd);
        expect(out).toEqual({
          held: -EAGAIN,
          heldKeeps: [N, N, N, N],
          released: policy === 'mlx5' ? -EAGAIN : 0,
          after: policy === 'mlx5' ? [N, N, N] : [0, 0, 0],
          refused: policy === 'mlx5' ? 2 : 1,
        });
      });
    }

    it(`seed ${seed}: deregistration waits for an RDMA WRITE in flight: the mkey usecount drains while the device is still live, before the notifier goes`, async () => {
      const wd = world(seed);
      const { k, step } = wd;
      const out: Record<string, unknown> = {};
      const HOLD = 5_000_000;
      const sh = { mr: 0, res: 0 };
      proc(wd, async ({ mm }) => {
        const a = await mapAt(mm, BASE, N);
        const mr = await ib_reg_mr({ addr: a, length: N * P, access: ODP_ACCESS });
        const res = k.kmalloc.kzalloc(QpResL.$size);
        Object.assign(sh, { mr, res });
        spawnRdmaQp(k, k.sched, { dev: mr, start: a, npages: N, wrs: 1, wrPages: N, ops: ['write'], word: 3, holdNs: HOLD, resultAt: res });
        // the WR holds the mkey once the responder looked it up
        while (odpStats(k, mr).usecount < 2) {
          const p = k.sched.sleep(10_000);
          if (p !== undefined) await p;
        }
        raise(k, step, 1);
        const t0 = k.sched.now();
        expect(await ib_dereg_mr(mr)).toBe(0);
        out.okAtReturn = k.arena.i32[res + QpResL.wr_ok];
        out.waited = k.sched.now() - t0 >= HOLD / 2;
        out.written = await n(get_user(a + 12));
        await waitFor(k, step, 2);
        k.kmalloc.kfree(res);
      });
      wd.s.spawn({
        name: 'watcher',
        fn: async () => {
          await waitFor(k, step, 1);
          // the moment the mkey is revoked: the device is still live, the WR still holds it
          while (odpStats(k, sh.mr).state === MR_STATE_VALID) {
            const p = k.sched.sleep(1000);
            if (p !== undefined) await p;
          }
          out.atRevoke = { device: k.arena.i32[sh.mr + DevL.state], usecount: odpStats(k, sh.mr).usecount, wr_ok: k.arena.i32[sh.res + QpResL.wr_ok] };
          raise(k, step, 2);
        },
      });
      await finish(wd);
      expect(out).toEqual({ atRevoke: { device: DEV_LIVE, usecount: 1, wr_ok: 0 }, okAtReturn: 1, waited: true, written: 1 });
    });

    it(`seed ${seed}: ib_advise_mr: PREFETCH_NO_FAULT maps only present pages, PREFETCH maps read-only, PREFETCH_WRITE writable; a queued prefetch holds off deregistration`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      proc(wd, async ({ mm }) => {
        const a = await mapAt(mm, BASE, N, 0);
        const mr = await ib_reg_mr({ addr: a, length: N * P, access: ODP_ACCESS });
        out.atReg = shadowEntries(k, mr).length;
        // the CPU touches pages 0, 2, 4 after registration: no invalidation, nothing in the MTT
        for (const i of [0, 2, 4]) expect(await n(put_user(i + 1, a + i * P))).toBe(0);
        const flush = IB_UVERBS_ADVISE_MR_FLAG_FLUSH;
        expect(await ib_advise_mr(mr, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT, flush, [{ addr: a, length: N * P }])).toBe(0);
        out.noFault = { mtt: pagesOf(k, mr), present: presentPages(k, mm, a, N) };
        expect(await ib_advise_mr(mr, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, flush, [{ addr: a + 5 * P, length: 2 * P }])).toBe(0);
        out.prefetch = shadowEntries(k, mr).map((e) => `${(e.addr - a) / P}${e.write ? 'w' : 'r'}`);
        expect(await ib_advise_mr(mr, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE, flush, [{ addr: a + 5 * P, length: P }])).toBe(0);
        out.prefetchWrite = shadowEntries(k, mr).map((e) => `${(e.addr - a) / P}${e.write ? 'w' : 'r'}`);
        out.bad = shadowMatchesHost(k, mr, mm);
        // outside the MR: -EFAULT
        expect(await ib_advise_mr(mr, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, flush, [{ addr: a + N * P, length: P }])).toBe(-EFAULT);
        // queued work (no FLUSH) holds the mkey: deregistration waits for it
        expect(await ib_advise_mr(mr, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE, 0, [{ addr: a + 7 * P, length: P }])).toBe(0);
        out.refs = odpStats(k, mr).usecount;
        expect(await ib_dereg_mr(mr)).toBe(0);
        const pte = hostPte(k, mm, a + 7 * P);
        out.workDone = pte_present(pte) && pte_write(pte);
      });
      await finish(wd);
      expect(out).toEqual({
        atReg: 0,
        noFault: { mtt: [0, 2, 4], present: 3 },
        prefetch: ['0w', '2w', '4w', '5r', '6r'],
        prefetchWrite: ['0w', '2w', '4w', '5w', '6r'],
        bad: [],
        refs: 2,
        workDone: true,
      });
    });
  }
});

// ---- gpusvm -------------------------------------------------------------------------------------------

const K = 1024;
const M = 1024 * K;

async function gpuFault(dev: number, addr: number, write = true): Promise<number> {
  return (await device_ioctl<number>(dev, 'FAULT', { addr, write })) as number;
}

const rangesOf = (k: Kernel, dev: number): string[] => gpusvmRanges(k, dev).map((r) => `${(r.start - BASE) / K}K+${(r.end - r.start) / K}K`);

describe('gpusvm (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: drm_gpusvm_range_chunk_size: descending 2M / 64K / 4K, clipped to the VMA, the notifier and existing ranges`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      proc(wd, async ({ mm }) => {
        // a VMA of 2M + 64K + 8K at a 2M boundary
        const a = await mapAt(mm, BASE, 512 + 16 + 2, 0);
        const dev = await gpusvm_open();
        expect(dev).toBeGreaterThan(0);
        for (const off of [4 * K, 2 * M + 4 * K, 2 * M + 64 * K, 2 * M + 68 * K]) expect(await gpuFault(dev, a + off)).toBe(0);
        out.big = rangesOf(k, dev);
        out.notifiers = gpusvmNotifiers(k, dev).map((nf) => [(nf.start - BASE) / M, (nf.end - nf.start) / M]);
        out.bound = shadowEntries(k, dev).length;
        out.bad = shadowMatchesHost(k, dev, mm);
        // a fault on an already valid range: nothing to do
        expect(await gpuFault(dev, a + 8 * K)).toBe(0);
        out.valid = gpusvmStats(k, dev).valid_faults;
        // a VMA starting 4K past a 64K boundary: its first page gets a 4K range, the next 64K a 64K one
        const b = BASE + 4 * M + 4 * K;
        expect(await n(vm_mmap(mm, b, 124 * K, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED))).toBe(b);
        for (const addr of [b, BASE + 4 * M + 64 * K, b + 4 * K]) expect(await gpuFault(dev, addr)).toBe(0);
        // 4K at a 64K boundary, then the rest of that 64K mapped beside it (one VMA once merged):
        // the 64K chunk would overlap the 4K range, so the next fault gets 4K
        const c = BASE + 6 * M;
        expect(await n(vm_mmap(mm, c, 4 * K, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED))).toBe(c);
        expect(await gpuFault(dev, c)).toBe(0);
        expect(await n(vm_mmap(mm, c + 4 * K, 60 * K, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED))).toBe(c + 4 * K);
        out.merged = vma_start(k, vma_lookup(k, mm, c + 8 * K)) === c;
        expect(await gpuFault(dev, c + 8 * K)).toBe(0);
        out.small = rangesOf(k, dev).slice(4);
        expect(await device_close(dev)).toBe(0);
        // a 1M notifier clips the 2M chunk to 64K
        const d2 = await gpusvm_open({ notifierSize: 1 * M });
        expect(await gpuFault(d2, a + 1 * M + 4 * K)).toBe(0);
        out.clipped = rangesOf(k, d2);
        out.notifier2 = gpusvmNotifiers(k, d2).map((nf) => [(nf.start - BASE) / K, (nf.end - nf.start) / K]);
        // no VMA: -ENOENT; a read-only VMA and a writable GPU VM: -EPERM
        expect(await gpuFault(d2, BASE + 10 * M)).toBe(-ENOENT);
        expect(await n(do_mprotect(mm, c, 64 * K, PROT_READ))).toBe(0);
        expect(await gpuFault(d2, c)).toBe(-EPERM);
        expect(await device_close(d2)).toBe(0);
        expect(await n(vm_munmap(mm, BASE, 8 * M))).toBe(0);
      });
      await finish(wd);
      expect(out).toEqual({
        big: ['0K+2048K', '2048K+64K', '2112K+4K', '2116K+4K'],
        notifiers: [[0, 8]],
        bound: 512 + 16 + 2,
        bad: [],
        valid: 1,
        merged: true,
        small: ['4100K+4K', '4104K+4K', '4160K+64K', '6144K+4K', '6152K+4K'],
        clipped: ['1024K+64K'],
        notifier2: [[1024, 1024]],
      });
    });

    it(`seed ${seed}: UNMAP marks ranges unmapped and queues them; the collector removes them (and an empty notifier) outside the notifier`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      proc(wd, async ({ mm }) => {
        const a = await mapAt(mm, BASE, 32, 0);
        const dev = await gpusvm_open();
        expect(await gpuFault(dev, a)).toBe(0);
        expect(await gpuFault(dev, a + 64 * K)).toBe(0);
        out.before = gpusvmRanges(k, dev).map((r) => [r.unmapped, r.bound]);
        // a partial munmap of the first range
        expect(await n(vm_munmap(mm, a + 16 * K, 16 * K))).toBe(0);
        out.afterMunmap = gpusvmRanges(k, dev).map((r) => [r.unmapped, r.partial, r.queued, r.bound]);
        out.zapped = shadowEntries(k, dev).every((e) => e.addr >= a + 64 * K);
        out.collectedInNotifier = gpusvmStats(k, dev).gc_ranges;
        // the next fault collects first: the unmapped range goes, the other is still valid
        expect(await gpuFault(dev, a + 64 * K)).toBe(0);
        out.afterFault = rangesOf(k, dev);
        // a protection change only invalidates: the range stays, unbound, and a fault rebinds it
        expect(await n(do_mprotect(mm, a + 64 * K, 64 * K, PROT_NONE))).toBe(0);
        expect(await n(do_mprotect(mm, a + 64 * K, 64 * K, PROT_READ | PROT_WRITE))).toBe(0);
        out.afterMprotect = gpusvmRanges(k, dev).map((r) => [r.unmapped, r.bound, r.queued]);
        expect(await gpuFault(dev, a + 64 * K)).toBe(0);
        out.rebound = gpusvmRanges(k, dev).map((r) => r.bound);
        // the collector's worker removes the last range, then the notifier
        spawnGpusvmGcWorker(k, k.sched, dev);
        expect(await n(vm_munmap(mm, a, 32 * P))).toBe(0);
        while (gpusvmStats(k, dev).notifiers !== 0) {
          const p = k.sched.sleep(1000);
          if (p !== undefined) await p;
        }
        const st = gpusvmStats(k, dev);
        out.stats = { gc_ranges: st.gc_ranges, gc_runs_fault: st.gc_runs_fault, gc_runs_worker: st.gc_runs_worker, gc_in_notifier: st.gc_in_notifier, notifiers_removed: st.notifiers_removed, ranges: st.ranges };
        out.writeLocked = st.inval_write_locked === st.invalidations && st.invalidations > 0;
        expect(await device_close(dev)).toBe(0);
      });
      await finish(wd);
      expect(out).toEqual({
        before: [
          [false, true],
          [false, true],
        ],
        afterMunmap: [
          [true, true, true, false],
          [false, false, false, true],
        ],
        zapped: true,
        collectedInNotifier: 0,
        afterFault: ['64K+64K'],
        afterMprotect: [[false, false, false]],
        rebound: [true],
        stats: { gc_ranges: 2, gc_runs_fault: 1, gc_runs_worker: 1, gc_in_notifier: 0, notifiers_removed: 1, ranges: 0 },
        writeLocked: true,
      });
    });

    it(`seed ${seed}: GPU engines fault through a fault task: find or insert, get_pages, bind; their writes reach the CPU`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const out: Record<string, unknown> = {};
      proc(wd, async ({ mm }) => {
        const a = await mapAt(mm, BASE, 32, 8);
        const dev = await gpusvm_open({ mmStart: a, mmRange: 32 * P });
        spawnDeviceFaultTask(k, k.sched, dev);
        const res = [k.kmalloc.kzalloc(ResL.$size), k.kmalloc.kzalloc(ResL.$size)];
        spawnDeviceProgram(k, k.sched, 'dev_stream', { dev, engine: 0, start: a, npages: 32, op: 'write', word: 1, value: 77, burst: 8, resultAt: res[0] });
        spawnDeviceProgram(k, k.sched, 'dev_random', { dev, engine: 1, start: a, npages: 32, iters: 2, op: 'atomic', word: 2, seed, resultAt: res[1] });
        for (const r of res) await waitFor(k, r + ResL.done, 1);
        const w = k.arena.i32;
        out.res = res.map((r) => [w[r + ResL.pages], w[r + ResL.errors], w[r + ResL.livelock]]);
        let ones = 0;
        let incs = 0;
        for (let i = 0; i < 32; i++) {
          if ((await n(get_user(a + i * P + 4))) === 77) ones++;
          incs += await n(get_user(a + i * P + 8));
        }
        out.cpuSees = [ones, incs];
        out.ranges = rangesOf(k, dev);
        const ds = deviceStats(k, dev);
        out.faulted = ds.faults > 0 && ds.installs === 32;
        for (const r of res) k.kmalloc.kfree(r);
        expect(await device_close(dev)).toBe(0);
      });
      await finish(wd);
      expect(out).toEqual({ res: [[32, 0, 0], [64, 0, 0]], cpuSees: [32, 64], ranges: ['0K+64K', '64K+64K'], faulted: true });
    });
  }
});

// ---- both: the mm goes first ---------------------------------------------------------------------------

describe('exit with the device still open (sim)', () => {
  for (const seed of SEEDS) {
    for (const driver of ['odp', 'gpusvm'] as const) {
      it(`seed ${seed}, ${driver}: the process exits under a running engine; RELEASE and UNMAP empty the shadow table; closing afterwards works`, async () => {
        const wd = world(seed);
        const { k } = wd;
        const sh = { dev: 0, res: 0 };
        const out: Record<string, unknown> = {};
        const pid = proc(wd, async ({ mm }) => {
          const a = await mapAt(mm, BASE, N);
          const dev = driver === 'odp' ? await ib_reg_mr({ addr: a, length: N * P, access: ODP_ACCESS }) : await gpusvm_open({ mmStart: a, mmRange: N * P });
          expect(dev).toBeGreaterThan(0);
          const res = k.kmalloc.kzalloc(Math.max(QpResL.$size, ResL.$size));
          Object.assign(sh, { dev, res });
          if (driver === 'odp') spawnRdmaQp(k, k.sched, { dev, start: a, npages: N, wrs: 400, wrPages: 2, duty: 0.5, seed, resultAt: res });
          else spawnDeviceProgram(k, k.sched, 'dev_random', { dev, start: a, npages: N, iters: 50, op: 'write', duty: 0.5, seed, resultAt: res });
          // let the engine get going, then exit with everything still open
          while (deviceStats(k, dev).accesses < 8) {
            const p = k.sched.sleep(10_000);
            if (p !== undefined) await p;
          }
        });
        wd.s.spawn({
          name: 'closer',
          fn: async () => {
            out.status = await waitpid(pid);
            out.left = shadowEntries(k, sh.dev).length;
            out.closed = driver === 'odp' ? await ib_dereg_mr(sh.dev) : await device_close(sh.dev);
            out.engineDone = k.arena.i32[sh.res + (driver === 'odp' ? QpResL.done : ResL.done)];
            k.kmalloc.kfree(sh.res);
          },
        });
        await finish(wd);
        expect(out).toEqual({ status: { code: 0, signal: 0 }, left: 0, closed: 0, engineDone: 1 });
      });
    }
  }
});

// ---- stress: munmap / mprotect / fork / DONTNEED while device programs run ----------------------------

interface StressOpts {
  driver: 'odp' | 'gpusvm';
  pages: number;
  iters: number;
  cpus: number;
  engines: number;
  deviceOps: number;
  seed: number;
  workers?: boolean;
}

const FIXTURE = fileURLToPath(new URL('./fixtures/odp_gpusvm_tasks.ts', import.meta.url));

function stressSetup(k: Kernel, spawner: { spawn: SimScheduler['spawn'] }, o: StressOpts): number {
  const ctl = k.kmalloc.kzalloc(CtlL.$size);
  const args: StressArgs = { ctl, base: BASE, pageSize: P, ...o };
  // under sim a process program is a function (process.ts loads program modules with require)
  const prog = spawner instanceof SimScheduler ? { fn: stressCpu as ProcessFn<StressArgs> } : { module: FIXTURE, fn: 'stressCpu' };
  expect(spawn_process(k, spawner, { name: 'cpu', ...prog, args, threads: o.cpus })).toBeGreaterThan(0);
  return ctl;
}

/** After the run: no record, no error, every entry agreed with the host, nothing leaked. */
function stressCheck(k: Kernel, ctl: number, r: RunResult, before: World['before']): Record<string, number> {
  const w = k.arena.i32;
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  expect(log, dumpLog(log)).toEqual([]);
  const sum = Object.fromEntries(Object.keys(CtlL.$fields).filter((f) => f !== 'res').map((f) => [f, w[ctl + (CtlL as unknown as Record<string, number>)[f]]]));
  expect(sum).toMatchObject({ errors: 0, checked: 0, violations: 0, livelocks: 0, closed: 1, ready: 1, gc_in_notifier: 0 });
  expect(sum.faults).toBeGreaterThan(0);
  expect(sum.installs).toBeGreaterThan(0);
  expect(sum.invalidations).toBeGreaterThan(0);
  expect(sum.completions).toBeGreaterThan(0);
  k.kmalloc.kfree(ctl);
  reap_zombies(k);
  expect(usage(k)).toEqual(before);
  return sum;
}

describe('stress (sim): CPU munmap / mprotect / fork / DONTNEED against device engines', () => {
  for (const driver of ['odp', 'gpusvm'] as const) {
    for (const [seed, strategy] of [
      [31, 'random'],
      [32, 'pct'],
      [33, 'random'],
    ] as const) {
      it(`${driver}, seed ${seed} (${strategy}): 2 CPU threads, 3 engines${driver === 'gpusvm' ? ', a fault task and the collector' : ''}: no violation`, async () => {
        const k = bootKernel(CFG);
        const before = usage(k);
        const s = new SimScheduler(k, { seed, strategy, pctDepth: 3, pctSteps: 60_000, stallMs: 5000 });
        const ctl = stressSetup(k, s, { driver, pages: 32, iters: 80, cpus: 2, engines: 3, deviceOps: driver === 'odp' ? 200 : 320, seed, workers: true });
        const sum = stressCheck(k, ctl, await s.run(), before);
        if (driver === 'gpusvm') expect(sum.write_locked).toBe(sum.drv_invalidations);
        expect(sum.forks).toBeGreaterThan(0);
      });
    }
  }
});

describe('stress (threads): engines, CPU threads and workers each in their own worker over one arena', () => {
  for (const driver of ['odp', 'gpusvm'] as const) {
    it(`${driver}: 2 CPU threads, 3 engines: every access and the final check agree with the host page table`, async () => {
      const k = bootKernel(CFG);
      const before = usage(k);
      const runner = new ThreadsRunner(k, { watchdogMs: 4000, timeoutMs: 40_000, preload: [driver === 'odp' ? odpModule() : gpusvmModule()] });
      const ctl = stressSetup(k, runner, { driver, pages: 32, iters: 300, cpus: 2, engines: 3, deviceOps: 1500, seed: 7, workers: true });
      const sum = stressCheck(k, ctl, await runner.run(), before);
      if (driver === 'gpusvm') expect(sum.write_locked).toBe(sum.drv_invalidations);
      expect(sum.accesses).toBeGreaterThan(0);
    }, 60_000);
  }
});

