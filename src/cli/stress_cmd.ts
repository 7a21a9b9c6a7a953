// The `stress` and `oom-test` subcommands of the shadowmm command (main.ts holds their
// COMMANDS entries). A bad argument throws CliUsageError, which main.ts turns into a usage
// message and exit code 2; the run's own exit code is 0 (clean) or 1 (violations).

import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { ParseArgsConfig } from 'node:util';

type Options = NonNullable<ParseArgsConfig['options']>;
type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

export class CliUsageError extends Error {
  readonly usage = true;
}

export interface CliCommand {
  summary: string;
  synopsis: string;
  details: string[];
  notes: string[];
  options: Options;
  run(values: Values): Promise<number>;
}

/** "30s", "500ms", "2m", "1.5s" or a bare number of seconds, as ms. */
export function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|min)?$/.exec(s.trim());
  const ms = m ? Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 'm' || m[2] === 'min' ? 60_000 : 1000) : NaN;
  if (!(ms > 0) || !Number.isFinite(ms)) throw new CliUsageError(`--duration must be a time like 30s, 500ms or 2m, got '${s}'`);
  return ms;
}

function wholeNumber(v: unknown, name: string, lo: number, hi: number): number {
  const s = String(v);
  if (!/^\d+$/.test(s) || Number(s) < lo || Number(s) > hi) throw new CliUsageError(`${name} must be a whole number from ${lo} to ${hi}, got '${s}'`);
  return Number(s);
}

function oneOf<T extends string>(v: unknown, name: string, allowed: readonly T[]): T {
  const s = String(v);
  if (!(allowed as readonly string[]).includes(s)) throw new CliUsageError(`${name} must be one of ${allowed.join(', ')}, got '${s}'`);
  return s as T;
}

function writeJson(path: string, data: unknown): string {
  const p = resolve(path);
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, JSON.stringify(data, null, 2) + '\n');
  return p;
}

export const stressCommand: CliCommand = {
  summary: 'a randomized mixed workload (faults, munmap, mprotect, fork, DONTNEED, migration, reclaim, OOM) against drivers',
  synopsis: '[--driver NAME|FILE]... [--devices N] [--cpus N] [--duration 30s] [--pressure none|reclaim|oom] [--scheduler threads|sim] [--seed N] [--runs N] [--report out.json] [--trace out.json] [--json] [--quiet]',
  details: [
    '--driver NAME|FILE       a reference driver (dmirror, odp, gpusvm, kvm-mmu, userptr) or a driver',
    '                         file exporting a `stress` adapter; repeat it for more (default: all five)',
    '--devices N              devices of each driver per worker process, 1..4 (default 1)',
    '--cpus N                 CPU tasks in all, spread over one or two processes, 1..16 (default 2)',
    '--duration T             wall time, e.g. 30s, 500ms, 2m (default 30s)',
    '--pressure MODE          none; reclaim: too little memory, kswapd and direct reclaim (and swap);',
    '                         oom: a worker process OOM-killed and reaped every 1.5 s, then respawned',
    '--scheduler threads|sim  threads (default): every task a worker thread, one run;',
    '                         sim: seeded deterministic runs back to back until the time is up',
    '--seed N                 threads: the workload\'s random choices; sim: the first run\'s seed (default 1)',
    '--runs N                 sim: stop after N runs (--seed S --runs 1 replays run S)',
    '--report FILE            write the report as JSON (StressReport in src/run/stress_report.ts)',
    '--trace FILE             write a Perfetto trace of the run (sim: of the failing or last run)',
    '--json                   print the report as JSON instead of the summary',
    '--quiet                  no progress line',
  ],
  notes: ['Exits 0 when the run is clean, 1 with violations (each printed in kernel style), 2 on a usage error.'],
  options: {
    driver: { type: 'string', multiple: true },
    devices: { type: 'string', default: '1' },
    cpus: { type: 'string', default: '2' },
    duration: { type: 'string', default: '30s' },
    pressure: { type: 'string', default: 'none' },
    scheduler: { type: 'string', default: 'threads' },
    seed: { type: 'string', default: '1' },
    runs: { type: 'string' },
    report: { type: 'string' },
    trace: { type: 'string' },
    json: { type: 'boolean' },
    quiet: { type: 'boolean' },
  },
  async run(v) {
    const drivers = (v.driver as string[] | undefined) ?? [];
    const opts = {
      drivers,
      devices: wholeNumber(v.devices, '--devices', 1, 4),
      cpus: wholeNumber(v.cpus, '--cpus', 1, 16),
      durationMs: parseDuration(String(v.duration)),
      pressure: oneOf(v.pressure, '--pressure', ['none', 'reclaim', 'oom'] as const),
      scheduler: oneOf(v.scheduler, '--scheduler', ['threads', 'sim'] as const),
      seed: wholeNumber(v.seed, '--seed', 0, 0xffffffff),
      runs: v.runs === undefined ? undefined : wholeNumber(v.runs, '--runs', 1, 1e9),
      quiet: v.quiet === true || v.json === true,
      trace: typeof v.trace === 'string' ? resolve(v.trace) : undefined,
    };
    const { runStress, StressUsageError } = await import('../run/stress.js');
    const { formatStressSummary } = await import('../run/stress_report.js');
    let out;
    try {
      out = await runStress(opts);
    } catch (e) {
      if (e instanceof StressUsageError) throw new CliUsageError(e.message);
      throw e;
    }
    if (typeof v.report === 'string') writeJson(v.report, out.report);
    process.stdout.write(v.json ? JSON.stringify(out.report, null, 2) + '\n' : formatStressSummary(out.report, out.violations) + '\n');
    return out.exitCode;
  },
};

