// The scenario format. A scenario is a module (built in under src/scenarios/, or a user's own
// .ts/.js file) whose default export is `defineScenario({...})` and whose named exports are the
// programs its tasks run. Programs are always named exports, never closures, so both schedulers
// run the same scenario: under `threads` every task is a Piscina worker that loads the scenario
// module and calls the export. Tasks talk through arena words (ctx.alloc), never JS objects.
//
//   export default defineScenario({
//     name: 'mine', description: 'one line for `shadowmm list`',
//     config: { mem: { pages: 256, pageSize: 4096 } }, drivers: ['dmirror'],
//     start(ctx) { const ctl = ctx.alloc(4); ctx.process({ name: 'cpu', fn: 'cpu', args: { ctl } }); },
//     check(end) { if (end.word(end.args.ctl) !== 1) return ['cpu did not finish']; },
//   });
//   export async function cpu({ k, mm, args }: ProcessContext<{ ctl: number }>) { ... }
//
// Validation: defineScenario checks every field at run time (a .js scenario has no compiler);
// a wrong or unknown field throws a ScenarioError naming the field, and loadScenario adds the
// file. The runner (scenario_run.ts) boots a kernel per run from `config` + the variant's.

import type { RunResult, RunStatus, TaskSpec } from '../sched/scheduler.js';
import type { Kernel } from '../sched/kernel.js';
import type { Task, TaskKind } from '../sched/task.js';
import type { KlogRecord } from '../shm/klog.js';
import type { BootConfig } from './boot.js';
import { TASK_KINDS } from '../sched/task.js';

export type SchedulerKind = 'sim' | 'threads';
export const SCHEDULER_KINDS: readonly SchedulerKind[] = ['sim', 'threads'];

/** Kernel threads the runner starts before the scenario's tasks and stops once its processes are gone. */
export type ServiceName = 'oom_reaper' | 'kswapd';
export const SERVICE_NAMES: readonly ServiceName[] = ['oom_reaper', 'kswapd'];

/** The kernel config of a scenario: BootConfig plus policies that are not arena sizes. */
export type ScenarioConfig = BootConfig & {
  /** oom_reaper timing (src/mm/oom_kill.ts): 'v5.18' (OOM_REAPER_DELAY, default) or 'v4.6' (at once) */
  oomReaperPolicy?: 'v5.18' | 'v4.6';
};

/**
 * Top-level config keys a scenario may set: every KernelConfig field (a layer that adds one
 * gets a compile error here until it is listed, so .js scenarios may use it too), plus any a
 * plugin registers at run time with registerConfigKeys.
 */
const CONFIG_KEYS: { readonly [K in keyof Required<ScenarioConfig>]: true } = {
  maxTasks: true, lockClasses: true, lockdepEdges: true, lockdep: true, events: true, eventRecords: true, klogBytes: true, strings: true, stringBytes: true, kmalloc: true,
  mem: true, mm: true, device: true, notifierPolicy: true, oomReaperPolicy: true, swap: true, memcg: true, migrateDevicePolicy: true,
};
const configKeys = new Set<string>(Object.keys(CONFIG_KEYS));

export function registerConfigKeys(...keys: string[]): void {
  for (const k of keys) configKeys.add(k);
}

export function knownConfigKeys(): string[] {
  return [...configKeys];
}

/**
 * What the run must show. `violations`: the kinds that MUST be reported (each at least once);
 * any other violation kind fails the run. `status`: the run's end (default 'done').
 */
export interface Expectation {
  violations?: string[];
  status?: RunStatus | RunStatus[];
}

export interface ScenarioLimits {
  /** sim: virtual-time bound, ms (default 60 000) */
  simTimeMs?: number;
  /** sim: scheduling-step bound (default 20 000 000) */
  steps?: number;
  /** threads: wall-clock bound, ms (default 60 000) */
  threadsTimeMs?: number;
  /** threads: ms with every task blocked before the run is a deadlock (default 2000) */
  watchdogMs?: number;
}

export interface VariantSpec<A> {
  description: string;
  /** merged over the scenario's config (one level deep: `mem`, `device`... objects are merged) */
  config?: ScenarioConfig;
  /** merged over the scenario's args */
  args?: Partial<A>;
  /** replaces the scenario's expect */
  expect?: Expectation;
}

/** A program run by a process's CPU tasks: a named export, by default of the scenario module. */
export interface ScenarioProcess<PA = unknown> {
  name: string;
  fn: string;
  /** module path or URL holding `fn` (default: the scenario module) */
  module?: string;
  /** structured-cloneable (threads) */
  args?: PA;
  /** CPU tasks, each running the program (default 1) */
  threads?: number;
}

