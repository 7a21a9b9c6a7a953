// explore_runs_per_s_1job / _2jobs: `shadowmm explore smoke` throughput, the way a user sees it
// (explore() as the command calls it: worker start-up included), with one worker and with two,
// in the same process. Each run is one seeded sim run of the built-in `smoke` scenario (boot,
// dmirror READ and WRITE, teardown, verdict); every run must meet its expectation, or the
// figures are refused.

import { explore, type ExploreSummary } from '../../src/run/explore.js';
import { progress } from './measure.js';

export interface ExploreBench {
  explore_runs_per_s_1job: number;
  explore_runs_per_s_2jobs: number;
  /** mean wall ms of one smoke run inside a worker (2-job pass) */
  explore_run_ms: number;
}

async function pass(runs: number, jobs: number, seedStart: number): Promise<ExploreSummary> {
  const s = await explore({ scenario: 'smoke', runs, jobs, seedStart });
  if (s.runs !== runs || s.failed !== 0) throw new Error(`explore smoke --jobs ${jobs}: ${s.failed} of ${s.runs} runs failed (${s.failures[0]?.headline ?? ''})`);
  progress(`explore smoke --runs ${runs} --jobs ${jobs}: ${s.runsPerS.toFixed(1)} runs/s, ${s.meanRunMs.toFixed(2)} ms per run in its worker`);
  return s;
}

export async function benchExplore(runs = 1000): Promise<ExploreBench> {
  await pass(40, 1, 1_000_000); // warm-up: the OS file cache, the JIT of this thread's side
  const one = await pass(runs, 1, 1);
  const two = await pass(runs, 2, 1);
  return {
    explore_runs_per_s_1job: Math.round(one.runsPerS * 10) / 10,
    explore_runs_per_s_2jobs: Math.round(two.runsPerS * 10) / 10,
    explore_run_ms: Math.round(two.meanRunMs * 100) / 100,
  };
}
