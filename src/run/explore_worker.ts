// The worker side of `shadowmm explore`: one seeded `sim` run of a scenario per Piscina task,
// from serializable inputs (runSeeded), answered with a small serializable verdict. The
// scenario module, its drivers and any .ts file load once per worker (loadModule's cache) and
// through tsx when they are .ts (modules.ts). A bad scenario comes back as `scenarioError`
// rather than a thrown error, so the main side can tell it from a failing run.

import { loadModulesWithRequire } from '../sched/modules.js';
import { ScenarioError } from './scenario.js';
import { runSeeded } from './scenario_run.js';

// Piscina loads the entry with require() first, so from source under tsx this worker side is
// CommonJS: scenario and driver modules must come through the same require to share `current`.
if (typeof require === 'function') loadModulesWithRequire(require);

/** One job: a scenario reference (built-in name or absolute path), variant and seed. */
export interface ExploreJob {
  scenario: string;
  cwd: string;
  variant: string | null;
  seed: number;
  strategy: 'random' | 'pct';
  pctDepth: number;
  pctSteps: number;
}

/** A run's verdict, as explore reports it. */
export interface ExploreRunResult {
  seed: number;
  variant: string | null;
  /** the run met the scenario's expectation */
  ok: boolean;
  status: string;
  /** why it failed: unexpected violation kinds, 'missing:<kind>', 'status:<status>' (empty when ok) */
  kinds: string[];
  /** one line: the first unexpected violation's headline, or what was missing */
  headline: string;
  eventHash: number;
  steps: number;
  /** wall ms of the whole run in the worker (boot to verdict) */
  ms: number;
  /** set instead of a verdict when the scenario itself is wrong (exit 2): the ScenarioError's parts */
  scenarioError?: { field: string; problem: string; file: string | null };
}

const firstLine = (s: string): string => s.split('\n')[0];

/** Run one job to its verdict. */
export async function exploreRun(job: ExploreJob): Promise<ExploreRunResult> {
  const base = { seed: job.seed, variant: job.variant };
  let o;
  try {
    o = await runSeeded({ scenario: job.scenario, cwd: job.cwd, variant: job.variant, seed: job.seed, strategy: job.strategy, pctDepth: job.pctDepth, pctSteps: job.pctSteps, events: true });
  } catch (e) {
    if (e instanceof ScenarioError) return { ...base, ok: false, status: 'error', kinds: [], headline: e.message, eventHash: 0, steps: 0, ms: 0, scenarioError: { field: e.field, problem: e.problem, file: e.file } };
    // an exception out of the kernel or the runner: a failing run, with its seed to replay
    const msg = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return { ...base, ok: false, status: 'crashed', kinds: ['crash'], headline: firstLine(msg), eventHash: 0, steps: 0, ms: 0 };
  }
  const kinds = [...o.unexpected, ...o.missing.map((m) => `missing:${m}`), ...(o.statusOk ? [] : [`status:${o.status}`])];
  let headline = '';
  if (!o.ok) {
    const v = o.violations.find((x) => o.unexpected.includes(x.kind));
    if (v) headline = `${v.kind}: ${firstLine(v.message)}`;
    else if (o.missing.length > 0) headline = `expected violation${o.missing.length > 1 ? 's' : ''} not reported: ${o.missing.join(', ')}`;
    else headline = `run ended '${o.status}', expected ${o.expected.status.join(' or ')}`;
  }
  return { ...base, ok: o.ok, status: o.status, kinds, headline, eventHash: o.result.eventHash >>> 0, steps: o.result.steps, ms: o.durations.totalMs };
}