/** Any other task (a kthread, a device engine, a driver task): a named export. */
export interface ScenarioTask<TA = unknown> {
  name: string;
  fn: string;
  module?: string;
  args?: TA;
  /** default 'kthread' */
  kind?: TaskKind;
}

/** What start() gets: the boot context of one run. */
export interface ScenarioContext<A> {
  readonly k: Kernel;
  readonly scheduler: SchedulerKind;
  /** the variant being run, null when the scenario has none */
  readonly variant: string | null;
  /** the scenario's args with the variant's merged over them */
  readonly args: A;
  /** the sim seed, null under threads */
  readonly seed: number | null;
  /** URL of the scenario module: the default `module` of every program */
  readonly module: string;
  /** Start a process (a new mm) whose CPU tasks run `fn`; returns its pid. */
  process<PA>(spec: ScenarioProcess<PA>): number;
  /** Start a task running `fn` (ProgramSpec-style: a TaskContext is its argument). */
  spawn<TA>(spec: ScenarioTask<TA>): Task;
  /** Zeroed arena words for tasks to share (control words, results); freed by the runner after check(). */
  alloc(words: number): number;
}

/** What check() gets: the kernel after the run, zombies reaped, control words still allocated. */
export interface ScenarioEnd<A, S = void> {
  readonly k: Kernel;
  readonly scheduler: SchedulerKind;
  readonly variant: string | null;
  readonly args: A;
  readonly seed: number | null;
  readonly result: RunResult;
  /** every klog record of the run */
  readonly log: KlogRecord[];
  /** pids start() created */
  readonly pids: number[];
  /** what start() returned (e.g. the offsets of its control words) */
  readonly state: S;
  /** Atomics.load of an arena word */
  word(at: number): number;
}

export interface ScenarioSpec<A = Record<string, unknown>, S = unknown> {
  /** lowercase, [a-z0-9-] */
  name: string;
  /** one line, for `shadowmm list` */
  description: string;
  config?: ScenarioConfig;
  /** built-in driver names (dmirror, odp, gpusvm, kvm-mmu, userptr) or module paths: loaded in every worker */
  drivers?: string[];
  args?: A;
  variants?: Record<string, VariantSpec<A>>;
  /** the schedulers it runs under (default both) */
  schedulers?: SchedulerKind[];
  limits?: ScenarioLimits;
  services?: ServiceName[];
  /**
   * Boot context: spawn processes and kthreads, allocate control words. Must not sleep. What
   * it returns (say, the offsets of its control words) reaches check() as `end.state`.
   */
  start(ctx: ScenarioContext<A>): S | Promise<S>;
  /** After the run: failure messages for what does not hold. */
  check?(end: ScenarioEnd<A, S>): string[] | void;
  expect?: Expectation;
}

const BRAND = Symbol.for('shadowmm.scenario');

/** A validated scenario, as defineScenario returns it. */
export type Scenario<A = Record<string, unknown>, S = unknown> = Readonly<ScenarioSpec<A, S>> & { readonly [BRAND]: true };

/** A bad scenario: which file (when known), which field, what is wrong. */
export class ScenarioError extends Error {
  constructor(
    readonly field: string,
    readonly problem: string,
    public file: string | null = null,
  ) {
    super('');
    this.name = 'ScenarioError';
    this.refresh();
  }

  /** Attach the file it came from (loadScenario does). */
  inFile(file: string): this {
    if (this.file === null) {
      this.file = file;
      this.refresh();
    }
    return this;
  }

  private refresh(): void {
    const where = this.field ? `field '${this.field}': ` : '';
    this.message = this.file !== null ? `${this.file}: ${where}${this.problem}` : where ? `scenario ${where}${this.problem}` : this.problem;
  }
}

export function isScenario(x: unknown): x is Scenario<unknown, unknown> {
  return typeof x === 'object' && x !== null && (x as Record<symbol, unknown>)[BRAND] === true;
}

/** Check a spec and brand it. A wrong or unknown field throws a ScenarioError naming it. */
export function defineScenario<A = Record<string, unknown>, S = void>(spec: ScenarioSpec<A, S>): Scenario<A, S> {
  if (isScenario(spec)) return spec as unknown as Scenario<A, S>;
  validateScenario(spec);
  return Object.freeze({ ...spec, [BRAND]: true as const }) as Scenario<A, S>;
}

// ---- validation -------------------------------------------------------------------------------

const TOP = ['name', 'description', 'config', 'drivers', 'args', 'variants', 'schedulers', 'limits', 'services', 'start', 'check', 'expect'];
const LIMITS = ['simTimeMs', 'steps', 'threadsTimeMs', 'watchdogMs'];
const VARIANT = ['description', 'config', 'args', 'expect'];
const EXPECT = ['violations', 'status'];
export const RUN_STATUSES: readonly RunStatus[] = ['done', 'deadlock', 'step-limit', 'time-limit', 'stalled', 'aborted', 'watchdog'];

