// `--trace out.json`: a finished run as a Chrome trace-event file, which ui.perfetto.dev (and
// chrome://tracing) open. Tasks are tracks, grouped by kind (CPU tasks, kernel threads,
// device engines, driver tasks); CPU faults, device faults, invalidations (named by their
// MMU_NOTIFY_* event), lock waits and the OOM reaper's attempts are spans; violations, klog
// lines, spawns, exits, zaps and installs are instants; free pages, each mm's rss and swap
// entries, and the faults and invalidations in flight are counter tracks.
//
// Build it after the run and before the kernel is dropped: it reads the event ring, the klog
// and the task and device records. The ring keeps only its newest records: when it wrapped,
// the trace says so (otherData.wrapped, and an instant at its start) and spans whose begin
// was overwritten are left out. Times are the event log's: virtual ns under `sim`; under
// `threads` ns since the kernel's epoch, read as performance.timeOrigin + performance.now()
// in every worker, so spans from different workers share one time base.

import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Kernel } from '../sched/kernel.js';
import type { RunResult } from '../sched/scheduler.js';
import { EV_WORDS } from '../shm/events.js';
import { TraceBuilder } from './trace_build.js';
import { COUNTER_PID, KIND_GROUPS, KIND_PIDS, type TraceEvent } from './trace_event.js';

export type { TraceEvent } from './trace_event.js';

/** What the caller knows about the run, copied into otherData. */
export interface TraceMeta {
  scenario?: string;
  variant?: string | null;
  seed?: number | null;
  scheduler?: 'sim' | 'threads';
  /** the command that replays the run */
  command?: string;
  [key: string]: unknown;
}

/** The JSON object format of the Chrome trace-event format. */
export interface ChromeTrace {
  traceEvents: TraceEvent[];
  displayTimeUnit: 'ns' | 'ms';
  otherData: Record<string, unknown>;
}

export interface TraceSummary {
  /** absolute path written (writeTrace only) */
  path?: string;
  /** trace events written, metadata included */
  events: number;
  spans: number;
  tracks: number;
  /** events the run wrote, and how many the ring no longer held */
  recorded: number;
  lost: number;
  wrapped: boolean;
  /** ends whose begin was not in the ring */
  unmatched: number;
}

/** Build the trace of a finished run. */
export function buildTrace(k: Kernel, result: RunResult | null = null, meta: TraceMeta = {}): { trace: ChromeTrace; summary: TraceSummary } {
  const recs = k.events.records();
  const recorded = k.events.count;
  const kept = recs.length / EV_WORDS;
  const lost = recorded - kept;
  const b = new TraceBuilder(k);
  b.build(recs, 0);
  const first = Number.isFinite(b.firstNs) ? b.firstNs : 0;
  const globals: TraceEvent[] = [];
  const global = (ns: number, name: string, args: Record<string, unknown>): void => {
    globals.push({ name, ph: 'i', s: 'g', cat: 'run', pid: COUNTER_PID, tid: 0, ts: ns / 1000, args });
  };
  if (lost > 0) global(first, 'event ring wrapped', { note: `only the newest ${kept} of ${recorded} events remain: the ${lost} oldest were overwritten (raise config.eventRecords)` });
  if (!k.events.enabled && recorded === 0) global(first, 'event log off', { note: 'the run had config.events off: no events to trace' });
  if (result && result.status !== 'done') global(b.lastNs, `run ended: ${result.status}`, { report: result.report ?? '' });
  const body = [...b.events, ...globals];
  // time order; at one instant the longer span first, so parents precede their children
  body.sort((x, y) => x.ts! - y.ts! || (y.dur ?? -1) - (x.dur ?? -1));
  const traceEvents = [...metadata(b), ...body];
  const scheduler = result?.scheduler ?? meta.scheduler ?? null;
  const otherData: Record<string, unknown> = {
    generator: 'shadowmm',
    ...meta,
    scheduler,
    seed: result?.seed ?? meta.seed ?? null,
    status: result?.status ?? null,
    timeBase:
      scheduler === 'threads'
        ? 'real time: ns since the kernel epoch, performance.timeOrigin + performance.now() in every worker'
        : scheduler === 'sim'
          ? 'virtual time of the sim scheduler'
          : 'the event log clock',
    eventsRecorded: recorded,
    eventsKept: kept,
    eventsLost: lost,
    wrapped: lost > 0,
    unmatchedEnds: b.unmatched,
  };
  const summary: TraceSummary = { events: traceEvents.length, spans: b.spans, tracks: b.tracks.length, recorded, lost, wrapped: lost > 0, unmatched: b.unmatched };
  return { trace: { traceEvents, displayTimeUnit: 'ns', otherData }, summary };
}

/** Build the trace of a finished run and write it to `path` (directories made as needed). */
export function writeTrace(k: Kernel, result: RunResult | null, path: string, meta: TraceMeta = {}): TraceSummary {
  const { trace, summary } = buildTrace(k, result, meta);
  const abs = resolve(path);
  mkdirSync(dirname(abs), { recursive: true });
  writeFileSync(abs, JSON.stringify(trace));
  return { ...summary, path: abs };
}

/** 'M' events: a process per task kind in use (and the counters), a named thread per track. */
function metadata(b: TraceBuilder): TraceEvent[] {
  const out: TraceEvent[] = [];
  const kinds = new Set(b.tracks.map((t) => t.kind));
  for (const [kind, pid] of Object.entries(KIND_PIDS)) {
    if (!kinds.has(kind)) continue;
    out.push({ name: 'process_name', ph: 'M', pid, args: { name: KIND_GROUPS[kind] } });
    out.push({ name: 'process_sort_index', ph: 'M', pid, args: { sort_index: pid } });
  }
  out.push({ name: 'process_name', ph: 'M', pid: COUNTER_PID, args: { name: 'counters' } });
  out.push({ name: 'process_sort_index', ph: 'M', pid: COUNTER_PID, args: { sort_index: COUNTER_PID } });
  for (const t of b.tracks) {
    out.push({ name: 'thread_name', ph: 'M', pid: t.pid, tid: t.tid, args: { name: `${t.name}/${t.task}` } });
    out.push({ name: 'thread_sort_index', ph: 'M', pid: t.pid, tid: t.tid, args: { sort_index: t.tid } });
  }
  return out;
}

/** What traceHooks needs of a finished scenario run (ScenarioRunOutcome has it). */
export interface TracedRun {
  result: RunResult;
  scenario: string;
  variant: string | null;
  seed: number | null;
  replay: string | null;
}

/**
 * Hooks for runScenario (its `hooks` option): write the run's trace to `path` once the run's
 * verdict is in and before the kernel is dropped. `written` gets the summary (to print where
 * the file went, or that the ring wrapped).
 */
export function traceHooks(path: string, written?: (s: TraceSummary) => void): { finished(k: Kernel, run: TracedRun): void } {
  return {
    finished(k, run) {
      const s = writeTrace(k, run.result, path, { scenario: run.scenario, variant: run.variant, seed: run.seed, command: run.replay ?? undefined });
      written?.(s);
    },
  };
}
