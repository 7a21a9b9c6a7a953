// `sim` scheduling throughput: 4 tasks hand one mutex around. Each holds it across a
// preemption point (read the counter, point, write it back), so other tasks block on it and
// are woken at unlock: the switch, wait and wake paths all run. Figure: scheduling steps
// (the scheduler's own count) per wall second.

import { bootKernel } from '../../src/run/boot.js';
import { SimScheduler } from '../../src/sched/sim.js';
import { mutex_init, mutex_lock, mutex_unlock } from '../../src/sync/index.js';
import { median, nowNs, samples } from './measure.js';

const TASKS = 4;
const ITERS = 40_000; // per task
const WARMUP = 2;
const REPS = 7;

export interface SimBench {
  pointsPerS: number;
  stepsPerRun: number;
}

/** One run; returns its steps per wall second. */
async function onceSteps(seed: number, lockdep: boolean, events: boolean): Promise<{ perS: number; steps: number }> {
  const k = bootKernel({ lockdep, events });
  const m = mutex_init(k, k.kmalloc.kzalloc(4), 'bench_handoff');
  const counter = k.kmalloc.kzalloc(1);
  const w = k.arena.i32;
  const sim = new SimScheduler(k, { seed });
  for (let i = 0; i < TASKS; i++) {
    sim.spawn({
      name: `handoff${i}`,
      fn: async () => {
        for (let j = 0; j < ITERS; j++) {
          const p = mutex_lock(m);
          if (p !== undefined) await p;
          const v = w[counter];
          const q = k.sched.point();
          if (q !== undefined) await q;
          w[counter] = v + 1;
          mutex_unlock(m);
        }
      },
    });
  }
  const t0 = nowNs();
  const r = await sim.run();
  const dt = nowNs() - t0;
  if (r.status !== 'done' || w[counter] !== TASKS * ITERS) {
    throw new Error(`sim bench: run ended '${r.status}' with counter ${w[counter]}, expected ${TASKS * ITERS}`);
  }
  return { perS: (r.steps / dt) * 1e9, steps: r.steps };
}

/** Default kernel config (lockdep and event log on) unless told otherwise. */
export async function benchSimSchedPoints(opts: { lockdep?: boolean; events?: boolean } = {}): Promise<SimBench> {
  const lockdep = opts.lockdep ?? true;
  const events = opts.events ?? true;
  let seed = 1;
  let steps = 0;
  const xs = await samples(WARMUP, REPS, async () => {
    const r = await onceSteps(seed++, lockdep, events);
    steps = r.steps;
    return r.perS;
  });
  return { pointsPerS: median(xs), stepsPerRun: steps };
}