const typeOf = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : `a ${typeof v}`);
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function fail(field: string, problem: string): never {
  throw new ScenarioError(field, problem);
}

/** edit distance, for "did you mean" */
function distance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = d[j];
      d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return d[b.length];
}

function unknownKeys(o: Record<string, unknown>, allowed: readonly string[], at: string): void {
  for (const key of Object.keys(o)) {
    if (allowed.includes(key)) continue;
    const near = allowed.filter((a) => distance(a, key) <= 2);
    fail(at ? `${at}.${key}` : key, `unknown field${near.length ? ` (did you mean '${near[0]}'?)` : ''} (expected one of: ${allowed.join(', ')})`);
  }
}

function str(v: unknown, field: string, optional = false): void {
  if (v === undefined && optional) return;
  if (typeof v !== 'string' || v === '') fail(field, `must be a non-empty string, got ${typeOf(v)}`);
}

function strList(v: unknown, field: string, allowed?: readonly string[]): void {
  if (v === undefined) return;
  if (!Array.isArray(v)) fail(field, `must be an array of strings, got ${typeOf(v)}`);
  v.forEach((x, i) => {
    if (typeof x !== 'string' || x === '') fail(`${field}[${i}]`, `must be a non-empty string, got ${typeOf(x)}`);
    if (allowed && !allowed.includes(x)) fail(`${field}[${i}]`, `'${x}' is not one of: ${allowed.join(', ')}`);
  });
}

function validateConfig(c: unknown, at: string): void {
  if (c === undefined) return;
  if (!isObj(c)) fail(at, `must be an object, got ${typeOf(c)}`);
  for (const [key, v] of Object.entries(c)) {
    if (!configKeys.has(key)) {
      const near = [...configKeys].filter((a) => distance(a, key) <= 2);
      fail(`${at}.${key}`, `unknown kernel config field${near.length ? ` (did you mean '${near[0]}'?)` : ''} (known: ${[...configKeys].join(', ')})`);
    }
    if (key === 'notifierPolicy' && v !== undefined && v !== 'v5.12' && v !== 'v4.19') fail(`${at}.${key}`, `must be 'v5.12' or 'v4.19', got ${JSON.stringify(v)}`);
    if (key === 'oomReaperPolicy' && v !== undefined && v !== 'v5.18' && v !== 'v4.6') fail(`${at}.${key}`, `must be 'v5.18' or 'v4.6', got ${JSON.stringify(v)}`);
    if ((key === 'mem' || key === 'mm' || key === 'device' || key === 'kmalloc') && v !== undefined && !isObj(v)) fail(`${at}.${key}`, `must be an object, got ${typeOf(v)}`);
    if ((key === 'lockdep' || key === 'events') && v !== undefined && typeof v !== 'boolean') fail(`${at}.${key}`, `must be a boolean, got ${typeOf(v)}`);
  }
}

function validateExpect(e: unknown, at: string): void {
  if (e === undefined) return;
  if (!isObj(e)) fail(at, `must be an object, got ${typeOf(e)}`);
  unknownKeys(e, EXPECT, at);
  strList(e.violations, `${at}.violations`);
  const st = e.status;
  if (st !== undefined) {
    const list = Array.isArray(st) ? st : [st];
    list.forEach((s, i) => {
      if (!RUN_STATUSES.includes(s as RunStatus)) fail(Array.isArray(st) ? `${at}.status[${i}]` : `${at}.status`, `must be one of ${RUN_STATUSES.join(', ')}, got ${JSON.stringify(s)}`);
    });
  }
}

function cloneable(v: unknown, field: string): void {
  try {
    structuredClone(v);
  } catch (e) {
    fail(field, `must be structured-cloneable (it is passed to worker threads): ${(e as Error).message}`);
  }
}

