// The scenario runner under `sim` (src/run/scenario*.ts, src/check): each built-in scenario
// over several seeds with its expected outcome (reference §9 scenarios 1-2, 10-13 and 16);
// determinism (same seed, same event hash); the verdicts the runner gives a planted problem
// (leak, WARN expected and not, an expected violation that never comes, AB-BA deadlock, a
// failing check(), an OOM kill with the runner's services); violation records; and the
// ScenarioErrors of bad scenarios, each naming the file and the field. The `threads` runs are
// in test/scenario_threads.test.ts.

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ScenarioError, defineScenario, type ScenarioSpec } from '../src/run/scenario.js';
import { loadScenario } from '../src/run/scenario_load.js';
import { runScenario, runSeeded, type ScenarioRunOutcome } from '../src/run/scenario_run.js';
import { builtinScenarios } from '../src/scenarios/index.js';
import { formatRun } from '../src/check/format.js';
import { buildReport, reportRun } from '../src/check/report.js';

const SEEDS = [1, 2, 3, 4];
const FIX = (f: string): string => fileURLToPath(new URL(`./fixtures/scenarios/${f}`, import.meta.url));

const dump = (o: ScenarioRunOutcome): string => JSON.stringify({ status: o.status, found: o.found, checkFailures: o.checkFailures, leaks: o.leaks, v: o.violations.map((v) => v.message.slice(0, 600)) }, null, 1);

/** The outcome a clean run must have. */
function expectOk(o: ScenarioRunOutcome, found: Record<string, number> | string[] = []): void {
  expect(o.ok, dump(o)).toBe(true);
  expect(o.status).toBe('done');
  expect(o.checkFailures).toEqual([]);
  expect(o.leaks).toEqual([]);
  if (Array.isArray(found)) expect(Object.keys(o.found).sort()).toEqual([...found].sort());
  else expect(o.found).toEqual(found);
}

describe('built-in scenarios (sim)', () => {
  it('the list names the six built-in scenarios, each loading from its own module', async () => {
    expect(builtinScenarios().map((b) => b.name)).toEqual(['smoke', 'two-notifiers', 'interval-updates', 'oom-reap', 'reclaim-recursion', 'swap-roundtrip']);
    for (const b of builtinScenarios()) expect((await loadScenario(b.name)).scenario.name).toBe(b.name);
  });

  for (const seed of SEEDS) {
    it(`seed ${seed}: smoke (§9 scenarios 1-2): dmirror READ faults once for all pages, WRITE faults none; clean, nothing leaked`, async () => {
      const o = await runScenario(await loadScenario('smoke'), { seed });
      expectOk(o);
      expect(o.counters['events.dev_install']).toBeGreaterThan(0);
      expect(o.replay).toMatch(new RegExp(`^shadowmm replay smoke --seed ${seed} --hash 0x[0-9a-f]{8}$`));
    });

    it(`seed ${seed}: two-notifiers v4.19 (§9 scenario 16): A's count stays raised, its vCPU livelocks; reported as liveness and unpaired starts, as expected`, async () => {
      const o = await runScenario(await loadScenario('two-notifiers'), { seed, variant: 'v4.19' });
      expectOk(o, ['liveness', 'notifier_pairing']);
      const live = o.violations.find((v) => v.kind === 'liveness')!;
      expect(live.message).toMatch(/^INFO: device livelock: vm0@[0-9a-f]+ \(kvm-mmu\) engine 0/);
      expect(live.message).toContain('an invalidate_range_start never got its invalidate_range_end');
      for (const v of o.violations.filter((x) => x.kind === 'notifier_pairing')) expect(v.message).toMatch(/unpaired start: kvm-mmu\.invalidate_range_start succeeded .* A\/B problem/);
    });

    it(`seed ${seed}: two-notifiers v5.12 (§9 scenario 16): the core calls A's end; clean`, async () => {
      expectOk(await runScenario(await loadScenario('two-notifiers'), { seed, variant: 'v5.12' }));
    });

    it(`seed ${seed}: interval-updates (§2.4, §9 scenarios 10-13): deferred insert, forced-odd insert, removes mid-invalidation, a hole in an interval; clean and check() holds`, async () => {
      expectOk(await runScenario(await loadScenario('interval-updates'), { seed }));
    });
  }

  for (const seed of [5, 6]) {
    it(`seed ${seed} (pct, depth 3): every built-in scenario and variant is as expected`, async () => {
      for (const name of ['smoke', 'interval-updates', 'two-notifiers']) {
        const l = await loadScenario(name);
        for (const variant of l.scenario.variants ? Object.keys(l.scenario.variants) : [null]) {
          const o = await runScenario(l, { seed, variant, strategy: 'pct', pctDepth: 3 });
          expect(o.ok, `${name} ${variant}: ${dump(o)}`).toBe(true);
          expect(o.replay).toContain('--strategy pct --depth 3');
        }
      }
    });
  }
});

