// The scenario runner: one run of a scenario (one variant, one scheduler, one seed) from boot
// to verdict. Boot a kernel from the variant's config, start the services, call start(), run
// every task to its end, reap, call check(), free the control words, check teardown, collect
// violations and counters, and compare with the expectation.
//
// runScenario takes a loaded scenario; runSeeded takes only serializable inputs (a scenario
// reference, variant, seed, strategy) and returns a serializable outcome, so `explore` can run
// it inside a Piscina worker. Same seed, same variant, same strategy: same run, event for
// event (outcome.result.eventHash).

import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import type { Kernel } from '../sched/kernel.js';
import type { RunResult, RunStatus, Runner } from '../sched/scheduler.js';
import type { Task } from '../sched/task.js';
import { SimScheduler } from '../sched/sim.js';
import { loadModule } from '../sched/modules.js';
import { ThreadsRunner } from './threads.js';
import { bootKernel } from './boot.js';
import { reap_zombies, spawn_process } from '../mm/process.js';
import { swap_reclaim_full_clusters } from '../mm/swap_state.js';
import { oomKillModule, oom_set_reaper_policy } from '../mm/oom_kill.js';
import { collectViolations, countKinds, type Violation } from '../check/violation.js';
import { kernelUsage, teardownLeaks } from '../check/teardown.js';
import { collectCounters } from '../check/counters.js';
import { ScenarioError, resolveVariant, scenarioTaskSpec, type ScenarioContext, type ScenarioEnd, type SchedulerKind, type ServiceName } from './scenario.js';
import { loadDrivers, loadScenario, type LoadedScenario } from './scenario_load.js';
import { scenarioTasksModule, type ServiceStop } from './scenario_tasks.js';

export interface RunHooks {
  /** After boot, before any task exists: set up a trace or a progress line on k. */
  booted?(k: Kernel, runner: Runner): void;
  /** After the verdict, before the kernel is dropped: read the event ring, the arena. */
  finished?(k: Kernel, outcome: ScenarioRunOutcome): void;
}

export interface ScenarioRunOptions {
  /** default 'sim' */
  scheduler?: SchedulerKind;
  /** sim seed, 0..2^32-1 (default 1); ignored under threads */
  seed?: number;
  /** required when the scenario has variants */
  variant?: string | null;
  /** sim strategy (default 'random') */
  strategy?: 'random' | 'pct';
  /** PCT bug depth (default 2) and the steps change points are drawn from (default 1000) */
  pctDepth?: number;
  pctSteps?: number;
  /** the event log on (default true; off makes eventHash meaningless) */
  events?: boolean;
  /** events kept per task in a violation record (default 8) */
  recentEvents?: number;
  hooks?: RunHooks;
}

export interface ScenarioRunOutcome {
  scenario: string;
  /** what was asked for: a built-in name or a path */
  ref: string;
  variant: string | null;
  scheduler: SchedulerKind;
  seed: number | null;
  strategy: 'random' | 'pct' | null;
  pctDepth: number | null;
  /** the run was as expected: status, and exactly the expected violation kinds */
  ok: boolean;
  status: RunStatus;
  expected: { violations: string[]; status: RunStatus[] };
  /** violation kind -> count */
  found: Record<string, number>;
  /** expected kinds not reported */
  missing: string[];
  /** reported kinds not expected */
  unexpected: string[];
  statusOk: boolean;
  violations: Violation[];
  checkFailures: string[];
  /** teardown messages; null when the run did not end 'done' (nothing can be torn down) */
  leaks: string[] | null;
  counters: Record<string, number>;
  durations: { bootMs: number; startMs: number; runMs: number; checkMs: number; totalMs: number };
  result: RunResult;
  /** `shadowmm replay ...` for a sim run, null under threads */
  replay: string | null;
  notes: string[];
}

const DEFAULT_SIM_TIME_MS = 60_000;
const DEFAULT_STEPS = 20_000_000;
const DEFAULT_THREADS_MS = 60_000;