/** Throws a ScenarioError (no file) for the first bad field of `spec`. */
export function validateScenario(spec: unknown): void {
  if (!isObj(spec)) fail('', `a scenario must be an object (the default export of defineScenario({...})), got ${typeOf(spec)}`);
  unknownKeys(spec, TOP, '');
  str(spec.name, 'name');
  if (!/^[a-z0-9][a-z0-9._-]*$/.test(spec.name as string)) fail('name', `must be lowercase letters, digits, '.', '_' or '-', got ${JSON.stringify(spec.name)}`);
  str(spec.description, 'description');
  if ((spec.description as string).includes('\n')) fail('description', 'must be one line');
  validateConfig(spec.config, 'config');
  strList(spec.drivers, 'drivers');
  if (spec.args !== undefined) {
    if (!isObj(spec.args)) fail('args', `must be an object, got ${typeOf(spec.args)}`);
    cloneable(spec.args, 'args');
  }
  if (spec.variants !== undefined) {
    if (!isObj(spec.variants)) fail('variants', `must be an object of name -> variant, got ${typeOf(spec.variants)}`);
    const names = Object.keys(spec.variants);
    if (names.length === 0) fail('variants', 'must name at least one variant (or leave the field out)');
    for (const [name, v] of Object.entries(spec.variants)) {
      const at = `variants.${name}`;
      if (!isObj(v)) fail(at, `must be an object, got ${typeOf(v)}`);
      unknownKeys(v, VARIANT, at);
      str(v.description, `${at}.description`);
      validateConfig(v.config, `${at}.config`);
      if (v.args !== undefined) {
        if (!isObj(v.args)) fail(`${at}.args`, `must be an object, got ${typeOf(v.args)}`);
        cloneable(v.args, `${at}.args`);
      }
      validateExpect(v.expect, `${at}.expect`);
    }
  }
  strList(spec.schedulers, 'schedulers', SCHEDULER_KINDS);
  if (Array.isArray(spec.schedulers) && spec.schedulers.length === 0) fail('schedulers', 'must name at least one scheduler (or leave the field out for both)');
  if (spec.limits !== undefined) {
    if (!isObj(spec.limits)) fail('limits', `must be an object, got ${typeOf(spec.limits)}`);
    unknownKeys(spec.limits, LIMITS, 'limits');
    for (const key of LIMITS) {
      const v = spec.limits[key];
      if (v !== undefined && !(typeof v === 'number' && v > 0 && Number.isFinite(v))) fail(`limits.${key}`, `must be a positive number, got ${JSON.stringify(v)}`);
    }
  }
  strList(spec.services, 'services', SERVICE_NAMES);
  if (typeof spec.start !== 'function') fail('start', `must be a function (ctx) => void that spawns the scenario's tasks, got ${typeOf(spec.start)}`);
  if (spec.check !== undefined && typeof spec.check !== 'function') fail('check', `must be a function (end) => string[] | void, got ${typeOf(spec.check)}`);
  validateExpect(spec.expect, 'expect');
}

// ---- helpers for the runner ------------------------------------------------------------------

/** The variant names to run when none is asked for: all of them, or [null] if there are none. */
export function variantNames(s: ScenarioSpec<unknown, unknown>): (string | null)[] {
  return s.variants ? Object.keys(s.variants) : [null];
}

/** One run's effective config, args and expectation. */
export function resolveVariant<A>(s: ScenarioSpec<A, unknown>, variant: string | null): { config: ScenarioConfig; args: A; expect: Required<Expectation> } {
  if (variant !== null && !(s.variants && Object.hasOwn(s.variants, variant))) {
    const known = s.variants ? Object.keys(s.variants).join(', ') : 'none';
    throw new ScenarioError('variants', `no variant '${variant}' in scenario '${s.name}' (variants: ${known})`);
  }
  if (variant === null && s.variants) throw new ScenarioError('variants', `scenario '${s.name}' has variants (${Object.keys(s.variants).join(', ')}): name one`);
  const v = variant === null ? undefined : s.variants![variant];
  const config: Record<string, unknown> = { ...(s.config ?? {}) };
  for (const [key, val] of Object.entries(v?.config ?? {})) {
    const base = config[key];
    config[key] = isObj(base) && isObj(val) ? { ...base, ...val } : val;
  }
  const args = { ...((s.args ?? {}) as object), ...((v?.args ?? {}) as object) } as A;
  const e = v?.expect ?? s.expect ?? {};
  return { config: config as ScenarioConfig, args, expect: { violations: e.violations ?? [], status: e.status ?? 'done' } };
}

/** The TaskSpec of a scenario task (exported for the runner). */
export function scenarioTaskSpec<TA>(spec: ScenarioTask<TA>, module: string): TaskSpec<TA> {
  if (!spec || typeof spec.name !== 'string' || typeof spec.fn !== 'string') throw new ScenarioError('start', `spawn({ name, fn }) needs a task name and the name of an exported function, got ${JSON.stringify(spec)}`);
  if (spec.kind !== undefined && !TASK_KINDS.includes(spec.kind)) throw new ScenarioError('start', `spawn '${spec.name}': kind must be one of ${TASK_KINDS.join(', ')}`);
  return { name: spec.name, kind: spec.kind ?? 'kthread', module: spec.module ?? module, fn: spec.fn, args: spec.args };
}
