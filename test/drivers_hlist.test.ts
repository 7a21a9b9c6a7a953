// The hlist reference drivers (drivers/kvm-mmu.ts, drivers/userptr.ts) and GUP (src/mm/gup.ts)
// under `sim` over several seeds and under `threads`: get_user_pages / pin_user_pages reference
// counting; the kvm-mmu count and sequence and its vCPU retrying while the count is raised; the
// userptr object path pinning pages and its trylock / -EAGAIN when not blockable; both on one mm
// while CPU threads munmap, mprotect and fork; and reference §9 scenario 16 with real drivers:
// the OOM reaper's non-blockable invalidation under 'v4.19' (kvm-mmu's count stays raised, its
// vCPU livelocks, ended by the liveness bound and reported) and 'v5.12' (clean).

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bootKernel } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import type { Kernel } from '../src/sched/kernel.js';
import type { RunResult } from '../src/sched/scheduler.js';
import { SimScheduler } from '../src/sched/sim.js';
import type { KlogRecord } from '../src/shm/klog.js';
import { EAGAIN, EFAULT } from '../src/shm/errno.js';
import { NK } from '../src/notifier/index.js';
import { FOLL_WRITE, get_user_pages_remote, page_pincount, pin_user_pages, unpin_user_pages } from '../src/mm/gup.js';
import { mm_flags_test, mmap_read_lock, mmap_read_unlock } from '../src/mm/mm_inline.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { folio_maybe_dma_pinned, put_page } from '../src/mm/mm_pt.js';
import { MADV_DONTNEED, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { do_madvise } from '../src/mm/madvise.js';
import { vm_mmap, vm_munmap } from '../src/mm/mmap.js';
import { do_fork, reap_zombies, spawn_process, waitpid } from '../src/mm/process.js';
import { GUP_PIN_COUNTING_BIAS, PageL } from '../src/mm/page.js';
import { pte_pfn } from '../src/mm/pgtable.js';
import { MMF_HAS_PINNED } from '../src/mm/types.js';
import { MmuNotifierRange, MMU_NOTIFY_UNMAP, mmu_notifier_invalidate_range_start_nonblock, mmu_notifier_range_init } from '../src/notifier/index.js';
import { ResL, deviceStats, deviceUsage, device_close, device_inflight, device_ioctl, device_open, host_pte, shadowEntries, spawnDeviceProgram, type DevProgramArgs } from '../src/device/index.js';
import { kvmState } from '../drivers/kvm-mmu.js';
import { userptrObj, userptrStats, userptr_lock, userptr_unlock } from '../drivers/userptr.js';
import { oom_reap_task } from './fixtures/reaper.js';
import { DevCtlL, type DevStressArgs } from './fixtures/device_tasks.js';
import { CFG, P, dumpLog, finish, mapWritten, n, proc, waitWord, world } from './device_world.js';

const SEEDS = [1, 2, 3];

async function sleepNs(k: Kernel, ns: number): Promise<void> {
  const p = k.sched.sleep(ns);
  if (p !== undefined) await p;
}

async function runProgram(k: Kernel, program: string, args: Omit<DevProgramArgs, 'resultAt'>): Promise<Record<keyof typeof ResL.$fields, number>> {
  const res = k.kmalloc.kzalloc(ResL.$size);
  spawnDeviceProgram(k, k.sched, program, { ...args, resultAt: res });
  await waitWord(k, res + ResL.done, 1);
  const w = k.arena.i32;
  const out = Object.fromEntries(Object.keys(ResL.$fields).map((f) => [f, w[res + (ResL as unknown as Record<string, number>)[f]]])) as Record<keyof typeof ResL.$fields, number>;
  k.kmalloc.kfree(res);
  return out;
}

/** A task that takes userptr's object lock and holds it until release(). */
async function holdLock(k: Kernel, dev: number): Promise<{ release(): Promise<void> }> {
  const word = k.kmalloc.kzalloc(8);
  k.sched.spawn({
    name: 'holder',
    fn: async () => {
      const p = userptr_lock(dev);
      if (p !== undefined) await p;
      Atomics.store(k.arena.i32, word, 1);
      k.sched.wake(word, Infinity);
      await waitWord(k, word, 2);
      userptr_unlock(dev);
      Atomics.store(k.arena.i32, word, 3);
      k.sched.wake(word, Infinity);
    },
  });
  await waitWord(k, word, 1);
  return {
    async release() {
      Atomics.store(k.arena.i32, word, 2);
      k.sched.wake(word, Infinity);
      await waitWord(k, word, 3);
      k.kmalloc.kfree(word);
    },
  };
}

const ref = (k: Kernel, pfn: number): number => k.arena.i32[k.zone.page(pfn) + PageL.refcount];

async function locked<T>(mm: number, fn: () => Promise<T>): Promise<T> {
  const l = mmap_read_lock(mm);
  if (l !== undefined) await l;
  try {
    return await fn();
  } finally {
    mmap_read_unlock(mm);
  }
}

// ---- GUP ----------------------------------------------------------------------------------------

describe('get_user_pages / pin_user_pages (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: FOLL_GET adds one reference, FOLL_PIN adds GUP_PIN_COUNTING_BIAS and a pincount; the zero page is never counted`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 3);
        const b = await n(vm_mmap(mm, 0, 2 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)); // untouched
        const pages = [0, 0, 0];
        expect(await locked(mm, () => get_user_pages_remote(mm, a, 3, 0, pages))).toBe(3);
        expect(pages.map((p) => ref(k, p))).toEqual([2, 2, 2]);
        pages.forEach((p) => put_page(k, p));
        expect(mm_flags_test(MMF_HAS_PINNED, mm)).toBe(false);
        expect(await locked(mm, () => pin_user_pages(a, 3, FOLL_WRITE, pages))).toBe(3);
        expect(pages.map((p) => [ref(k, p), page_pincount(k, p), folio_maybe_dma_pinned(k, p)])).toEqual(Array(3).fill([1 + GUP_PIN_COUNTING_BIAS, 1, true]));
        expect(mm_flags_test(MMF_HAS_PINNED, mm)).toBe(true);
        unpin_user_pages(pages, 3);
        expect(pages.map((p) => [ref(k, p), page_pincount(k, p)])).toEqual(Array(3).fill([1, 0]));
        // a read of an untouched page: the zero page, not counted; a write pin allocates a frame
        const z = [9, 9];
        expect(await locked(mm, () => pin_user_pages(b, 2, 0, z))).toBe(2);
        expect(z).toEqual([0, 0]);
        unpin_user_pages(z, 2);
        expect(await locked(mm, () => pin_user_pages(b, 2, FOLL_WRITE, z))).toBe(2);
        expect(z.every((p) => p !== 0 && page_pincount(k, p) === 1)).toBe(true);
        unpin_user_pages(z, 2);
        expect(await n(vm_munmap(mm, a, 3 * P))).toBe(0);
        expect(await n(vm_munmap(mm, b, 2 * P))).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: a hole ends the pin (-EFAULT if it is the first page, else the count so far); a write to a read-only VMA is -EFAULT`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 4);
        expect(await n(vm_munmap(mm, a + 2 * P, P))).toBe(0);
        const pages = [0, 0, 0, 0];
        expect(await locked(mm, () => pin_user_pages(a, 4, FOLL_WRITE, pages))).toBe(2);
        unpin_user_pages(pages, 2);
        expect(await locked(mm, () => pin_user_pages(a + 2 * P, 2, FOLL_WRITE, pages))).toBe(-EFAULT);
        const r = await n(vm_mmap(mm, 0, P, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS));
        expect(await locked(mm, () => pin_user_pages(r, 1, FOLL_WRITE, pages))).toBe(-EFAULT);
        expect(await locked(mm, () => pin_user_pages(r, 1, 0, pages))).toBe(1);
        unpin_user_pages(pages, 1);
        expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
        expect(await n(vm_munmap(mm, r, P))).toBe(0);
        void k;
      });
      await finish(wd);
    });

    it(`seed ${seed}: a pinned page outlives its munmap until unpin; a pinned anon page is copied for a fork child, the parent keeps it`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 2);
        const pages = [0, 0];
        expect(await locked(mm, () => pin_user_pages(a, 2, FOLL_WRITE, pages))).toBe(2);
        const pid = await do_fork({ name: 'child', fn: async () => {} });
        expect(pid).toBeGreaterThan(0);
        expect(await waitpid(pid)).toEqual({ code: 0, signal: 0 });
        // the parent's PTEs still map the pinned frames, writable
        for (let i = 0; i < 2; i++) expect([pte_pfn(host_pte(k, mm, a + i * P)), host_pte(k, mm, a + i * P) & 2]).toEqual([pages[i], 2]);
        const free = k.zone.nrFree;
        expect(await n(vm_munmap(mm, a, 2 * P))).toBe(0);
        expect(k.zone.nrFree).toBe(free); // still pinned
        expect(pages.map((p) => ref(k, p))).toEqual([GUP_PIN_COUNTING_BIAS, GUP_PIN_COUNTING_BIAS]);
        unpin_user_pages(pages, 2);
        expect(k.zone.nrFree).toBe(free + 2);
      });
      await finish(wd);
    });

  }
});

// ---- kvm-mmu ------------------------------------------------------------------------------------

describe('kvm-mmu (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: the vCPU faults one page at a time through GUP; munmap raises the count and zaps in start, the end lowers it and bumps the seq`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 8);
        const dev = await device_open('kvm-mmu', { name: 'vm0', slot_base: a, slot_npages: 8 });
        expect(dev).toBeGreaterThan(0);
        const r = await runProgram(k, 'dev_stream', { dev, start: a, npages: 8, burst: 8 });
        expect(r).toMatchObject({ pages: 8, faults: 8, sum: 36, errors: 0 });
        expect(shadowEntries(k, dev).map((e) => e.write)).toEqual(Array(8).fill(false)); // read faults map read-only
        const w = await runProgram(k, 'dev_stream', { dev, start: a, npages: 8, op: 'write', value: 4 });
        expect(w).toMatchObject({ pages: 8, faults: 8 });
        const before = kvmState(k, dev);
        expect(await n(vm_munmap(mm, a + 4 * P, 4 * P))).toBe(0);
        const after = kvmState(k, dev);
        expect(after.in_progress).toBe(0);
        expect(after.starts - before.starts).toBe(1);
        expect(after.ends - before.ends).toBe(1);
        expect(after.seq).toBe(before.seq + 1);
        expect(shadowEntries(k, dev).map((e) => e.addr)).toEqual([a, a + P, a + 2 * P, a + 3 * P]);
        // the unmapped half of the memslot now faults to -EFAULT (no VMA)
        const r2 = await runProgram(k, 'dev_stream', { dev, start: a, npages: 8, burst: 1 });
        expect(r2).toMatchObject({ pages: 4, errors: 4, last_error: -EFAULT });
        // outside the memslot: no hva at all
        expect(await runProgram(k, 'dev_stream', { dev, start: a + 8 * P, npages: 1 })).toMatchObject({ errors: 1, last_error: -EFAULT });
        expect(deviceStats(k, dev).violations).toBe(0);
        expect(await device_close(dev)).toBe(0);
        expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
      });
      await finish(wd);
    });
  }
});

