// The tasks of `shadowmm stress`, a module so that `threads` workers can load them: the worker
// processes' CPU threads (stressWorker; their operations are stress_cpu.ts, the words they
// share stress_shared.ts, re-exported here). The control kthread (stress_ctl.ts) starts the
// processes, drives the OOM rounds and closes the devices.
//
// A worker process: thread 0 maps the window and a scratch area, opens `devices` devices of
// every chosen driver on its mm through the driver's stress adapter and starts their engines;
// then every thread draws CPU operations until the run ends: reads and writes (faults after
// a zap, a COW break, a swap-out), munmap + mmap back, mprotect R and back, fork (bounded:
// task records are not recycled), MADV_DONTNEED, and device migration where a driver has it.
// The last thread out of the process (normal end or SIGKILL) stops the devices' engines
// before its exit tears the address space down; the devices stay open (the fd outlives the mm)
// until the control kthread closes them after waitpid.
//
// While the controller wants a process frozen (an OOM round), its threads sleep at the top of
// their loop where SIGKILL is not noticed, so the oom_reaper, not the exit, frees the memory.

import { fileURLToPath } from 'node:url';
import type { Kernel } from '../sched/kernel.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../mm/mman.js';
import { vm_mmap } from '../mm/mmap.js';
import { cond_resched, type ProcessContext } from '../mm/process.js';
import { put_user } from '../mm/uaccess.js';
import { device_stop } from '../device/file.js';
import { STRESS_PRIV_WORDS } from '../device/stress_adapter.js';
import { scanLatency } from '../check/latency.js';
import { cpuOp, type Migrator } from './stress_cpu.js';
import { CPU_OPS, OP, OP_MAX_PAGES, SlotL, StressCtlL, adapterOf, bump, n, pastDeadline, rng, slotAt, stressError, type CpuOp, type WorkerArgs } from './stress_shared.js';

export * from './stress_shared.js';

export const STRESS_TASKS = fileURLToPath(import.meta.url);

// ---- the worker process ------------------------------------------------------------------------------

/** Thread 0: map the window and the scratch, open the devices, start their engines. */
async function setup(k: Kernel, a: WorkerArgs, mm: number, s: number): Promise<boolean> {
  const w = k.arena.i32;
  const ps = a.pageSize;
  const m = await n(vm_mmap(mm, a.base, a.npages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED));
  if (m !== a.base) return stressError(k, a.ctl, `w${a.slot}: mmap of the window: ${m}`), false;
  const scratch = a.base + (a.npages + 16) * ps;
  const sc = await n(vm_mmap(mm, scratch, OP_MAX_PAGES * ps * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED));
  if (sc !== scratch) return stressError(k, a.ctl, `w${a.slot}: mmap of the scratch: ${sc}`), false;
  for (let i = 0; i < a.npages; i++) await n(put_user(i + 1, a.base + i * ps));
  let nd = 0;
  for (let d = 0; d < a.drivers.length; d++) {
    const ad = await adapterOf(a.drivers[d]);
    const handle = w[a.ctl + StressCtlL.handles + d];
    for (let i = 0; i < a.devices; i++) {
      const name = `${a.drivers[d].name}.w${a.slot}.${a.gen}.${i}`;
      const priv = s + SlotL.priv + nd * STRESS_PRIV_WORDS;
      w.fill(0, priv, priv + STRESS_PRIV_WORDS);
      const dev = await n(ad.open({ k, mm, base: a.base, npages: a.npages, name, handle, priv }));
      if (!(dev > 0)) {
        Atomics.add(w, a.ctl + StressCtlL.dev_errors, 1);
        stressError(k, a.ctl, `${ad.driver}: open on w${a.slot}: ${dev}`);
        continue;
      }
      w[s + SlotL.devs + nd] = dev;
      w[s + SlotL.drv + nd] = d;
      Atomics.store(w, s + SlotL.ndev, ++nd);
      Atomics.add(w, a.ctl + StressCtlL.devs_opened, 1);
      await n(ad.start({ k, dev, priv, base: a.base, npages: a.npages, engines: a.engines, seed: a.seed * 131 + a.slot * 17 + a.gen * 7 + nd, stopWord: s + SlotL.stop, duty: a.duty, spawner: k.sched, handle }));
    }
  }
  return true;
}

/** The last thread out: stop every engine of the process's devices before the mm goes. */
async function stopEngines(k: Kernel, s: number): Promise<void> {
  const w = k.arena.i32;
  bump(k, s + SlotL.stop);
  for (let i = 0; i < w[s + SlotL.ndev]; i++) await device_stop(w[s + SlotL.devs + i]);
}

