// Device programs: what a device engine task runs. Each is a named export (a TaskFn), so both
// schedulers run it (under threads the engine is its own worker). A program accesses memory
// only through the device's shadow page table; a miss raises a device fault (fault.ts) and the
// access retries. Between bursts the engine idles for its duty cycle.
//
// - dev_stream: passes over [start, start + npages) reading, writing or incrementing `word`
// - dev_random: random single-page accesses in the range
// - dev_dma_copy: copy whole pages from [start, ...) to [dst, ...)
// Results (optional) go to `resultAt` in the arena (ResL); the device's statistics count the rest.

import { fileURLToPath } from 'node:url';
import type { Kernel } from '../sched/kernel.js';
import type { TaskContext, TaskSpec } from '../sched/scheduler.js';
import type { Task } from '../sched/task.js';
import { EDEADLK } from '../shm/errno.js';
import { defineStruct } from '../shm/layout.js';
import { DEV_ATOMIC, DEV_READ, DEV_WRITE, device_access, device_access_held, device_copy, device_miss, device_read_sum } from './access.js';
import { device_engine_attach, device_name } from './device.js';
import { device_fault } from './fault.js';
import { DevL, EngL, engine_at } from './types.js';

export interface DevProgramArgs {
  dev: number;
  /** engine slot, 0..DEV_ENGINES-1 (default 0) */
  engine?: number;
  /** the range: page aligned */
  start: number;
  npages: number;
  /** dev_stream: passes; dev_random: accesses per page of the range; dev_dma_copy: passes (default 1) */
  iters?: number;
  op?: 'read' | 'write' | 'atomic';
  /** pages per access burst (default 16) */
  burst?: number;
  /** pages per fault (default: the rest of the burst) */
  faultPages?: number;
  /** fraction of time busy, (0, 1] (default 1: only a scheduling point between bursts) */
  duty?: number;
  /** the device's time per page, ns, for the duty cycle (default 100) */
  pageNs?: number;
  /** back-off before replaying an access whose page faulted and retried before, ns (default 1000) */
  retryNs?: number;
  /** a burst stays in flight this long between translation and touch (a slow DMA) */
  holdNs?: number;
  /** the word of each page read, written or incremented (default 0) */
  word?: number;
  /** the value written (default pass + 1) */
  value?: number;
  seed?: number;
  /** dev_dma_copy: destination, page aligned */
  dst?: number;
  /** arena word: the program stops when it is non-zero */
  stopWord?: number;
  /** arena words (ResL) for the result */
  resultAt?: number;
}

/** a program's result words */
export const ResL = defineStruct('device_program_result', {
  pages: 1, // pages accessed
  errors: 1, // faults that failed (the page was skipped)
  last_error: 1,
  sum: 1, // sum of the words read
  faults: 1,
  livelock: 1, // 1 if the liveness bound ended the program
  done: 1, // 1 once the program returned
});

const OPS = { read: DEV_READ, write: DEV_WRITE, atomic: DEV_ATOMIC } as const;

function stopped(w: Int32Array, a: DevProgramArgs): boolean {
  return Atomics.load(w, a.dev + DevL.stop) !== 0 || (a.stopWord !== undefined && Atomics.load(w, a.stopWord) !== 0);
}

/** the engine's running totals, flushed to ResL at the end */
interface Run {
  pages: number;
  errors: number;
  lastError: number;
  sum: number;
  faults: number;
  livelock: boolean;
}

/** After a burst of `done` pages: the duty cycle's idle time, or just a scheduling point. */
async function idle(k: Kernel, a: DevProgramArgs, done: number): Promise<void> {
  const duty = a.duty ?? 1;
  const ns = duty >= 1 ? 0 : Math.max(1, done) * (a.pageNs ?? 100) * (1 / Math.max(duty, 1e-3) - 1);
  const p = ns > 0 ? k.sched.sleep(ns) : k.sched.point();
  if (p !== undefined) await p;
}

