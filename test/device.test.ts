// The device layer (src/device) under `sim` over several seeds and under `threads`: device
// faults through the §3.4 retry loop, device programs over a faulted-in buffer while CPU
// threads munmap / mprotect / fork / DONTNEED it, the in-flight fence (an invalidation waits for
// an access that began before its zap; a non-blockable one fails instead), the mirror check
// and the retry-protocol check firing on planted-bug copies of the test driver
// (fixtures/planted/), the fault task, and teardown leaving nothing behind.

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bootKernel } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import type { Kernel } from '../src/sched/kernel.js';
import type { RunResult } from '../src/sched/scheduler.js';
import { SimScheduler } from '../src/sched/sim.js';
import { EV, EV_A, EV_TYPE, EV_WORDS } from '../src/shm/events.js';
import { EAGAIN, EBUSY } from '../src/shm/errno.js';
import { MMU_NOTIFY_UNMAP, MmuNotifierRange, mmu_notifier_invalidate_range_start_nonblock, mmu_notifier_range_init } from '../src/notifier/index.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { vm_mmap, vm_munmap } from '../src/mm/mmap.js';
import { do_mprotect } from '../src/mm/mprotect.js';
import { reap_zombies, spawn_process } from '../src/mm/process.js';
import { get_user, put_user } from '../src/mm/uaccess.js';
import {
  DEV_EV,
  DEV_READ,
  ResL,
  device_access,
  device_engine_claim,
  device_engine_release,
  device_fault,
  device_miss,
  device_read_sum,
  deviceStats,
  deviceUsage,
  device_close,
  device_inflight,
  device_open,
  host_pte,
  shadowEntries,
  spawnDeviceFaultTask,
  spawnDeviceProgram,
  type DevProgramArgs,
} from '../src/device/index.js';
import { testMirror } from './fixtures/devmirror.js';
import { plantedNozap } from './fixtures/planted/mirror_nozap.js';
import { plantedNolock } from './fixtures/planted/mirror_nolock.js';
import { noretry_set_hook, plantedNoretry } from './fixtures/planted/mirror_noretry.js';
import { DevCtlL, type DevStressArgs } from './fixtures/device_tasks.js';
import { CFG, P, dumpLog, finish, mapWritten, n, proc, waitWord, world } from './device_world.js';

void [testMirror, plantedNozap, plantedNolock, plantedNoretry];

const SEEDS = [1, 2, 3];
const W = P / 4;

/** Start a program on the device and wait for its result words. */
async function runProgram(k: Kernel, program: string, args: Omit<DevProgramArgs, 'resultAt'>): Promise<Record<keyof typeof ResL.$fields, number>> {
  const res = k.kmalloc.kzalloc(ResL.$size);
  spawnDeviceProgram(k, k.sched, program, { ...args, resultAt: res });
  await waitWord(k, res + ResL.done, 1);
  const w = k.arena.i32;
  const out = Object.fromEntries(Object.keys(ResL.$fields).map((f) => [f, w[res + (ResL as unknown as Record<string, number>)[f]]])) as Record<keyof typeof ResL.$fields, number>;
  k.kmalloc.kfree(res);
  return out;
}

// ---- faults and programs -----------------------------------------------------------------------

