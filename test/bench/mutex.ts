// mutex_lock + mutex_unlock of an uncontended mutex by one task: the fast path every driver
// lock takes. With point 'sim' the loop runs inside a one-task `sim` run, so the path includes
// the sim scheduler's preemption point (which ticks the step count and clock but never
// switches here). With point 'none' it runs in the boot context, whose point() is a bare
// `return undefined` exactly like the threads scheduler's.
// The floor is the same two atomic read-modify-writes on the same arena with nothing else.

import { bootKernel } from '../../src/run/boot.js';
import { SimScheduler } from '../../src/sched/sim.js';
import { mutex_init, mutex_lock, mutex_unlock, type Mutex } from '../../src/sync/index.js';
import { median, nowNs, samples } from './measure.js';

const ITERS = 1_000_000;
const WARMUP = 5;
const REPS = 9;

export interface MutexBench {
  /** median ns per lock+unlock */
  ns: number;
  /** median ns per compare-and-swap + atomic sub on an arena word: the fast path's floor */
  floorNs: number;
}

function lockUnlock(m: Mutex, n: number): void {
  for (let i = 0; i < n; i++) {
    // one task: nothing can hold it, so the fast path must not hand back a promise
    if (mutex_lock(m) !== undefined) throw new Error('uncontended mutex_lock returned a promise');
    mutex_unlock(m);
  }
}

function rawAtomics(w: Int32Array, at: number, n: number): void {
  for (let i = 0; i < n; i++) {
    if (Atomics.compareExchange(w, at, 0, 1) !== 0) throw new Error('raw word not free');
    if (Atomics.sub(w, at, 1) !== 1) throw new Error('raw word had waiters');
  }
}

function perOp(fn: () => void): number {
  const t0 = nowNs();
  fn();
  return (nowNs() - t0) / ITERS;
}

export async function benchMutexUncontended(opts: { lockdep: boolean; point: 'sim' | 'none' }): Promise<MutexBench> {
  const k = bootKernel({ lockdep: opts.lockdep, events: false });
  const m = mutex_init(k, k.kmalloc.kzalloc(4), 'bench_mutex');
  const raw = k.kmalloc.kzalloc(4);
  const w = k.arena.i32;
  let ns: number[] = [];
  let floor: number[] = [];
  const body = async () => {
    ns = await samples(WARMUP, REPS, () => perOp(() => lockUnlock(m, ITERS)));
    floor = await samples(WARMUP, REPS, () => perOp(() => rawAtomics(w, raw, ITERS)));
  };
  if (opts.point === 'none') {
    await body();
  } else {
    // every mutex_lock is a scheduling step: lift the step bound past what the loop takes
    const sim = new SimScheduler(k, { seed: 1, maxSteps: Number.MAX_SAFE_INTEGER });
    sim.spawn({ name: 'bench', fn: body });
    const r = await sim.run();
    if (r.status !== 'done' || r.failed.length > 0) throw new Error(`mutex bench run ended '${r.status}': ${r.failed.map((f) => f.error).join('; ')}`);
  }
  return { ns: median(ns), floorNs: median(floor) };
}