// ---- userptr ------------------------------------------------------------------------------------

describe('userptr (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: GET_PAGES pins and maps the object; the GPU reads it; munmap's invalidation zaps, waits, unpins, and the frames go`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 6);
        const dev = await device_open('userptr', { name: 'gpu0' });
        expect(await device_ioctl(dev, 'USERPTR', { addr: a, npages: 6 })).toBe(1);
        expect(await device_ioctl(dev, 'USERPTR', { addr: a + 1, npages: 6 })).toBe(-22);
        expect(await device_ioctl(dev, 'GET_PAGES', { handle: 1 })).toBe(0);
        const o = userptrObj(k, dev, 1);
        expect(o.pinned).toBe(true);
        expect(o.pages.map((p) => page_pincount(k, p))).toEqual(Array(6).fill(1));
        expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 6 })).toMatchObject({ pages: 6, faults: 0, sum: 21 });
        const free = k.zone.nrFree;
        expect(await n(vm_munmap(mm, a, 6 * P))).toBe(0);
        expect(userptrObj(k, dev, 1).pinned).toBe(false);
        expect(o.pages.map((p) => page_pincount(k, p))).toEqual(Array(6).fill(0));
        expect(k.zone.nrFree).toBe(free + 6);
        expect(shadowEntries(k, dev)).toEqual([]);
        // a GPU access now faults: binding fails, the object's range has no VMA
        expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 1 })).toMatchObject({ errors: 1, last_error: -EFAULT });
        expect(await device_close(dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: a GPU fault binds the object; a non-blockable invalidation with the object lock held, or with the GPU mid-access, is -EAGAIN and the pages stay pinned`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 4);
        const dev = await device_open('userptr');
        expect(await device_ioctl(dev, 'USERPTR', { addr: a, npages: 4 })).toBe(1);
        expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 4, op: 'write', value: 8 })).toMatchObject({ pages: 4, faults: 1 });
        const range = () => mmu_notifier_range_init(new MmuNotifierRange(), MMU_NOTIFY_UNMAP, 0, mm, a, a + 4 * P);
        // 1: another task holds the object lock (an object path in the middle of something)
        const h = await holdLock(k, dev);
        expect(mmu_notifier_invalidate_range_start_nonblock(range())).toBe(-EAGAIN);
        await h.release();
        expect(userptrObj(k, dev, 1).pinned).toBe(true);
        // 2: the GPU is in the middle of a slow access
        const res = k.kmalloc.kzalloc(ResL.$size);
        spawnDeviceProgram(k, k.sched, 'dev_stream', { dev, start: a, npages: 4, burst: 4, holdNs: 1e6, resultAt: res });
        while (device_inflight(k, dev, 0) === 0) await sleepNs(k, 1000);
        expect(mmu_notifier_invalidate_range_start_nonblock(range())).toBe(-EAGAIN);
        expect(userptrObj(k, dev, 1).pinned).toBe(true);
        await waitWord(k, res + ResL.done, 1);
        k.kmalloc.kfree(res);
        expect(userptrStats(k, dev).eagain).toBe(2);
        expect(deviceStats(k, dev).eagain).toBe(2);
        // with nothing in the way, the non-blockable start succeeds (the reaper then zaps; here we stop)
        expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
        expect(await device_close(dev)).toBe(0);
      });
      const { log } = await finish(wd, [NK.startFailed]);
      expect(log.map((x) => x.text)).toEqual(Array(2).fill('userptr.invalidate_range_start callback failed with -11 in non-blockable context.'));
    });
  }
});

