// `shadowmm explore` as a user runs it (the built bin under node): it finds each planted bug of
// the devices issue (test/fixtures/planted, as the user scenarios of
// test/fixtures/planted_scenarios) within a stated run budget, prints the failing seed with the
// replay command, and `shadowmm replay` of that seed reproduces the same violation with the
// same event hash. The clean twin explores clean; bad input exits 2 naming what was wrong.
//
// Budgets: measured over seeds 1..1000 (random walk, 2 workers); the largest gap between two
// failing seeds is the most runs any start seed needs, and each budget is 3x that (rounded up):
//   notrylock, zapnolock, gfpkernel, nolock: every run fails (gap 1) -> 3 runs
//   noretry, noseq: 70 of 1000 runs fail, largest gap 68           -> 210 runs
//   nofence: 147/1000, gap 26 -> 80 · noprot: 274/1000, gap 21 -> 65
//   nozap: 204/1000, gap 21 -> 65
//   PCT depth 3 (steps measured from the first seed): noseq 310/1000, gap 19 -> 60 runs
// `npm test` builds first; run alone, this suite needs `npm run build` done.

import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));
// the scenarios as built (.js): the built command and the scenario share one copy of the kernel
const SCENARIOS = 'dist/test/fixtures/planted_scenarios';

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

