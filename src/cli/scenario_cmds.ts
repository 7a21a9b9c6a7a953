// `shadowmm list`, `shadowmm run` and `shadowmm replay`: COMMANDS entries for main.ts. A bad
// argument throws an error with `usage = true` (main.ts: message, hint, exit 2); a bad scenario
// is a ScenarioError naming the file and the field (exit 2); otherwise the exit code is 0 when
// every run was as its scenario expects, 1 when one was not.

import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ParseArgsConfig } from 'node:util';
import { buildReport, hashHex, type Report } from '../check/report.js';
import { formatRun, verdictLine } from '../check/format.js';
import { variantNames } from '../run/scenario.js';
import { BUILTIN_DRIVERS, loadScenario } from '../run/scenario_load.js';
import { runScenario, type ScenarioRunOutcome } from '../run/scenario_run.js';
import { builtinScenarios } from '../scenarios/index.js';
import { traceHooks } from '../run/trace.js';

type Values = Record<string, string | boolean | undefined>;

export interface ScenarioCommand {
  summary: string;
  synopsis: string;
  details: string[];
  notes: string[];
  options: NonNullable<ParseArgsConfig['options']>;
  positionals: true;
  run(values: Values, positionals: string[]): Promise<number>;
}

export class ScenarioUsageError extends Error {
  readonly usage = true;
}

const usage = (m: string): ScenarioUsageError => new ScenarioUsageError(m);
const out = (s: string): void => void process.stdout.write(s + '\n');

/** --trace FILE: the hooks that write the run's trace (FILE-variant.json when several variants run) */
function traced(v: Values, variant: string | null): ReturnType<typeof traceHooks> | undefined {
  if (typeof v.trace !== 'string') return undefined;
  if (v.trace === '') throw usage('--trace needs a file name');
  const path = variant === null ? v.trace : v.trace.replace(/(\.[^./]*)?$/, (ext) => `-${variant}${ext}`);
  return traceHooks(path, (s) => void process.stderr.write(`trace: ${s.path} (${s.spans} spans, ${s.tracks} tracks${s.wrapped ? ', event ring wrapped: oldest events lost' : ''})\n`));
}

function seedOf(v: string | boolean | undefined, name = '--seed'): number {
  const s = String(v);
  if (!/^\d+$/.test(s) || Number(s) > 0xffffffff) throw usage(`${name} must be a whole number from 0 to 4294967295, got '${s}'`);
  return Number(s);
}

function wholeOf(v: string | boolean | undefined, name: string, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  const s = String(v);
  if (!/^\d+$/.test(s) || Number(s) < min || Number(s) > max) throw usage(`${name} must be a whole number from ${min} to ${max}, got '${s}'`);
  return Number(s);
}

function oneScenario(positionals: string[]): string {
  if (positionals.length === 0) throw usage('name a scenario (a built-in name from `shadowmm list`, or a .ts/.js file)');
  if (positionals.length > 1) throw usage(`one scenario at a time, got ${positionals.length}: ${positionals.join(' ')}`);
  return positionals[0];
}

function strategyOf(v: Values): { strategy: 'random' | 'pct'; pctDepth?: number; pctSteps?: number } {
  const strategy = String(v.strategy ?? 'random');
  if (strategy !== 'random' && strategy !== 'pct') throw usage(`--strategy must be random or pct, got '${strategy}'`);
  const pctDepth = wholeOf(v.depth, '--depth', 1, 1000);
  const pctSteps = wholeOf(v['pct-steps'], '--pct-steps', 1, Number.MAX_SAFE_INTEGER);
  if (strategy !== 'pct' && (pctDepth !== undefined || pctSteps !== undefined)) throw usage(`--${pctDepth !== undefined ? 'depth' : 'pct-steps'} applies to --strategy pct only`);
  return { strategy, pctDepth, pctSteps };
}

function packageVersion(): string {
  // dist/src/cli and src/cli sit at different depths: walk up to shadowmm's package.json
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    const p = join(dir, 'package.json');
    if (existsSync(p)) {
      const pkg = JSON.parse(readFileSync(p, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'shadowmm' && pkg.version) return pkg.version;
    }
    if (dirname(dir) === dir) return 'unknown';
  }
}

function writeReport(path: string, report: Report): void {
  const p = resolve(path);
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, JSON.stringify(report, null, 2) + '\n');
}