// ---- scenario 16 with real drivers -------------------------------------------------------------

describe('§9 scenario 16 with real drivers: kvm-mmu (A) and userptr (B) meet the OOM reaper (sim)', () => {
  interface AB {
    attempts: number;
    kvm: ReturnType<typeof kvmState>;
    vcpu: Record<keyof typeof ResL.$fields, number>;
    pinnedAfter: boolean;
    log: KlogRecord[];
  }

  /**
   * A process mirrored by kvm-mmu (registered first) and userptr (registered second, so its
   * start runs first); a vCPU streams the memslot. Another task holds userptr's object lock
   * for 150 ms while the reaper (HZ/10 between attempts) tries the non-blockable UNMAP.
   */
  async function ab(policy: 'v4.19' | 'v5.12', seed: number): Promise<AB> {
    const wd = world(seed, { notifierPolicy: policy });
    const { k } = wd;
    const out = {} as AB;
    const N = 8;
    proc(wd, async ({ mm }) => {
      const a = await mapWritten(mm, N);
      const kvm = await device_open('kvm-mmu', { name: 'vm0', slot_base: a, slot_npages: N });
      const gpu = await device_open('userptr', { name: 'gpu0' });
      expect(await device_ioctl(gpu, 'USERPTR', { addr: a, npages: N })).toBe(1);
      expect(await device_ioctl(gpu, 'GET_PAGES', { handle: 1 })).toBe(0);
      const res = k.kmalloc.kzalloc(ResL.$size);
      const stop = k.kmalloc.kzalloc(8);
      spawnDeviceProgram(k, k.sched, 'dev_stream', { dev: kvm, start: a, npages: N, iters: 1e9, burst: 4, duty: 0.5, pageNs: 1000, stopWord: stop, resultAt: res });
      // the vCPU is running: it mapped the whole memslot
      while (deviceStats(k, kvm).installs < N) await sleepNs(k, 10_000);
      const h = await holdLock(k, gpu);
      const done = k.kmalloc.kzalloc(8);
      k.sched.spawn({
        name: 'oom_reaper',
        kind: 'kthread',
        fn: async () => {
          k.arena.i32[done + 1] = await oom_reap_task(k, mm);
          Atomics.store(k.arena.i32, done, 1);
          k.sched.wake(done, Infinity);
        },
      });
      await sleepNs(k, 150e6);
      await h.release();
      await waitWord(k, done, 1);
      out.attempts = k.arena.i32[done + 1];
      // let the vCPU run on the reaped memory for a while (or livelock)
      const w = k.arena.i32;
      const pages = deviceStats(k, kvm).accesses;
      for (let t = 0; t < 200 && w[res + ResL.done] === 0 && deviceStats(k, kvm).accesses < pages + 4 * N; t++) await sleepNs(k, 100_000);
      Atomics.store(w, stop, 1);
      await waitWord(k, res + ResL.done, 1);
      out.kvm = kvmState(k, kvm);
      out.vcpu = Object.fromEntries(Object.keys(ResL.$fields).map((f) => [f, w[res + (ResL as unknown as Record<string, number>)[f]]])) as AB['vcpu'];
      out.pinnedAfter = userptrObj(k, gpu, 1).pinned;
      [res, stop, done].forEach((x) => k.kmalloc.kfree(x));
      expect(await device_close(gpu)).toBe(0);
      expect(await device_close(kvm)).toBe(0);
    });
    out.log = (await finish(wd, [NK.startFailed, NK.pairing, 'liveness'])).log;
    return out;
  }

  for (const seed of SEEDS) {
    it(`seed ${seed}: v4.19: userptr fails, kvm's start ran and gets no end: the count stays raised, the vCPU livelocks until the liveness bound reports it`, async () => {
      const r = await ab('v4.19', seed);
      expect(r.attempts).toBe(3); // two attempts while the lock is held, the third reaps
      expect(r.kvm).toMatchObject({ in_progress: 2, starts: 3, ends: 1 });
      expect(r.vcpu.livelock).toBe(1);
      expect(r.pinnedAfter).toBe(false); // the third attempt unpinned
      const kinds = r.log.map((x) => x.kind);
      expect(kinds.filter((x) => x === NK.startFailed)).toHaveLength(2);
      expect(kinds.filter((x) => x === NK.pairing)).toHaveLength(2);
      const live = r.log.filter((x) => x.kind === 'liveness');
      expect(live).toHaveLength(1);
      expect(live[0].text).toMatch(/^INFO: device livelock: vm0@[0-9a-f]+ \(kvm-mmu\) engine 0 faulted 0x[0-9a-f]+ \(read\) \d+ times in [\d.]+ ms without one access getting through/);
      expect(live[0].text).toContain('driver: kvm: mmu_invalidate_in_progress 1, mmu_invalidate_seq 0, 1 starts and 0 ends'); // at the first failed attempt
      expect(live[0].text).toContain('an invalidate_range_start never got its invalidate_range_end');
      for (const x of r.log.filter((y) => y.kind === NK.pairing)) expect(x.text).toMatch(/unpaired start: kvm-mmu\.invalidate_range_start succeeded .* A\/B problem/);
    });

    it(`seed ${seed}: v5.12: the core calls kvm's end after userptr's failure: the count is back to 0 and the vCPU runs on`, async () => {
      const r = await ab('v5.12', seed);
      expect(r.attempts).toBe(3);
      expect(r.kvm.in_progress).toBe(0);
      expect(r.kvm.starts).toBe(r.kvm.ends);
      expect(r.vcpu).toMatchObject({ livelock: 0, errors: 0 });
      expect(r.log.map((x) => x.kind)).toEqual([NK.startFailed, NK.startFailed]);
    });
  }
});

