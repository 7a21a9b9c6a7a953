// `shadowmm explore`: many seeded `sim` runs of one scenario, spread over Piscina workers (one
// run per task, explore_worker.ts), each judged against the scenario's expectation. Seeds
// S, S+1, ... go out in order, at most two per worker in flight, so --until-fail stops soon
// after the first failure. Every failing run keeps its seed, headline, event hash and the
// `shadowmm replay` command that reruns it event for event.
//
// PCT (--strategy pct) draws its d-1 priority change points from the first `pctSteps`
// scheduling steps. A change point past the end of a run never fires, so by default explore
// measures the scenario's length first: one random-walk run of the first seed in a worker,
// whose step count becomes pctSteps for every run (and goes into each replay command).

import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { ScenarioError, variantNames } from './scenario.js';
import { loadScenario } from './scenario_load.js';
import { replayCommand } from './scenario_run.js';
import { WORKER_EXEC_ARGV } from './threads.js';
import type { ExploreJob, ExploreRunResult } from './explore_worker.js';

export type ExploreStrategy = 'random' | 'pct';
export const EXPLORE_STRATEGIES: readonly ExploreStrategy[] = ['random', 'pct'];

export interface ExploreOptions {
  /** a built-in scenario name or a path (relative to cwd) */
  scenario: string;
  cwd?: string;
  /** runs per variant; Infinity with untilFail (default 100) */
  runs?: number;
  strategy?: ExploreStrategy;
  /** PCT bug depth (default 2) */
  depth?: number;
  /** PCT: steps the change points are drawn from (default: measured, see above) */
  pctSteps?: number;
  /** workers (default: the core count); 1 still runs in one worker */
  jobs?: number;
  /** stop submitting runs after the first failure */
  untilFail?: boolean;
  /** one variant; default every variant of the scenario (or none if it has none) */
  variant?: string | null;
  /** the first seed (default 1) */
  seedStart?: number;
  /** called with each finished run, in the order they finish; `replay` is set for a failing run */
  onRun?(r: ExploreRunResult, s: ExploreProgressState, replay: string | null): void;
  /** set to stop early (SIGINT): runs in flight finish, nothing more is submitted */
  signal?: AbortSignal;
}

export interface ExploreProgressState {
  done: number;
  /** undefined when unbounded (--until-fail without --runs) */
  total: number | undefined;
  failed: number;
}

export interface ExploreFailure {
  seed: number;
  variant: string | null;
  kinds: string[];
  status: string;
  headline: string;
  /** 0x-prefixed, 8 hex digits: what `shadowmm replay` prints for the same run */
  eventHash: string;
  replay: string;
}

export interface ExploreSummary {
  scenario: string;
  ref: string;
  variants: (string | null)[];
  strategy: ExploreStrategy;
  depth: number | null;
  pctSteps: number | null;
  seedStart: number;
  jobs: number;
  runs: number;
  failed: number;
  /** failure kind -> failing runs showing it (a run may count under several) */
  byKind: Record<string, number>;
  /** every failing run, by seed (then variant) */
  failures: ExploreFailure[];
  elapsedMs: number;
  runsPerS: number;
  /** mean wall ms of a run inside its worker */
  meanRunMs: number;
  untilFail: boolean;
  /** stopped by the signal before the runs asked for were done */
  interrupted: boolean;
}

/** Thrown for a bad option value (the CLI turns it into a usage error, exit 2). */
export class ExploreOptionError extends Error {
  override name = 'ExploreOptionError';
}

// From source (vitest, tsx) the workers load the .ts entry through tsx; from dist the .js.
const fromSource = import.meta.url.endsWith('.ts');
const workerFile = fileURLToPath(new URL(`../../workers/explore.${fromSource ? 'ts' : 'js'}`, import.meta.url));
const workerExecArgv = WORKER_EXEC_ARGV;

const hex = (h: number): string => `0x${(h >>> 0).toString(16).padStart(8, '0')}`;
const MAX_SEED = 0xffffffff;