/** Print each run (summary, or quiet verdict lines), write the report, and return the exit code. */
function finish(outcomes: ScenarioRunOutcome[], v: Values, command: string[], extra: (o: ScenarioRunOutcome) => string[] = () => []): number {
  const report = buildReport(outcomes, { version: packageVersion(), command });
  if (typeof v.report === 'string') writeReport(v.report, report);
  if (v.json === true) out(JSON.stringify(report, null, 2));
  else {
    report.runs.forEach((r, i) => {
      if (v.quiet === true) out(`${r.scenario}${r.variant === null ? '' : ` [${r.variant}]`}: ${verdictLine(r)}${r.replay && !r.ok ? `\n  replay: ${r.replay}` : ''}`);
      else out((i > 0 ? '\n' : '') + formatRun(r));
      for (const line of extra(outcomes[i])) out(line);
    });
    if (typeof v.report === 'string') out(`report: ${resolve(v.report)}`);
  }
  return report.ok && outcomes.every((o) => extra(o).every((l) => !l.startsWith('NOT REPRODUCED'))) ? 0 : 1;
}

const COMMON_DETAILS = [
  '--variant V                   one variant of the scenario (see shadowmm list)',
  '--strategy random|pct         sim scheduling: random walk (default) or PCT',
  '--depth d                     PCT bug depth: d-1 priority change points (default 2)',
  '--pct-steps K                 PCT: the steps the change points are drawn from (default 1000)',
  '--report FILE                 write the JSON report (schema: docs/report-schema.json)',
  '--trace FILE                  write a Chrome/Perfetto trace of the run (open it in ui.perfetto.dev);',
  '                              with several variants, FILE gets -VARIANT before its extension',
  '--json                        print the JSON report instead of the summary',
  '--quiet                       one verdict line per run',
];

const COMMON_OPTIONS = {
  variant: { type: 'string' },
  strategy: { type: 'string' },
  depth: { type: 'string' },
  'pct-steps': { type: 'string' },
  report: { type: 'string' },
  trace: { type: 'string' },
  json: { type: 'boolean' },
  quiet: { type: 'boolean' },
} as const;

export const listCommand: ScenarioCommand = {
  summary: 'the built-in scenarios and drivers, one line each',
  synopsis: '[--json]',
  details: ['--json                        print them as one JSON object'],
  notes: ['Run one with: shadowmm run <scenario>'],
  options: { json: { type: 'boolean' } },
  positionals: true,
  async run(v, positionals) {
    if (positionals.length > 0) throw usage(`unexpected argument '${positionals[0]}'`);
    const scenarios = [];
    for (const b of builtinScenarios()) {
      const s = (await loadScenario(b.name)).scenario;
      scenarios.push({ name: s.name, description: s.description, variants: s.variants ? Object.keys(s.variants) : [], schedulers: s.schedulers ?? ['sim', 'threads'] });
    }
    const drivers = Object.entries(BUILTIN_DRIVERS).map(([name, d]) => ({ name, description: d.description }));
    if (v.json === true) {
      out(JSON.stringify({ scenarios, drivers }, null, 2));
      return 0;
    }
    const w = Math.max(...scenarios.map((s) => s.name.length), ...drivers.map((d) => d.name.length));
    out('scenarios:');
    for (const s of scenarios) out(`  ${s.name.padEnd(w)}  ${s.description}${s.variants.length ? ` (variants: ${s.variants.join(', ')})` : ''}`);
    out('drivers:');
    for (const d of drivers) out(`  ${d.name.padEnd(w)}  ${d.description}`);
    return 0;
  },
};

