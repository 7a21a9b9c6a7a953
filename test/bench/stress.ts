// stress_ops_per_s_checked / _unchecked: `shadowmm stress` with every reference driver under
// `threads` for 10 s each, in this one process: first with every check on (the mirror
// invariant at each device access, lockdep), then with both off (a speed run). Ops = CPU
// operations + device page accesses, per second of the run (worker start-up not counted).
// The violations each run reported are returned too (userptr keeps i915's pre-5.13 race on
// purpose, so a checked run may report its mirror-invariant records; the unchecked run has no
// mirror check to see them).

import { runStress } from '../../src/run/stress.js';

export interface StressBench {
  stress_ops_per_s_checked: number;
  stress_ops_per_s_unchecked: number;
  stress_cpu_ops_per_s_checked: number;
  stress_violations_checked: number;
}

export async function benchStress(durationMs = 10_000): Promise<StressBench> {
  const checked = await runStress({ durationMs, scheduler: 'threads', quiet: true });
  const unchecked = await runStress({ durationMs, scheduler: 'threads', quiet: true, checks: false });
  const secs = (durationMs * 1) / 1000;
  return {
    stress_ops_per_s_checked: checked.report.ops.perSecond,
    stress_ops_per_s_unchecked: unchecked.report.ops.perSecond,
    stress_cpu_ops_per_s_checked: Math.round(checked.report.ops.cpu.total / secs),
    stress_violations_checked: checked.violations.length,
  };
}