// ---- stress: both hlist drivers (and an interval one) on one mm ------------------------------------

const BASE = 0x40000000;
const TASKS = fileURLToPath(new URL('./fixtures/device_tasks.ts', import.meta.url));
const DRIVERS = ['../drivers/kvm-mmu.ts', '../drivers/userptr.ts', './fixtures/devmirror.ts'].map((m) => fileURLToPath(new URL(m, import.meta.url)));

interface StressOpts {
  pages: number;
  iters: number;
  cpus: number;
  drivers: string[];
  ops: string;
  seed: number;
  engineIters?: number;
  duty?: number;
  cpuIdleNs?: number;
}

function stressSetup(k: Kernel, spawner: { spawn: SimScheduler['spawn'] }, o: StressOpts): number {
  const ctl = k.kmalloc.kzalloc(DevCtlL.$size);
  const args: DevStressArgs = { ctl, base: BASE, pageSize: P, engineIters: 100_000, duty: 0.8, ...o };
  const pid = spawn_process(k, spawner, { name: 'cpu', module: TASKS, fn: 'devStressCpu', args, threads: o.cpus });
  expect(pid).toBeGreaterThan(0);
  return ctl;
}

function stressCheck(k: Kernel, ctl: number, o: StressOpts, r: RunResult, before: ReturnType<typeof mmUsage>): Record<string, number> {
  const w = k.arena.i32;
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  expect(log, dumpLog(log)).toEqual([]);
  const sum = Object.fromEntries(Object.keys(DevCtlL.$fields).filter((f) => f !== 'devs' && f !== 'results').map((f) => [f, w[ctl + (DevCtlL as unknown as Record<string, number>)[f]]]));
  expect(sum).toMatchObject({ errors: 0, checked: 0, violations: 0, livelocks: 0, closed: o.drivers.length, ready: 1 });
  k.kmalloc.kfree(ctl);
  reap_zombies(k);
  expect(mmUsage(k)).toEqual(before);
  expect(deviceUsage(k)).toEqual({ devices: 0, sptDirs: 0, sptLeaves: 0 });
  return sum;
}