export const runCommand: ScenarioCommand = {
  summary: 'run a scenario (built-in or a .ts/.js file) and report its violations',
  synopsis: '<scenario|file> [--scheduler sim|threads] [--seed N] [--variant V] [--report out.json] [--trace out.json] [--json] [--quiet]',
  details: [
    '<scenario|file>               a built-in scenario (shadowmm list) or a .ts/.js scenario file',
    '--scheduler sim|threads       sim: deterministic, seeded (default, unless the scenario runs under threads only);',
    '                              threads: a worker thread per task',
    '--seed N                      sim seed, 0..4294967295 (default 1)',
    ...COMMON_DETAILS,
  ],
  notes: [
    'Without --variant every variant of the scenario runs, one after the other.',
    'Each sim run prints the `shadowmm replay` command that reruns it event for event.',
    "Exits 0 when every run was as the scenario expects (its expected violations, and no other), 1 otherwise, 2 on a usage or scenario error.",
  ],
  options: { scheduler: { type: 'string' }, seed: { type: 'string' }, ...COMMON_OPTIONS },
  positionals: true,
  async run(v, positionals) {
    const ref = oneScenario(positionals);
    if (v.scheduler !== undefined && v.scheduler !== 'sim' && v.scheduler !== 'threads') throw usage(`--scheduler must be sim or threads, got '${String(v.scheduler)}'`);
    const seed = v.seed === undefined ? 1 : seedOf(v.seed);
    const st = strategyOf(v);
    const loaded = await loadScenario(ref);
    // default: sim, or the first scheduler a scenario that names its own runs under
    const scheduler = (v.scheduler as 'sim' | 'threads' | undefined) ?? loaded.scenario.schedulers?.[0] ?? 'sim';
    if (scheduler === 'threads' && (v.seed !== undefined || v.strategy !== undefined)) throw usage('--seed and --strategy apply to --scheduler sim only (threads runs are not seeded)');
    const variants = typeof v.variant === 'string' ? [v.variant] : variantNames(loaded.scenario);
    const outcomes: ScenarioRunOutcome[] = [];
    for (const variant of variants) outcomes.push(await runScenario(loaded, { scheduler, seed, variant, ...st, hooks: traced(v, variants.length > 1 ? variant : null) }));
    return finish(outcomes, v, ['run', ...process.argv.slice(3)]);
  },
};

export const replayCommand: ScenarioCommand = {
  summary: 'rerun one seeded sim run event for event and confirm it (same event hash)',
  synopsis: '<scenario|file> --seed N [--variant V] [--hash 0xHASH] [--strategy pct --depth d --pct-steps K] [--report out.json] [--trace out.json] [--json] [--quiet]',
  details: [
    '<scenario|file>               a built-in scenario (shadowmm list) or a .ts/.js scenario file',
    '--seed N                      the seed of the run to replay (required)',
    '--hash 0xHASH                 the recorded run\'s event hash (run and explore print it in the replay command);',
    '                              without it the run is made twice and the two hashes compared',
    ...COMMON_DETAILS,
  ],
  notes: ['Exits 0 when the run was reproduced (same event hash) and was as the scenario expects, 1 otherwise, 2 on a usage or scenario error.'],
  options: { seed: { type: 'string' }, hash: { type: 'string' }, ...COMMON_OPTIONS },
  positionals: true,
  async run(v, positionals) {
    const ref = oneScenario(positionals);
    if (v.seed === undefined) throw usage('--seed is required: the seed of the run to replay');
    const seed = seedOf(v.seed);
    const st = strategyOf(v);
    let want: number | null = null;
    if (v.hash !== undefined) {
      const h = String(v.hash);
      if (!/^(0x)?[0-9a-fA-F]{1,8}$/.test(h)) throw usage(`--hash must be a 32-bit hex number like 0x1a2b3c4d, got '${h}'`);
      want = parseInt(h.replace(/^0x/, ''), 16) >>> 0;
    }
    const loaded = await loadScenario(ref);
    const variant = typeof v.variant === 'string' ? v.variant : null;
    if (variant === null && loaded.scenario.variants) throw usage(`scenario '${loaded.scenario.name}' has variants (${Object.keys(loaded.scenario.variants).join(', ')}): name one with --variant`);
    const o = await runScenario(loaded, { scheduler: 'sim', seed, variant, ...st, hooks: traced(v, null) });
    const recorded = want ?? (await runScenario(loaded, { scheduler: 'sim', seed, variant, ...st })).result.eventHash;
    const got = o.result.eventHash >>> 0;
    const line =
      got === recorded
        ? `replayed event for event: ${o.result.events} events, event hash ${hashHex(got)} ${want !== null ? 'matches the recorded run' : '(the same in a second run)'}`
        : `NOT REPRODUCED: event hash ${hashHex(got)}, the ${want !== null ? 'recorded run' : 'second run'} had ${hashHex(recorded)}`;
    return finish([o], v, ['replay', ...process.argv.slice(3)], () => [line]);
  },
};