/** The controller wants us asleep: sleep (not killable) until it lets go, then notice SIGKILL. */
async function frozen(k: Kernel, s: number): Promise<void> {
  const w = k.arena.i32;
  bump(k, s + SlotL.frozen);
  for (let f = Atomics.load(w, s + SlotL.freeze); f !== 0; f = Atomics.load(w, s + SlotL.freeze)) await n(k.sched.wait(s + SlotL.freeze, f));
  Atomics.sub(w, s + SlotL.frozen, 1);
  await cond_resched();
}

/** One CPU thread of a worker process. */
export async function stressWorker(ctx: ProcessContext<WorkerArgs>): Promise<void> {
  const { k, args: a, mm, thread } = ctx;
  const w = k.arena.i32;
  const s = slotAt(a, a.slot);
  try {
    if (thread === 0) {
      const ok = await setup(k, a, mm, s);
      Atomics.store(w, s + SlotL.ready, ok ? 1 : -1);
      k.sched.wake(s + SlotL.ready, Infinity);
      if (!ok) return;
    } else {
      for (let r = Atomics.load(w, s + SlotL.ready); r === 0; r = Atomics.load(w, s + SlotL.ready)) await n(k.sched.wait(s + SlotL.ready, 0));
      if (w[s + SlotL.ready] < 0) return;
    }
    await cpuLoop(k, a, mm, thread, s);
  } finally {
    if (Atomics.sub(w, s + SlotL.live, 1) === 1) await stopEngines(k, s);
  }
}

async function cpuLoop(k: Kernel, a: WorkerArgs, mm: number, thread: number, s: number): Promise<void> {
  const w = k.arena.i32;
  const ps = a.pageSize;
  const rnd = rng(a.seed * 977 + a.slot * 131 + a.gen * 31 + thread);
  const scratch = a.base + (a.npages + 16 + thread * OP_MAX_PAGES) * ps;
  const migrators: Migrator[] = [];
  for (let i = 0; i < w[s + SlotL.ndev]; i++) {
    const d = w[s + SlotL.drv + i];
    const ad = await adapterOf(a.drivers[d]);
    if (ad.migrate) migrators.push({ dev: w[s + SlotL.devs + i], priv: s + SlotL.priv + i * STRESS_PRIV_WORDS, ad, handle: w[a.ctl + StressCtlL.handles + d] });
  }
  // weights: reads and writes most (the faults), then the invalidating operations; fork is
  // slow (a new task) and bounded by the budget
  const menu: CpuOp[] = [];
  const weights: [CpuOp, number][] = [['read', 10], ['write', 12], ['munmap', 3], ['mprotect', 2], ['dontneed', 3], ['fork', 1], ['migrate', migrators.length > 0 ? 2 : 0]];
  for (const [op, wt] of weights) for (let i = 0; i < wt; i++) menu.push(op);
  const counts = new Int32Array(CPU_OPS.length);
  // sim: the controller watches the counts to time its OOM round; threads: fewer shared writes
  const flushMask = a.scheduler === 'sim' ? 7 : 31;
  const flush = (): void => {
    for (let i = 0; i < counts.length; i++) if (counts[i] !== 0) Atomics.add(w, a.ctl + StressCtlL.ops + i, counts[i]);
    counts.fill(0);
  };
  try {
    for (let it = 0; ; it++) {
      if (Atomics.load(w, a.ctl + StressCtlL.stop) !== 0) break;
      if (a.opsPerThread > 0 ? it >= a.ops : pastDeadline(k, a)) break;
      if (Atomics.load(w, s + SlotL.freeze) !== 0) await frozen(k, s);
      const p = rnd(a.npages);
      const len = Math.min(a.npages - p, 1 + rnd(OP_MAX_PAGES));
      const addr = a.base + p * ps;
      const op = menu[rnd(menu.length)];
      if (await cpuOp(k, a, mm, thread, op, addr, len, rnd, scratch, migrators)) counts[OP[op]]++;
      if ((it & flushMask) === flushMask) flush();
      if (a.scheduler === 'sim') scanLatency();
    }
  } finally {
    flush();
  }
}

/**
 * Bumps `at` and ends. Under `threads` the controller starts a few once the processes are set
 * up and waits for them, so the worker pool keeps idle workers with every module loaded: a
 * fork child then starts at once, instead of waiting seconds for a new worker to load its
 * modules on a small machine whose cores the engines keep busy.
 */
export function stressIdle({ k, args }: { k: Kernel; args: { at: number } }): void {
  bump(k, args.at);
}
