// `shadowmm stress`: a randomized mixed workload against the chosen drivers. Under `threads`
// one run of --duration wall time: every task (CPU threads, device engines, the oom_reaper,
// the control kthread) in its own worker over one arena. Under `sim`: seeded deterministic
// runs back to back (seed, seed + 1, ...) until the duration is used up, each a bounded
// workload; a run that fails names its seed, and `--seed S --runs 1` replays it event for event.
// The workload is in stress_tasks.ts / stress_ctl.ts; what a driver exports to take part is
// src/device/stress_adapter.ts; the summary is stress_report.ts.

import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Kernel } from '../sched/kernel.js';
import type { RunResult, Runner } from '../sched/scheduler.js';
import { SimScheduler } from '../sched/sim.js';
import { loadModule } from '../sched/modules.js';
import { lookupDriver } from '../device/registry.js';
import { stressAdapterError, type StressAdapter } from '../device/stress_adapter.js';
import { DEV_ENGINES, DEV_STAT, DEV_STAT_NAMES } from '../device/types.js';
import { devicesOf, deviceStats } from '../device/device.js';
import { oomKillModule } from '../mm/oom_kill.js';
import { reap_zombies, MAX_THREADS } from '../mm/process.js';
import { swap_reclaim_full_clusters } from '../mm/swap_state.js';
import { INFO_KINDS, collectViolations, type Violation } from '../check/violation.js';
import { kernelUsage, teardownLeaks } from '../check/teardown.js';
import { bootKernel, type BootConfig } from './boot.js';
import { ThreadsRunner } from './threads.js';
import { BUILTIN_DRIVERS, builtinDriverPath } from './scenario_load.js';
import { progress, type Progress } from './progress.js';
import { writeTrace } from './trace.js';
import { LatencyScanner, setActiveScanner } from '../check/latency.js';
import { pressureBootConfig, pressureServices } from './stress_pressure.js';
import { MAX_DRIVERS, MAX_SLOTS, MAX_SLOT_DEVS, SlotL, StressCtlL, type StressDriverRef, type StressTaskArgs } from './stress_tasks.js';
import { readCounters, stressReport, type StressCounters, type StressReport } from './stress_report.js';

export type Pressure = 'none' | 'reclaim' | 'oom';
export const PRESSURES: readonly Pressure[] = ['none', 'reclaim', 'oom'];

export interface StressOptions {
  /** built-in names or driver files; default every reference driver */
  drivers?: string[];
  /** devices of each driver per worker process (default 1) */
  devices?: number;
  /** CPU tasks in all (default 2), spread over one or two worker processes */
  cpus?: number;
  /** wall time, ms (default 30 000) */
  durationMs?: number;
  pressure?: Pressure;
  scheduler?: 'threads' | 'sim';
  /** sim: the first run's seed (default 1); threads: the workload's random choices */
  seed?: number;
  /** sim: stop after this many runs (default: as many as the duration allows) */
  runs?: number;
  /** the mirror check and lockdep (default true; off for the unchecked benchmark) */
  checks?: boolean;
  /** the event log (default true; latency percentiles need it) */
  events?: boolean;
  /** a progress line on stderr when it is a TTY */
  quiet?: boolean;
  /** write a Perfetto trace of the (last or first failing) run here */
  trace?: string;
  cwd?: string;
}

export class StressUsageError extends Error {}

/** The run's outcome: the report the summary prints, and its violations. */
export interface StressOutcome {
  report: StressReport;
  violations: Violation[];
  /** 0 clean, 1 violations */
  exitCode: number;
}

const MS = 1e6;
/**
 * klog kinds that are reported but do not fail a stress run: "unable to reap" is the kernel's
 * answer to a driver that refuses every non-blockable invalidation (mlx5's ODP does, by
 * design); the victim's own exit frees the memory.
 */
export const WARN_KINDS: ReadonlySet<string> = new Set(['oom_unable_to_reap']);
const DEFAULT_DRIVERS = Object.keys(BUILTIN_DRIVERS);
const ctlModule = (): string => fileURLToPath(new URL(`./stress_ctl.${import.meta.url.endsWith('.ts') ? 'ts' : 'js'}`, import.meta.url));

