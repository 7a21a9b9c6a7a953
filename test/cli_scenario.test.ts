// `shadowmm list`, `run` and `replay` as a user runs them: the built bin under node, its exit
// codes, what it prints, the --report file checked against docs/report-schema.json, and the
// messages for bad input. A user's .ts scenario written against the package ('shadowmm')
// loads through tsx in the command and in every `threads` worker. `npm test` builds first;
// run alone, this suite needs `npm run build` done.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Report } from '../src/check/report.js';
import { validate } from './json_schema.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));
const SCHEMA = JSON.parse(readFileSync(new URL('../docs/report-schema.json', import.meta.url), 'utf8')) as Record<string, unknown>;
const PKG = 'test/cli_fixtures/pkg_scenario.ts';
let TMP = '';

function shadowmm(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `shadowmm replay ...` as printed, split into arguments (the printer quotes only odd paths). */
const replayArgs = (line: string): string[] => line.replace(/^shadowmm /, '').split(' ');
const printedReplay = (stdout: string): string => /^replay: (shadowmm replay .*)$/m.exec(stdout)![1];

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run 'npm run build' (npm test does it for you)`);
  TMP = mkdtempSync(join(tmpdir(), 'shadowmm-cli-'));
});
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

describe('shadowmm list', () => {
  it('prints each built-in scenario and driver on one line; --json parses', () => {
    const r = shadowmm('list');
    expect([r.status, r.stderr]).toEqual([0, '']);
    for (const name of ['smoke', 'two-notifiers', 'interval-updates', 'dmirror', 'odp', 'gpusvm', 'kvm-mmu', 'userptr']) expect(r.stdout).toMatch(new RegExp(`^  ${name} +\\S`, 'm'));
    expect(r.stdout).toContain('(variants: v4.19, v5.12)');
    const j = JSON.parse(shadowmm('list', '--json').stdout) as { scenarios: { name: string }[]; drivers: { name: string }[] };
    expect(j.scenarios.map((s) => s.name)).toEqual(['smoke', 'two-notifiers', 'interval-updates', 'oom-reap', 'reclaim-recursion', 'swap-roundtrip']);
    expect(j.drivers).toHaveLength(5);
  });

  it('--help names list, run and replay; run --help documents its options and exit codes', () => {
    const h = shadowmm('--help').stdout;
    for (const c of ['list', 'run', 'replay']) expect(h).toMatch(new RegExp(`^\\s+${c}\\s+\\S`, 'm'));
    const r = shadowmm('run', '--help');
    expect(r.status).toBe(0);
    for (const o of ['--scheduler sim|threads', '--seed N', '--variant V', '--report FILE', '--json', '--quiet']) expect(r.stdout).toContain(o);
    expect(r.stdout).toContain('Without --variant every variant');
    expect(r.stdout).toMatch(/Exits 0 .* 1 otherwise, 2 on a usage or scenario error/);
  });
});

describe('shadowmm run', () => {
  it('smoke: exit 0, a clean summary with the counters and the replay command', () => {
    const r = shadowmm('run', 'smoke');
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout).toMatch(/^== smoke · sim seed 1 ==$/m);
    expect(r.stdout).toMatch(/^run: done after [\d,]+ steps, .* event hash 0x[0-9a-f]{8}$/m);
    expect(r.stdout).toMatch(/^counters: run\.steps /m);
    expect(r.stdout).toMatch(/^replay: shadowmm replay smoke --seed 1 --hash 0x[0-9a-f]{8}$/m);
    expect(r.stdout.trimEnd()).toMatch(/verdict: OK \(as expected\)$/);
  });

  it('two-notifiers, every variant: exit 0 (v4.19 reports exactly what it expects, kernel style); --report matches the schema', () => {
    const file = join(TMP, 'two.json');
    const r = shadowmm('run', 'two-notifiers', '--seed', '2', '--report', file);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout).toContain('== two-notifiers [v4.19] · sim seed 2 ==');
    expect(r.stdout).toContain('== two-notifiers [v5.12] · sim seed 2 ==');
    expect(r.stdout).toContain('mmu_notifier: unpaired start: kvm-mmu.invalidate_range_start succeeded');
    expect(r.stdout).toContain('INFO: device livelock: vm0@');
    expect(r.stdout).toContain('violations: notifier_pairing x2, liveness x1; expected: liveness, notifier_pairing');
    const rep = JSON.parse(readFileSync(file, 'utf8')) as Report;
    expect(validate(SCHEMA, rep)).toEqual([]);
    expect([rep.schema, rep.ok, rep.runs.map((x) => [x.variant, x.ok, x.status])]).toEqual(['shadowmm-report/1', true, [['v4.19', true, 'done'], ['v5.12', true, 'done']]]);
    expect(rep.runs[0].violations.map((v) => v.kind).sort()).toEqual(['liveness', 'notifier_pairing', 'notifier_pairing']);
    expect(rep.runs[0].replay).toBe(`shadowmm replay two-notifiers --seed 2 --variant v4.19 --hash ${rep.runs[0].eventHash}`);
  });

  it("a user's .ts scenario importing the package: the unexpected WARN fails the run (exit 1, also --json), the clean variant passes (exit 0)", () => {
    const r = shadowmm('run', PKG, '--json');
    expect([r.status, r.stderr]).toEqual([1, '']);
    const rep = JSON.parse(r.stdout) as Report;
    expect(validate(SCHEMA, rep)).toEqual([]);
    expect(rep.ok).toBe(false);
    expect(rep.runs.map((x) => [x.variant, x.ok, x.unexpected])).toEqual([['clean', true, []], ['warn', false, ['warn']]]);
    expect(rep.runs[1].violations[0].message).toBe('WARNING: CPU: 0 PID: 2 at pkg_scenario.ts watcher: WARN_ON(planted)');
    expect(shadowmm('run', PKG, '--variant', 'clean', '--quiet')).toMatchObject({ status: 0, stdout: 'pkg-user [clean]: verdict: OK (as expected)\n' });
  });

  it("under --scheduler threads the user's .ts file loads in every worker through tsx: same verdicts", () => {
    const r = shadowmm('run', PKG, '--scheduler', 'threads', '--quiet');
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('pkg-user [clean]: verdict: OK (as expected)\npkg-user [warn]: verdict: FAIL (unexpected: warn)\n');
    expect(r.status).toBe(1);
  });
});

describe('shadowmm replay', () => {
  it('the replay command a run prints reruns it event for event: same hash, same verdict', () => {
    const run = shadowmm('run', 'interval-updates', '--seed', '3');
    expect(run.status).toBe(0);
    const cmd = printedReplay(run.stdout);
    const hash = /event hash (0x[0-9a-f]{8})/.exec(run.stdout)![1];
    expect(cmd).toBe(`shadowmm replay interval-updates --seed 3 --hash ${hash}`);
    const r = shadowmm(...replayArgs(cmd));
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout).toContain(`event hash ${hash} matches the recorded run`);
  });

  it('a failing seed replays to the same violation (exit 1); without --hash it runs twice and compares; a wrong hash is NOT REPRODUCED', () => {
    const run = shadowmm('run', PKG, '--variant', 'warn', '--seed', '5');
    expect(run.status).toBe(1);
    const r = shadowmm(...replayArgs(printedReplay(run.stdout)));
    expect(r.status).toBe(1);
    expect(r.stdout).toContain('WARNING: CPU: 0 PID: 2 at pkg_scenario.ts watcher: WARN_ON(planted)');
    expect(r.stdout).toContain('matches the recorded run');
    const twice = shadowmm('replay', 'two-notifiers', '--variant', 'v4.19', '--seed', '4', '--quiet');
    expect(twice.status).toBe(0);
    expect(twice.stdout).toMatch(/replayed event for event: \d+ events, event hash 0x[0-9a-f]{8} \(the same in a second run\)/);
    const wrong = shadowmm('replay', 'smoke', '--seed', '1', '--hash', '0x00000001', '--quiet');
    expect(wrong.status).toBe(1);
    expect(wrong.stdout).toMatch(/NOT REPRODUCED: event hash 0x[0-9a-f]{8}, the recorded run had 0x00000001/);
  });
});

describe('bad input: exit 2 with a message naming what is wrong, never a stack trace', () => {
  const cases: [string[], RegExp][] = [
    [['run', 'test/fixtures/scenarios/bad_unknown_field.js'], /bad_unknown_field\.js: field 'strat': unknown field \(did you mean 'start'\?\)/],
    [['run', 'test/fixtures/scenarios/bad_variant_type.js'], /bad_variant_type\.js: field 'variants\.old\.config\.notifierPolicy': must be 'v5\.12' or 'v4\.19', got "v3\.0"/],
    [['run', 'test/fixtures/scenarios/bad_no_default.js'], /bad_no_default\.js: field 'default': the module has no default export/],
    [['run', 'test/fixtures/scenarios/bad_syntax.js'], /bad_syntax\.js: cannot load the module: /],
    [['run', 'nosuch'], /no built-in scenario 'nosuch' \(built-in: smoke, two-notifiers, interval-updates/],
    [['run', 'nosuch.ts'], /nosuch\.ts: no such file/],
    [['run', 'two-notifiers', '--variant', 'v9'], /two_notifiers\.js: field 'variants': no variant 'v9' in scenario 'two-notifiers' \(variants: v4\.19, v5\.12\)/],
    [['run', 'smoke', '--seed', 'abc'], /run: --seed must be a whole number from 0 to 4294967295, got 'abc'/],
    [['run', 'smoke', '--scheduler', 'fifo'], /run: --scheduler must be sim or threads, got 'fifo'/],
    [['run', 'smoke', '--depth', '3'], /run: --depth applies to --strategy pct only/],
    [['run', 'smoke', 'two-notifiers'], /run: one scenario at a time/],
    [['run'], /run: name a scenario/],
    [['replay', 'smoke'], /replay: --seed is required/],
    [['replay', 'smoke', '--seed', '1', '--hash', 'zz'], /replay: --hash must be a 32-bit hex number/],
    [['replay', 'two-notifiers', '--seed', '1'], /replay: scenario 'two-notifiers' has variants \(v4\.19, v5\.12\): name one with --variant/],
  ];
  it.each(cases)('shadowmm %j', (args, msg) => {
    const r = shadowmm(...args);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^shadowmm: /);
    expect(r.stderr).toMatch(msg);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});
