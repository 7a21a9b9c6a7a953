// The memory-pressure built-in scenarios (issue 5: oom-reap, reclaim-recursion,
// swap-roundtrip) under `sim`: every variant over seeds 1..8 and two PCT seeds with its outcome
// (reference §5 and §9 scenarios 15, 23, 25, 26; §3.3 and check 6 for swap), nothing leaked
// at teardown (the runner's check 7, plus swap and memcg usage in the scenarios' check()),
// and that their check() really tells outcomes apart. `threads` runs are in
// test/scenarios_pressure_threads.test.ts, the CLI in test/scenarios_pressure_cli.test.ts.

import { describe, expect, it } from 'vitest';
import { defineScenario, type ScenarioSpec } from '../src/run/scenario.js';
import { loadScenario, type LoadedScenario } from '../src/run/scenario_load.js';
import { runScenario, type ScenarioRunOutcome } from '../src/run/scenario_run.js';
import { builtinScenarios } from '../src/scenarios/index.js';
import { MAX_OOM_REAP_RETRIES } from '../src/mm/oom_kill.js';

const SEEDS = [1, 2, 3, 4, 5, 6, 7, 8];
const PCT = [11, 12];

const dump = (o: ScenarioRunOutcome): string => JSON.stringify({ status: o.status, found: o.found, checkFailures: o.checkFailures, leaks: o.leaks, report: o.result.report, v: o.violations.map((v) => v.message.slice(0, 800)) }, null, 1);

const loaded = new Map<string, LoadedScenario>();
async function load(name: string): Promise<LoadedScenario> {
  if (!loaded.has(name)) loaded.set(name, await loadScenario(name));
  return loaded.get(name)!;
}

async function run(name: string, variant: string, seed: number, pct = false): Promise<ScenarioRunOutcome> {
  return runScenario(await load(name), { seed, variant, ...(pct ? { strategy: 'pct' as const, pctDepth: 3 } : {}) });
}

/** As expected, check() holds, and (for a run that ended) nothing leaked. */
function expectOk(o: ScenarioRunOutcome, found: Record<string, number>): void {
  expect(o.ok, dump(o)).toBe(true);
  expect(o.checkFailures, dump(o)).toEqual([]);
  expect(o.found, dump(o)).toEqual(found);
  if (o.status === 'done') expect(o.leaks).toEqual([]);
}

describe('registration', () => {
  it('the three scenarios are built-ins with a one-line description and their variants', async () => {
    const names = builtinScenarios().map((b) => b.name);
    for (const [name, variants] of [
      ['oom-reap', ['reaped', 'unable', 'no-trylock']],
      ['reclaim-recursion', ['buggy', 'correct', 'forced']],
      ['swap-roundtrip', ['pageout', 'kswapd', 'clean-pte-write']],
    ] as const) {
      expect(names).toContain(name);
      const s = (await load(name)).scenario;
      expect(s.name).toBe(name);
      expect(s.description).not.toContain('\n');
      expect(Object.keys(s.variants!)).toEqual([...variants]);
      expect(s.schedulers).toBeUndefined(); // both
    }
  });
});

