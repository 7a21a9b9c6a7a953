// `shadowmm explore <scenario|file>`: the option checking and the output of src/run/explore.ts.
// What it prints: each failing seed as it is found (headline, event hash, replay command), then
// a summary (runs, failures by kind, runs/s). --json prints one JSON object (ExploreSummary)
// and nothing else on stdout; --quiet prints the summary and the first failing seed only.
// Exit: 0 every run met the scenario's expectation, 1 some did not, 2 usage or scenario error
// (a usage error carries `usage = true`; main.ts adds the --help hint).

import { availableParallelism } from 'node:os';
import { EXPLORE_STRATEGIES, ExploreOptionError, explore, type ExploreProgressState, type ExploreStrategy, type ExploreSummary } from '../run/explore.js';
import type { ExploreRunResult } from '../run/explore_worker.js';
import { progress } from '../run/progress.js';
import type { ScenarioCommand } from './scenario_cmds.js';

/** failing seeds printed as they are found (the rest are counted; --json lists all) */
const MAX_SHOWN = 20;
const hashHex = (h: number): string => `0x${(h >>> 0).toString(16).padStart(8, '0')}`;

type Values = Record<string, string | boolean | undefined>;

/** A bad argument: main.ts prints it with a hint to --help and exits 2. */
class ExploreUsageError extends Error {
  readonly usage = true;
}

const usage = (m: string): ExploreUsageError => new ExploreUsageError(m);

function whole(v: string | boolean | undefined, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  const s = String(v);
  if (!/^\d+$/.test(s) || Number(s) < min || Number(s) > max) throw usage(`--${name} must be a whole number from ${min} to ${max}, got '${s}'`);
  return Number(s);
}

export const exploreCommand: ScenarioCommand = {
  summary: 'many seeded sim runs of a scenario over worker threads: each failing seed and its replay command',
  synopsis: '<scenario|file> [--runs N] [--strategy random|pct] [--depth d] [--pct-steps K] [--jobs N] [--until-fail] [--variant V] [--seed-start S] [--json] [--quiet]',
  details: [
    '<scenario|file>               a built-in scenario (shadowmm list) or a .ts/.js scenario file',
    '--runs N                      seeded sim runs per variant (default 100; with --until-fail: no bound)',
    '--strategy random|pct         sim scheduling: random walk (default) or PCT',
    '--depth d                     PCT bug depth: d-1 priority change points (default 2)',
    "--pct-steps K                 PCT: the steps the change points fall in (default: the first seed's run length)",
    `--jobs N                      worker threads (default: the core count, ${availableParallelism()} here)`,
    '--until-fail                  stop at the first failing run',
    '--variant V                   explore one variant (default: every variant)',
    '--seed-start S                the first seed (default 1): seeds S, S+1, ...',
    '--json                        print one JSON object (the summary) and nothing else',
    '--quiet                       no progress line; only the first failing seed and the summary',
  ],
  notes: [
    'Each failing seed is printed with its event hash and the command that replays it event for event.',
    'Ctrl-C stops it early: the runs in flight finish, and the runs done are summarized and judged.',
    "Exits 0 when every run met the scenario's expectation, 1 if any did not, 2 on a usage or scenario error.",
  ],
  options: {
    runs: { type: 'string' },
    strategy: { type: 'string' },
    depth: { type: 'string' },
    'pct-steps': { type: 'string' },
    jobs: { type: 'string' },
    'until-fail': { type: 'boolean' },
    variant: { type: 'string' },
    'seed-start': { type: 'string' },
    json: { type: 'boolean' },
    quiet: { type: 'boolean' },
  },
  positionals: true,
  run: runExplore,
};