function checkOptions(o: ExploreOptions): void {
  const whole = (v: number | undefined, name: string, min: number, max = Number.MAX_SAFE_INTEGER): void => {
    if (v !== undefined && !(Number.isInteger(v) && v >= min && v <= max)) throw new ExploreOptionError(`${name} must be a whole number from ${min} to ${max}, got ${String(v)}`);
  };
  if (o.runs !== Infinity) whole(o.runs, 'runs', 1);
  whole(o.depth, 'depth', 1, 1000);
  whole(o.pctSteps, 'pctSteps', 1);
  whole(o.jobs, 'jobs', 1, 1024);
  whole(o.seedStart, 'seedStart', 0, MAX_SEED);
  if (o.strategy !== undefined && !EXPLORE_STRATEGIES.includes(o.strategy)) throw new ExploreOptionError(`strategy must be one of ${EXPLORE_STRATEGIES.join(', ')}, got '${String(o.strategy)}'`);
  if (o.runs === Infinity && !o.untilFail) throw new ExploreOptionError('unbounded runs need untilFail');
}

/** Run the exploration. Throws ScenarioError for a bad scenario, ExploreOptionError for bad options. */
export async function explore(opts: ExploreOptions): Promise<ExploreSummary> {
  checkOptions(opts);
  const cwd = opts.cwd ?? process.cwd();
  const strategy = opts.strategy ?? 'random';
  const depth = opts.depth ?? 2;
  const seedStart = opts.seedStart ?? 1;
  const perVariant = opts.runs ?? (opts.untilFail ? Infinity : 100);
  // the scenario is loaded here once, so a bad file or variant is an error before any worker starts
  const loaded = await loadScenario(opts.scenario, cwd);
  const variants = opts.variant != null ? [opts.variant] : variantNames(loaded.scenario);
  if (opts.variant != null && !(loaded.scenario.variants && Object.hasOwn(loaded.scenario.variants, opts.variant))) {
    const known = loaded.scenario.variants ? Object.keys(loaded.scenario.variants).join(', ') : 'none';
    throw new ScenarioError('variants', `no variant '${opts.variant}' in scenario '${loaded.scenario.name}' (variants: ${known})`, loaded.module);
  }
  if (loaded.scenario.schedulers && !loaded.scenario.schedulers.includes('sim')) throw new ScenarioError('schedulers', `scenario '${loaded.scenario.name}' does not run under sim: explore has nothing to vary`, loaded.module);
  const lastSeed = perVariant === Infinity ? MAX_SEED : seedStart + perVariant - 1;
  if (lastSeed > MAX_SEED) throw new ExploreOptionError(`seeds ${seedStart}..${lastSeed} go past ${MAX_SEED}: lower --seed-start or --runs`);
  const total = perVariant === Infinity ? undefined : perVariant * variants.length;
  const jobs = Math.max(1, Math.min(opts.jobs ?? availableParallelism(), total ?? Infinity));
  // workers resolve the scenario themselves: a built-in by name, a file by absolute path
  const ref = loaded.builtin ? loaded.ref : loaded.module;

  const t0 = performance.now(); // the workers' start-up counts: the user waits for it too
  const pool = new Piscina({ filename: workerFile, execArgv: workerExecArgv, minThreads: jobs, maxThreads: jobs, concurrentTasksPerWorker: 1, idleTimeout: Infinity });
  pool.on('error', () => {}); // a lost worker rejects its task, which is reported there
  // only the failing runs are kept (a long exploration must not grow with its clean runs)
  const failedRuns: ExploreRunResult[] = [];
  let done = 0;
  let pctSteps: number | null = null;
  let runMs = 0;
  let interrupted = false;
  // the replay command of a run (pctSteps is known once the probe run is done)
  const replayOf = (r: ExploreRunResult): string =>
    exploreReplayCommand(loaded.ref, { seed: r.seed, variant: r.variant, strategy, depth, pctSteps, eventHash: r.status === 'crashed' ? undefined : r.eventHash });
  try {
    const job = (variant: string | null, seed: number): ExploreJob => ({ scenario: ref, cwd, variant, seed, strategy, pctDepth: depth, pctSteps: pctSteps ?? 1 });
    if (strategy === 'pct') {
      pctSteps = opts.pctSteps ?? null;
      if (pctSteps === null) {
        const probe = (await pool.run({ ...job(variants[0], seedStart), strategy: 'random' })) as ExploreRunResult;
        if (probe.scenarioError) throw scenarioErrorOf(probe.scenarioError);
        pctSteps = Math.max(1, probe.steps);
      }
    }
    // seeds in order; variants interleaved so --until-fail covers each early
    let next = 0;
    const limit = total ?? Infinity;
    const nextJob = (): ExploreJob | null => {
      if (next >= limit) return null;
      const i = next++;
      return job(variants[i % variants.length], seedStart + Math.floor(i / variants.length));
    };
    let scenarioError: ExploreRunResult['scenarioError'] | null = null;
    const stop = (): boolean => scenarioError !== null || (opts.untilFail === true && failedRuns.length > 0) || opts.signal?.aborted === true;
    const lane = async (): Promise<void> => {
      for (let j = stop() ? null : nextJob(); j !== null; j = stop() ? null : nextJob()) {
        let r: ExploreRunResult;
        try {
          r = (await pool.run(j)) as ExploreRunResult;
        } catch (e) {
          // the worker itself died (out of memory, a native crash): a failing run
          r = { seed: j.seed, variant: j.variant, ok: false, status: 'crashed', kinds: ['crash'], headline: `worker died: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`, eventHash: 0, steps: 0, ms: 0 };
        }
        if (r.scenarioError) {
          scenarioError ??= r.scenarioError;
          return;
        }
        done++;
        runMs += r.ms;
        if (!r.ok) failedRuns.push(r);
        opts.onRun?.(r, { done, total, failed: failedRuns.length }, r.ok ? null : replayOf(r));
      }
    };
    await Promise.all(Array.from({ length: jobs * 2 }, lane));
    if (scenarioError !== null) throw scenarioErrorOf(scenarioError);
    interrupted = opts.signal?.aborted === true && done < (total ?? Infinity) && !(opts.untilFail && failedRuns.length > 0);
  } finally {
    await pool.destroy();
  }
  const elapsedMs = performance.now() - t0;
  const failures = failedRuns
    .sort((a, b) => a.seed - b.seed || variants.indexOf(a.variant) - variants.indexOf(b.variant))
    .map((r): ExploreFailure => ({
      seed: r.seed,
      variant: r.variant,
      kinds: r.kinds,
      status: r.status,
      headline: r.headline,
      eventHash: hex(r.eventHash),
      replay: replayOf(r),
    }));
  const byKind: Record<string, number> = {};
  for (const f of failures) for (const k of f.kinds) byKind[k] = (byKind[k] ?? 0) + 1;
  return {
    scenario: loaded.scenario.name,
    ref: loaded.ref,
    variants,
    strategy,
    depth: strategy === 'pct' ? depth : null,
    pctSteps,
    seedStart,
    jobs,
    runs: done,
    failed: failures.length,
    byKind,
    failures,
    elapsedMs,
    runsPerS: elapsedMs > 0 ? (done * 1000) / elapsedMs : 0,
    meanRunMs: done > 0 ? runMs / done : 0,
    untilFail: opts.untilFail === true,
    interrupted,
  };
}

function scenarioErrorOf(e: NonNullable<ExploreRunResult['scenarioError']>): ScenarioError {
  return new ScenarioError(e.field, e.problem, e.file);
}

/** `shadowmm replay` for one run of explore: H5's command, with PCT's step count when PCT. */
export function exploreReplayCommand(ref: string, o: { seed: number; variant: string | null; strategy: ExploreStrategy; depth: number; pctSteps: number | null; eventHash?: number }): string {
  let s = replayCommand(ref, { seed: o.seed, variant: o.variant, strategy: o.strategy, pctDepth: o.depth });
  if (o.strategy === 'pct' && o.pctSteps !== null) s += ` --pct-steps ${o.pctSteps}`;
  if (o.eventHash !== undefined) s += ` --hash ${hex(o.eventHash)}`;
  return s;
}