/** Raise the fault for the last miss; false when the program must end (livelock). */
async function fault(k: Kernel, a: DevProgramArgs, eng: number, r: Run, npages: number): Promise<boolean> {
  r.faults++;
  const f = device_fault(a.dev, eng, device_miss.addr, npages, device_miss.flags);
  const ret = typeof f === 'number' ? f : await f;
  if (ret === -EDEADLK) {
    r.livelock = true;
    return false;
  }
  if (ret < 0) {
    r.errors++;
    r.lastError = ret;
  }
  // The engine replays the access: a scheduling point per round, and once the same page has
  // retried before, a short back-off, so a retry storm never starves whoever it waits for.
  const again = ret === 0 && k.arena.i32[engine_at(a.dev, eng) + EngL.live_rounds] > 1;
  const p = again ? k.sched.sleep(a.retryNs ?? 1000) : k.sched.point();
  if (p !== undefined) await p;
  return true;
}

function finish(k: Kernel, a: DevProgramArgs, r: Run): void {
  if (a.resultAt === undefined) return;
  const w = k.arena.i32;
  const at = a.resultAt;
  w[at + ResL.pages] = r.pages;
  w[at + ResL.errors] = r.errors;
  w[at + ResL.last_error] = r.lastError;
  w[at + ResL.sum] = r.sum;
  w[at + ResL.faults] = r.faults;
  w[at + ResL.livelock] = r.livelock ? 1 : 0;
  Atomics.store(w, at + ResL.done, 1);
  k.sched.wake(at + ResL.done, Infinity);
}

/**
 * Access [addr, addr + n pages) until done, faulting what misses; a page whose fault fails is
 * skipped. Returns false if the program must end.
 */
async function accessRange(k: Kernel, a: DevProgramArgs, eng: number, op: number, addr: number, n: number, value: number, r: Run, burst: number): Promise<boolean> {
  const ps = k.mmLayer.pageSize;
  const w = k.arena.i32;
  const word = a.word ?? 0;
  let left = n;
  while (left > 0) {
    if (stopped(w, a)) return false;
    const want = Math.min(burst, left);
    const done = a.holdNs ? await device_access_held(a.dev, eng, addr, want, op, word, value, a.holdNs) : device_access(a.dev, eng, addr, want, op, word, value);
    if (op === DEV_READ) r.sum = (r.sum + device_read_sum()) | 0;
    r.pages += done;
    addr += done * ps;
    left -= done;
    if (done < want) {
      const missed = device_miss.addr;
      const errorsBefore = r.errors;
      if (!(await fault(k, a, eng, r, Math.min(a.faultPages ?? want - done, left)))) return false;
      if (r.errors !== errorsBefore && missed === addr) {
        addr += ps; // the page cannot be faulted in: skip it
        left--;
      }
      continue;
    }
    await idle(k, a, done);
  }
  return true;
}

function begin(ctx: TaskContext<DevProgramArgs>): { eng: number; r: Run } {
  const eng = ctx.args.engine ?? 0;
  device_engine_attach(ctx.args.dev, eng);
  return { eng, r: { pages: 0, errors: 0, lastError: 0, sum: 0, faults: 0, livelock: false } };
}

/** Stream over the range `iters` times. */
export async function dev_stream(ctx: TaskContext<DevProgramArgs>): Promise<void> {
  const { k, args: a } = ctx;
  const { eng, r } = begin(ctx);
  const op = OPS[a.op ?? 'read'];
  try {
    for (let it = 0; it < (a.iters ?? 1); it++) {
      if (!(await accessRange(k, a, eng, op, a.start, a.npages, a.value ?? it + 1, r, Math.max(1, a.burst ?? 16)))) break;
    }
  } finally {
    finish(k, a, r);
  }
}

/** xorshift32 */
function rng(seed: number): (n: number) => number {
  let s = seed | 0 || 0x2545f491;
  return (n) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
}