async function runExplore(v: Values, positionals: string[]): Promise<number> {
  if (positionals.length === 0) throw usage('name a scenario (a built-in name from `shadowmm list`, or a .ts/.js file)');
  if (positionals.length > 1) throw usage(`one scenario at a time, got ${positionals.length}: ${positionals.join(' ')}`);
  const strategy = String(v.strategy ?? 'random');
  if (!(EXPLORE_STRATEGIES as readonly string[]).includes(strategy)) throw usage(`--strategy must be one of ${EXPLORE_STRATEGIES.join(', ')}, got '${strategy}'`);
  const runs = whole(v.runs, 'runs', 1);
  const depth = whole(v.depth, 'depth', 1, 1000);
  const pctSteps = whole(v['pct-steps'], 'pct-steps', 1);
  const jobs = whole(v.jobs, 'jobs', 1, 1024);
  const seedStart = whole(v['seed-start'], 'seed-start', 0, 0xffffffff);
  if (strategy !== 'pct' && (depth !== undefined || pctSteps !== undefined)) throw usage(`--${depth !== undefined ? 'depth' : 'pct-steps'} applies to --strategy pct only`);
  const json = v.json === true;
  const quiet = v.quiet === true || json;
  const out = (s: string): void => void process.stdout.write(s + '\n');
  const ctl = new AbortController();
  const onSigint = (): void => ctl.abort();
  process.once('SIGINT', onSigint);
  const bar = progress({ label: `explore ${positionals[0]}`, unit: 'runs', quiet });
  let shown = 0;
  let hidden = 0;
  const onRun = (r: ExploreRunResult, s: ExploreProgressState, replay: string | null): void => {
    bar.update({ done: s.done, total: s.total, violations: s.failed });
    if (r.ok || json) return;
    if (shown >= (quiet ? 1 : MAX_SHOWN)) {
      hidden++;
      return;
    }
    shown++;
    bar.end(); // a no-op unless on a TTY: the line is redrawn by the next update
    out(`FAIL seed ${r.seed}${r.variant !== null ? ` variant ${r.variant}` : ''} (events ${hashHex(r.eventHash)}): ${r.headline}`);
    out(`  replay: ${replay}`);
  };
  let summary: ExploreSummary;
  try {
    summary = await explore({ scenario: positionals[0], runs, strategy: strategy as ExploreStrategy, depth, pctSteps, jobs, untilFail: v['until-fail'] === true, variant: typeof v.variant === 'string' ? v.variant : null, seedStart, onRun, signal: ctl.signal });
  } catch (e) {
    if (e instanceof ExploreOptionError) throw usage(e.message);
    throw e; // a ScenarioError: main.ts prints it (it names the file and the field) and exits 2
  } finally {
    bar.end();
    process.off('SIGINT', onSigint);
  }
  if (hidden > 0) out(`... ${hidden} more failing seed${hidden === 1 ? '' : 's'} not shown${json ? '' : ' (--json lists them all)'}`);
  out(json ? JSON.stringify(summary, null, 2) : formatSummary(summary));
  return summary.failed > 0 ? 1 : 0;
}

/** The human summary: runs and rate, failing runs by kind, and the first failing seed's replay. */
export function formatSummary(s: ExploreSummary): string {
  const lines: string[] = [];
  const how = s.strategy === 'pct' ? `PCT depth ${s.depth} over ${s.pctSteps} steps` : 'random walk';
  const variants = s.variants.length > 1 || s.variants[0] !== null ? `, variant${s.variants.length > 1 ? 's' : ''} ${s.variants.join(', ')}` : '';
  lines.push('');
  lines.push(`explore ${s.scenario}: ${s.runs} sim run${s.runs === 1 ? '' : 's'} (seeds from ${s.seedStart}, ${how}${variants}) in ${(s.elapsedMs / 1000).toFixed(2)} s, ${s.runsPerS.toFixed(1)} runs/s on ${s.jobs} worker${s.jobs === 1 ? '' : 's'}`);
  if (s.interrupted) lines.push('interrupted: the runs in flight finished, no more were started');
  if (s.failed === 0) {
    lines.push("every run met the scenario's expectation");
    return lines.join('\n');
  }
  const pct = ((100 * s.failed) / Math.max(1, s.runs)).toFixed(1);
  lines.push(`${s.failed} failing run${s.failed === 1 ? '' : 's'} (${pct}%)${s.untilFail ? ', stopped after the first (--until-fail)' : ''}, by kind:`);
  const width = Math.max(...Object.keys(s.byKind).map((k) => k.length));
  for (const [kind, n] of Object.entries(s.byKind).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))) {
    const first = s.failures.find((f) => f.kinds.includes(kind))!;
    lines.push(`  ${kind.padEnd(width)}  ${String(n).padStart(6)} run${n === 1 ? ' ' : 's'}  first seed ${first.seed}`);
  }
  const f = s.failures[0];
  lines.push(`first failing seed ${f.seed}${f.variant !== null ? ` variant ${f.variant}` : ''} (events ${f.eventHash}): ${f.replay}`);
  return lines.join('\n');
}
