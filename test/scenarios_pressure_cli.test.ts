// The memory-pressure built-in scenarios (oom-reap, reclaim-recursion, swap-roundtrip) as a
// user runs them: the built bin under node, `list`, `run` of every variant with its exit code
// and kernel-style output, a --json report checked against docs/report-schema.json, `replay`,
// and swap-roundtrip's `threads` runs. `npm test` builds first; run alone, this suite needs
// `npm run build` done.

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Report } from '../src/check/report.js';
import { validate } from './json_schema.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));
const SCHEMA = JSON.parse(readFileSync(new URL('../docs/report-schema.json', import.meta.url), 'utf8')) as Record<string, unknown>;

function shadowmm(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run 'npm run build' (npm test does it for you)`);
});

describe('shadowmm list', () => {
  it('names the three with a one-line description and their variants', () => {
    const r = shadowmm('list');
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout).toMatch(/^ {2}oom-reap +memory\.max lowered under an ODP MR.*\(variants: reaped, unable, no-trylock\)$/m);
    expect(r.stdout).toMatch(/^ {2}reclaim-recursion +userptr pins .*\(variants: buggy, correct, forced\)$/m);
    expect(r.stdout).toMatch(/^ {2}swap-roundtrip +device-written data survives .*\(variants: pageout, kswapd, clean-pte-write\)$/m);
  });
});

describe('shadowmm run (sim)', () => {
  it('oom-reap, every variant: exit 0; the memcg OOM kill, the reap, and "unable to reap" with the held umem_mutex, kernel style', () => {
    const r = shadowmm('run', 'oom-reap', '--seed', '2');
    expect([r.status, r.stderr]).toEqual([0, '']);
    for (const v of ['reaped', 'unable', 'no-trylock']) expect(r.stdout).toContain(`== oom-reap [${v}] · sim seed 2 ==`);
    expect(r.stdout).toMatch(/counters: .*oom\.kills 1 · oom\.reapAttempts 4 · oom\.reaped 1/);
    expect(r.stdout).toMatch(/------------\[ oom_unable_to_reap 1\/1 at [\d.]+ s \]------------\noom_reaper: unable to reap pid:\d+ \(app\)\nShowing all locks held in the system:\n1 lock held by odp-pf\/\d+:\n #0: umem_odp->umem_mutex@/);
    expect(r.stdout.match(/verdict: OK \(as expected\)/g)).toHaveLength(3);
  });

  it('reclaim-recursion --json: exit 0; buggy reports lockdep and ends, correct is clean, forced deadlocks as expected; the report matches the schema', () => {
    const r = shadowmm('run', 'reclaim-recursion', '--seed', '3', '--json');
    expect([r.status, r.stderr]).toEqual([0, '']);
    const rep = JSON.parse(r.stdout) as Report;
    expect(validate(SCHEMA, rep)).toEqual([]);
    expect(rep.ok).toBe(true);
    expect(rep.runs.map((x) => [x.variant, x.ok, x.status])).toEqual([
      ['buggy', true, 'done'],
      ['correct', true, 'done'],
      ['forced', true, 'deadlock'],
    ]);
    expect(rep.runs[0].violations.map((v) => v.kind)).toEqual(['lockdep_circular']);
    expect(rep.runs[2].violations.map((v) => v.kind).sort()).toEqual(['deadlock', 'lockdep_circular', 'lockdep_recursive']);
    expect(rep.runs[2].replay).toMatch(/^shadowmm replay reclaim-recursion --seed 3 --variant forced --hash 0x[0-9a-f]{8}$/);
  });

  it('reclaim-recursion forced, printed: the deadlock report with both waits and the worker\'s held locks', () => {
    const r = shadowmm('run', 'reclaim-recursion', '--variant', 'forced');
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout).toMatch(/^run: deadlock after [\d,]+ steps/m);
    expect(r.stdout).toMatch(/task app:\d+\.0\/\d+ blocked in word/);
    expect(r.stdout).toMatch(/task (userptr-worker\/\d+) blocked in mutex on userptr->lock@[0-9a-f]+, held by \1 \(blocked\)/);
    expect(r.stdout).toMatch(/#1: userptr->lock@[0-9a-f]+\n +#2: fs_reclaim@[0-9a-f]+\n +#3: mmu_notifier_invalidate_range_start@/);
    expect(r.stdout.trimEnd()).toMatch(/verdict: OK \(as expected\)$/);
  });

  it('swap-roundtrip clean-pte-write: exit 0 with one "BUG: lost write" per page (3 printed, the rest counted), expected', () => {
    const r = shadowmm('run', 'swap-roundtrip', '--variant', 'clean-pte-write', '--seed', '4');
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout.match(/^BUG: lost write: pfn \d+ .* is clean but differs from its swap copy/gm)).toHaveLength(3);
    expect(r.stdout).toContain('(5 more data_integrity: see --report)');
    expect(r.stdout).toContain('violations: data_integrity x8; expected: data_integrity');
  });
});

describe('shadowmm run --scheduler threads', () => {
  it('swap-roundtrip, every variant: exit 0, each as expected', () => {
    const r = shadowmm('run', 'swap-roundtrip', '--scheduler', 'threads', '--quiet');
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('swap-roundtrip [pageout]: verdict: OK (as expected)\nswap-roundtrip [kswapd]: verdict: OK (as expected)\nswap-roundtrip [clean-pte-write]: verdict: OK (as expected)\n');
    expect(r.status).toBe(0);
  });
});

describe('shadowmm replay', () => {
  it('the printed replay reruns a run event for event (exit 0); a wrong hash is NOT REPRODUCED (exit 1)', () => {
    const run = shadowmm('run', 'swap-roundtrip', '--variant', 'kswapd', '--seed', '5');
    expect(run.status).toBe(0);
    const cmd = /^replay: (shadowmm replay .*)$/m.exec(run.stdout)![1];
    expect(cmd).toMatch(/^shadowmm replay swap-roundtrip --seed 5 --variant kswapd --hash 0x[0-9a-f]{8}$/);
    const r = shadowmm(...cmd.replace(/^shadowmm /, '').split(' '));
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout).toContain('matches the recorded run');
    const wrong = shadowmm('replay', 'oom-reap', '--variant', 'reaped', '--seed', '1', '--hash', '0x00000001', '--quiet');
    expect(wrong.status).toBe(1);
    expect(wrong.stdout).toMatch(/NOT REPRODUCED: event hash 0x[0-9a-f]{8}, the recorded run had 0x00000001/);
  });
});