const hex = (h: number): string => `0x${(h >>> 0).toString(16).padStart(8, '0')}`;
const shellWord = (s: string): string => (/^[\w./:@=+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** The command that replays a sim run event for event, and checks its event hash. */
export function replayCommand(ref: string, o: { seed: number; variant: string | null; strategy: 'random' | 'pct'; pctDepth: number; pctSteps?: number; eventHash?: number }): string {
  let s = `shadowmm replay ${shellWord(ref)} --seed ${o.seed}`;
  if (o.variant !== null) s += ` --variant ${shellWord(o.variant)}`;
  if (o.strategy === 'pct') s += ` --strategy pct --depth ${o.pctDepth}${o.pctSteps !== undefined ? ` --pct-steps ${o.pctSteps}` : ''}`;
  if (o.eventHash !== undefined) s += ` --hash ${hex(o.eventHash)}`;
  return s;
}

/** Where each service lives: a kthread export and its stop(k). A service whose module or export is missing is skipped with a note. */
function serviceModule(name: ServiceName): { module: string; fn: string; stop: string } {
  if (name === 'oom_reaper') return { module: oomKillModule(), fn: 'oom_reaper', stop: 'oom_reaper_stop' };
  const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
  return { module: fileURLToPath(new URL(`../mm/vmscan.${ext}`, import.meta.url)), fn: 'kswapd', stop: 'kswapd_stop' };
}

function checkSeed(seed: number): void {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new RangeError(`seed must be a whole number from 0 to 4294967295, got ${String(seed)}`);
}

/** Run one scenario run and judge it. A bad scenario throws ScenarioError. */
export async function runScenario(loaded: LoadedScenario, opts: ScenarioRunOptions = {}): Promise<ScenarioRunOutcome> {
  const t0 = performance.now();
  const s = loaded.scenario;
  const file = loaded.module;
  const scheduler = opts.scheduler ?? 'sim';
  if (scheduler !== 'sim' && scheduler !== 'threads') throw new RangeError(`scheduler must be sim or threads, got ${String(scheduler)}`);
  if (s.schedulers && !s.schedulers.includes(scheduler)) throw new ScenarioError('schedulers', `scenario '${s.name}' runs under ${s.schedulers.join(' and ')} only, not ${scheduler}`, file);
  const variant = opts.variant ?? null;
  const seed = scheduler === 'sim' ? (opts.seed ?? 1) : null;
  if (seed !== null) checkSeed(seed);
  const strategy = opts.strategy ?? 'random';
  const pctDepth = opts.pctDepth ?? 2;
  let resolved;
  try {
    resolved = resolveVariant(s, variant);
  } catch (e) {
    throw e instanceof ScenarioError ? e.inFile(file) : e;
  }
  const { config, args, expect } = resolved;
  const notes: string[] = [];
  await loadDrivers(loaded.drivers, file);

  // ---- boot
  const { oomReaperPolicy, ...boot } = config;
  if (opts.events !== undefined) boot.events = opts.events;
  let k: Kernel;
  try {
    k = bootKernel(boot);
  } catch (e) {
    throw new ScenarioError('config', `the kernel does not boot with it: ${(e as Error).message}`, file);
  }
  if (oomReaperPolicy) oom_set_reaper_policy(k, oomReaperPolicy);
  const limits = s.limits ?? {};
  const runner: Runner =
    scheduler === 'sim'
      ? new SimScheduler(k, { seed: seed!, strategy, pctDepth, pctSteps: opts.pctSteps, maxSteps: limits.steps ?? DEFAULT_STEPS, maxTimeNs: (limits.simTimeMs ?? DEFAULT_SIM_TIME_MS) * 1e6, stallMs: 10_000 })
      : new ThreadsRunner(k, { watchdogMs: limits.watchdogMs ?? 2000, timeoutMs: limits.threadsTimeMs ?? DEFAULT_THREADS_MS, preload: [...loaded.drivers, file] });
  const before = kernelUsage(k);
  opts.hooks?.booted?.(k, runner);
  const t1 = performance.now();

  // ---- services, then the scenario's tasks
  const services: ServiceStop[] = [];
  for (const name of s.services ?? []) {
    const m = serviceModule(name);
    let mod: Record<string, unknown> | null = null;
    try {
      mod = await loadModule(m.module);
    } catch {
      mod = null;
    }
    if (!mod || typeof mod[m.fn] !== 'function' || typeof mod[m.stop] !== 'function') {
      notes.push(`service '${name}' is not available in this build (no ${m.fn}/${m.stop} in ${m.module}): not started`);
      continue;
    }
    runner.spawn({ name, kind: 'kthread', module: m.module, fn: m.fn });
    services.push({ name, module: m.module, stop: m.stop });
  }
  const words: number[] = [];
  const pids: number[] = [];
  const done = k.kmalloc.kzalloc(2);
  if (done === 0) throw new ScenarioError('config', 'kmalloc has no room for the runner\'s control word (raise config.kmalloc)', file);
  words.push(done);
  let kthreads = 0;
  const ctx: ScenarioContext<unknown> = {
    k,
    scheduler,
    variant,
    args,
    seed,
    module: file,
    process(spec) {
      const pid = spawn_process(k, runner, { name: spec.name, module: spec.module ?? file, fn: spec.fn, args: spec.args, threads: spec.threads });
      if (pid < 0) throw new ScenarioError('start', `process '${spec.name}' could not be created (${pid}): raise config.mm.procs, kmalloc or maxTasks`);
      pids.push(pid);
      return pid;
    },
    spawn(spec): Task {
      const ts = scenarioTaskSpec(spec, file);
      kthreads++;
      return runner.spawn({ name: ts.name, kind: ts.kind, module: scenarioTasksModule(), fn: 'scenario_task_main', args: { module: ts.module!, fn: ts.fn as string, args: ts.args, done } });
    },
    alloc(n) {
      if (!Number.isInteger(n) || n < 1) throw new ScenarioError('start', `alloc(${String(n)}): a whole number of words >= 1`);
      const at = k.kmalloc.kzalloc(n);
      if (at === 0) throw new ScenarioError('config', `alloc(${n}): kmalloc has no free object that large (raise config.kmalloc)`);
      words.push(at);
      return at;
    },
  };
  let state: unknown;
  try {
    state = await s.start(ctx);
  } catch (e) {
    throw e instanceof ScenarioError ? e.inFile(file) : new ScenarioError('start', `threw: ${e instanceof Error ? e.message : String(e)}`, file);
  }
  if (services.length > 0) runner.spawn({ name: 'scenario-services', kind: 'kthread', module: scenarioTasksModule(), fn: 'scenario_services_main', args: { done, kthreads, services } });
  const t2 = performance.now();

  // ---- run
  const result = await runner.run();
  const t3 = performance.now();

  // ---- verdict
  const log = k.klog.read();
  const ended = result.status === 'done';
  if (ended) reap_zombies(k);
  const checkFailures: string[] = [];
  if (s.check) {
    const end: ScenarioEnd<unknown, unknown> = { k, scheduler, variant, args, seed, result, log, pids, state, word: (at) => Atomics.load(k.arena.i32, at) };
    try {
      const r = s.check(end);
      if (Array.isArray(r)) checkFailures.push(...r.map(String));
      else if (r !== undefined) checkFailures.push(`check() returned ${typeof r}, not string[] | void`);
    } catch (e) {
      checkFailures.push(`check() threw: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  for (const at of words) k.kmalloc.kfree(at);
  // pages only the swap cache holds are the kernel's to reclaim later, not leaks: reclaim them first
  if (ended) swap_reclaim_full_clusters(k);
  const leaks = ended ? teardownLeaks(k, before) : null;
  const replay = seed === null ? null : replayCommand(loaded.ref, { seed, variant, strategy, pctDepth, pctSteps: opts.pctSteps, eventHash: boot.events === false ? undefined : result.eventHash });
  const violations = collectViolations({ k, result, log, leaks: leaks ?? [], checkFailures: checkFailures.map((m) => `${s.name}: ${m}`), replay, recent: opts.recentEvents });
  const found = countKinds(violations);
  const missing = expect.violations.filter((v) => !(v in found));
  const unexpected = Object.keys(found).filter((v) => !expect.violations.includes(v));
  const statuses = Array.isArray(expect.status) ? expect.status : [expect.status];
  const statusOk = statuses.includes(result.status);
  const counters = collectCounters(k, result);
  const t4 = performance.now();
  const outcome: ScenarioRunOutcome = {
    scenario: s.name,
    ref: loaded.ref,
    variant,
    scheduler,
    seed,
    strategy: scheduler === 'sim' ? strategy : null,
    pctDepth: scheduler === 'sim' && strategy === 'pct' ? pctDepth : null,
    ok: statusOk && missing.length === 0 && unexpected.length === 0,
    status: result.status,
    expected: { violations: [...expect.violations], status: statuses },
    found,
    missing,
    unexpected,
    statusOk,
    violations,
    checkFailures,
    leaks,
    counters,
    durations: { bootMs: t1 - t0, startMs: t2 - t1, runMs: t3 - t2, checkMs: t4 - t3, totalMs: t4 - t0 },
    result,
    replay,
    notes,
  };
  opts.hooks?.finished?.(k, outcome);
  return outcome;
}

/** Serializable inputs of one seeded sim run (explore's worker job). */
export interface SeededRunInput {
  /** a built-in name or a path (absolute, or relative to cwd) */
  scenario: string;
  cwd?: string;
  variant?: string | null;
  seed: number;
  strategy?: 'random' | 'pct';
  pctDepth?: number;
  pctSteps?: number;
  events?: boolean;
}

/** One seeded sim run from serializable inputs; the outcome is structured-cloneable. */
export async function runSeeded(input: SeededRunInput): Promise<ScenarioRunOutcome> {
  const loaded = await loadScenario(input.scenario, input.cwd);
  return runScenario(loaded, { scheduler: 'sim', seed: input.seed, variant: input.variant ?? null, strategy: input.strategy, pctDepth: input.pctDepth, pctSteps: input.pctSteps, events: input.events });
}

/** The variants a run of `s` covers when none is named: all, or [null]. */
export { variantNames } from './scenario.js';