describe('determinism and the serializable entry', () => {
  it('the same seed gives the same run event for event (same hash, events, steps); another seed a different one', async () => {
    const l = await loadScenario('interval-updates');
    const [a, b, c] = [await runScenario(l, { seed: 3 }), await runScenario(l, { seed: 3 }), await runScenario(l, { seed: 4 })];
    expect([b.result.eventHash, b.result.events, b.result.steps]).toEqual([a.result.eventHash, a.result.events, a.result.steps]);
    expect(c.result.eventHash).not.toBe(a.result.eventHash);
    const t = await loadScenario('two-notifiers');
    const x = await runScenario(t, { seed: 2, variant: 'v4.19', strategy: 'pct', pctDepth: 2 });
    const y = await runScenario(t, { seed: 2, variant: 'v4.19', strategy: 'pct', pctDepth: 2 });
    expect(y.result.eventHash).toBe(x.result.eventHash);
    expect(y.violations.map((v) => v.message)).toEqual(x.violations.map((v) => v.message));
  });

  it('runSeeded takes only serializable inputs and returns a structured-cloneable outcome with the same event hash', async () => {
    const direct = await runScenario(await loadScenario('two-notifiers'), { seed: 7, variant: 'v4.19' });
    const o = await runSeeded({ scenario: 'two-notifiers', variant: 'v4.19', seed: 7 });
    const copy = structuredClone(o);
    expect(copy.result.eventHash).toBe(direct.result.eventHash);
    expect(copy.found).toEqual(direct.found);
    const file = await runSeeded({ scenario: 'test/fixtures/scenarios/user_mirror.ts', cwd: fileURLToPath(new URL('..', import.meta.url)), seed: 1 });
    expect(file.ok, dump(file)).toBe(true);
  });
});

describe('violation records and the summary', () => {
  it('a klog violation names its task with the events before the report, the seed and the replay command; the summary prints it kernel style', async () => {
    const o = await runScenario(await loadScenario('two-notifiers'), { seed: 1, variant: 'v4.19' });
    const v = o.violations.find((x) => x.kind === 'notifier_pairing')!;
    expect(v.seed).toBe(1);
    expect(v.replay).toMatch(/^shadowmm replay two-notifiers --seed 1 --variant v4\.19 --hash 0x[0-9a-f]{8}$/);
    expect(v.tasks[0].name).toBe('oom_reaper');
    const last = v.tasks[0].recent.at(-1)!;
    expect([last.type, last.a]).toEqual(['violation', v.klogIndex]); // cut at the report, not the end of the run
    const text = formatRun(reportRun(o));
    expect(text).toContain('------------[ notifier_pairing 1/2');
    expect(text).toContain('INFO: device livelock');
    expect(text).toContain('recent events of oom_reaper/');
    expect(text).toContain(`replay: ${o.replay}`);
    expect(text).toMatch(/verdict: OK \(as expected\)$/);
    const rep = buildReport([o], { version: 't', command: ['run'] });
    expect(rep.ok).toBe(true);
    expect(rep.runs[0].eventHash).toMatch(/^0x[0-9a-f]{8}$/);
  });
});