export const oomTestCommand: CliCommand = {
  summary: "fault driver-managed memory in, force a memcg OOM, let the oom_reaper meet the driver, check a clean teardown",
  synopsis: '--driver NAME|FILE [--scheduler sim|threads] [--seed N] [--trace out.json]',
  details: [
    '--driver NAME|FILE       the driver under test: a reference driver (dmirror, odp, gpusvm, kvm-mmu,',
    '                         userptr) or a driver file exporting a `stress` adapter (required)',
    '--scheduler sim|threads  sim (default): deterministic, replayable by --seed; threads: real threads',
    '--seed N                 the sim seed (default 1)',
    '--trace FILE             write a Perfetto trace of the run',
  ],
  notes: [
    'Prints what happened step by step: the device faulting the memory in, the memcg OOM kill, the',
    "reaper's non-blockable invalidations reaching the driver (reaped, or \"unable to reap\"), the exit,",
    'the close of the device, the teardown. Exits 0 when clean, 1 with violations or leaks, 2 on a usage error.',
  ],
  options: {
    driver: { type: 'string' },
    scheduler: { type: 'string', default: 'sim' },
    seed: { type: 'string', default: '1' },
    trace: { type: 'string' },
  },
  async run(v) {
    if (typeof v.driver !== 'string') throw new CliUsageError('--driver is required: a reference driver (dmirror, odp, gpusvm, kvm-mmu, userptr) or a driver file');
    const scheduler = oneOf(v.scheduler, '--scheduler', ['sim', 'threads'] as const);
    const seed = wholeNumber(v.seed, '--seed', 0, 0xffffffff);
    const { runOomTest, formatOomTest } = await import('../run/oom_test.js');
    const { StressUsageError } = await import('../run/stress.js');
    let out;
    try {
      out = await runOomTest({ driver: v.driver, scheduler, seed, trace: typeof v.trace === 'string' ? resolve(v.trace) : undefined });
    } catch (e) {
      if (e instanceof StressUsageError) throw new CliUsageError(e.message);
      throw e;
    }
    process.stdout.write(formatOomTest(out) + '\n');
    return out.exitCode;
  },
};