function shadowmm(...args: string[]): Result {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface Failure {
  seed: number;
  kinds: string[];
  headline: string;
  eventHash: string;
  replay: string;
}

interface Summary {
  scenario: string;
  runs: number;
  failed: number;
  jobs: number;
  byKind: Record<string, number>;
  failures: Failure[];
}

function summaryOf(r: Result): Summary {
  expect(r.stderr).toBe('');
  return JSON.parse(r.stdout) as Summary;
}

/** Run a printed replay command; it must reproduce `f`: its violation and its event hash. */
function expectReplayed(f: Failure, kind: string): void {
  const argv = f.replay.split(' ');
  expect(argv[0]).toBe('shadowmm');
  expect(argv).toContain('--hash');
  const r = shadowmm(...argv.slice(1));
  expect(r.stderr).toBe('');
  expect(r.status, r.stdout).toBe(1); // a violation: the run is not as its scenario expects
  expect(r.stdout).toContain(`event hash ${f.eventHash} matches the recorded run`);
  expect(r.stdout).toMatch(new RegExp(`unexpected: [^)]*\\b${kind}\\b`));
  // the same violation: its headline, word for word
  expect(r.stdout).toContain(f.headline.slice(f.headline.indexOf(': ') + 2));
}

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run 'npm run build' (npm test does it for you)`);
});

interface Planted {
  file: string;
  what: string;
  kind: string;
  budget: number;
}

// the devices issue's planted bugs a-g (test/planted.test.ts), then nozap and nolock (device.test.ts)
const PLANTED: Planted[] = [
  { file: 'notrylock', what: 'a: no trylock in the non-blockable path', kind: 'might_sleep', budget: 3 },
  { file: 'noseq', what: 'b: no mmu_interval_set_seq', kind: 'mirror_invariant', budget: 210 },
  { file: 'zapnolock', what: 'c: zapping without the lock', kind: 'lockdep_assert', budget: 3 },
  { file: 'nofence', what: 'd: returning before in-flight accesses drain', kind: 'mirror_invariant', budget: 80 },
  { file: 'noprot', what: 'e: ignoring PROTECTION events', kind: 'mirror_invariant', budget: 65 },
  { file: 'gfpkernel', what: 'f: GFP_KERNEL under the notifier lock', kind: 'lockdep_circular', budget: 3 },
  { file: 'noretry', what: 'g: no mmu_interval_read_retry', kind: 'retry_protocol', budget: 210 },
  { file: 'nozap', what: 'no zap in the invalidation', kind: 'mirror_invariant', budget: 65 },
  { file: 'nolock', what: 'installing without the notifier lock', kind: 'retry_protocol', budget: 3 },
];

describe('explore finds each planted bug within its run budget, and replay reproduces it', () => {
  for (const p of PLANTED) {
    it(`${p.what}: found within ${p.budget} runs ('${p.kind}'), replayed with the same violation and event hash`, () => {
      const r = shadowmm('explore', `${SCENARIOS}/${p.file}.js`, '--runs', String(p.budget), '--jobs', '2', '--until-fail', '--json');
      const s = summaryOf(r);
      expect(r.status).toBe(1);
      expect(s.scenario).toBe(`planted-${p.file}`);
      expect(s.failed).toBeGreaterThan(0);
      expect(s.runs).toBeLessThanOrEqual(p.budget);
      const f = s.failures[0];
      expect(f.seed).toBeGreaterThanOrEqual(1);
      expect(f.seed).toBeLessThanOrEqual(p.budget);
      expect(f.kinds).toContain(p.kind);
      expect(f.replay).toBe(`shadowmm replay ${SCENARIOS}/${p.file}.js --seed ${f.seed} --hash ${f.eventHash}`);
      expectReplayed(f, p.kind);
    });
  }

  it('PCT (depth 3) finds b (no set_seq) within 60 runs; the printed seed replays under PCT with the same hash', () => {
    const r = shadowmm('explore', `${SCENARIOS}/noseq.js`, '--runs', '60', '--jobs', '2', '--strategy', 'pct', '--depth', '3', '--quiet');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(1);
    // the human form: the failing seed with its headline, then its replay command
    const m = /^FAIL seed (\d+) \(events (0x[0-9a-f]{8})\): (mirror_invariant: BUG: mirror invariant: .*)\n {2}replay: (shadowmm replay .*)$/m.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    const [, seed, eventHash, headline, replay] = m!;
    expect(Number(seed)).toBeLessThanOrEqual(60);
    expect(replay).toMatch(new RegExp(`--seed ${seed} --strategy pct --depth 3 --pct-steps \\d+ --hash ${eventHash}$`));
    expect(r.stdout).toMatch(/sim runs \(seeds from 1, PCT depth 3 over \d+ steps\)/);
    expect(r.stdout).toMatch(/mirror_invariant +\d+ runs? +first seed \d+/);
    expectReplayed({ seed: Number(seed), kinds: ['mirror_invariant'], headline, eventHash, replay }, 'mirror_invariant');
  });
});

describe('explore from source (in this process)', () => {
  it('the workers load a .ts user scenario and its .ts driver through tsx, and find e (PROTECTION ignored) within 65 runs', async () => {
    const { explore } = await import('../src/run/explore.js');
    const s = await explore({ scenario: 'test/fixtures/planted_scenarios/noprot.ts', cwd: ROOT, runs: 65, jobs: 2, untilFail: true });
    expect(s.failed).toBeGreaterThan(0);
    expect(s.failures[0].kinds).toEqual(['mirror_invariant']);
    expect(s.failures[0].replay).toMatch(/^shadowmm replay test\/fixtures\/planted_scenarios\/noprot\.ts --seed \d+ --hash 0x[0-9a-f]{8}$/);
  });
});

describe('explore of clean scenarios', () => {
  it('the clean twin (every race on the correct driver) passes 40 random-walk and 40 PCT runs: exit 0', () => {
    for (const extra of [[], ['--strategy', 'pct', '--depth', '3']]) {
      const r = shadowmm('explore', `${SCENARIOS}/twin.js`, '--runs', '40', '--jobs', '2', ...extra);
      expect(r.stderr).toBe('');
      expect(r.status, r.stdout).toBe(0);
      expect(r.stdout).toMatch(/explore planted-twin: 40 sim runs .* on 2 workers/);
      expect(r.stdout).toContain("every run met the scenario's expectation");
      expect(r.stdout).not.toContain('FAIL');
    }
  });

  it('the built-in smoke scenario with --jobs 1 runs on one worker, seeds from --seed-start', () => {
    const s = summaryOf(shadowmm('explore', 'smoke', '--runs', '12', '--jobs', '1', '--seed-start', '100', '--json'));
    expect(s).toMatchObject({ scenario: 'smoke', runs: 12, failed: 0, jobs: 1, seedStart: 100, failures: [] });
  });

  it('--until-fail stops soon after the first failing run', () => {
    const s = summaryOf(shadowmm('explore', `${SCENARIOS}/notrylock.js`, '--runs', '1000', '--jobs', '2', '--until-fail', '--json'));
    expect(s.failed).toBeGreaterThan(0);
    expect(s.runs).toBeLessThanOrEqual(8); // the runs already in flight (2 per worker) finish
    expect(s.byKind).toEqual({ might_sleep: s.failed });
  });
});

describe('explore: bad input exits 2 naming what was wrong', () => {
  const cases: [string, string[], RegExp][] = [
    ['an unknown strategy', ['smoke', '--strategy', 'dfs'], /--strategy must be one of random, pct, got 'dfs'/],
    ['--runs 0', ['smoke', '--runs', '0'], /--runs must be a whole number from 1 to \d+, got '0'/],
    ['--jobs abc', ['smoke', '--jobs', 'abc'], /--jobs must be a whole number from 1 to 1024, got 'abc'/],
    ['--depth without PCT', ['smoke', '--depth', '3'], /--depth applies to --strategy pct only/],
    ['no scenario', [], /name a scenario/],
    ['a missing scenario file', ['test/fixtures/planted_scenarios/nosuch.ts'], /planted_scenarios\/nosuch\.ts: no such file/],
    ['an unknown built-in scenario', ['smok'], /no built-in scenario 'smok'/],
    ['an unknown variant', ['smoke', '--variant', 'fast'], /no variant 'fast' in scenario 'smoke'/],
  ];
  for (const [what, args, message] of cases) {
    it(what, () => {
      const r = shadowmm('explore', ...args);
      expect(r.status, r.stdout + r.stderr).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toMatch(/^\s+at /m); // no stack trace
      expect(r.stdout).toBe('');
    });
  }
});