/** Resolve and load every driver (its module must export a valid `stress` adapter). */
export async function resolveStressDrivers(names: string[], cwd = process.cwd()): Promise<StressDriverRef[]> {
  const out: StressDriverRef[] = [];
  for (const n of names) {
    let module = builtinDriverPath(n);
    let name = n;
    if (!module) {
      if (!/[/\\]/.test(n) && !/\.[cm]?[jt]s$/.test(n)) throw new StressUsageError(`unknown driver '${n}' (built in: ${DEFAULT_DRIVERS.join(', ')}; or a path to a driver file ending in .ts or .js)`);
      module = isAbsolute(n) ? n : resolve(cwd, n);
      if (!existsSync(module)) throw new StressUsageError(`driver file '${n}' does not exist (${module})`);
    }
    let mod: Record<string, unknown>;
    try {
      mod = await loadModule(module);
    } catch (e) {
      throw new StressUsageError(`driver '${n}': cannot load ${module}: ${(e instanceof Error ? e.message : String(e)).split('\n')[0]}`);
    }
    if (mod.stress === undefined) throw new StressUsageError(`driver '${n}' (${module}) exports no 'stress' adapter: export const stress = defineStressAdapter({ driver, open, start, ... }) (see README, "Your own driver under stress")`);
    const err = stressAdapterError(mod.stress);
    if (err) throw new StressUsageError(`driver '${n}' (${module}): ${err}`);
    const ad = mod.stress as StressAdapter;
    if (name === n && !builtinDriverPath(n)) name = ad.driver;
    try {
      lookupDriver(ad.driver);
    } catch {
      throw new StressUsageError(`driver '${n}' (${module}): stress.driver is '${ad.driver}', but the module defines no driver of that name (defineDriver)`);
    }
    if (out.some((d) => d.module === module)) throw new StressUsageError(`driver '${n}' is named twice`);
    out.push({ name, ref: n, module, driver: ad.driver, known: ad.known ?? [] });
  }
  return out;
}

/** The shape of one run: processes, threads, devices, engines, and the boot config. */
export function stressShape(o: Required<Pick<StressOptions, 'devices' | 'cpus' | 'pressure' | 'scheduler' | 'checks' | 'events'>>, nDrivers: number, durationMs: number) {
  const sim = o.scheduler === 'sim';
  const procs = o.cpus >= 2 ? 2 : 1;
  const threads = Array.from({ length: procs }, (_, i) => Math.floor(o.cpus / procs) + (i < o.cpus % procs ? 1 : 0));
  const engines = 1;
  const devsPerProc = nDrivers * o.devices;
  const npages = sim ? 32 : 64;
  // a process's tasks at most: its threads, and per device the engines plus a fault task and a worker
  const slotTasks = Math.max(...threads) + devsPerProc * (engines + 2);
  const oomPeriodMs = sim ? 0 : 1500;
  const respawns = o.pressure !== 'oom' ? 0 : sim ? 1 : Math.ceil(durationMs / oomPeriodMs) + 1;
  const forks = sim ? 8 : Math.min(1024, Math.max(64, Math.round((durationMs / 1000) * 16)));
  // idle workers kept warm for fork children (one per CPU task), and the tasks' records
  const idleWorkers = sim ? 0 : o.cpus;
  const maxTasks = 8 + idleWorkers + (procs + respawns) * slotTasks + forks;
  const devices = 2 * procs * devsPerProc + 4; // an adapter may open a second device (dmirror does)
  const cfg: BootConfig = {
    maxTasks,
    lockClasses: 256,
    lockdepEdges: 8192,
    lockdep: o.checks,
    events: o.events,
    eventRecords: sim ? 1 << 15 : 1 << 18,
    klogBytes: 1 << 20,
    strings: 4096,
    stringBytes: 1 << 17,
    kmalloc: { 8: 4096, 16: 2048, 32: 2048, 64: 1024, 256: 256, 1024: 64 },
    mem: { pages: 4096, pageSize: 4096 },
    mm: { procs: Math.max(16, maxTasks), vmas: 2048 + forks * 8 },
    device: { devices, sptDirs: devices * 4 + 32, sptLeaves: devices * 2 + 32, mirrorCheck: o.checks },
  };
  return { procs, threads, engines, npages, slotTasks, oomPeriodMs, forks, idleWorkers, cfg: pressureBootConfig(cfg, o.pressure, procs * (npages + 48) + 96), duty: sim ? 0.05 : 0.5 };
}

