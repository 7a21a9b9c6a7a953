// Violation records (DESIGN "The checks"): every klog record that reports a broken rule, plus
// what the runner finds itself: a run that did not end 'done' with no record saying why,
// failed tasks, teardown leaks and a scenario's own check() failures. Each record carries the
// kernel-style text as the kernel would print it, the tasks it names with their recent events,
// and the seed and command that replay it. Observes only: reads klog and the event ring.

import type { Kernel } from '../sched/kernel.js';
import type { RunResult } from '../sched/scheduler.js';
import { EV, EV_A, EV_B, EV_C, EV_NAMES, EV_SEQ, EV_TASK, EV_THI, EV_TLO, EV_TYPE, EV_WORDS } from '../shm/events.js';
import type { KlogRecord } from '../shm/klog.js';

/**
 * klog kinds that are kernel log lines, not broken rules: the OOM killer's and reaper's
 * reports and the pr_info of a non-blockable start that failed (§1.5: allowed). Everything
 * else in klog is a violation.
 */
export const INFO_KINDS: ReadonlySet<string> = new Set(['oom_kill', 'oom_reaper', 'notifier_start_failed']);

/** kinds the runner synthesizes */
export const RUN_KINDS = {
  /** the run ended other than 'done' and no klog record says why */
  status: 'run_status',
  /** a task threw (recorded by the scheduler as 'task_failed' too; this is only the fallback) */
  taskFailed: 'task_failed',
  /** check 7 */
  teardown: 'teardown_leak',
  /** a scenario's check() said something does not hold */
  check: 'check_failed',
} as const;

/** klog kinds a hung run leaves (sim: 'deadlock'/'liveness'; threads: also 'owner_died') */
const HANG_KINDS = new Set(['deadlock', 'liveness', 'owner_died']);

export interface ViolationEvent {
  seq: number;
  timeNs: number;
  type: string;
  a: number;
  b: number;
  c: number;
}

export interface ViolationTask {
  id: number;
  name: string;
  /** the task's last events still in the ring, oldest first */
  recent: ViolationEvent[];
}

export interface Violation {
  kind: string;
  /** the kernel-style text, as the kernel prints it */
  message: string;
  /** virtual (sim) or wall (threads) ns since boot; null for synthesized records */
  timeNs: number | null;
  /** klog index, null for synthesized records */
  klogIndex: number | null;
  /** the reporting task first, then every other task the text names */
  tasks: ViolationTask[];
  seed: number | null;
  /** the command that replays the run (null under threads) */
  replay: string | null;
}

export interface CollectInput {
  k: Kernel;
  result: RunResult;
  log: KlogRecord[];
  leaks: string[];
  checkFailures: string[];
  replay: string | null;
  /** recent events kept per task (default 8) */
  recent?: number;
}

function eventName(type: number): string {
  return EV_NAMES[type] ?? (type >= EV.USER ? `user+${type - EV.USER}` : `type${type}`);
}

/** The ring as records, and where each klog record's VIOLATION event sits in it. */
interface Ring {
  recs: Int32Array;
  /** klog index -> event seq */
  at: Map<number, number>;
}

function readRing(k: Kernel): Ring {
  const recs = k.events.records();
  const at = new Map<number, number>();
  for (let o = 0; o < recs.length; o += EV_WORDS) if (recs[o + EV_TYPE] === EV.VIOLATION) at.set(recs[o + EV_A], recs[o + EV_SEQ]);
  return { recs, at };
}

/** The last `n` events of `task` at or before event `maxSeq` (Infinity: the end of the run). */
export function recentEvents(k: Kernel, task: number, n: number, maxSeq = Infinity, ring: Ring = readRing(k)): ViolationEvent[] {
  const out: Int32Array[] = [];
  const recs = ring.recs;
  for (let o = recs.length - EV_WORDS; o >= 0 && out.length < n; o -= EV_WORDS) {
    if (recs[o + EV_TASK] === task && recs[o + EV_SEQ] <= maxSeq) out.push(recs.subarray(o, o + EV_WORDS));
  }
  return out.reverse().map((r) => ({
    seq: r[EV_SEQ],
    timeNs: (r[EV_TLO] >>> 0) + r[EV_THI] * 4294967296,
    type: eventName(r[EV_TYPE]),
    a: r[EV_A],
    b: r[EV_B],
    c: r[EV_C],
  }));
}

/** Tasks a record involves: its writer, then each `name/id` in the text that is a real task. */
function involved(k: Kernel, writer: number, text: string, n: number, ring: Ring, maxSeq = Infinity): ViolationTask[] {
  const ids: number[] = writer > 0 ? [writer] : [];
  const cap = k.tasks.pool.capacity;
  for (const m of text.matchAll(/([\w.:@-]+)\/(\d+)\b/g)) {
    const id = Number(m[2]);
    if (id <= 0 || id >= cap || ids.includes(id) || !k.tasks.pool.inUse(id)) continue;
    if (!m[1].endsWith(k.tasks.get(id).name)) continue;
    ids.push(id);
    if (ids.length >= 4) break;
  }
  return ids.map((id) => ({ id, name: k.tasks.get(id).name, recent: recentEvents(k, id, n, maxSeq, ring) }));
}

/** Every violation of a finished run, klog order first, then the synthesized ones. */
export function collectViolations(x: CollectInput): Violation[] {
  const { k, result } = x;
  const n = x.recent ?? 8;
  const base = { seed: result.seed, replay: x.replay };
  const out: Violation[] = [];
  const ring = readRing(k);
  for (const r of x.log) {
    if (INFO_KINDS.has(r.kind)) continue;
    // each side's events up to the moment of the report, when the ring still has it
    out.push({ kind: r.kind, message: r.text, timeNs: r.timeNs, klogIndex: r.index, tasks: involved(k, r.task, r.text, n, ring, ring.at.get(r.index)), ...base });
  }
  const kinds = new Set(out.map((v) => v.kind));
  if (result.status !== 'done' && ![...kinds].some((x) => HANG_KINDS.has(x))) {
    const message = result.report ?? `INFO: the run ended '${result.status}' after ${result.steps} steps`;
    out.push({ kind: RUN_KINDS.status, message, timeNs: result.timeNs, klogIndex: null, tasks: involved(k, 0, message, n, ring), ...base });
  }
  if (!kinds.has('task_failed')) {
    for (const f of result.failed) out.push({ kind: RUN_KINDS.taskFailed, message: `task ${f.name}/${f.task} failed: ${f.error}`, timeNs: null, klogIndex: null, tasks: involved(k, f.task, '', n, ring), ...base });
  }
  for (const m of x.leaks) out.push({ kind: RUN_KINDS.teardown, message: m, timeNs: null, klogIndex: null, tasks: involved(k, 0, m, n, ring), ...base });
  for (const m of x.checkFailures) out.push({ kind: RUN_KINDS.check, message: m, timeNs: null, klogIndex: null, tasks: [], ...base });
  return out;
}

/** How many of each kind. */
export function countKinds(vs: { kind: string }[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of vs) out[v.kind] = (out[v.kind] ?? 0) + 1;
  return out;
}