// userptr has no invalidate_range_end, so it cannot tell when an invalidation's PTE change is
// done: MADV_DONTNEED (zap under the read lock) can race its rebinding, as it did i915's
// (see drivers/userptr.ts). The stress leaves DONTNEED out; munmap, mprotect and fork take
// the mmap_lock for write, which excludes the rebinding's GUP.
describe('stress (sim): kvm-mmu, userptr and an interval mirror while CPU threads munmap, mprotect, fork', () => {
  for (const [seed, strategy] of [[31, 'random'], [32, 'pct'], [33, 'random'], [34, 'pct']] as const) {
    it(`seed ${seed} (${strategy}): no violation, kvm's count back to 0, every pin dropped`, async () => {
      const k = bootKernel(CFG);
      const before = mmUsage(k);
      const s = new SimScheduler(k, { seed, strategy, pctDepth: 3, pctSteps: 20_000, stallMs: 5000 });
      const o: StressOpts = { pages: 16, iters: 120, cpus: 2, drivers: ['kvm-mmu', 'userptr', 'test-mirror'], ops: 'wwwupf', seed, cpuIdleNs: 5000 };
      const ctl = stressSetup(k, s, o);
      const sum = stressCheck(k, ctl, o, await s.run(), before);
      expect(sum.invalidations).toBeGreaterThan(0);
      expect(sum.installs).toBeGreaterThan(0);
      expect(sum.accesses).toBeGreaterThan(0);
    });
  }
});