describe('oom-reap (§9 scenarios 15, 25, 26: memory.max lowered under an odp MR, umem_mutex held across the OOM)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: reaped: memcg OOM kills app, the reaper's non-blockable UNMAP is refused 3 times HZ/10 apart, the 4th reaps; §9.25 -EFAULT; usage 0, nothing leaked`, async () => {
      const o = await run('oom-reap', 'reaped', seed);
      expectOk(o, {});
      expect([o.counters['oom.kills'], o.counters['oom.reapAttempts'], o.counters['oom.reaped'], o.counters['oom.unableToReap']]).toEqual([1, 4, 1, 0]);
    });

    it(`seed ${seed}: unable: umem_mutex held past ${MAX_OOM_REAP_RETRIES} attempts: "unable to reap" naming the holder; the victim's exit frees everything`, async () => {
      const o = await run('oom-reap', 'unable', seed);
      expectOk(o, { oom_unable_to_reap: 1 });
      expect([o.counters['oom.kills'], o.counters['oom.reapAttempts'], o.counters['oom.reaped'], o.counters['oom.unableToReap']]).toEqual([1, MAX_OOM_REAP_RETRIES, 0, 1]);
      expect(o.violations[0].message).toMatch(/^oom_reaper: unable to reap pid:\d+ \(app\)\nShowing all locks held in the system:\n1 lock held by odp-pf\/\d+:\n #0: umem_odp->umem_mutex@/);
    });
  }

  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: no-trylock (today's mlx5/rxe): every non-blockable invalidation refused though umem_mutex is free: unable to reap, no lock held`, async () => {
      const o = await run('oom-reap', 'no-trylock', seed);
      expectOk(o, { oom_unable_to_reap: 1 });
      expect(o.violations[0].message).not.toContain('lock held by');
    });
  }
});

describe('reclaim-recursion (§6.1, §6.3, §9 scenario 23 with userptr: pinning under the object lock)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: buggy: lockdep reports object lock -> fs_reclaim against fs_reclaim -> invalidation map -> object lock at the first pin; no hang, nothing leaked`, async () => {
      const o = await run('reclaim-recursion', 'buggy', seed);
      expectOk(o, { lockdep_circular: 1 });
      const m = o.violations[0].message;
      expect(m).toContain('WARNING: possible circular locking dependency detected');
      expect(m).toMatch(/userptr-worker\/\d+ is trying to acquire lock:\n fs_reclaim@/);
      expect(m).toContain('(fs_reclaim) --> (mmu_notifier_invalidate_range_start) --> (&i915_mmu_notifier->lock) --> (fs_reclaim)');
    });

    it(`seed ${seed}: correct: GET_PAGES pins without the lock; reclaim takes the object's pages, get_pages retries; clean`, async () => {
      expectOk(await run('reclaim-recursion', 'correct', seed), {});
    });

    it(`seed ${seed}: forced: reclaim in the worker's own fault picks an object page: the deadlock report names the worker waiting on its own lock and the process waiting on the worker`, async () => {
      const o = await run('reclaim-recursion', 'forced', seed);
      expectOk(o, { deadlock: 1, lockdep_circular: 1, lockdep_recursive: 1 });
      expect([o.status, o.leaks]).toEqual(['deadlock', null]);
      const rep = o.result.report ?? '';
      expect(rep).toMatch(/^INFO: deadlock: no task can run and no timer is pending/);
      expect(rep).toMatch(/task app:\d+\.0\/\d+ blocked in word/);
      const self = /task (userptr-worker\/\d+) blocked in mutex on userptr->lock@[0-9a-f]+, held by (userptr-worker\/\d+) \(blocked\)/.exec(rep);
      expect(self?.[1], rep).toBe(self?.[2]);
      expect(rep).toContain(`wait-for cycle: ${self![1]} -> ${self![1]}`);
    });
  }
});

describe('swap-roundtrip (§3.3, §6.1, check 6: device-written data through swap and back)', () => {
  for (const seed of SEEDS) {
    for (const variant of ['pageout', 'kswapd']) {
      it(`seed ${seed}: ${variant}: every word the device wrote comes back, half through CPU faults, half through hmm_range_fault; no slot left`, async () => {
        expectOk(await run('swap-roundtrip', variant, seed), {});
      });
    }

    it(`seed ${seed}: clean-pte-write: the device's write through writable-clean PTEs is dropped by reclaim: one "BUG: lost write" per page, the old data read back`, async () => {
      const o = await run('swap-roundtrip', 'clean-pte-write', seed);
      expectOk(o, { data_integrity: 8 });
      for (const v of o.violations) expect(v.message).toMatch(/^BUG: lost write: pfn \d+ \(mm@[0-9a-f]+, addr 0x[0-9a-f]+\) is clean but differs from its swap copy/);
    });
  }
});

