// The tasks of the threads_stress benchmark (threads_stress.ts), a module so that `threads`
// workers can load them: two CPU threads of one process; thread 0 maps the window, opens 4
// test-mirror devices and starts one program on each (stream read, random write, stream
// atomic, random read), then both threads fault / munmap+mmap back / mprotect R and back in the
// window until the time is up; thread 0 stops the engines, checks every shadow PTE, sums the
// counters and closes the devices. Time is wall time (Date.now: one clock for every worker).

import { fileURLToPath } from 'node:url';
import { defineStruct } from '../../src/shm/layout.js';
import { splat } from '../../src/sched/splat.js';
import type { Kernel } from '../../src/sched/kernel.js';
import { EFAULT } from '../../src/shm/errno.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../src/mm/mman.js';
import { vm_mmap, vm_munmap } from '../../src/mm/mmap.js';
import { do_mprotect } from '../../src/mm/mprotect.js';
import type { ProcessContext } from '../../src/mm/process.js';
import { put_user } from '../../src/mm/uaccess.js';
import { ResL, deviceStats, device_check_all, device_close, device_open, device_stop, spawnDeviceProgram } from '../../src/device/index.js';
import '../fixtures/devmirror.js';

export const DEVS = 4;

export const StressL = defineStruct('bench_threads_stress', {
  devs: DEVS,
  results: DEVS * ResL.$size,
  ready: 1,
  cpus_done: 1,
  stop: 1,
  errors: 1,
  checked: 1, // bad shadow PTEs found at the end
  violations: 1,
  closed: 1,
  cpu_ops: 1,
  pages: 1, // device page accesses
  start_ms: 1, // Date.now() - epochMs when the devices ran
  end_ms: 1,
});

export interface StressArgs {
  ctl: number;
  base: number;
  pages: number;
  pageSize: number;
  cpus: number;
  durationMs: number;
  /** Date.now() at setup: the time words are offsets from it */
  epochMs: number;
  seed: number;
}

const PROGRAMS = [
  { fn: 'dev_stream', op: 'read' },
  { fn: 'dev_random', op: 'write' },
  { fn: 'dev_stream', op: 'atomic' },
  { fn: 'dev_random', op: 'read' },
] as const;

function rng(seed: number): (n: number) => number {
  let s = seed | 0 || 0x9e3779b9;
  return (n) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
}

async function n(v: number | Promise<number>): Promise<number> {
  return typeof v === 'number' ? v : await v;
}

function fail(k: Kernel, a: StressArgs, what: string): void {
  if (Atomics.add(k.arena.i32, a.ctl + StressL.errors, 1) < 4) splat(k, 'bench_error', what);
}

function bump(k: Kernel, at: number): void {
  Atomics.add(k.arena.i32, at, 1);
  k.sched.wake(at, Infinity);
}

async function waitAtLeast(k: Kernel, at: number, v: number): Promise<void> {
  const w = k.arena.i32;
  for (let c = Atomics.load(w, at); c < v; c = Atomics.load(w, at)) {
    const r = k.sched.wait(at, c);
    if (typeof r !== 'number') await r;
  }
}

export async function stressCpu({ k, args: a, mm, thread }: ProcessContext<StressArgs>): Promise<void> {
  const w = k.arena.i32;
  const c = a.ctl;
  const ps = a.pageSize;
  const base = a.base;
  if (thread === 0) {
    const m = await n(vm_mmap(mm, base, a.pages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED));
    if (m !== base) return fail(k, a, `cpu0: mmap ${m}`);
    for (let i = 0; i < a.pages; i++) if ((await n(put_user(i + 1, base + i * ps))) !== 0) fail(k, a, 'cpu0: first write');
    for (let d = 0; d < DEVS; d++) {
      const dev = await device_open('test-mirror', { mm, name: `dev${d}` });
      if (dev < 0) return fail(k, a, `cpu0: device_open ${dev}`);
      w[c + StressL.devs + d] = dev;
      const p = PROGRAMS[d];
      spawnDeviceProgram(k, k.sched, p.fn, {
        dev,
        start: base,
        npages: a.pages,
        iters: 1 << 30, // bounded by the stop word
        op: p.op,
        burst: 8,
        seed: a.seed * 7 + d,
        stopWord: c + StressL.stop,
        resultAt: c + StressL.results + d * ResL.$size,
      });
    }
    w[c + StressL.start_ms] = Date.now() - a.epochMs;
    bump(k, c + StressL.ready);
  } else await waitAtLeast(k, c + StressL.ready, 1);
  const deadline = a.epochMs + w[c + StressL.start_ms] + a.durationMs;
  const rnd = rng(a.seed * 31 + thread);
  let ops = 0;
  for (let it = 0; Date.now() < deadline; it++) {
    const p = rnd(a.pages);
    const len = Math.min(a.pages - p, 1 + rnd(3));
    const addr = base + p * ps;
    const op = rnd(4);
    if (op <= 1) {
      // a CPU write: a fault after a zap, a COW break or an mprotect's write-protect
      const r = await n(put_user(thread * 1000 + it, addr + 4 * (1 + thread)));
      if (r !== 0 && r !== -EFAULT) fail(k, a, `cpu${thread}: put_user ${r}`);
      ops++;
    } else if (op === 2) {
      if ((await n(vm_munmap(mm, addr, len * ps))) !== 0) fail(k, a, `cpu${thread}: munmap`);
      const r = await n(vm_mmap(mm, addr, len * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED));
      if (r !== addr) fail(k, a, `cpu${thread}: mmap back ${r}`);
      ops += 2;
    } else {
      // -ENOMEM while the other thread has part of the range unmapped: still an operation
      await n(do_mprotect(mm, addr, len * ps, PROT_READ));
      await n(do_mprotect(mm, addr, len * ps, PROT_READ | PROT_WRITE));
      ops += 2;
    }
  }
  Atomics.add(w, c + StressL.cpu_ops, ops);
  if (thread !== 0) return bump(k, c + StressL.cpus_done);
  await waitAtLeast(k, c + StressL.cpus_done, a.cpus - 1);
  bump(k, c + StressL.stop);
  for (let d = 0; d < DEVS; d++) {
    const dev = w[c + StressL.devs + d];
    await device_stop(dev);
    if (d === 0) w[c + StressL.end_ms] = Date.now() - a.epochMs;
    w[c + StressL.checked] += device_check_all(k, dev);
    w[c + StressL.violations] += deviceStats(k, dev).violations;
    w[c + StressL.pages] += w[c + StressL.results + d * ResL.$size + ResL.pages];
    if ((await device_close(dev)) === 0) w[c + StressL.closed]++;
    else fail(k, a, 'cpu0: device_close');
  }
}

export const THREADS_STRESS_TASKS = fileURLToPath(import.meta.url);