/** Random single-page accesses: npages * iters of them. */
export async function dev_random(ctx: TaskContext<DevProgramArgs>): Promise<void> {
  const { k, args: a } = ctx;
  const { eng, r } = begin(ctx);
  const op = OPS[a.op ?? 'read'];
  const ps = k.mmLayer.pageSize;
  const rnd = rng(a.seed ?? ctx.task.id);
  try {
    for (let i = 0; i < a.npages * (a.iters ?? 1); i++) {
      if (!(await accessRange(k, a, eng, op, a.start + rnd(a.npages) * ps, 1, a.value ?? i + 1, r, 1))) break;
    }
  } finally {
    finish(k, a, r);
  }
}

/** DMA-copy [start, start + npages) to [dst, ...) `iters` times, a burst at a time. */
export async function dev_dma_copy(ctx: TaskContext<DevProgramArgs>): Promise<void> {
  const { k, args: a } = ctx;
  const { eng, r } = begin(ctx);
  const ps = k.mmLayer.pageSize;
  const w = k.arena.i32;
  const burst = Math.max(1, a.burst ?? 16);
  if (a.dst === undefined) throw new TypeError('dev_dma_copy needs dst');
  try {
    outer: for (let it = 0; it < (a.iters ?? 1); it++) {
      let i = 0;
      while (i < a.npages) {
        if (stopped(w, a)) break outer;
        const want = Math.min(burst, a.npages - i);
        const done = device_copy(a.dev, eng, a.start + i * ps, a.dst + i * ps, want);
        r.pages += done;
        i += done;
        if (done < want) {
          const missed = device_miss.addr;
          const errorsBefore = r.errors;
          if (!(await fault(k, a, eng, r, 1))) break outer;
          if (r.errors !== errorsBefore && (missed === a.start + i * ps || missed === a.dst + i * ps)) i++; // skip the page
          continue;
        }
        await idle(k, a, done);
      }
    }
  } finally {
    finish(k, a, r);
  }
}

// ---- spawning ------------------------------------------------------------------------------------

/** What spawns tasks: a SimScheduler or ThreadsRunner from the boot context, or k.sched in a task. */
export interface Spawner {
  spawn<A>(spec: TaskSpec<A>): Task;
}

let programsPath: string | null = null;
/** this module's path: the `module` of the built-in programs and the fault task */
export function deviceProgramsModule(): string {
  return (programsPath ??= fileURLToPath(import.meta.url));
}

/**
 * Start a device engine task on slot `engine` running a program: a built-in name
 * ('dev_stream', 'dev_random', 'dev_dma_copy') or { module, fn } of your own (a TaskFn that
 * calls device_engine_attach and the access API).
 */
export function spawnDeviceProgram(k: Kernel, spawner: Spawner, program: string | { module: string; fn: string }, args: DevProgramArgs): Task {
  const eng = args.engine ?? 0;
  const mod = typeof program === 'string' ? deviceProgramsModule() : program.module;
  const fn = typeof program === 'string' ? program : program.fn;
  const t = spawner.spawn({ name: `${device_name(k, args.dev)}:e${eng}`, kind: 'device', module: mod, fn, args: { ...args, engine: eng } });
  // recorded at once, so a device_close before the task runs still waits for it
  Atomics.store(k.arena.i32, engine_at(args.dev, eng) + EngL.task, t.id);
  return t;
}

/** Start the device's fault task: from now on its engines queue their faults for it. */
export function spawnDeviceFaultTask(k: Kernel, spawner: Spawner, dev: number): Task {
  const t = spawner.spawn({ name: `${device_name(k, dev)}:fault`, kind: 'driver', module: faultModule(), fn: 'device_fault_task', args: { dev } });
  Atomics.store(k.arena.i32, dev + DevL.fault_task, t.id);
  return t;
}

let faultPath: string | null = null;
function faultModule(): string {
  return (faultPath ??= fileURLToPath(new URL('./fault.' + (import.meta.url.endsWith('.ts') ? 'ts' : 'js'), import.meta.url)));
}