describe('verdicts on planted problems (test/fixtures/scenarios/checks.ts, sim)', () => {
  const run = async (variant: string, seed = 1): Promise<ScenarioRunOutcome> => runScenario(await loadScenario(FIX('checks.ts')), { seed, variant });

  it('clean: ok, and the runner-owned services (oom_reaper, kswapd) came and went', async () => {
    const o = await run('clean');
    expectOk(o);
    expect(o.notes).toEqual([]);
    expect(o.counters['run.tasks']).toBe(4); // cpu, oom_reaper, kswapd and the services supervisor, all ended (no teardown record)
  });

  it('a kmalloc object never freed is a teardown leak (check 7), kmemleak style; expected here', async () => {
    const o = await run('leak');
    expect(o.ok, dump(o)).toBe(true);
    expect(o.found).toEqual({ teardown_leak: 1 });
    expect(o.leaks![0]).toMatch(/^kmemleak: .*\n {2}kmalloc-8: \d+ before, \d+ after \(1 leaked\)/);
  });

  it('a WARN is ok when expected, a failure when not; an expected kind never reported is a failure', async () => {
    expect((await run('warn')).ok).toBe(true);
    const u = await run('warn-unexpected');
    expect([u.ok, u.unexpected, u.missing]).toEqual([false, ['warn'], []]);
    expect(u.violations[0].message).toMatch(/^WARNING: CPU: 0 PID: 2 at /);
    const m = await run('missing');
    expect([m.ok, m.unexpected, m.missing]).toEqual([false, [], ['warn']]);
  });

  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: AB-BA: status deadlock with the wait-for report and the lockdep cycle, as the variant expects; no teardown check`, async () => {
      const o = await run('deadlock', seed);
      expect(o.ok, dump(o)).toBe(true);
      expect(o.status).toBe('deadlock');
      expect(o.leaks).toBeNull();
      expect(o.result.report).toMatch(/wait-for cycle: (ab|ba)\/\d+ -> (ab|ba)\/\d+ -> (ab|ba)\/\d+/);
      expect(o.violations.find((v) => v.kind === 'lockdep_circular')!.message).toContain('WARNING: possible circular locking dependency detected');
    });

    it(`seed ${seed}: an OOM kill with the runner's oom_reaper: the victim is reaped, then the services stop and the run ends clean`, async () => {
      const o = await run('oom', seed);
      expectOk(o);
      expect([o.counters['oom.kills'], o.counters['oom.reaped']]).toEqual([1, 1]);
    });
  }

  it("check()'s messages are 'check_failed' violations naming the scenario", async () => {
    const o = await run('check-fails');
    expect(o.ok).toBe(true);
    expect(o.violations.map((v) => [v.kind, v.message])).toEqual([['check_failed', 'checks: planted: this check always fails']]);
  });
});

