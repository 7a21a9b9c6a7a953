// One way to get a runner for either scheduler: the same kernel, driver and scenario code
// runs under `sim` (deterministic, seeded) or `threads` (a Piscina worker per task).

import type { Kernel } from '../sched/kernel.js';
import type { Runner } from '../sched/scheduler.js';
import { SimScheduler, type SimOptions } from '../sched/sim.js';
import { ThreadsRunner, type ThreadsOptions } from './threads.js';

export type SchedulerKind = 'sim' | 'threads';

export type RunOptions = ({ scheduler: 'sim' } & SimOptions) | ({ scheduler: 'threads' } & ThreadsOptions);

export function createRunner(k: Kernel, opts: RunOptions): Runner {
  if (opts.scheduler === 'sim') {
    if (!Number.isInteger(opts.seed)) throw new TypeError(`sim runner: seed must be an integer, got ${String(opts.seed)}`);
    return new SimScheduler(k, opts);
  }
  if (opts.scheduler === 'threads') return new ThreadsRunner(k, opts);
  throw new TypeError(`unknown scheduler '${String((opts as { scheduler: unknown }).scheduler)}': use sim or threads`);
}
