// The memory-pressure built-in scenarios under `threads` (every task a Piscina worker loading
// the scenario module and its driver through tsx): oom-reap (the runner's oom_reaper in its
// own worker, the real OOM_REAPER_DELAY and HZ/10 sleeps: a few seconds each), reclaim-recursion
// (the forced deadlock is the watchdog's report). Each with its outcome and nothing leaked.
// swap-roundtrip's `threads` runs (kswapd in its own worker) go through the CLI in
// test/scenarios_pressure_cli.test.ts; the `sim` runs are in test/scenarios_pressure.test.ts.

import { describe, expect, it } from 'vitest';
import { loadScenario } from '../src/run/scenario_load.js';
import { runScenario, type ScenarioRunOutcome } from '../src/run/scenario_run.js';

const dump = (o: ScenarioRunOutcome): string => JSON.stringify({ status: o.status, found: o.found, checkFailures: o.checkFailures, leaks: o.leaks, notes: o.notes, report: o.result.report, v: o.violations.map((v) => v.message.slice(0, 600)) }, null, 1);

async function threads(name: string, variant: string): Promise<ScenarioRunOutcome> {
  return runScenario(await loadScenario(name), { scheduler: 'threads', variant });
}

function expectOk(o: ScenarioRunOutcome, found: Record<string, number>): void {
  expect(o.ok, dump(o)).toBe(true);
  expect([o.checkFailures, o.found, o.seed, o.replay, o.notes], dump(o)).toEqual([[], found, null, null, []]);
  if (o.status === 'done') expect(o.leaks).toEqual([]);
}

describe('oom-reap (threads)', () => {
  it('reaped (§9.15, §9.25): refused while umem_mutex is held, then reaped; -EFAULT afterwards; memcg usage 0, nothing leaked', async () => {
    const o = await threads('oom-reap', 'reaped');
    expectOk(o, {});
    expect([o.counters['oom.kills'], o.counters['oom.reaped'], o.counters['oom.unableToReap']]).toEqual([1, 1, 0]);
    expect(o.counters['oom.reapAttempts']).toBeGreaterThanOrEqual(4);
  }, 30_000);

  it('unable (§9.15): held past 10 attempts: "unable to reap" with umem_mutex held by odp-pf; nothing leaked', async () => {
    const o = await threads('oom-reap', 'unable');
    expectOk(o, { oom_unable_to_reap: 1 });
    expect([o.counters['oom.reapAttempts'], o.counters['oom.unableToReap']]).toEqual([10, 1]);
    expect(o.violations[0].message).toMatch(/1 lock held by odp-pf\/\d+:\n #0: umem_odp->umem_mutex@/);
  }, 30_000);
});

describe('reclaim-recursion (threads)', () => {
  it('buggy reports the lockdep cycle and ends; correct is clean; forced is a deadlock the watchdog reports with both waits', async () => {
    expectOk(await threads('reclaim-recursion', 'buggy'), { lockdep_circular: 1 });
    expectOk(await threads('reclaim-recursion', 'correct'), {});
    const f = await threads('reclaim-recursion', 'forced');
    expectOk(f, { deadlock: 1, lockdep_circular: 1, lockdep_recursive: 1 });
    expect([f.status, f.leaks]).toEqual(['deadlock', null]);
    const rep = f.result.report ?? '';
    expect(rep).toMatch(/^INFO: deadlock: every task is blocked and none made progress for \d+ ms/);
    expect(rep).toMatch(/task app:\d+\.0\/\d+ blocked in word/);
    expect(rep).toMatch(/task (userptr-worker\/\d+) blocked in mutex on userptr->lock@[0-9a-f]+, held by \1 \(blocked\)/);
  }, 30_000);
});