describe('bad scenarios: a ScenarioError naming the file and the field', () => {
  const base: ScenarioSpec<Record<string, unknown>, void> = { name: 'ok', description: 'fine', start() {} };
  const bad = (spec: unknown): ScenarioError => {
    try {
      defineScenario(spec as ScenarioSpec);
    } catch (e) {
      if (e instanceof ScenarioError) return e;
      throw e;
    }
    throw new Error('no error');
  };

  it('defineScenario rejects an unknown field (with a suggestion), a wrong type, and bad values deep in variants, limits and expect', () => {
    expect(bad({ ...base, strat: 1 })).toMatchObject({ field: 'strat', message: expect.stringContaining("did you mean 'start'?") });
    expect(bad({ ...base, name: 7 }).field).toBe('name');
    expect(bad({ ...base, name: 'Bad Name' }).field).toBe('name');
    expect(bad({ ...base, start: 'go' }).field).toBe('start');
    expect(bad({ ...base, config: { memm: {} } })).toMatchObject({ field: 'config.memm', message: expect.stringContaining("did you mean 'mem'?") });
    expect(bad({ ...base, variants: { a: { description: 'x', config: { mem: 4 } } } }).field).toBe('variants.a.config.mem');
    expect(bad({ ...base, variants: { a: { description: 'x', expect: { status: 'hung' } } } }).field).toBe('variants.a.expect.status');
    expect(bad({ ...base, variants: { a: { descripton: 'x' } } }).field).toBe('variants.a.descripton');
    expect(bad({ ...base, limits: { simTimeMs: -1 } }).field).toBe('limits.simTimeMs');
    expect(bad({ ...base, services: ['kswapd', 'cron'] }).field).toBe('services[1]');
    expect(bad({ ...base, schedulers: ['sim', 'fifo'] }).field).toBe('schedulers[1]');
    expect(bad({ ...base, args: { f: () => 1 } }).field).toBe('args');
    expect(() => defineScenario(base)).not.toThrow();
  });

  it('a .js file: unknown field, wrong value in a variant, no default export, a syntax error; each message names the file', async () => {
    const cases: [string, string, RegExp][] = [
      ['bad_unknown_field.js', 'strat', /field 'strat': unknown field \(did you mean 'start'\?\)/],
      ['bad_variant_type.js', 'variants.old.config.notifierPolicy', /must be 'v5\.12' or 'v4\.19', got "v3\.0"/],
      ['bad_no_default.js', 'default', /no default export/],
      ['bad_syntax.js', '', /cannot load the module/],
    ];
    for (const [file, field, msg] of cases) {
      const e = await loadScenario(FIX(file)).catch((x: unknown) => x);
      expect(e, file).toBeInstanceOf(ScenarioError);
      expect((e as ScenarioError).file).toBe(FIX(file));
      expect((e as ScenarioError).field).toBe(field);
      expect((e as ScenarioError).message.startsWith(`${FIX(file)}: `)).toBe(true);
      expect((e as ScenarioError).message).toMatch(msg);
    }
    await expect(loadScenario('no-such-scenario')).rejects.toThrow(/no built-in scenario 'no-such-scenario' \(built-in: smoke, two-notifiers, interval-updates/);
    await expect(loadScenario('./missing.ts')).rejects.toThrow(/missing\.ts: no such file/);
  });

  it('at run time: an unknown variant, a scheduler it does not support, a config that does not boot, a start() that throws, an unknown driver', async () => {
    const l = await loadScenario('two-notifiers');
    await expect(runScenario(l, { variant: 'v9' })).rejects.toMatchObject({ field: 'variants', file: l.module });
    await expect(runScenario(l, {})).rejects.toThrow(/has variants \(v4\.19, v5\.12\): name one/);
    const mk = (over: Partial<ScenarioSpec>): typeof l => ({ ...l, scenario: defineScenario({ ...base, ...over } as ScenarioSpec) });
    await expect(runScenario(mk({ schedulers: ['threads'] }), { scheduler: 'sim' })).rejects.toMatchObject({ field: 'schedulers' });
    await expect(runScenario(mk({ config: { maxTasks: 0 } }), {})).rejects.toMatchObject({ field: 'config', message: expect.stringContaining('maxTasks must be a whole number') });
    await expect(
      runScenario(
        mk({
          start() {
            throw new Error('boom');
          },
        }),
        {},
      ),
    ).rejects.toMatchObject({ field: 'start', message: expect.stringContaining('threw: boom') });
    const drv = await loadScenario(FIX('user_mirror.ts'));
    await expect(loadScenario(FIX('user_mirror.ts')).then((x) => x.drivers)).resolves.toEqual([fileURLToPath(new URL('./fixtures/devmirror.ts', import.meta.url))]);
    expect(drv.builtin).toBe(false);
    const { resolveDriver } = await import('../src/run/scenario_load.js');
    expect(() => resolveDriver('nvidia', FIX('x.ts'), 'drivers[0]')).toThrow(/field 'drivers\[0\]': no built-in driver 'nvidia'/);
  });
});

describe("a user's .ts scenario with its own driver file (sim)", () => {
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: loads, its driver file is loaded by path, the device streams and the run is clean`, async () => {
      expectOk(await runScenario(await loadScenario(FIX('user_mirror.ts')), { seed }));
    });
  }
});
