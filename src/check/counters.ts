// Counters of a finished run, flat `group.name` keys: the run itself, klog, the OOM killer,
// and how many of each event type the ring still holds. A later layer adds its own group (and
// latency percentiles) with registerCounterSource; sources read the kernel after the run, in
// the thread that ran it, and change nothing.

import type { Kernel } from '../sched/kernel.js';
import type { RunResult } from '../sched/scheduler.js';
import { EV_NAMES, EV_TYPE, EV_WORDS } from '../shm/events.js';
import { oomStats } from '../mm/oom_kill.js';
import { LATENCY_KINDS, LatencyScanner } from './latency.js';

export type CounterSource = (k: Kernel, result: RunResult) => Record<string, number> | null;

const sources = new Map<string, CounterSource>([
  ['run', (k, r) => ({ steps: r.steps, timeNs: r.timeNs, events: r.events, tasks: k.tasks.pool.used, failedTasks: r.failed.length })],
  ['klog', (k) => ({ records: k.klog.count, dropped: k.klog.dropped })],
  [
    'oom',
    (k) => {
      const s = oomStats(k);
      return { kills: s.kills, reapAttempts: s.reapAttempts, reaped: s.reaped, unableToReap: s.unableToReap, victimsWhileHeld: s.victimsWhileHeld };
    },
  ],
  ['events', eventCounts],
  ['latency', latencyCounters],
]);

/** p50/p99 (µs) and sample counts of CPU faults, device faults and invalidations still in the ring. */
function latencyCounters(k: Kernel): Record<string, number> | null {
  const s = LatencyScanner.of(k);
  s.rewind();
  s.scan();
  const sum = s.summary();
  const out: Record<string, number> = {};
  for (const kind of LATENCY_KINDS) {
    if (sum[kind].samples === 0) continue;
    out[`${kind}_p50_us`] = sum[kind].p50_us;
    out[`${kind}_p99_us`] = sum[kind].p99_us;
    out[`${kind}_samples`] = sum[kind].samples;
  }
  return Object.keys(out).length > 0 ? out : null;
}

/** Add a group of counters (e.g. 'latency' with fault_p50_ns...). A source returning null adds nothing. */
export function registerCounterSource(group: string, fn: CounterSource): void {
  sources.set(group, fn);
}

/** Each event type's count among the records still in the ring (`ringComplete` 1 if none was overwritten). */
function eventCounts(k: Kernel): Record<string, number> {
  const recs = k.events.records();
  const out: Record<string, number> = { ringComplete: k.events.count <= k.events.capacity ? 1 : 0 };
  for (let o = 0; o < recs.length; o += EV_WORDS) {
    const name = EV_NAMES[recs[o + EV_TYPE]] ?? `type${recs[o + EV_TYPE]}`;
    out[name] = (out[name] ?? 0) + 1;
  }
  return out;
}

export function collectCounters(k: Kernel, result: RunResult): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [group, fn] of sources) {
    const c = fn(k, result);
    if (!c) continue;
    for (const [key, v] of Object.entries(c)) if (Number.isFinite(v)) out[`${group}.${key}`] = v;
  }
  return out;
}