describe('stress (threads): kvm-mmu, userptr and an interval mirror, one worker per task', () => {
  it('2 CPU threads and 3 devices on one mm for a few seconds: no violation', async () => {
    const k = bootKernel(CFG);
    const before = mmUsage(k);
    const runner = new ThreadsRunner(k, { watchdogMs: 3000, timeoutMs: 40_000, preload: DRIVERS });
    const o: StressOpts = { pages: 16, iters: 400, cpus: 2, drivers: ['kvm-mmu', 'userptr', 'test-mirror'], ops: 'wwwupf', seed: 9, duty: 1 };
    const ctl = stressSetup(k, runner, o);
    const sum = stressCheck(k, ctl, o, await runner.run(), before);
    expect(sum.invalidations).toBeGreaterThan(0);
    expect(sum.accesses).toBeGreaterThan(0);
  }, 60_000);
});

describe("userptr's missing end: the rebinding race of pre-5.13 i915 userptr, caught by the mirror check (sim)", () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: MADV_DONTNEED's start unbinds the object; while a later notifier sleeps, the GPU rebinds the still-mapped pages; the zap then leaves the GPU on frames the CPU no longer maps`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 2);
        const slow = await device_open('userptr', { name: 'slow' }); // registered first: its start runs last
        const gpu = await device_open('userptr', { name: 'gpu' });
        for (const d of [slow, gpu]) expect(await device_ioctl(d, 'USERPTR', { addr: a, npages: 2 })).toBe(1);
        expect(await device_ioctl(gpu, 'GET_PAGES', { handle: 1 })).toBe(0);
        expect(await device_ioctl(slow, 'GET_PAGES', { handle: 1 })).toBe(0);
        const stop = k.kmalloc.kzalloc(8);
        const res = k.kmalloc.kzalloc(ResL.$size);
        spawnDeviceProgram(k, k.sched, 'dev_stream', { dev: gpu, start: a, npages: 2, iters: 1e9, duty: 0.5, stopWord: stop, resultAt: res });
        const h = await holdLock(k, slow); // the slow notifier's start will sleep on its lock
        k.sched.spawn({ name: 'release', fn: async () => (await sleepNs(k, 1e6), h.release()) });
        expect(await n(do_madvise(mm, a, 2 * P, MADV_DONTNEED))).toBe(0);
        await sleepNs(k, 1e5);
        Atomics.store(k.arena.i32, stop, 1);
        await waitWord(k, res + ResL.done, 1);
        [stop, res].forEach((x) => k.kmalloc.kfree(x));
        expect(deviceStats(k, gpu).violations).toBeGreaterThan(0);
        for (const d of [gpu, slow]) expect(await device_close(d)).toBe(0);
      });
      const { log } = await finish(wd, ['mirror_invariant']);
      expect(log[0].text).toMatch(/^BUG: mirror invariant: device gpu@[0-9a-f]+ \(userptr\) reads 0x[0-9a-f]+ through a shadow PTE \(pfn \d+, write, installed from seq \d+\), but the host PTE is none/);
    });
  }
});