describe('device faults through the §3.4 loop (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: a stream read faults the buffer in, reads what the CPU wrote; a stream write is seen by the CPU`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const N = 24;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, N);
        const dev = await device_open('test-mirror', { name: 'gpu0' });
        expect(dev).toBeGreaterThan(0);
        const r = await runProgram(k, 'dev_stream', { dev, start: a, npages: N, burst: 8 });
        expect(r).toMatchObject({ pages: N, errors: 0, livelock: 0, sum: (N * (N + 1)) / 2 });
        expect(r.faults).toBe(3); // one per burst of 8: the fault covers the rest of the burst
        const s = deviceStats(k, dev);
        expect(s).toMatchObject({ faults: 3, installs: N, violations: 0, fault_errors: 0 });
        expect(s.fault_rounds).toBeGreaterThanOrEqual(3);
        // every entry is tagged write: the CPU PTEs are writable
        expect(shadowEntries(k, dev).map((e) => [e.addr, e.write])).toEqual(Array.from({ length: N }, (_, i) => [a + i * P, true]));
        // a write pass: no new fault, and the CPU sees the device's writes
        const wr = await runProgram(k, 'dev_stream', { dev, start: a, npages: N, op: 'write', value: 77, word: 1, burst: 8 });
        expect(wr).toMatchObject({ pages: N, faults: 0 });
        for (let i = 0; i < N; i++) expect(await n(get_user(a + i * P + 4))).toBe(77);
        // atomics
        await runProgram(k, 'dev_stream', { dev, start: a, npages: N, op: 'atomic', iters: 3, word: 2 });
        for (let i = 0; i < N; i++) expect(await n(get_user(a + i * P + 8))).toBe(3);
        expect(await device_close(dev)).toBe(0);
        expect(await n(vm_munmap(mm, a, N * P))).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: a read fault of an untouched page maps the zero page read-only; a write fault then breaks COW (CLEAR) and maps a fresh frame`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await n(vm_mmap(mm, 0, 4 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
        const dev = await device_open('test-mirror');
        expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 4 })).toMatchObject({ pages: 4, sum: 0 });
        expect(shadowEntries(k, dev).map((e) => [e.pfn, e.write])).toEqual(Array(4).fill([0, false]));
        const r = await runProgram(k, 'dev_stream', { dev, start: a, npages: 4, op: 'write', value: 5 });
        expect(r).toMatchObject({ pages: 4, errors: 0 });
        expect(shadowEntries(k, dev).every((e) => e.pfn !== 0 && e.write)).toBe(true);
        expect(deviceStats(k, dev).invalidations).toBeGreaterThanOrEqual(1); // the COW breaks' CLEAR
        for (let i = 0; i < 4; i++) expect(await n(get_user(a + i * P))).toBe(5);
        expect(await device_close(dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: an unmapped page and a write to a read-only VMA fail the fault (-EFAULT / -EPERM); the program skips them`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 4);
        expect(await n(vm_munmap(mm, a + P, P))).toBe(0);
        expect(await n(do_mprotect(mm, a + 2 * P, P, PROT_READ))).toBe(0);
        const dev = await device_open('test-mirror');
        const r = await runProgram(k, 'dev_stream', { dev, start: a, npages: 4, op: 'write', value: 9, burst: 1 });
        expect(r).toMatchObject({ pages: 2, errors: 2 });
        expect(deviceStats(k, dev).fault_errors).toBe(2);
        expect(await device_close(dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: DMA copy between two buffers copies whole pages; random access touches only the range`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const src = await mapWritten(mm, 6);
        const dst = await n(vm_mmap(mm, 0, 6 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
        for (let i = 0; i < 6; i++) expect(await n(put_user(1000 + i, src + i * P + 4 * (W - 1)))).toBe(0);
        const dev = await device_open('test-mirror');
        const r = await runProgram(k, 'dev_dma_copy', { dev, start: src, dst, npages: 6, burst: 4 });
        expect(r).toMatchObject({ pages: 6, errors: 0 });
        for (let i = 0; i < 6; i++) {
          expect(await n(get_user(dst + i * P))).toBe(i + 1);
          expect(await n(get_user(dst + i * P + 4 * (W - 1)))).toBe(1000 + i);
        }
        const rr = await runProgram(k, 'dev_random', { dev, start: src, npages: 6, iters: 4, op: 'atomic', word: 3, seed });
        expect(rr).toMatchObject({ pages: 24, errors: 0 });
        let total = 0;
        for (let i = 0; i < 6; i++) total += await n(get_user(src + i * P + 12));
        expect(total).toBe(24);
        expect(await device_close(dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: a CPU task claims an engine slot and accesses through the device itself (an ioctl's access), faulting as an engine does`, async () => {
      const wd = world(seed);
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 3);
        const dev = await device_open('test-mirror');
        const eng = device_engine_claim(dev);
        expect(eng).toBe(3);
        expect(device_access(dev, eng, a, 3, DEV_READ)).toBe(0);
        expect(await n(device_fault(dev, eng, device_miss.addr, 3, device_miss.flags))).toBe(0);
        expect(device_access(dev, eng, a, 3, DEV_READ)).toBe(3);
        expect(device_read_sum()).toBe(6);
        expect([device_engine_claim(dev), device_engine_claim(dev), device_engine_claim(dev), device_engine_claim(dev)]).toEqual([2, 1, 0, -EBUSY]);
        for (const e of [0, 1, 2, 3]) device_engine_release(dev, e);
        expect(await device_close(dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: with a fault task, engines queue their faults and sleep; the task services them`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 16);
        const dev = await device_open('test-mirror');
        const ft = spawnDeviceFaultTask(k, k.sched, dev);
        const res = [k.kmalloc.kzalloc(ResL.$size), k.kmalloc.kzalloc(ResL.$size)];
        for (const e of [0, 1]) spawnDeviceProgram(k, k.sched, 'dev_stream', { dev, engine: e, start: a, npages: 16, burst: 4, resultAt: res[e] });
        for (const at of res) await waitWord(k, at + ResL.done, 1);
        const w = k.arena.i32;
        expect(res.map((at) => [w[at + ResL.pages], w[at + ResL.sum]])).toEqual([
          [16, 136],
          [16, 136],
        ]);
        res.forEach((at) => k.kmalloc.kfree(at));
        expect(deviceStats(k, dev).installs).toBeGreaterThanOrEqual(16);
        expect(ft.state).not.toBe(3);
        expect(await device_close(dev)).toBe(0); // stops and joins the fault task too
        expect(ft.name).toBe('test-mirror:fault');
      });
      await finish(wd);
    });
  }
});

// ---- stress: programs while the CPU changes the mappings ------------------------------------------

const BASE = 0x40000000;
const TASKS = fileURLToPath(new URL('./fixtures/device_tasks.ts', import.meta.url));
const DEVMIRROR = fileURLToPath(new URL('./fixtures/devmirror.ts', import.meta.url));

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
  const args: DevStressArgs = { ctl, base: BASE, pageSize: P, engineIters: 1000, duty: 0.5, ...o };
  const pid = spawn_process(k, spawner, { name: 'cpu', module: TASKS, fn: 'devStressCpu', args, threads: o.cpus });
  expect(pid).toBeGreaterThan(0);
  return ctl;
}

/** After the run: no record, no error, every device closed, nothing leaked. */
function stressCheck(k: Kernel, ctl: number, o: StressOpts, r: RunResult, before: ReturnType<typeof mmUsage>, allow: string[] = []): Record<string, number> {
  const w = k.arena.i32;
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  expect(log.filter((x) => !allow.includes(x.kind)), dumpLog(log)).toEqual([]);
  const sum = Object.fromEntries(Object.keys(DevCtlL.$fields).filter((f) => f !== 'devs' && f !== 'results').map((f) => [f, w[ctl + (DevCtlL as unknown as Record<string, number>)[f]]]));
  expect(sum).toMatchObject({ errors: 0, checked: 0, violations: 0, livelocks: 0, closed: o.drivers.length, ready: 1 });
  k.kmalloc.kfree(ctl);
  reap_zombies(k);
  expect(mmUsage(k)).toEqual(before);
  expect(deviceUsage(k)).toEqual({ devices: 0, sptDirs: 0, sptLeaves: 0 });
  return sum;
}

describe('stress (sim): stream, random and atomic programs while CPU threads munmap, mprotect, fork, DONTNEED', () => {
  for (const [seed, strategy] of [[11, 'random'], [12, 'pct'], [13, 'random'], [14, 'pct'], [15, 'random']] as const) {
    it(`seed ${seed} (${strategy}): 2 CPU threads, 3 devices; no violation, every shadow PTE agrees at the end`, async () => {
      const k = bootKernel(CFG);
      const before = mmUsage(k);
      const s = new SimScheduler(k, { seed, strategy, pctDepth: 3, pctSteps: 20_000, stallMs: 5000 });
      const o: StressOpts = { pages: 16, iters: 150, cpus: 2, drivers: ['test-mirror', 'test-mirror', 'test-mirror'], ops: 'wwwupdf', seed, duty: 0.8, cpuIdleNs: 5000 };
      const ctl = stressSetup(k, s, o);
      const sum = stressCheck(k, ctl, o, await s.run(), before);
      expect(sum.invalidations).toBeGreaterThan(0);
      expect(sum.installs).toBeGreaterThan(0);
      expect(sum.accesses).toBeGreaterThan(0);
      expect(sum.forks).toBeGreaterThan(0);
    });
  }
});

describe('stress (threads): one worker per CPU thread and per device engine', () => {
  it('2 CPU threads and 4 device engines on one mm for a few seconds: no violation', async () => {
    const k = bootKernel(CFG);
    const before = mmUsage(k);
    const runner = new ThreadsRunner(k, { watchdogMs: 3000, timeoutMs: 40_000, preload: [DEVMIRROR] });
    const o: StressOpts = { pages: 16, iters: 400, cpus: 2, drivers: ['test-mirror', 'test-mirror', 'test-mirror', 'test-mirror'], ops: 'wwupdf', seed: 5, engineIters: 100_000, duty: 1 };
    const ctl = stressSetup(k, runner, o);
    const sum = stressCheck(k, ctl, o, await runner.run(), before);
    expect(sum.invalidations).toBeGreaterThan(0);
    expect(sum.accesses).toBeGreaterThan(0);
  }, 60_000);
});

// ---- the in-flight fence ------------------------------------------------------------------------

/** [type, a] of the device events (and the test's USER markers) from index `from` of the ring on. */
function devEvents(k: Kernel, dev: number, from: number): string[] {
  const recs = k.events.records();
  const names: Record<number, string> = Object.fromEntries(Object.entries(DEV_EV).map(([n, v]) => [v, n]));
  const out: string[] = [];
  const first = Math.max(0, k.events.count - recs.length / EV_WORDS);
  for (let i = Math.max(0, from - first); i < recs.length / EV_WORDS; i++) {
    const t = recs[i * EV_WORDS + EV_TYPE];
    const a = recs[i * EV_WORDS + EV_A];
    if (t === EV.USER) out.push(`USER${a}`);
    else if (names[t] && a === dev) out.push(names[t]);
  }
  return out;
}

async function sleepNs(k: Kernel, ns: number): Promise<void> {
  const p = k.sched.sleep(ns);
  if (p !== undefined) await p;
}

describe('the in-flight fence (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: munmap's invalidation zaps, then waits for the access that began before the zap; the PTEs change only after it ended`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm, task }) => {
        const a = await mapWritten(mm, 4);
        const dev = await device_open('test-mirror');
        expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 4 })).toMatchObject({ pages: 4 }); // fault in
        const res = k.kmalloc.kzalloc(ResL.$size);
        const from = k.events.count;
        spawnDeviceProgram(k, k.sched, 'dev_stream', { dev, start: a, npages: 4, burst: 4, holdNs: 1e6, resultAt: res });
        while (device_inflight(k, dev, 0) === 0) await sleepNs(k, 1000);
        expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
        k.events.emit(EV.USER, task.id, 1, 0, 0); // munmap returned
        await waitWord(k, res + ResL.done, 1);
        expect([k.arena.i32[res + ResL.pages], k.arena.i32[res + ResL.sum]]).toEqual([4, 10]); // it read the old frames, legitimately
        k.kmalloc.kfree(res);
        const ev = devEvents(k, dev, from).filter((e) => e !== 'INSTALL' && e !== 'FAULT' && e !== 'FAULT_DONE');
        expect(ev.slice(0, 6)).toEqual(['ACCESS_BEGIN', 'ZAP', 'FENCE_WAIT', 'ACCESS_END', 'FENCE_DONE', 'USER1']);
        expect(shadowEntries(k, dev)).toEqual([]);
        expect(await device_close(dev)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: a non-blockable invalidation that finds the access in flight fails (-EAGAIN, no end); the CPU PTEs stay; a blockable one later succeeds`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 4);
        const dev = await device_open('test-mirror');
        await runProgram(k, 'dev_stream', { dev, start: a, npages: 4 });
        const res = k.kmalloc.kzalloc(ResL.$size);
        const from = k.events.count;
        spawnDeviceProgram(k, k.sched, 'dev_stream', { dev, start: a, npages: 4, burst: 4, holdNs: 1e6, resultAt: res });
        while (device_inflight(k, dev, 0) === 0) await sleepNs(k, 1000);
        const range = new MmuNotifierRange();
        mmu_notifier_range_init(range, MMU_NOTIFY_UNMAP, 0, mm, a, a + 4 * P);
        expect(mmu_notifier_invalidate_range_start_nonblock(range)).toBe(-EAGAIN); // the OOM reaper skips the VMA, calls no end
        for (let i = 0; i < 4; i++) expect(host_pte(k, mm, a + i * P) & 1).toBe(1);
        expect(devEvents(k, dev, from)).toEqual(['ACCESS_BEGIN', 'ZAP', 'FENCE_FAIL']);
        expect(deviceStats(k, dev).eagain).toBe(1);
        await waitWord(k, res + ResL.done, 1);
        expect(k.arena.i32[res + ResL.pages]).toBe(4);
        k.kmalloc.kfree(res);
        expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
        expect(await device_close(dev)).toBe(0);
      });
      await finish(wd);
    });
  }
});

// ---- planted bugs ---------------------------------------------------------------------------------

describe('planted bugs are caught (sim, every seed)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: a driver that skips the zap: the mirror check fires at the next access (after munmap, and after mprotect R for a write)`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 4);
        const dev = await device_open('planted-nozap', { name: 'buggy' });
        await runProgram(k, 'dev_stream', { dev, start: a, npages: 4 });
        expect(await n(do_mprotect(mm, a, 2 * P, PROT_READ))).toBe(0);
        await runProgram(k, 'dev_stream', { dev, start: a, npages: 2, op: 'write' });
        expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
        await runProgram(k, 'dev_stream', { dev, start: a + 2 * P, npages: 1 });
        expect(deviceStats(k, dev).violations).toBe(3);
        expect(await device_close(dev)).toBe(0);
      });
      const { log } = await finish(wd, ['mirror_invariant']);
      const recs = log.filter((x) => x.kind === 'mirror_invariant');
      expect(recs).toHaveLength(3);
      expect(recs[0].text).toMatch(/^BUG: mirror invariant: device buggy@[0-9a-f]+ \(planted-nozap\) writes 0x[0-9a-f]+ through a shadow PTE \(pfn \d+, write, installed from seq \d+\), but the host PTE is 0x[0-9a-f]+ \(pfn \d+, read-only\)/);
      expect(recs[2].text).toMatch(/reads 0x[0-9a-f]+ .* but the host PTE is none/);
      expect(recs[2].text).toMatch(/invalidation side: p:1\.0\/1\n/); // the munmapping task, with its recent events
      expect(recs[2].text).toMatch(/p:1\.0\/1 unlock mm->mmap_lock@[0-9a-f]+/); // events name their locks
    });

    it(`seed ${seed}: the same with the mirror check switched off (a speed run): nothing is checked, nothing recorded`, async () => {
      const wd = world(seed, { device: { ...CFG.device, mirrorCheck: false } });
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 2);
        const dev = await device_open('planted-nozap');
        await runProgram(k, 'dev_stream', { dev, start: a, npages: 2 });
        expect(await n(vm_munmap(mm, a, 2 * P))).toBe(0);
        expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 2 })).toMatchObject({ pages: 2 });
        expect(deviceStats(k, dev).violations).toBe(0);
        expect(await device_close(dev)).toBe(0);
      });
      await finish(wd);
    });

    for (const lockdep of [true, false]) {
      it(`seed ${seed}: a driver that installs without the notifier lock (lockdep ${lockdep ? 'on' : 'off: the owner word'}): the retry-protocol check fires`, async () => {
        const wd = world(seed, { lockdep });
        const { k } = wd;
        proc(wd, async ({ mm }) => {
          const a = await mapWritten(mm, 4);
          const dev = await device_open('planted-nolock', { name: 'buggy' });
          expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 4 })).toMatchObject({ pages: 4 });
          expect(await device_close(dev)).toBe(0);
        });
        const { log } = await finish(wd, ['retry_protocol']);
        const recs = log.filter((x) => x.kind === 'retry_protocol');
        expect(recs.length).toBeGreaterThanOrEqual(1);
        expect(recs[0].text).toMatch(/^WARNING: shadow_pte_install on buggy@[0-9a-f]+ \(planted-nolock\): lockdep_assert_held\(mirror->lock@[0-9a-f]+\) failed at 0x/);
      });
    }

    it(`seed ${seed}: a driver that skips mmu_interval_read_retry: an invalidation between hmm_range_fault and the lock makes it install from a moved sequence`, async () => {
      const wd = world(seed);
      const { k } = wd;
      proc(wd, async ({ mm }) => {
        const a = await mapWritten(mm, 4);
        const dev = await device_open('planted-noretry', { name: 'buggy' });
        let collide = true;
        noretry_set_hook(async () => {
          if (!collide) return;
          collide = false;
          // the colliding invalidation: the page goes read-only (PROTECTION_VMA)
          expect(await n(do_mprotect(mm, a, P, PROT_READ))).toBe(0);
        });
        try {
          await runProgram(k, 'dev_stream', { dev, start: a, npages: 1, op: 'write', value: 3 });
        } finally {
          noretry_set_hook(null);
        }
        expect(await device_close(dev)).toBe(0);
      });
      const { log } = await finish(wd, ['retry_protocol', 'mirror_invariant']);
      const recs = log.filter((x) => x.kind === 'retry_protocol');
      expect(recs).toHaveLength(1);
      expect(recs[0].text).toMatch(/^WARNING: shadow_pte_install on buggy@[0-9a-f]+ \(planted-noretry\): install at 0x[0-9a-f]+ from sequence -?\d+, which has moved \(the subscription's sequence is now -?\d+\)/);
      // and the stale entry is used: the device writes through it to a page the CPU made read-only
      expect(log.filter((x) => x.kind === 'mirror_invariant').map((x) => x.text.split(':')[0])).toEqual(['BUG']);
    });
  }
});