function checkInt(v: number, what: string, lo: number, hi: number): void {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new StressUsageError(`${what} must be a whole number from ${lo} to ${hi}, got ${String(v)}`);
}

/** Run the stress; a bad option throws StressUsageError. */
export async function runStress(opts: StressOptions = {}): Promise<StressOutcome> {
  const o = {
    devices: opts.devices ?? 1,
    cpus: opts.cpus ?? 2,
    pressure: opts.pressure ?? 'none',
    scheduler: opts.scheduler ?? 'threads',
    checks: opts.checks ?? true,
    events: opts.events ?? true,
    seed: opts.seed ?? 1,
    durationMs: opts.durationMs ?? 30_000,
  };
  const names = opts.drivers && opts.drivers.length > 0 ? opts.drivers : DEFAULT_DRIVERS;
  checkInt(o.devices, '--devices', 1, 4);
  checkInt(o.cpus, '--cpus', 1, 2 * MAX_THREADS);
  checkInt(o.seed, '--seed', 0, 0xffffffff);
  if (!(o.durationMs > 0)) throw new StressUsageError(`--duration must be more than 0, got ${o.durationMs} ms`);
  if (!PRESSURES.includes(o.pressure)) throw new StressUsageError(`--pressure must be one of ${PRESSURES.join(', ')}, got '${o.pressure}'`);
  if (o.scheduler !== 'threads' && o.scheduler !== 'sim') throw new StressUsageError(`--scheduler must be threads or sim, got '${o.scheduler}'`);
  if (opts.runs !== undefined) checkInt(opts.runs, '--runs', 1, 1e9);
  if (names.length > MAX_DRIVERS) throw new StressUsageError(`at most ${MAX_DRIVERS} drivers, got ${names.length}`);
  if (names.length * o.devices > MAX_SLOT_DEVS) throw new StressUsageError(`${names.length} drivers x --devices ${o.devices} is ${names.length * o.devices} devices per process, more than ${MAX_SLOT_DEVS}`);
  const drivers = await resolveStressDrivers(names, opts.cwd);
  const shape = stressShape(o, drivers.length, o.durationMs);
  if (shape.threads.length > MAX_SLOTS) throw new StressUsageError('too many worker processes');

  const label = `stress ${o.scheduler}`;
  const bar = progress({ label, unit: 'ops', quiet: opts.quiet });
  const t0 = Date.now();
  const total: StressCounters[] = [];
  const violations: Violation[] = [];
  const warnings: Violation[] = [];
  const known: KnownViolation[] = [];
  const scanner = { all: null as LatencyScanner | null };
  let runs = 0;
  let failedSeed: number | null = null;
  let traceDone: string | null = null;
  try {
    if (o.scheduler === 'threads') {
      const r = await oneRun(o, drivers, shape, null, bar, opts.trace);
      total.push(r.counters);
      violations.push(...r.violations);
      warnings.push(...r.warnings);
      mergeKnown(known, r.known);
      scanner.all = r.scanner;
      runs = 1;
      traceDone = opts.trace ?? null;
    } else {
      for (let i = 0; opts.runs !== undefined ? i < opts.runs : i === 0 || Date.now() - t0 < o.durationMs; i++) {
        const seed = (o.seed + i) >>> 0;
        const r = await oneRun(o, drivers, shape, seed, null, undefined);
        runs++;
        total.push(r.counters);
        warnings.push(...r.warnings);
        mergeKnown(known, r.known);
        if (scanner.all) scanner.all.merge(r.scanner);
        else scanner.all = r.scanner;
        bar.update({ done: total.reduce((x, c) => x + c.opsTotal, 0), violations: violations.length + r.violations.length, note: `run ${runs}, seed ${seed}` });
        if (r.violations.length > 0) {
          violations.push(...r.violations);
          failedSeed = seed;
          break;
        }
      }
      if (opts.trace) {
        // the failing run again (same seed, same run) or the last one, with its trace
        const seed = failedSeed ?? (o.seed + runs - 1) >>> 0;
        await oneRun(o, drivers, shape, seed, null, opts.trace);
        traceDone = opts.trace;
      }
    }
  } finally {
    bar.end();
  }
  const report = stressReport({ o, drivers, shape, counters: total, runs, wallMs: Date.now() - t0, latency: scanner.all, violations, warnings: warnings.slice(0, 8), known, failedSeed, trace: traceDone, replay: replayArgs(o, names, opts.runs, failedSeed) });
  return { report, violations, exitCode: violations.length > 0 ? 1 : 0 };
}

