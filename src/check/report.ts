// The JSON report of `shadowmm run --report` / `--json`: one document per command, one entry
// per run. `Report` is the documented schema (docs/report-schema.json is the same thing as a
// JSON Schema; test/cli_scenario.test.ts validates a real report against it). Bump
// REPORT_SCHEMA when a field changes meaning or goes away; adding a field is compatible.

import type { RunStatus } from '../sched/scheduler.js';
import type { Violation } from './violation.js';

export const REPORT_SCHEMA = 'shadowmm-report/1';

export interface ReportEvent {
  seq: number;
  timeNs: number;
  /** the event type's name (lower case, e.g. 'block', 'wake', 'violation') */
  type: string;
  a: number;
  b: number;
  c: number;
}

export interface ReportViolation {
  /** the klog kind ('lockdep_circular', 'mirror_invariant', ...) or a runner kind ('teardown_leak', 'check_failed', 'run_status', 'task_failed') */
  kind: string;
  /** kernel-style text, as the kernel prints it */
  message: string;
  timeNs: number | null;
  klogIndex: number | null;
  tasks: { id: number; name: string; recent: ReportEvent[] }[];
  seed: number | null;
  replay: string | null;
}

export interface ReportRun {
  scenario: string;
  /** as given on the command line: a built-in name or a path */
  ref: string;
  variant: string | null;
  scheduler: 'sim' | 'threads';
  seed: number | null;
  strategy: 'random' | 'pct' | null;
  pctDepth: number | null;
  /** status and violation kinds as the scenario expects */
  ok: boolean;
  status: RunStatus;
  expected: { violations: string[]; status: RunStatus[] };
  /** violation kind -> records */
  found: Record<string, number>;
  missing: string[];
  unexpected: string[];
  violations: ReportViolation[];
  checkFailures: string[];
  /** teardown messages; null when the run did not end 'done' */
  leaks: string[] | null;
  /** flat 'group.name' -> value */
  counters: Record<string, number>;
  durations: { bootMs: number; startMs: number; runMs: number; checkMs: number; totalMs: number };
  steps: number;
  timeNs: number;
  events: number;
  /** 0x-prefixed, 8 hex digits; meaningful under sim only */
  eventHash: string;
  /** who waits on whom, for a run that did not end 'done' */
  hungReport: string | null;
  failedTasks: { task: number; name: string; error: string }[];
  pctChangePoints: number[];
  replay: string | null;
  notes: string[];
}

export interface Report {
  schema: typeof REPORT_SCHEMA;
  tool: { name: 'shadowmm'; version: string };
  /** the subcommand and its arguments */
  command: string[];
  /** ISO 8601 */
  createdAt: string;
  /** every run as expected */
  ok: boolean;
  runs: ReportRun[];
}

/** What a report needs of a run (ScenarioRunOutcome has it all). */
export interface ReportableRun {
  scenario: string;
  ref: string;
  variant: string | null;
  scheduler: 'sim' | 'threads';
  seed: number | null;
  strategy: 'random' | 'pct' | null;
  pctDepth: number | null;
  ok: boolean;
  status: RunStatus;
  expected: { violations: string[]; status: RunStatus[] };
  found: Record<string, number>;
  missing: string[];
  unexpected: string[];
  violations: Violation[];
  checkFailures: string[];
  leaks: string[] | null;
  counters: Record<string, number>;
  durations: ReportRun['durations'];
  result: { steps: number; timeNs: number; events: number; eventHash: number; report: string | null; failed: ReportRun['failedTasks']; pctChangePoints: number[] };
  replay: string | null;
  notes: string[];
}

export const hashHex = (h: number): string => `0x${(h >>> 0).toString(16).padStart(8, '0')}`;

export function reportRun(o: ReportableRun): ReportRun {
  const r = o.result;
  return {
    scenario: o.scenario,
    ref: o.ref,
    variant: o.variant,
    scheduler: o.scheduler,
    seed: o.seed,
    strategy: o.strategy,
    pctDepth: o.pctDepth,
    ok: o.ok,
    status: o.status,
    expected: o.expected,
    found: o.found,
    missing: o.missing,
    unexpected: o.unexpected,
    violations: o.violations,
    checkFailures: o.checkFailures,
    leaks: o.leaks,
    counters: o.counters,
    durations: o.durations,
    steps: r.steps,
    timeNs: r.timeNs,
    events: r.events,
    eventHash: hashHex(r.eventHash),
    hungReport: r.report,
    failedTasks: r.failed,
    pctChangePoints: r.pctChangePoints,
    replay: o.replay,
    notes: o.notes,
  };
}

export function buildReport(runs: ReportableRun[], meta: { version: string; command: string[] }): Report {
  const rs = runs.map(reportRun);
  return { schema: REPORT_SCHEMA, tool: { name: 'shadowmm', version: meta.version }, command: meta.command, createdAt: new Date().toISOString(), ok: rs.every((r) => r.ok), runs: rs };
}
