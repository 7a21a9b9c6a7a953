// The `shadowmm` command as a user runs it: the built bin under node, its exit codes and what
// it prints. `npm test` builds first; run alone, this suite needs `npm run build` done.

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));
const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

function shadowmm(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run 'npm run build' (npm test does it for you)`);
});

describe('shadowmm', () => {
  it('--help exits 0 and lists the demo command', () => {
    const r = shadowmm('--help');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/usage: shadowmm/);
    expect(r.stdout).toMatch(/^\s+demo\s+\S/m);
  });

  it("--version prints package.json's version", () => {
    const r = shadowmm('--version');
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe(VERSION);
  });

  it('an unknown command exits 2 naming it, with a hint to --help', () => {
    const r = shadowmm('frobnicate');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown command 'frobnicate'/);
    expect(r.stderr).toMatch(/--help/);
  });

  it('an unknown flag exits 2 naming it', () => {
    const r = shadowmm('demo', '--sched', 'sim');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown option '--sched'/);
    expect(r.stderr).toMatch(/--help/);
  });

  it('a bad --seed or --scheduler exits 2 naming the value', () => {
    const seed = shadowmm('demo', '--seed', 'abc');
    expect(seed.status).toBe(2);
    expect(seed.stderr).toMatch(/--seed .*'abc'/);
    const sched = shadowmm('demo', '--scheduler', 'fifo');
    expect(sched.status).toBe(2);
    expect(sched.stderr).toMatch(/--scheduler .*'fifo'/);
  });

  it('demo --scheduler sim --seed 3 exits 0 with the lockdep report and the deadlock report', () => {
    const r = shadowmm('demo', '--scheduler', 'sim', '--seed', '3');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('WARNING: possible circular locking dependency detected');
    expect(r.stdout).toContain('fs_reclaim');
    expect(r.stdout).toContain('INFO: deadlock');
    expect(r.stdout).toMatch(/wait-for cycle: gpu-\w+\/\d+ -> gpu-\w+\/\d+ -> gpu-\w+\/\d+/);
    expect(r.stdout).toContain('demo: all 4 parts behaved as expected');
    // the same seed twice gave the same schedule
    const [one, two] = [...r.stdout.matchAll(/run [12]: .*event hash (0x[0-9a-f]{8})/g)].map((m) => m[1]);
    expect(one).toBeDefined();
    expect(two).toBe(one);
  });
});