/** A word for a shell command line, quoted only when it needs to be. */
export function shellWord(s: string): string {
  return /^[\w./:@=+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function replayArgs(o: { scheduler: string; seed: number; devices: number; cpus: number; pressure: Pressure; durationMs: number }, names: string[], runs: number | undefined, failedSeed: number | null): string {
  const parts = ['shadowmm stress', ...names.map((n) => `--driver ${shellWord(n)}`), `--scheduler ${o.scheduler}`];
  if (o.devices !== 1) parts.push(`--devices ${o.devices}`);
  if (o.cpus !== 2) parts.push(`--cpus ${o.cpus}`);
  if (o.pressure !== 'none') parts.push(`--pressure ${o.pressure}`);
  if (o.scheduler === 'sim') parts.push(`--seed ${failedSeed ?? o.seed}`, `--runs ${failedSeed !== null ? 1 : (runs ?? 1)}`);
  else parts.push(`--seed ${o.seed}`, `--duration ${o.durationMs / 1000}s`);
  return parts.join(' ');
}

interface RunOut {
  counters: StressCounters;
  violations: Violation[];
  warnings: Violation[];
  /** violations a driver commits on purpose (its adapter's `known`) */
  known: KnownViolation[];
  scanner: LatencyScanner;
  result: RunResult;
}

export interface KnownViolation {
  driver: string;
  kind: string;
  why: string;
  count: number;
}

/** Split off the records a chosen driver declares as its modelled bugs, counted per driver and kind. */
function splitKnown(drivers: StressDriverRef[], all: Violation[]): { rest: Violation[]; known: KnownViolation[] } {
  const rest: Violation[] = [];
  const known: KnownViolation[] = [];
  for (const v of all) {
    const d = drivers.find((x) => x.known?.some((e) => e.kind === v.kind) && v.message.includes(`(${x.driver})`));
    if (!d) {
      rest.push(v);
      continue;
    }
    const e = d.known!.find((x) => x.kind === v.kind)!;
    const have = known.find((x) => x.driver === d.name && x.kind === v.kind);
    if (have) have.count++;
    else known.push({ driver: d.name, kind: v.kind, why: e.why, count: 1 });
  }
  return { rest, known };
}

function mergeKnown(into: KnownViolation[], more: KnownViolation[]): void {
  for (const m of more) {
    const have = into.find((x) => x.driver === m.driver && x.kind === m.kind);
    if (have) have.count += m.count;
    else into.push({ ...m });
  }
}

type Shape = ReturnType<typeof stressShape>;

async function oneRun(
  o: { pressure: Pressure; scheduler: 'threads' | 'sim'; seed: number; devices: number; cpus: number; durationMs: number },
  drivers: StressDriverRef[],
  shape: Shape,
  seed: number | null,
  bar: Progress | null,
  trace: string | undefined,
): Promise<RunOut> {
  const k = bootKernel(shape.cfg);
  const before = kernelUsage(k);
  const w = k.arena.i32;
  const ctl = k.kmalloc.kzalloc(StressCtlL.$size);
  const slots = k.kmalloc.kzalloc(MAX_SLOTS * SlotL.$size);
  if (ctl === 0 || slots === 0) throw new Error('stress: kmalloc has no room for the control words');
  w[ctl + StressCtlL.fork_budget] = shape.forks;
  w[ctl + StressCtlL.forks_budget0] = shape.forks;
  const sim = o.scheduler === 'sim';
  const args: StressTaskArgs = {
    ctl,
    slots,
    drivers,
    threads: shape.threads,
    devices: o.devices,
    engines: Math.min(DEV_ENGINES, shape.engines),
    npages: shape.npages,
    base: 0x40000000,
    pageSize: k.mmLayer.pageSize,
    duty: shape.duty,
    seed: seed ?? o.seed,
    scheduler: o.scheduler,
    durationMs: sim ? 0 : o.durationMs,
    opsPerThread: sim ? 120 : 0,
    pressure: o.pressure,
    oomPeriodMs: shape.oomPeriodMs,
    slotTasks: shape.slotTasks,
    idleWorkers: shape.idleWorkers,
  };
  const runner: Runner = sim
    ? new SimScheduler(k, { seed: seed!, stallMs: 10_000, maxTimeNs: 600_000 * MS, maxSteps: 200_000_000 })
    : new ThreadsRunner(k, { watchdogMs: 5000, timeoutMs: o.durationMs + 60_000, preload: drivers.map((d) => d.module) });
  const scanner = LatencyScanner.of(k);
  runner.spawn({ name: 'oom_reaper', kind: 'kthread', module: oomKillModule(), fn: 'oom_reaper' });
  for (const s of pressureServices(o.pressure)) runner.spawn(s);
  runner.spawn({ name: 'stress', kind: 'kthread', module: ctlModule(), fn: 'stressCtl', args });
  let timer: NodeJS.Timeout | null = null;
  if (sim) setActiveScanner(scanner);
  else {
    let ticks = 0;
    let bad = 0;
    timer = setInterval(() => {
      scanner.scan();
      if (bar?.active && ticks++ % 50 === 0) {
        // klog holds kernel log lines too (oom_kill, oom_reaper): count only what breaks a rule
        bad = k.klog.read().filter((r) => !INFO_KINDS.has(r.kind) && !WARN_KINDS.has(r.kind)).length;
        bar.update({ done: liveOps(k, ctl), violations: bad });
      }
    }, 5);
  }
  let result: RunResult;
  try {
    result = await runner.run();
  } finally {
    if (timer) clearInterval(timer);
    setActiveScanner(null);
  }
  scanner.scan();
  if (result.status === 'done') reap_zombies(k);
  const counters = readCounters(k, ctl, drivers.length);
  k.kmalloc.kfree(ctl);
  k.kmalloc.kfree(slots);
  // pages only the swap cache holds are the kernel's to reclaim later, not leaks: reclaim them first
  if (result.status === 'done') swap_reclaim_full_clusters(k);
  const leaks = result.status === 'done' ? teardownLeaks(k, before) : [];
  const replay = seed === null ? null : replayArgs({ ...o, seed }, drivers.map((d) => d.ref), 1, seed);
  const all = collectViolations({ k, result, log: k.klog.read(), leaks, checkFailures: [], replay });
  const { rest: violations, known } = splitKnown(drivers, all.filter((v) => !WARN_KINDS.has(v.kind)));
  const warnings = all.filter((v) => WARN_KINDS.has(v.kind));
  if (trace) writeTrace(k, result, trace, { scenario: 'stress', seed, scheduler: o.scheduler, command: replay ?? undefined });
  return { counters, violations, warnings, known, scanner, result };
}

/** CPU operations plus device page accesses so far (the progress line, from the main thread). */
function liveOps(k: Kernel, ctl: number): number {
  const w = k.arena.i32;
  let t = 0;
  for (let i = 0; i < 7; i++) t += Atomics.load(w, ctl + StressCtlL.ops + i);
  for (const dev of devicesOf(k)) t += deviceStats(k, dev).accesses;
  for (let d = 0; d < MAX_DRIVERS; d++) t += w[ctl + StressCtlL.dev_stats + d * DEV_STAT_NAMES.length + DEV_STAT.accesses];
  return t;
}