describe('PCT (depth 3): every variant of the three as expected', () => {
  for (const seed of PCT) {
    it(`seed ${seed}`, async () => {
      for (const name of ['oom-reap', 'reclaim-recursion', 'swap-roundtrip']) {
        const l = await load(name);
        for (const variant of Object.keys(l.scenario.variants!)) {
          const o = await run(name, variant, seed, true);
          expect(o.ok, `${name} [${variant}]: ${dump(o)}`).toBe(true);
          expect(o.replay).toContain('--strategy pct --depth 3');
        }
      }
    });
  }
});

describe('the outcomes are told apart', () => {
  /** The scenario with its check() fed another variant's view of the run. */
  function judgedAs(l: LoadedScenario, mutate: (end: Record<string, unknown>) => Record<string, unknown>): LoadedScenario {
    const s = l.scenario as ScenarioSpec<Record<string, unknown>, unknown>;
    return { ...l, scenario: defineScenario({ ...s, check: (end) => s.check!(mutate({ ...end, word: end.word, args: end.args }) as never) }) as never };
  }

  it('swap-roundtrip: the lost-write run judged as a clean one: check() reports every page whose words are not the device\'s', async () => {
    const l = judgedAs(await load('swap-roundtrip'), (end) => ({ ...end, args: { ...(end.args as object), cleanPte: false } }));
    const o = await runScenario(l, { seed: 1, variant: 'clean-pte-write' });
    expect(o.ok).toBe(false);
    const pages = o.checkFailures.filter((m) => /^page \d+ \((CPU|device) read-back\) word 0 is 0x[0-9a-f]+, expected 0x5a/.test(m));
    expect(pages.length, o.checkFailures.join('\n')).toBe(8);
  });

  it('oom-reap: the "unable" run judged as "reaped": check() reports the failed reap, the pages left and no -EFAULT', async () => {
    const l = judgedAs(await load('oom-reap'), (end) => ({ ...end, variant: 'reaped' }));
    const o = await runScenario(l, { seed: 1, variant: 'unable' });
    expect(o.ok).toBe(false);
    expect(o.checkFailures.join('\n')).toMatch(/reaped: 10 attempts, reaped 0, unable 1/);
    expect(o.checkFailures.join('\n')).toMatch(/§9\.25: a device fault on the reaped victim returned 0, expected -EFAULT/);
  });

  it('reclaim-recursion: the forced run under the buggy variant\'s expectation is a failure (status deadlock), and the buggy run under the correct one too (lockdep)', async () => {
    const l = await load('reclaim-recursion');
    const s = l.scenario as ScenarioSpec<Record<string, unknown>, unknown>;
    const v = s.variants!;
    const swapped = { ...l, scenario: defineScenario({ ...s, variants: { ...v, forced: { ...v.forced, expect: v.buggy.expect }, buggy: { ...v.buggy, expect: v.correct.expect } } }) as never };
    const f = await runScenario(swapped, { seed: 1, variant: 'forced' });
    expect([f.ok, f.statusOk, f.status]).toEqual([false, false, 'deadlock']);
    const b = await runScenario(swapped, { seed: 1, variant: 'buggy' });
    expect([b.ok, b.unexpected]).toEqual([false, ['lockdep_circular']]);
  });

  it('determinism: the same seed replays the same run (event hash) for each scenario', async () => {
    for (const [name, variant] of [['oom-reap', 'reaped'], ['reclaim-recursion', 'forced'], ['swap-roundtrip', 'kswapd']]) {
      const a = await run(name, variant, 3);
      const b = await run(name, variant, 3);
      expect([b.result.eventHash, b.result.steps], name).toEqual([a.result.eventHash, a.result.steps]);
    }
  });
});
